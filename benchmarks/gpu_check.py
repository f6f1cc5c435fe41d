"""Device check: LoRA training and `LocalModel` generation on a GPU, with the CPU beside it.

What it measures, in one run so both devices share the machine:

1. `train_lora` (the project's trainer, unchanged) on synthetic examples shaped like the
   memory specialist's (a long fixed system prompt, a few turns, a short command reply):
   optimizer steps/s and tokens/s, steady state (after the first step) and overall; on
   CUDA after an untimed 3-step warm-up, and also with gradient checkpointing, with the
   peak GPU memory of each.
2. `LocalModel.generate` (the project's inference path): a ~1,000-token conversation, a
   free 64-token reply (tokens/s) and a reply under the LOG grammar with jump-forward
   (seconds per reply, forward passes); the prefix cache is warm after the first call.
3. Continuous batching (`--batching 1,4,16`): that many concurrent free replies (distinct
   ~1,000-token conversations, prefixes cached) decoded together (`max_batch` = level), and
   at level 1 one at a time under the lock (`max_batch` 1): tokens/s and the speed-up over
   level 1. Target on a GPU: at least 8x at 16.

The base is the prepared SmolLM2-135M when present, else (a GPU machine without it) a
randomly initialised model of the same architecture built from `--config-dir` (config and
tokenizer files only): throughput does not depend on the weights' values. `--size 1.7b`
widens that architecture to SmolLM2-1.7B's shape (random weights, GPU only).

    python benchmarks/gpu_check.py --device cpu                # runs anywhere
    python benchmarks/gpu_check.py --device cuda --baseline cpu --out gpu_check.json
    python benchmarks/gpu_check.py --device cuda --skip-training --skip-generation --batching 1,4,16

Writes every figure as JSON (`--out`) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from agent_core.models.weights import set_runtime_env  # noqa: E402

set_runtime_env()

#: SmolLM2-1.7B's shape (its config), for a random model of the size GPU users start from
SIZES: dict[str, dict[str, Any]] = {
    "135m": {},
    "1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
             "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 64},
}
_WORDS = ("tree stone water grass sand table wood pickaxe sword zombie skeleton cow plant sapling "
          "coal iron diamond furnace north south east west near far health food drink energy").split()


def base_model(args: argparse.Namespace, work: Path) -> tuple[Path, str]:
    """(checkpoint folder, what it is): the prepared model, or random weights of its shape."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if args.size == "135m" and not args.random_init:
        try:
            from agent_core.models.weights import local_model_path

            return local_model_path(), "SmolLM2-135M-Instruct (prepared weights)"
        except FileNotFoundError:
            pass
    src = Path(args.config_dir)
    config = AutoConfig.from_pretrained(src, local_files_only=True)
    for k, v in SIZES[args.size].items():
        setattr(config, k, v)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init of 1.7B is slow on a CPU
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    out = work / f"random-{args.size}"
    model.save_pretrained(out)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens", "generation_config")):
            shutil.copy(f, out / f.name)
    params = sum(p.numel() for p in model.parameters())
    return out, f"random init, SmolLM2 architecture at {params / 1e6:.0f}M parameters"


