"""Orchestration overhead: a rollout flow of N tiny-game episodes with the scripted model.

Prints, in one run: the same episodes played directly by agent_core (baseline, no Prefect),
the flow's first run, and its cached re-run; per-episode Prefect overhead = (first run -
baseline) / N. Targets: re-run under 15% of the first run; overhead under 150 ms/episode.

    .venv/bin/python benchmarks/bench_rollout.py [N] [CONCURRENCY]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100
CONCURRENCY = int(sys.argv[2]) if len(sys.argv) > 2 else 4
STEPS = 5
tmp = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
os.environ["PREFECT_HOME"] = str(tmp / "prefect-home")
os.environ["AUTOMEM_WORKSPACE"] = str(tmp / "ws")

from agent_core.episode import EpisodeSpec, play  # noqa: E402
from agent_core.models.config import ModelConfig  # noqa: E402
from agent_core.scaffold import Scaffold  # noqa: E402
from flows.rollout import RolloutParams, rollout  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

models = ModelConfig(backend="scripted")


def direct() -> float:
    scaffold = str(Scaffold.builtin("tiny").root)
    t0 = time.perf_counter()
    for seed in range(N):
        play(EpisodeSpec(game="tiny", task="key-door", seed=seed, max_steps=STEPS, scaffold_dir=scaffold,
                         models=models, workspace=str(tmp / "direct")))
    return time.perf_counter() - t0


def flow_run() -> float:
    params = RolloutParams(games=["tiny"], seeds=list(range(N)), max_steps=STEPS, models=models,
                           concurrency=CONCURRENCY, workspace=str(tmp / "ws"))
    t0 = time.perf_counter()
    rollout(params)
    return time.perf_counter() - t0


with prefect_test_harness(server_startup_timeout=120):
    base = direct()
    first = flow_run()
    again = flow_run()

print(f"rollout of {N} tiny episodes x {STEPS} steps, scripted model, concurrency {CONCURRENCY}")
print(f"{'baseline (agent_core, no Prefect)':40s} {base:8.2f} s  {1000 * base / N:7.1f} ms/episode")
print(f"{'flow, first run':40s} {first:8.2f} s  {1000 * first / N:7.1f} ms/episode")
print(f"{'flow, cached re-run':40s} {again:8.2f} s  {1000 * again / N:7.1f} ms/episode")
print(f"re-run / first run: {100 * again / first:.1f}%  (target < 15%)")
print(f"Prefect overhead per episode: {1000 * (first - base) / N:.1f} ms  (target < 150 ms)")
