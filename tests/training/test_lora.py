"""Real LoRA training of SmolLM2 on CPU (a few steps on a tiny dataset)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from agent_core.training.dataset import build_dataset, load_examples
from agent_core.training.encoding import encode_example
from agent_core.training.lora import StepLog, split_held_out, train_lora
from agent_core.training.loss import batch_loss, collate
from agent_core.training.program import (
    Composition,
    CurationProgram,
    LoraSettings,
    ProgramError,
    RoutineMix,
)

LORA = LoraSettings(rank=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"], learning_rate=5e-3,
                    batch_size=2, max_seq_len=512, max_steps=3, schedule="linear", warmup_ratio=0.0, seed=3)

pytestmark = pytest.mark.slow


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def dataset(archive, tmp_path_factory) -> Path:
    program = CurationProgram(
        selection_sql="select call_id from calls",
        composition=Composition(routine_mix=RoutineMix(log=0.5, plan=0.5), max_per_episode=4,
                                min_examples=4, max_examples=8, top_episode_share=1.0),
        lora=LORA)
    return build_dataset(archive.root, program, tmp_path_factory.mktemp("ds")).path


@pytest.fixture(scope="module")
def trained(dataset, base_path, tmp_path_factory):
    before = sha(base_path / "model.safetensors")
    seen: list[StepLog] = []
    result = train_lora(dataset, LORA, tmp_path_factory.mktemp("runs") / "adapter", base_path, seen.append)
    return result, seen, before


def test_training_writes_a_peft_adapter_and_logs(trained):
    result, seen, _ = trained
    out = result.adapter_dir
    assert {"adapter_config.json", "adapter_model.safetensors", "training_config.json", "loss_curve.json",
            "train_log.csv"} <= {p.name for p in out.iterdir()}
    assert not list(out.parent.glob("*.tmp-*"))
    # 8 examples: whole episodes held out for eval_loss (which ones: a hash of their ids), the rest
    # trained on; test_saved_adapter_reloads_with_identical_loss checks the split by episode
    assert result.steps == 3 and len(result.loss_curve) == 3, result
    assert result.examples + result.eval_examples == 8 and 1 <= result.eval_examples < 8, result
    assert [s.step for s in seen] == [1, 2, 3] and seen[-1].total_steps == 3
    assert [s.loss for s in seen] == result.loss_curve and result.final_loss == result.loss_curve[-1]
    assert all(0 < s.tokens <= 2 * 512 for s in seen) and result.tokens == sum(s.tokens for s in seen)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert config["base_model_name_or_path"] == "smollm2-135m-instruct"  # no machine path
    curve = json.loads((out / "loss_curve.json").read_text())
    assert [c["loss"] for c in curve] == result.loss_curve
    assert curve[0]["lr"] == pytest.approx(5e-3) and curve[-1]["lr"] < curve[0]["lr"]  # linear decay
    with open(out / "train_log.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 3
    training = json.loads((out / "training_config.json").read_text())
    assert training["lora"] == LORA.model_dump(mode="json") and training["steps"] == 3
    assert training["held_out"] == result.eval_examples and training["eval_loss"] == result.eval_loss
    import torch

    here = "cuda" if torch.cuda.is_available() else "cpu"  # device "auto"
    assert (training["device"], training["dtype"]) == (here, {"cpu": "float32", "cuda": "bfloat16"}[here])
    assert (result.device, result.dtype) == (training["device"], training["dtype"])
    assert training["gradient_checkpointing"] is False


def test_gradient_checkpointing_gives_the_same_losses(trained, dataset, base_path, tmp_path):
    result, _, _ = trained
    again = train_lora(dataset, LORA.model_copy(update={"max_steps": 2}), tmp_path / "gc", base_path,
                       gradient_checkpointing=True)
    # same seed and data; step 2's loss depends on step 1's gradients, recomputed here
    assert again.loss_curve == pytest.approx(result.loss_curve[:2], abs=1e-4)
    assert json.loads((again.adapter_dir / "training_config.json").read_text())["gradient_checkpointing"] is True


def test_adapter_weights_change_and_base_weights_do_not(trained, base_path):
    from safetensors.torch import load_file

    result, _, before = trained
    tensors = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert tensors and all("lora_A" in k or "lora_B" in k for k in tensors)  # no base weight saved
    # 30 layers x (q, v) x (A, B)
    assert len(tensors) == 30 * 2 * 2
    # peft starts B at zero: any non-zero B was learned
    assert all(float(t.abs().max()) > 0 for k, t in tensors.items() if "lora_B" in k)
    assert sha(base_path / "model.safetensors") == before


def test_saved_adapter_reloads_with_identical_loss(trained, dataset, base_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, _, _ = trained
    tok = AutoTokenizer.from_pretrained(base_path, local_files_only=True)
    examples = load_examples(dataset)
    train_ids, held_ids = split_held_out(examples)
    assert held_ids and not set(train_ids) & set(held_ids) and result.eval_examples == len(held_ids)
    # by episode: no episode has examples on both sides
    assert not ({examples[i]["meta"]["episode_id"] for i in train_ids}
                & {examples[i]["meta"]["episode_id"] for i in held_ids})
    assert result.examples == len(train_ids)  # every example fits max_seq_len here
    held = [examples[i] for i in held_ids]
    batch = [examples[i] for i in train_ids][: LORA.batch_size]
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, local_files_only=True)
    base_loss = batch_loss(model, tok, batch, LORA.max_seq_len)
    # the loss on target positions only (forced ones counted too) equals transformers' own
    # shifted, masked loss
    encoded = [encode_example(tok, e["messages"], e["target"], LORA.max_seq_len) for e in batch]
    tensors = collate(encoded, tok.pad_token_id, torch)
    with torch.no_grad():
        assert float(model(**tensors).loss) == pytest.approx(
            batch_loss(model, tok, batch, LORA.max_seq_len, forced_weight=1.0), abs=1e-5)
    base_held = batch_loss(model, tok, held, LORA.max_seq_len)
    peft = PeftModel.from_pretrained(model, result.adapter_dir)
    assert batch_loss(peft, tok, held, LORA.max_seq_len) == pytest.approx(result.eval_loss, abs=1e-5)
    assert result.eval_loss != pytest.approx(base_held, abs=1e-6)  # the adapter acts on unseen examples too
    reloaded = batch_loss(peft, tok, batch, LORA.max_seq_len)
    assert reloaded < base_loss - 0.1  # training on these examples lowered their loss
    with peft.disable_adapter():  # underneath, the base weights are the original ones
        assert batch_loss(peft, tok, batch, LORA.max_seq_len) == pytest.approx(base_loss, abs=1e-6)


def test_failed_training_leaves_no_adapter(trained, dataset, base_path, tmp_path):
    result, _, _ = trained
    first: list[float] = []

    def die(step: StepLog) -> None:
        first.append(step.loss)
        raise RuntimeError("killed")

    out = tmp_path / "adapter"
    with pytest.raises(RuntimeError, match="killed"):
        train_lora(dataset, LORA, out, base_path, die)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert first == [result.loss_curve[0]]  # same seed, same data: the same first step


def test_settings_that_do_not_fit_the_model_are_refused(dataset, base_path, tmp_path):
    out = tmp_path / "adapter"
    with pytest.raises(ProgramError, match="max_position_embeddings 8192"):
        train_lora(dataset, LORA.model_copy(update={"max_seq_len": 9000}), out, base_path)
    with pytest.raises(ProgramError, match=r"\['mlp_proj'\] do not exist"):
        train_lora(dataset, LORA.model_copy(update={"target_modules": ["mlp_proj"]}), out, base_path)
    long = tmp_path / "long"
    long.mkdir()
    example = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
               "target": "<|APPEND|>a.md|" + "word " * 200 + "<|END|>"}
    (long / "train.jsonl").write_text(json.dumps(example) + "\n")
    with pytest.raises(ProgramError, match="no example fits lora.max_seq_len 64"):
        train_lora(long, LORA.model_copy(update={"max_seq_len": 64}), out, base_path)
    out.mkdir()
    with pytest.raises(FileExistsError):
        train_lora(dataset, LORA, out, base_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "long"]