def synthetic_dataset(work: Path, n: int, context_words: int, seed: int = 0) -> Path:
    """`n` examples shaped like the specialist's: a long system prompt (never cut), a few
    turns, a LOG reply of a few commands."""
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(k))

    rows = []
    for i in range(n):
        messages = [{"role": "system", "content": "You keep a memory of files. " + text(context_words // 2)}]
        for turn in range(3):
            messages.append({"role": "user", "content": f"step {turn}: you see " + text(context_words // 8)})
            messages.append({"role": "assistant", "content": f"<|APPEND|>notes.md|{text(8)}<|END|><|DONE|>"})
        messages.append({"role": "user", "content": "LOG routine: record what matters. " + text(40)})
        rows.append({"messages": messages, "target": f"<|SEARCH|>{text(2)}<|END|><|APPEND|>notes.md|{text(12)}"
                     "<|END|><|DONE|>", "fixed": 1, "meta": {"call_id": f"synthetic-{i}"}})
    out = work / "dataset"
    out.mkdir()
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def bench_training(base: Path, dataset: Path, device: str, steps: int, args: argparse.Namespace, work: Path,
                   gradient_checkpointing: bool = False) -> dict[str, Any]:
    import torch

    from agent_core.training.lora import train_lora
    from agent_core.training.program import LoraSettings

    lora = LoraSettings(rank=args.rank, alpha=2 * args.rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        learning_rate=1e-4, batch_size=args.batch, max_seq_len=args.max_seq_len, max_steps=steps,
                        schedule="constant", warmup_ratio=0.0, epochs=50)
    marks: list[float] = []
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    out = work / f"adapter-{device.replace(':', '')}-{'gc' if gradient_checkpointing else 'plain'}-{steps}"
    result = train_lora(dataset, lora, out, base, progress=lambda s: marks.append(s.elapsed_s), device=device,
                        gradient_checkpointing=gradient_checkpointing)
    steady = (len(marks) - 1) / (marks[-1] - marks[0]) if len(marks) > 1 and marks[-1] > marks[0] else None
    row = {"device": result.device, "dtype": result.dtype, "gradient_checkpointing": gradient_checkpointing,
           "steps": result.steps, "batch": args.batch, "max_seq_len": args.max_seq_len, "rank": args.rank,
           "tokens": result.tokens, "wall_s": result.wall_s,
           "steps_per_s": round(result.steps / result.wall_s, 3),
           "steady_steps_per_s": round(steady, 3) if steady else None,
           "tokens_per_s": round(result.tokens / result.wall_s, 1),
           "first_step_s": marks[0], "final_loss": round(result.final_loss, 4)}
    if device.startswith("cuda"):
        row["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def bench_generation(base: Path, device: str, repeats: int) -> dict[str, Any]:
    from agent_core.grammar import log_grammar
    from agent_core.models.local import LocalModel
    from agent_core.records import Message, SamplingParams

    model = LocalModel(path=base, device=device)
    rng = random.Random(1)
    words = " ".join(rng.choice(_WORDS) for _ in range(700))
    messages = [Message(role="system", content="You keep a memory of files. " + words),
                Message(role="user", content="LOG routine: record what matters in notes.md.")]
    grammar = log_grammar(["search", "append", "read"], 3, files=["notes.md", "map.md"])
    prompt = len(model.encode(messages))

    def timed(constraint, max_tokens: int) -> tuple[list[float], int, int]:
        lat, passes0, tokens0 = [], model.forward_passes, model.generated_tokens
        for i in range(repeats + 1):  # the first call fills the prefix cache and warms kernels
            started = time.perf_counter()
            model.generate(messages, SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=i),
                           constraint=constraint)
            if i:
                lat.append(time.perf_counter() - started)
        return lat, model.forward_passes - passes0, model.generated_tokens - tokens0

    free, _, free_tokens = timed(None, 64)
    constrained, passes, tokens = timed(grammar, 64)
    per_call = free_tokens / (repeats + 1)
    return {"device": model.device, "prompt_tokens": prompt, "repeats": repeats,
            "free_s_per_reply": round(statistics.median(free), 4),
            "free_tokens_per_s": round(per_call / statistics.median(free), 1),
            "grammar_s_per_reply": round(statistics.median(constrained), 4),
            "grammar_tokens_per_reply": round(tokens / (repeats + 1), 1),
            "grammar_forward_passes_per_reply": round(passes / (repeats + 1), 1)}


def bench_batching(base: Path, device: str, levels: list[int], max_tokens: int) -> list[dict[str, Any]]:
    """Tokens/s of `level` concurrent replies decoded together, against the lock at level 1."""
    import threading

    from agent_core.models.local import LocalModel
    from agent_core.records import Message, SamplingParams

    model = LocalModel(path=base, device=device, max_batch=max(levels), cache_slots=2 * max(levels))
    rng = random.Random(2)

    def conversation(i: int) -> list[Message]:
        words = " ".join(rng.choice(_WORDS) for _ in range(700))
        return [Message(role="system", content=f"Episode {i}. You keep a memory of files. " + words),
                Message(role="user", content="Describe what you see, at length.")]

    def run(convs: list[list[Message]], params: SamplingParams) -> float:
        threads = [threading.Thread(target=model.generate, args=(c, params)) for c in convs]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - started

    results = []
    for level in levels:
        for mode in (("lock", "batched") if level == levels[0] else ("batched",)):
            model.max_batch = 1 if mode == "lock" else level
            model.clear_prefix_cache()
            convs = [conversation(i) for i in range(level)]
            run(convs, SamplingParams(max_tokens=1, temperature=0.0))  # prefill and warm-up, untimed
            tokens0, passes0, rows0 = model.generated_tokens, model.batched_passes, model.batched_rows
            wall = run(convs, SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=3))
            passes = model.batched_passes - passes0
            results.append({"device": model.device, "mode": mode, "level": level,
                            "tokens_per_s": round((model.generated_tokens - tokens0) / wall, 1),
                            "rows_per_pass": round((model.batched_rows - rows0) / passes, 2) if passes else 1.0})
            print("batching:", json.dumps(results[-1]), flush=True)
    base_rate = results[0]["tokens_per_s"]
    for r in results:
        r["speedup_over_lock_1"] = round(r["tokens_per_s"] / base_rate, 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="device under test: auto, cpu, cuda, cuda:N")
    parser.add_argument("--baseline", default=None, help="also run on this device (e.g. cpu) for comparison")
    parser.add_argument("--out", default="gpu_check.json", help="JSON file for the figures")
    parser.add_argument("--size", choices=sorted(SIZES), default="135m")
    parser.add_argument("--random-init", action="store_true", help="random weights even where the model is prepared")
    parser.add_argument("--config-dir", default=None, help="config + tokenizer folder for random init "
                        "(default: the prepared model's)")
    parser.add_argument("--steps", type=int, default=20, help="training steps on the device under test")
    parser.add_argument("--baseline-steps", type=int, default=3, help="training steps on the baseline device")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=1536)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed replies per generation case")
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--batching", default=None, help="concurrency levels for the batching check, e.g. 1,4,16")
    parser.add_argument("--batching-tokens", type=int, default=64, help="tokens per reply in the batching check")
    args = parser.parse_args()

    import torch

    from agent_core.models.devices import resolve_device

    device = resolve_device(args.device)
    devices = [device] + ([resolve_device(args.baseline)] if args.baseline else [])
    if args.config_dir is None:
        from agent_core.models.weights import models_dir, LOCAL_MODEL_NAME

        args.config_dir = str(models_dir() / LOCAL_MODEL_NAME)
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "cpu_threads": torch.get_num_threads()},
        "training": [], "generation": [], "batching": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        base, what = base_model(args, work)
        report["base"] = what
        print(f"base: {what}; devices: {devices}", flush=True)
        dataset = synthetic_dataset(work, args.examples, context_words=900)
        for d in devices if not args.skip_training else []:
            if d.startswith("cuda"):  # kernels, autotuning and the allocator warm up off the clock
                bench_training(base, dataset, d, 3, args, work / "warm-up")
            steps = args.steps if d == device else args.baseline_steps
            report["training"].append(bench_training(base, dataset, d, steps, args, work))
            print("train:", json.dumps(report["training"][-1]), flush=True)
            if d.startswith("cuda"):
                report["training"].append(bench_training(base, dataset, d, steps, args, work, True))
                print("train:", json.dumps(report["training"][-1]), flush=True)
        if not args.skip_generation:
            for d in devices:
                report["generation"].append(bench_generation(base, d, args.repeats))
                print("generate:", json.dumps(report["generation"][-1]), flush=True)
        if args.batching:
            levels = [int(x) for x in args.batching.split(",")]
            for d in devices:
                report["batching"] += bench_batching(base, d, levels, args.batching_tokens)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(report, indent=2))

    print(f"\n{'device':8} {'ckpt':5} {'steps/s':>8} {'steady':>8} {'tok/s':>9} {'peak GiB':>9}")
    for r in report["training"]:
        print(f"{r['device']:8} {'yes' if r['gradient_checkpointing'] else 'no':5} {r['steps_per_s']:8.3f} "
              f"{r['steady_steps_per_s'] or float('nan'):8.3f} {r['tokens_per_s']:9.1f} "
              f"{r.get('peak_gpu_mem_gib', float('nan')):9.2f}")
    for g in report["generation"]:
        print(f"generate on {g['device']}: free {g['free_tokens_per_s']} tok/s ({g['free_s_per_reply']} s/reply), "
              f"LOG grammar {g['grammar_s_per_reply']} s/reply, {g['grammar_forward_passes_per_reply']} passes "
              f"for {g['grammar_tokens_per_reply']} tokens")
    for b in report["batching"]:
        print(f"batching on {b['device']}: {b['mode']:7} x{b['level']:<3} {b['tokens_per_s']:8.1f} tok/s "
              f"{b['speedup_over_lock_1']:6.2f}x over the lock at {report['batching'][0]['level']} "
              f"({b['rows_per_pass']} rows/pass)")
    print(f"figures: {args.out} ({report['wall_s']} s)")


if __name__ == "__main__":
    main()
