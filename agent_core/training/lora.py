"""LoRA training of the memory specialist: peft on transformers, a small plain training loop.

Examples are tokenized as the model saw them at inference time (`encoding.py`: the prompt,
then the target reply and the end-of-turn token, a context too long for `max_seq_len` cut
in the middle of its history); the loss covers only the target tokens, those the reply
grammar forced weighted `forced_weight` (default 0) and reported apart (`loss.py`).

Training runs on `device` ("auto": CUDA when torch sees a GPU, else CPU): fp32 base weights
on a CPU, bf16 on a GPU (the LoRA weights stay fp32 either way), optionally with gradient
checkpointing; device and dtype are recorded in `training_config.json`.

The adapter is written in peft format (`adapter_config.json`, `adapter_model.safetensors`,
loadable by peft and vLLM) with `training_config.json`, `loss_curve.json` and
`train_log.csv` beside it, into a temp folder renamed into place at the very end: a run
that dies leaves nothing at `out_dir`.

torch, transformers and peft are imported inside the functions (they take seconds).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from agent_core.models.devices import kind, resolve_device, training_dtype
from agent_core.models.weights import force_offline, local_model_path
from agent_core.training.dataset import load_examples, remove_stale, split_held_out  # noqa: F401 (re-exported)
from agent_core.training.encoding import IGNORE, encode_example, end_of_turn_ids
from agent_core.training.loss import (FORCED_WEIGHT, LossSums, batch_loss, collate, forced_batch, loss_split,
                                     pad_token_id)
from agent_core.training.program import LoraSettings, ProgramError, check_lora

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepLog:
    """What the progress callback receives after every optimizer step."""

    step: int
    total_steps: int
    epoch: int
    #: the loss trained on: mean over the target tokens, forced ones weighted `forced_weight`
    loss: float
    lr: float
    #: non-padding tokens in this step's batches (context + target)
    tokens: int
    examples: int
    elapsed_s: float
    #: mean loss over the target tokens the model chose, and over those the grammar forced
    #: (None when the step had none of that kind)
    chosen_loss: float | None = None
    forced_loss: float | None = None
    chosen_tokens: int = 0
    forced_tokens: int = 0


class TrainResult(BaseModel):
    """A finished training run."""

    adapter_dir: Path = Field(description="The peft adapter folder (with the logs beside it).")
    steps: int = Field(description="Optimizer steps taken.")
    examples: int = Field(description="Training examples used (after dropping those that do not fit).")
    final_loss: float = Field(description="Training loss of the last step.")
    eval_loss: float | None = Field(description="Loss (eval mode) after training on the held-out "
                                    "episodes' examples (`dataset.split_held_out`), never trained on, weighted "
                                    "as in training (forced tokens by forced_weight); the saved "
                                    "adapter reproduces it (`batch_loss`). None with fewer than 2 episodes.")
    eval_examples: int = Field(0, description="Held-out examples behind eval_loss.")
    loss_curve: list[float] = Field(description="Training loss per optimizer step.")
    forced_weight: float = Field(FORCED_WEIGHT, description="Weight of the grammar-forced target tokens "
                                 "(1: the model's own choices).")
    chosen_loss_curve: list[float | None] = Field(default_factory=list, description="Per step: mean loss "
                                                  "over the target tokens the model chose.")
    forced_loss_curve: list[float | None] = Field(default_factory=list, description="Per step: mean loss "
                                                  "over the target tokens the grammar forced (None: none).")
    chosen_tokens: int = Field(0, description="Target tokens the model chose, in the training examples.")
    forced_tokens: int = Field(0, description="Target tokens the grammar forced, in the training examples.")
    tokens: int = Field(description="Non-padding tokens processed over all steps.")
    wall_s: float = Field(description="Seconds spent in the training loop.")
    base_model: str = Field(description="Name of the base model folder.")
    device: str = Field("cpu", description="Kind of device trained on (cpu, cuda).")
    dtype: str = Field("float32", description="Dtype of the base weights during training.")


def _mean(total: float, n: int) -> float | None:
    return total / n if n else None


def _scheduler_name(lora: LoraSettings) -> str:
    # transformers' "constant" ignores warm-up
    return "constant_with_warmup" if lora.schedule == "constant" and lora.warmup_ratio > 0 else lora.schedule


#: a temp folder untouched this long belongs to a training that was killed
_STALE_TMP_S = 24 * 3600.0


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def train_lora(dataset_dir: str | Path, lora: LoraSettings, out_dir: str | Path,
               base_path: str | Path | None = None,
               progress: Callable[[StepLog], None] | None = None,
               device: str = "auto", gradient_checkpointing: bool = False,
               forced_weight: float = FORCED_WEIGHT) -> TrainResult:
    """Train a LoRA adapter on `dataset_dir/train.jsonl` and save it at `out_dir`.

    `base_path`: the base checkpoint (default: the prepared local model). `device`: auto,
    cpu, cuda or cuda:N (ValueError when this machine lacks it). `gradient_checkpointing`
    recomputes activations in the backward pass (less memory for long contexts, about a
    third more compute; the loss is the same). `forced_weight`: the weight of target tokens
    the reply grammar forced (`forced_mask`), against 1 for the model's own; the step log
    reports both losses apart. `progress` is
    called after every optimizer step; an exception from it stops training (and, like any
    failure, leaves no adapter at `out_dir`). Raises `ProgramError` when the settings do not
    fit the base model or no example fits `max_seq_len`; `FileExistsError` when `out_dir`
    already exists."""
    force_offline()
    device = resolve_device(device)  # fails fast on a device this machine lacks
    dtype = training_dtype(device)
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    base = Path(base_path) if base_path is not None else local_model_path()
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; train into a new folder")
    check_lora(lora, base)  # fails fast, before seconds of model loading
    examples = load_examples(dataset_dir)
    if not examples:
        raise ProgramError(f"{dataset_dir} holds no training examples")

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    if not 0.0 <= forced_weight <= 1.0:
        raise ValueError(f"forced_weight must be in [0, 1], not {forced_weight}")
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    stops = end_of_turn_ids(tokenizer)
    fits = [(x, e) for x, e in ((x, encode_example(tokenizer, x["messages"], x["target"], lora.max_seq_len,
                                                   stops, fixed=x.get("fixed", 1), grammar=x.get("grammar")))
                                for x in examples)
            if e is not None]
    dropped = len(examples) - len(fits)
    if not fits:
        raise ProgramError(f"no example fits lora.max_seq_len {lora.max_seq_len}: every target, with the "
                           "system prompt and demonstrations that are never cut, is longer")
    train_ids, held_ids = split_held_out([x for x, _ in fits])
    held = [fits[i][0] for i in held_ids]
    encoded = [fits[i][1] for i in train_ids]
    n_forced = sum(sum(e.forced) for e in encoded)
    n_chosen = sum(sum(t != IGNORE for t in e.labels) for e in encoded) - n_forced
    if dropped:
        log.warning("%d of %d examples dropped: target and fixed prompt longer than max_seq_len %d",
                    dropped, len(examples), lora.max_seq_len)

    torch.manual_seed(lora.seed)  # LoRA A matrices and dropout draw from the global generator
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype), local_files_only=True).to(device)
    model.config.use_cache = False
    if gradient_checkpointing:  # non-reentrant: needs no gradient on the frozen embeddings
        if hasattr(model, "activation_checkpointing_enable"):  # its name from transformers 5.2x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    check_lora(lora, base, module_names={n for n, _ in model.named_modules()})
    try:
        model = get_peft_model(model, LoraConfig(
            # an integral alpha is written as an int: some loaders (vLLM) expect one
            r=lora.rank, lora_alpha=int(lora.alpha) if float(lora.alpha).is_integer() else lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM"))
    except (ValueError, TypeError) as exc:
        raise ProgramError(f"peft refused the LoRA settings: {exc}") from None
    model.train()

    micro_per_epoch = math.ceil(len(encoded) / lora.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / lora.grad_accum)
    total = steps_per_epoch * lora.epochs
    if lora.max_steps is not None:
        total = min(total, lora.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lora.learning_rate, weight_decay=0.0)
    scheduler = get_scheduler(_scheduler_name(lora), optimizer,
                              num_warmup_steps=round(lora.warmup_ratio * total), num_training_steps=total)
    pad_id = pad_token_id(tokenizer)
    shuffle = torch.Generator().manual_seed(lora.seed)

    remove_stale(out_dir.parent, f"{out_dir.name}.tmp-*", _STALE_TMP_S)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{secrets.token_hex(4)}")
    tmp.mkdir(parents=True)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        step, tokens_seen = 0, 0
        for epoch in range(lora.epochs):
            order = torch.randperm(len(encoded), generator=shuffle).tolist()
            micro = [order[i:i + lora.batch_size] for i in range(0, len(order), lora.batch_size)]
            for g in range(0, len(micro), lora.grad_accum):
                if step >= total:
                    break
                parts = [[encoded[i] for i in idx] for idx in micro[g:g + lora.grad_accum]]
                group = [(collate(p, pad_id, torch, device), forced_batch(p, torch, device)) for p in parts]
                # normalise by the group's weighted target tokens: every token of a kind weighs
                # the same, however the tokens fall into micro-batches
                forced_n = sum(int(f[:, 1:][b["labels"][:, 1:] != IGNORE].sum()) for b, f in group)
                norm = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b, _ in group) - forced_n \
                    + forced_weight * forced_n
                sums = LossSums(0.0, 0.0, 0, 0)
                for b, f in group:
                    split = loss_split(model, b, f, torch)
                    loss, _ = split.weighted(forced_weight)
                    if norm and loss.requires_grad:
                        (loss / norm).backward()
                    sums = LossSums(sums.chosen + float(split.chosen.detach()), sums.forced + float(split.forced.detach()),
                                    sums.n_chosen + split.n_chosen, sums.n_forced + split.n_forced)
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens = sum(int(b["attention_mask"].sum()) for b, _ in group)
                tokens_seen += tokens
                total_w, norm_w = sums.weighted(forced_weight)
                row = StepLog(step=step, total_steps=total, epoch=epoch + 1,
                              loss=total_w / norm_w if norm_w else float("nan"),
                              lr=lr, tokens=tokens, examples=sum(len(p) for p in parts),
                              elapsed_s=round(time.perf_counter() - started, 3),
                              chosen_loss=_mean(sums.chosen, sums.n_chosen),
                              forced_loss=_mean(sums.forced, sums.n_forced),
                              chosen_tokens=sums.n_chosen, forced_tokens=sums.n_forced)
                rows.append(asdict(row))
                log.info("lora step %d/%d epoch %d loss %.4f (chosen %s, forced %s) lr %.2e (%d tokens, %.1f s)",
                         step, total, row.epoch, row.loss, _fmt(row.chosen_loss), _fmt(row.forced_loss),
                         lr, tokens, row.elapsed_s)
                if progress is not None:
                    progress(row)
        wall = time.perf_counter() - started
        # measured on held-out examples (reproducible from the dataset alone, to check a
        # reloaded adapter)
        eval_loss = batch_loss(model, tokenizer, held, lora.max_seq_len, forced_weight) if held else None

        # the adapter names its base by folder name only: no machine paths in artifacts
        model.peft_config["default"].base_model_name_or_path = base.name
        # save_embedding_layers=False: the vocabulary is never resized, and the "auto" check
        # would look the base up by that name
        model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
        curve = [r["loss"] for r in rows]
        (tmp / "loss_curve.json").write_text(json.dumps(
            [{k: r[k] for k in ("step", "loss", "chosen_loss", "forced_loss", "lr")} for r in rows], indent=1))
        with open(tmp / "train_log.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["step"])
            writer.writeheader()
            writer.writerows(rows)
        (tmp / "training_config.json").write_text(json.dumps({
            "lora": lora.model_dump(mode="json"), "base_model": base.name, "dataset": dataset_dir.name,
            "examples": len(encoded), "held_out": len(held), "dropped_too_long": dropped, "steps": step,
            "scheduler": _scheduler_name(lora), "optimizer": "AdamW", "grad_clip": 1.0,
            "tokens": tokens_seen, "final_loss": curve[-1] if curve else None, "eval_loss": eval_loss,
            "forced_weight": forced_weight, "target_tokens_chosen": n_chosen, "target_tokens_forced": n_forced,
            "wall_s": round(wall, 3), "device": kind(device), "dtype": dtype,
            # as the model's layers were set, not as asked
            "gradient_checkpointing": any(getattr(m, "gradient_checkpointing", False) for m in model.modules()),
            "versions": _versions()}, indent=2))
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return TrainResult(adapter_dir=out_dir, steps=step, examples=len(encoded),
                       final_loss=curve[-1] if curve else float("nan"), eval_loss=eval_loss,
                       eval_examples=len(held),
                       loss_curve=curve, tokens=tokens_seen, wall_s=round(wall, 3), base_model=base.name,
                       device=kind(device), dtype=dtype, forced_weight=forced_weight,
                       chosen_loss_curve=[r["chosen_loss"] for r in rows],
                       forced_loss_curve=[r["forced_loss"] for r in rows],
                       chosen_tokens=n_chosen, forced_tokens=n_forced)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
