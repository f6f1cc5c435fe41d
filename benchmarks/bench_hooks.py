"""Per-call cost of scaffold hooks: the same RestrictedPython-compiled hooks called in the
episode's process (what an in-process import would cost plus the guards), in the worker
without the OS layer (`confinement: none`: JSON over a pipe to a process with rlimits, the
worker before the sandbox) and in the worker under the OS sandbox (`confinement: os`,
the default: Landlock + seccomp, no capabilities). Also the worker's start-up (once per
episode, or after a kill) with and without the sandbox.

Run by hand: `.venv/bin/python benchmarks/bench_hooks.py [--calls 2000] [--rounds 3]`.
Each row is the median over rounds of the mean per call; rounds are interleaved so that
machine noise hits every side alike. Targets (issue 25): confined under 1 ms per call,
worker start under 250 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

HOOKS = """import re

def postprocess_observation(observation):
    return re.sub(r'\\s+', ' ', observation).strip()

def validate_write(op, args, files):
    text = args.get('text', '')
    if op == 'append' and text and text in files.get(args.get('file', ''), ''):
        return 'duplicate: already in the file'
    return None
"""

OBSERVATION = ("You see: tree 2 steps to your north-west, water 3 steps to your south.\n"
               "Inventory: wood 1, sapling 1.   Health 9, food 8, drink 7, energy 9.\n") * 4
FILES_SMALL = {"map.md": "tree at (1, 1)\n" * 20, "strategy.md": "collect wood first\n"}
FILES_LARGE = {"map.md": "tree at (1, 1)\n" * 2000, "strategy.md": "collect wood first\n" * 200}
WRITE = ("append", {"file": "map.md", "text": "tree at (3, 4)"})


def per_call_us(fn, args: tuple, calls: int) -> float:  # noqa: ANN001
    start = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    from agent_core.hooks import HookRunner, load_hooks

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round and case")
    parser.add_argument("--rounds", type=int, default=3)
    a = parser.parse_args()

    cases = {
        "postprocess_observation (300 chars)": ("postprocess_observation", (OBSERVATION,)),
        "validate_write, memory 0.3 KB": ("validate_write", (*WRITE, FILES_SMALL)),
        "validate_write, memory 33 KB": ("validate_write", (*WRITE, FILES_LARGE)),
    }
    in_process = load_hooks(HOOKS)
    kinds = ("none", "os")
    starts: dict[str, list[float]] = {k: [] for k in kinds}
    results: dict[str, dict[str, list[float]]] = {c: {"in": [], "none": [], "os": []} for c in cases}
    for _ in range(a.rounds):
        for kind in kinds:
            runner = HookRunner(HOOKS, confinement=kind)
            t0 = time.perf_counter()
            runner.call("postprocess_observation", "warm-up")  # starts the worker
            starts[kind].append((time.perf_counter() - t0) * 1e3)
            for case, (name, args) in cases.items():
                if kind == "none":
                    results[case]["in"].append(per_call_us(in_process[name], args, a.calls))
                results[case][kind].append(per_call_us(lambda *x, n=name: runner.call(n, *x), args, a.calls))
            runner.close()

    print(f"hook call cost, median of {a.rounds} rounds x {a.calls} calls")
    print(f"{'case':40s} {'in process':>12s} {'worker, no OS':>14s} {'worker, OS':>12s} {'OS extra':>10s}")
    for case, r in results.items():
        base, none, conf = (statistics.median(r[k]) for k in ("in", "none", "os"))
        print(f"{case:40s} {base:9.1f} us {none:11.1f} us {conf:9.1f} us {conf - none:7.1f} us")
    print("worker start-up (first call, incl. RestrictedPython compile): "
          f"{statistics.median(starts['none']):.0f} ms without the OS layer, "
          f"{statistics.median(starts['os']):.0f} ms under it")


if __name__ == "__main__":
    main()
