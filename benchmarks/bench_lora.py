"""LoRA training throughput of the memory specialist on this machine (CPU).

Two measurements in one run, so they share the machine's conditions:

1. `train_lora` on a small real dataset: tiny-game episodes played by a scripted agent,
   archived, selected by the rule-based program; examples/s, tokens/s, s/step.
2. A plain batch of the shape NOTES.md quotes (8 x 64 tokens, r=8 on q_proj,v_proj, loss on
   every token through transformers' own loss, AdamW): s/step, next to NOTES.md's ~3.7 s.
   The same batch is also timed with the trainer's loss (only the last 16 tokens as targets),
   which skips the vocabulary projection of the context positions.

    python benchmarks/bench_lora.py [--steps 6] [--batch 8] [--max-seq-len 256] [--rank 8]

Needs the prepared model (`make model`). Other processes on the machine slow it down: the
load average is printed first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from agent_core.models.weights import force_offline, local_model_path  # noqa: E402

NOTES_S_PER_STEP = 3.7  # NOTES.md: batch 8 x 64 tokens, r=8 on q_proj,v_proj


def make_dataset(work: Path, episodes: int, steps: int) -> Path:
    """Scripted tiny-game episodes -> archive -> dataset of their valid memory turns (all routines)."""
    from agent_core.models.base import Roles
    from agent_core.archive import archive_trace
    from agent_core.episode import run_episode
    from agent_core.models.config import RoutineScript
    from agent_core.models.scripted import ScriptedModel
    from agent_core.scaffold import Scaffold
    from agent_core.training import build_dataset, pool_digest, rule_based_program
    from agent_core.training.curator import VALID_TURNS_SQL
    from environments import make_env

    # the reply protocol: a look-up ends its reply, the next turn comes after its result
    script = RoutineScript(log="<|SEARCH|>saw<|END|>", log_next="<|APPEND|>action_log.md|saw: step done<|END|><|DONE|>",
                           plan="<|SEARCH|>key<|END|>", plan_next="<|READ|>map.md<|END|>")
    for seed in range(episodes):
        s = run_episode(make_env("tiny"), Scaffold.builtin("tiny"),
                        Roles(memory=ScriptedModel(script.reply, model_id="bench")), seed, steps,
                        work / f"ep{seed}")
        archive_trace(s.trace_path, work / "archive")
    # every valid memory turn (the curator's first relaxation): scripted episodes earn no credit,
    # and a timing needs data, not good data
    program = rule_based_program(pool_digest(work / "archive")).model_copy(update={"selection_sql": VALID_TURNS_SQL})
    return build_dataset(work / "archive", program, work / "datasets").path


def bench_train(dataset: Path, args: argparse.Namespace, work: Path) -> dict:
    from agent_core.training import LoraSettings, train_lora

    lora = LoraSettings(rank=args.rank, alpha=2 * args.rank, target_modules=["q_proj", "v_proj"],
                        learning_rate=2e-4, batch_size=args.batch, max_seq_len=args.max_seq_len,
                        max_steps=args.steps, schedule="constant", seed=0)
    marks: list[float] = []
    result = train_lora(dataset, lora, work / "adapter", progress=lambda s: marks.append(s.elapsed_s))
    per_step = [b - a for a, b in zip([0.0, *marks], marks)]
    examples = min(result.steps * args.batch, result.examples * lora.epochs)
    return {"steps": result.steps, "batch": args.batch, "max_seq_len": args.max_seq_len,
            "dataset_examples": result.examples, "wall_s": round(result.wall_s, 2),
            "s_per_step_mean": round(result.wall_s / result.steps, 3),
            "s_per_step_median": round(statistics.median(per_step), 3),
            "examples_per_s": round(examples / result.wall_s, 3),
            "tokens_per_s": round(result.tokens / result.wall_s, 1),
            "tokens_per_step": round(result.tokens / result.steps, 1),
            "loss_first_last": [round(result.loss_curve[0], 4), round(result.loss_curve[-1], 4)]}


def bench_plain(args: argparse.Namespace) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from agent_core.training.encoding import IGNORE
    from agent_core.training.loss import loss_sum

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(local_model_path(), dtype=torch.float32, local_files_only=True)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    ids = torch.randint(100, model.config.vocab_size, (8, 64), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    targets = ids.clone()
    targets[:, :-16] = IGNORE

    def full() -> None:
        model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()

    def targets_only() -> None:
        loss, n = loss_sum(model, {"input_ids": ids, "attention_mask": mask, "labels": targets}, torch)
        (loss / n).backward()

    # the variants alternate step by step, so background load hits both alike
    times: dict[str, list[float]] = {"full_loss": [], "targets_only_loss": []}
    for i in range(args.plain_steps + 1):  # the first round warms up
        for name, fn in (("full_loss", full), ("targets_only_loss", targets_only)):
            t = time.perf_counter()
            fn()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:
                times[name].append(time.perf_counter() - t)
    out = {f"{name}_s_per_step": round(statistics.median(t), 3) for name, t in times.items()}
    out["tokens_per_s_full"] = round(8 * 64 / out["full_loss_s_per_step"], 1)
    out["notes_s_per_step"] = NOTES_S_PER_STEP
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--episode-steps", type=int, default=6)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps of the train_lora run")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--plain-steps", type=int, default=5, help="timed steps per plain-batch variant")
    args = parser.parse_args()
    force_offline()
    import torch

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; torch threads "
          f"{torch.get_num_threads()}", flush=True)
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset = make_dataset(work, args.episodes, args.episode_steps)
        report["train_lora"] = bench_train(dataset, args, work)
        print("train_lora:", json.dumps(report["train_lora"]), flush=True)
    report["plain_batch_8x64_r8_qv"] = bench_plain(args)
    print("plain batch 8x64, r=8 q_proj,v_proj:", json.dumps(report["plain_batch_8x64_r8_qv"]), flush=True)
    p = report["plain_batch_8x64_r8_qv"]
    print(f"s/step: {p['full_loss_s_per_step']} here vs {NOTES_S_PER_STEP} in NOTES.md "
          f"({p['full_loss_s_per_step'] / NOTES_S_PER_STEP:.2f}x); trainer's targets-only loss "
          f"{p['targets_only_loss_s_per_step']} s/step")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
