"""Evaluation statistics: per-arm estimates with confidence intervals, MiniHack averaged
over tasks as BALROG does, pairwise comparisons with the gate's test, and the published
reference values our numbers are shown beside. No Prefect here: the `evaluate` flow calls it.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict

from pydantic import BaseModel, Field

from agent_core.gate import GateConfig, GateVerdict, gate

#: Published results, shown beside ours and labelled as published (progression, %).
PUBLISHED = [
    {"source": "AutoMem paper", "model": "Qwen2.5-32B-Instruct + AutoMem", "crafter": 51.4, "minihack": 30.0,
     "nethack": 1.9},
    {"source": "AutoMem paper", "model": "Claude Opus 4.5", "crafter": 49.5, "minihack": 27.5, "nethack": 2.0},
]
#: The paper's memory diagnostics (v0 -> optimised scaffold), Crafter / MiniHack / NetHack.
PUBLISHED_DIAGNOSTICS = [
    {"source": "AutoMem paper", "metric": "memory growth, characters per step (Crafter)", "before": 138, "after": 6},
    {"source": "AutoMem paper", "metric": "write-to-search ratio (Crafter)", "before": 0.84, "after": 0.39},
    {"source": "AutoMem paper", "metric": "write-to-search ratio (MiniHack)", "before": 2.89, "after": 0.82},
    {"source": "AutoMem paper", "metric": "write-to-search ratio (NetHack)", "before": 4.66, "after": 1.31},
]


class Estimate(BaseModel):
    """A mean over seeds with its uncertainty."""

    n: int
    mean: float
    se: float = Field(description="Standard error of the mean (sample SD / sqrt(n)), as BALROG reports.")
    ci_low: float = Field(description="95% percentile bootstrap interval over seeds, lower end.")
    ci_high: float


def bootstrap_ci(values: list[float], resamples: int = 10_000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (deterministic for a seed)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(values) for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    lo = means[max(0, math.ceil(tail * resamples) - 1)]
    hi = means[min(resamples - 1, math.ceil((1 - tail) * resamples) - 1)]
    return lo, hi


def estimate(values: list[float], resamples: int = 10_000, seed: int = 0) -> Estimate:
    n = len(values)
    if n == 0:
        return Estimate(n=0, mean=math.nan, se=math.nan, ci_low=math.nan, ci_high=math.nan)
    se = statistics.stdev(values) / math.sqrt(n) if n > 1 else 0.0
    lo, hi = bootstrap_ci(values, resamples, seed)
    return Estimate(n=n, mean=statistics.fmean(values), se=se, ci_low=lo, ci_high=hi)


def per_seed(results: list[tuple[str, int, float]]) -> dict[int, float]:
    """(task, seed, progression) of one arm and game -> seed -> progression averaged over the
    game's tasks (BALROG averages MiniHack over its tasks; one task: the value itself)."""
    by_seed: dict[int, list[float]] = defaultdict(list)
    for _task, seed, value in results:
        by_seed[seed].append(value)
    return {seed: statistics.fmean(v) for seed, v in sorted(by_seed.items())}


def compare(arm_a: str, a: dict[int, float], arm_b: str, b: dict[int, float],
            config: GateConfig | None = None) -> GateVerdict | None:
    """The gate's paired test of arm b against arm a on their shared seeds (None: none shared)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    return gate(seeds, [a[s] for s in seeds], [b[s] for s in seeds], config)
