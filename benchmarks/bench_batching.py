"""Continuous batching of the local model: local Crafter episodes per minute at concurrency
1, 2, 4, 8, decoded together (`max_batch` = concurrency) against one reply at a time under
the lock (`max_batch` 1, the path before batching), in one run; the batch- and
cache-invariant path (the default, `LocalModel(invariant=True)`) beside the padded-batch path
it replaced ("today"), with its cost per step at each level.

Every level plays the same workload: `--episodes` Crafter episodes (seeds 1000, 1001, ...)
of `--steps` steps, v0 scaffold, replies under the grammar, the scaffold's sampling, with
`concurrency` of them in flight at once against one shared `LocalModel` (a thread pool, as
the flows' runner), prefix caches cleared before each run. The baseline is the lock at
concurrency 1: the same episodes played one after the other.

Printed per run: wall time, episodes per minute and its ratio to the baseline, generated
tokens per second, forward passes per episode step, rows per batched decoding pass, prompt
tokens prefilled per step (not served from a prefix cache), and the share of the wall time
spent in prefill passes. Prefill is compute-bound on a CPU, so batching cannot shorten it:
at concurrency 1 that share f bounds what any batching can give at `1 / f` (decoding free);
the bound is printed beside the targets.

`--passes`: for each of `--pass-dtypes`, prefill tokens/s (a 256-token chunk after 1,000
cached tokens) and the milliseconds of one decoding pass at 1, 4 and 8 rows with 1,000-token
caches: the figures the CPU dtype is chosen from. `--adapters`: one decoding step of 4 rows,
two with a LoRA adapter and two without, as one peft mixed-adapter pass (`adapter_names=`,
what the scheduler does) against one pass per adapter group (set_adapter / disable_adapter).

    python benchmarks/bench_batching.py [--episodes 8] [--steps 8] [--levels 1,2,4,8]
        [--dtypes bfloat16] [--paths invariant,today] [--repeats 2] [--device auto] [--passes]
        [--adapters] [--levels-off]

Targets (2-core CPU): batched at least 1.8x the episodes per minute of concurrency 1 at 4,
2.5x at 8. On a GPU (`benchmarks/gpu_check.py --batching`): at least 8x at 16. The invariant
path: at most 15% more seconds per step than today's batched path at the same concurrency.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

_COUNTERS = ("generated_tokens", "forward_passes", "batched_passes", "batched_rows", "prefill_tokens",
             "prefill_s", "decode_s")


def play_level(model, scaffold, concurrency: int, steps: int, seeds: list[int], out: Path) -> dict:
    """The episodes of `seeds`, `concurrency` at a time, against `model`; wall time and counters."""
    from agent_core.models.base import Roles
    from agent_core.episode import run_episode
    from environments import make_env

    model.clear_prefix_cache()
    before = {k: getattr(model, k) for k in _COUNTERS}

    def episode(seed: int) -> int:
        return run_episode(make_env("crafter", max_steps=steps + 1), scaffold, Roles(memory=model, constrain=True),
                           seed=seed, max_steps=steps, out_dir=out / f"ep{seed}").steps

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        played = sum(pool.map(episode, seeds))  # an episode's error is raised here
    wall = time.perf_counter() - t0
    d = {k: getattr(model, k) - before[k] for k in _COUNTERS}
    return {"wall": wall, "episodes_per_min": 60 * len(seeds) / wall, "tokens_s": d["generated_tokens"] / wall,
            "passes_per_step": d["forward_passes"] / max(1, played),
            "rows_per_pass": d["batched_rows"] / d["batched_passes"] if d["batched_passes"] else 1.0,
            "prefill_per_step": d["prefill_tokens"] / max(1, played), "prefill_share": d["prefill_s"] / wall,
            "decode_share": d["decode_s"] / wall}


def bench_passes(dtype: str, device: str, context: int = 1000, chunk: int = 256) -> None:
    """Prefill tokens/s and decoding-pass milliseconds at 1, 4, 8 rows, bare forward passes."""
    import torch
    from transformers import AutoModelForCausalLM

    from agent_core.models.devices import resolve_device
    from agent_core.models.prefix_cache import new_cache
    from agent_core.models.weights import local_model_path

    device = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(local_model_path(), dtype=getattr(torch, dtype)).to(device).eval()

    def filled(rows: int):
        cache = new_cache(model.config)
        model(input_ids=torch.randint(0, 40000, (rows, context), device=device), cache=cache, use_cache=True,
              logits_to_keep=1)
        return cache

    def timed(ids, cache) -> float:
        t0 = time.perf_counter()
        model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        return time.perf_counter() - t0

    with torch.inference_mode():
        prefill = min(timed(torch.randint(0, 40000, (1, chunk), device=device), filled(1)) for _ in range(3))
        decode = {}
        for rows in (1, 4, 8):
            cache = filled(rows)
            decode[rows] = statistics.median(timed(torch.randint(0, 40000, (rows, 1), device=device), cache)
                                             for _ in range(8))
    print(f"{dtype:9s} prefill {chunk / prefill:6.0f} tok/s   decoding pass "
          + "   ".join(f"{r} rows {1000 * t:5.0f} ms ({r / t / (1 / decode[1]):.1f}x tok/s)"
                     for r, t in decode.items()))


def bench_adapters(dtype: str, device: str, context: int = 800, steps: int = 6) -> None:
    """Milliseconds per decoding step of 4 rows (2 adapter, 2 base): mixed pass vs grouped."""

    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from agent_core.models.devices import resolve_device
    from agent_core.models.prefix_cache import new_cache
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
    ap.add_argument("--episodes", type=int, default=8, help="episodes every level plays")
    ap.add_argument("--steps", type=int, default=8, help="steps per episode")
    ap.add_argument("--levels", default="1,2,4,8", help="concurrency levels (batched)")
    ap.add_argument("--dtypes", default="bfloat16", help="weights' dtypes to play the episodes in")
    ap.add_argument("--paths", default="invariant,today",
                    help="decoding paths: invariant (the default) and today (padded batch, fused attention)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--lock-levels", default="1", help="levels also played under the lock (1: the baseline)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each path and level, interleaved")
    ap.add_argument("--passes", action="store_true", help="also time bare prefill and decoding passes")
    ap.add_argument("--pass-dtypes", default="bfloat16,float32", help="dtypes for --passes")
    ap.add_argument("--adapters", action="store_true", help="also time mixed-adapter vs grouped passes")
    ap.add_argument("--levels-off", action="store_true", help="skip the episode levels")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    lock_levels = [int(x) for x in args.lock_levels.split(",") if x]
    if 1 not in lock_levels:
        ap.error("--lock-levels must hold 1: the lock at concurrency 1 is the baseline")

    from agent_core.models.local import LocalModel
    from agent_core.scaffold import Scaffold

    if args.passes:
        print("\nbare forward passes of the local model (the CPU dtype is chosen from these):")
        for dtype in args.pass_dtypes.split(","):
            bench_passes(dtype, args.device)
    if args.adapters:
        for dtype in args.dtypes.split(","):
            bench_adapters(dtype, args.device)
    if args.levels_off:
        return
    scaffold = Scaffold.builtin("crafter")
    tmp = Path(tempfile.mkdtemp(prefix="bench-batching-"))
    seeds = list(range(1000, 1000 + args.episodes))
    print(f"\n{args.episodes} local Crafter episodes of {args.steps} steps per run, v0 scaffold "
          f"(history_window {scaffold.config.history_window}, stride {scaffold.config.history_stride}), "
          "constrained")
    paths = args.paths.split(",")
    played = args.episodes * args.steps
    for dtype in args.dtypes.split(","):
        print(f"\n{dtype}; runs of the paths interleaved, {args.repeats} of each (this machine's load drifts)")
        print(f"{'path':9s} {'mode':8s} {'conc':>4s} {'wall s':>7s} {'s/step':>6s} {'ep/min':>7s} {'x c1':>5s} "
              f"{'tok/s':>6s} {'fwd/step':>8s} {'rows/pass':>9s} {'prefill tok/step':>16s} {'prefill %':>9s} "
              f"{'decode %':>8s}")
        models = {path: LocalModel(dtype=dtype, device=args.device, max_batch=max(levels),
                                   invariant=path == "invariant") for path in paths}
        for path, model in models.items():
            play_level(model, scaffold, 1, 1, [999_999], tmp / f"warm-{path}")  # first-call costs out
        # the lock (max_batch 1, one reply at a time) is the baseline of today's path
        runs = ([("today", "lock", n) for n in lock_levels] if "today" in paths else []) + \
            [(path, "batched", n) for n in levels for path in paths]
        results: dict[tuple[str, str, int], list[dict]] = {}
        for repeat in range(args.repeats):
            for path, mode, n in runs if repeat % 2 == 0 else runs[::-1]:
                model = models[path]
                model.max_batch = 1 if mode == "lock" else n
                r = play_level(model, scaffold, n, args.steps, seeds, tmp / f"{dtype}-{path}-{mode}-{n}-{repeat}")
                results.setdefault((path, mode, n), []).append(r)
                print(f"{path:9s} {mode:8s} {n:4d} {r['wall']:7.1f} {r['wall'] / played:6.2f} "
                      f"{r['episodes_per_min']:7.2f} {'':>5s} {r['tokens_s']:6.1f} {r['passes_per_step']:8.1f} "
                      f"{r['rows_per_pass']:9.2f} {r['prefill_per_step']:16.0f} {100 * r['prefill_share']:9.0f} "
                      f"{100 * r['decode_share']:8.0f}", flush=True)
        wall = {k: statistics.fmean(r["wall"] for r in v) for k, v in results.items()}
        print(f"\n{dtype}, mean of {args.repeats} runs each:")
        base = wall.get(("today", "lock", 1))
        for (path, mode, n), w in wall.items():
            share = statistics.fmean(r["prefill_share"] for r in results[(path, mode, n)])
            print(f"  {path:9s} {mode:8s} {n:2d}: {w / played:5.2f} s/step, {60 * args.episodes / w:5.2f} "
                  f"episodes/min" + (f", {base / w:.2f}x today's lock at 1" if base else "")
                  + f", prefill {100 * share:.0f}% of the wall time")
        for n, target in ((4, 1.8), (8, 2.5), (16, 8.0)):
            for path in paths:
                if base and (path, "batched", n) in wall:
                    print(f"{dtype} {path}: batched at {n} / today's lock at 1: "
                          f"{base / wall[(path, 'batched', n)]:.2f}x (target >= {target}x)")
        for n in levels:
            inv, today = wall.get(("invariant", "batched", n)), wall.get(("today", "batched", n))
            if inv and today:
                print(f"{dtype}: invariant vs today's batched at {n}: {inv / played:.2f} vs {today / played:.2f} "
                      f"s/step ({100 * (inv / today - 1):+.0f}%; target <= +15%), "
                      f"{60 * args.episodes / inv:.2f} vs {60 * args.episodes / today:.2f} episodes/min")
        del models

if __name__ == "__main__":
    main()
