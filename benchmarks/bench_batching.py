"""Continuous batching of the local model: local Crafter episodes per minute at concurrency
1, 2, 4, 8, decoded together (`max_batch` = concurrency) against one reply at a time under
the lock (`max_batch` 1, the path before batching), in one run.

Each level plays that many Crafter episodes at once in threads against one shared
`LocalModel`, as the flows' thread runner does (v0 scaffold, replies under the grammar,
the scaffold's sampling); level n plays seeds 1000 to 1000+n-1 in both modes (so each level
repeats the smaller levels' games and adds new ones), with the prefix caches cleared before
each run. Printed per level: wall time, episodes per minute, the speed-up over the
same dtype's lock at concurrency 1 and over the lock at the same level (the same games:
across levels the games differ, and one costly game moves a level's figure), generated
tokens per second, forward passes per episode
step, and rows per batched decoding pass. With several dtypes, each is measured the same way
(the CPU default is chosen from these figures).

    python benchmarks/bench_batching.py [--steps 4] [--levels 1,2,4,8] [--dtypes float32,bfloat16]
                                        [--device auto] [--modes lock,batched]

`--adapters`: also one decoding step of 4 rows, two with a LoRA adapter and two without,
as one peft mixed-adapter pass (`adapter_names=`, what the scheduler does) against one pass
per adapter group (set_adapter / disable_adapter), in the same run.

Targets (2-core CPU): batched at least 1.8x the episodes per minute of concurrency 1 at 4,
2.5x at 8. On a GPU (`benchmarks/gpu_check.py --batching`): at least 8x at 16.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def play_level(model, scaffold, concurrency: int, steps: int, seed0: int, out: Path) -> dict:
    """`concurrency` Crafter episodes at once against `model`; wall time and model counters."""
    from agent_core.agent import Roles
    from agent_core.episode import run_episode
    from environments import make_env

    model.clear_prefix_cache()
    before = (model.generated_tokens, model.forward_passes, model.batched_passes, model.batched_rows)
    errors: list[BaseException] = []
    played = [0] * concurrency

    def episode(i: int) -> None:
        try:
            summary = run_episode(make_env("crafter", max_steps=steps + 1), scaffold,
                                  Roles(memory=model, constrain=True), seed=seed0 + i, max_steps=steps,
                                  out_dir=out / f"ep{seed0 + i}")
            played[i] = summary.steps
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=episode, args=(i,)) for i in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    tokens, passes, bpasses, brows = (a - b for a, b in zip(
        (model.generated_tokens, model.forward_passes, model.batched_passes, model.batched_rows), before))
    return {"wall": wall, "episodes_per_min": 60 * concurrency / wall, "tokens_s": tokens / wall,
            "passes_per_step": passes / max(1, sum(played)), "rows_per_pass": brows / bpasses if bpasses else 1.0}


def bench_adapters(dtype: str, device: str, context: int = 800, steps: int = 6) -> None:
    """Milliseconds per decoding step of 4 rows (2 adapter, 2 base): mixed pass vs grouped."""
    import statistics

    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from agent_core.models.batching import new_cache
    from agent_core.models.devices import resolve_device
    from agent_core.models.weights import local_model_path

    device = resolve_device(device)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(local_model_path(), dtype=getattr(torch, dtype)).to(device)
    folder = tempfile.mkdtemp(prefix="bench-batching-lora-")
    get_peft_model(AutoModelForCausalLM.from_pretrained(local_model_path()),
                   LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).save_pretrained(folder)
    model = PeftModel.from_pretrained(base, folder, adapter_name="mem").eval()

    def filled(rows: int):
        cache = new_cache(base.config)
        model(input_ids=torch.randint(0, 40000, (rows, context), device=device), cache=cache, use_cache=True,
              logits_to_keep=1, adapter_names=["__base__"] * rows)
        return cache

    def token(rows: int):
        return torch.randint(0, 40000, (rows, 1), device=device)

    with torch.inference_mode():
        mixed_cache, adapted, plain = filled(4), filled(2), filled(2)
        mixed, grouped = [], []
        for _ in range(steps):
            t0 = time.perf_counter()
            model(input_ids=token(4), cache=mixed_cache, use_cache=True, logits_to_keep=1,
                  adapter_names=["mem", "mem", "__base__", "__base__"])
            mixed.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            model.set_adapter("mem")
            model(input_ids=token(2), cache=adapted, use_cache=True, logits_to_keep=1)
            with model.disable_adapter():
                model(input_ids=token(2), cache=plain, use_cache=True, logits_to_keep=1)
            grouped.append(time.perf_counter() - t0)
    m, g = 1000 * statistics.median(mixed), 1000 * statistics.median(grouped)
    print(f"\nadapters, {dtype}, 4 rows (2 LoRA r=8 + 2 base), {context}-token caches, median of {steps} steps:")
    print(f"  one mixed-adapter pass {m:7.1f} ms   one pass per group (baseline) {g:7.1f} ms   ({g / m:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="steps per episode")
    ap.add_argument("--levels", default="1,2,4,8", help="concurrency levels")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="weights' dtypes to measure")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--modes", default="lock,batched", help="lock (max_batch 1) and/or batched")
    ap.add_argument("--adapters", action="store_true", help="also time mixed-adapter vs grouped passes")
    ap.add_argument("--levels-off", action="store_true", help="skip the episode levels (with --adapters)")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    modes = args.modes.split(",")

    from agent_core.models.local import LocalModel
    from agent_core.scaffold import Scaffold

    scaffold = Scaffold.builtin("crafter")
    tmp = Path(tempfile.mkdtemp(prefix="bench-batching-"))
    if args.adapters:
        for dtype in args.dtypes.split(","):
            bench_adapters(dtype, args.device)
    if args.levels_off:
        return
    print(f"\nlocal Crafter episodes of {args.steps} steps, v0 scaffold, constrained; levels {levels}")
    seed = 1000  # level n plays seeds 1000 .. 1000+n-1: every level holds the games of the smaller ones
    results: dict[tuple[str, str, int], dict] = {}
    for dtype in args.dtypes.split(","):
        # prefix caches for every episode in both modes, so the lock is not slowed by evictions
        model = LocalModel(dtype=dtype, device=args.device, max_batch=max(levels), cache_slots=2 * max(levels))
        print(f"\n{dtype} on {model.device}")
        print(f"{'mode':8s} {'conc':>4s} {'wall s':>8s} {'ep/min':>8s} {'x c1 lock':>9s} {'x lock':>7s} "
              f"{'tok/s':>7s} {'fwd/step':>8s} {'rows/pass':>9s}")
        play_level(model, scaffold, 1, 1, 999_999, tmp / "warm")  # first-call costs out of the figures
        for n in levels:
            for mode in modes:
                model.max_batch = 1 if mode == "lock" else n
                # the same seeds for both modes: the same games and (fp32) the same replies
                r = play_level(model, scaffold, n, args.steps, seed, tmp / f"{dtype}-{mode}-{n}")
                results[(dtype, mode, n)] = r
                base = results.get((dtype, "lock", levels[0]), r)["episodes_per_min"]
                same = results.get((dtype, "lock", n), r)["episodes_per_min"]  # the same games
                print(f"{mode:8s} {n:4d} {r['wall']:8.1f} {r['episodes_per_min']:8.2f} "
                      f"{r['episodes_per_min'] / base:9.2f} {r['episodes_per_min'] / same:7.2f} {r['tokens_s']:7.1f} "
                      f"{r['passes_per_step']:8.1f} {r['rows_per_pass']:9.2f}")
        del model
    for dtype in args.dtypes.split(","):
        base = results.get((dtype, "lock", levels[0]))
        if base is None:
            continue
        for n, target in ((4, 1.8), (8, 2.5), (16, 8.0)):
            got = results.get((dtype, "batched", n))
            if got:
                print(f"{dtype}: batched at {n} / lock at {levels[0]}: "
                      f"{got['episodes_per_min'] / base['episodes_per_min']:.2f}x (target >= {target}x)")


if __name__ == "__main__":
    main()
