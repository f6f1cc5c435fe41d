"""Evaluation statistics: per-arm estimates with BALROG's standard error (exactly as BALROG
computes it) beside our bootstrap interval over seeds, MiniHack averaged over tasks per seed,
pairwise two-sided comparisons with the gate's test and Holm's correction over every pair
and game, and the published reference values our numbers are shown beside. No Prefect
here: the `evaluate` flow calls it.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict

from pydantic import BaseModel, Field

from agent_core.gate import GateConfig, beaten, differing, holm, paired_p_value, reachable_p, unbeaten

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


#: fewer seeds than this get no interval: a bootstrap over 1 or 2 seeds has at most 3
#: distinct means, so its "95%" interval would be the range of the data, not an interval
MIN_SEEDS_FOR_INTERVAL = 3


class Estimate(BaseModel):
    """One arm on one game: the mean with BALROG's standard error, and our interval over seeds."""

    n: int = Field(description="Seeds.")
    episodes: int = Field(description="Episodes (seeds x tasks).")
    mean: float = Field(description="Mean progression over the seeds, each seed averaged over its tasks "
                        "(with the same tasks on every seed, the mean over all episodes, as BALROG's).")
    se: float = Field(description="BALROG's standard error: population SD (ddof=0) over all episodes of "
                      "the environment, tasks pooled, divided by sqrt(episodes).")
    ci_low: float | None = Field(None, description="95% percentile bootstrap interval over seeds (lower end); "
                                 f"None below {MIN_SEEDS_FOR_INTERVAL} seeds.")
    ci_high: float | None = None
    ci_note: str | None = Field(None, description="Why there is no interval.")


def balrog_se(values: list[float]) -> float:
    """BALROG's standard error of a list of episode results (`collect_and_summarize_results`):
    population SD (ddof=0) / sqrt(N); 0 for one episode, NaN for none."""
    if not values:
        return math.nan
    return statistics.pstdev(values) / math.sqrt(len(values))


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


def estimate(results: list[tuple[str, int, float]], resamples: int = 10_000, seed: int = 0) -> Estimate:
    """(task, seed, progression) of one arm on one game -> its `Estimate`."""
    seeds = per_seed(results)
    n = len(seeds)
    if n == 0:
        return Estimate(n=0, episodes=0, mean=math.nan, se=math.nan, ci_note="no episodes")
    est = Estimate(n=n, episodes=len(results), mean=statistics.fmean(seeds.values()),
                   se=balrog_se([v for _, _, v in results]))
    if n < MIN_SEEDS_FOR_INTERVAL:
        est.ci_note = (f"no interval over {n} seed{'s' if n > 1 else ''}: needs at least {MIN_SEEDS_FOR_INTERVAL} "
                       "seeds (fewer only give the data's range)")
    else:
        est.ci_low, est.ci_high = bootstrap_ci(list(seeds.values()), resamples, seed)
    return est


def per_seed(results: list[tuple[str, int, float]]) -> dict[int, float]:
    """(task, seed, progression) of one arm and game -> seed -> progression averaged over the
    game's tasks (BALROG averages MiniHack over its tasks; one task: the value itself)."""
    by_seed: dict[int, list[float]] = defaultdict(list)
    for _task, seed, value in results:
        by_seed[seed].append(value)
    return {seed: statistics.fmean(v) for seed, v in sorted(by_seed.items())}


class Comparison(BaseModel):
    """Arm b against arm a on one game, over the seeds both played (two-sided, Holm-corrected)."""

    game: str
    a: str
    b: str
    seeds: list[int]
    delta: float = Field(description="Mean over seeds of b - a.")
    p: float = Field(description="Two-sided paired p-value (the gate's test).")
    p_holm: float = Field(description="Holm-adjusted over every pair of every game in the evaluation.")
    tied: int = Field(description="Seeds where a and b scored the same (no information).")
    min_p: float = Field(description="The smallest two-sided p-value this pair's own seeds could give, "
                         "given its ties (Holm's correction can only raise it).")
    underpowered: bool = Field(description="Every seed that differs favours the same arm, but min_p > alpha: "
                               "no outcome on so few differing seeds could have been significant.")
    direction: str = Field(description="'<b> better than <a>', '<a> better than <b>', or why neither is said.")


def compare_all(seeds_by_game: dict[str, dict[str, dict[int, float]]],
                config: GateConfig | None = None) -> list[Comparison]:
    """Every pair of arms within each game (arm order as given), each a two-sided paired
    test over their shared seeds, Holm-corrected over all pairs of all games at
    `config.alpha`. `seeds_by_game`: game -> arm -> seed -> progression (`per_seed`)."""
    config = config or GateConfig()
    raw = []
    for game, arms in seeds_by_game.items():
        labels = list(arms)
        for i, a in enumerate(labels):
            for b in labels[i + 1:]:
                shared = sorted(set(arms[a]) & set(arms[b]))
                if not shared:
                    continue
                diffs = [arms[b][s] - arms[a][s] for s in shared]
                raw.append((game, a, b, shared, diffs, paired_p_value(diffs, config, True),
                            reachable_p(differing(diffs), len(diffs), config, two_sided=True)))
    out = []
    for (game, a, b, shared, diffs, p, min_p), adjusted in zip(raw, holm([r[5] for r in raw])):
        k, delta = differing(diffs), statistics.fmean(diffs)
        # the pair's own seeds only: whatever the other pairs showed, Holm cannot lower its p
        underpowered = min_p > config.alpha and (unbeaten(diffs) or beaten(diffs))
        if adjusted <= config.alpha:
            direction = f"{b} better than {a}" if delta > 0 else f"{a} better than {b}"
        elif not k:
            direction = f"cannot tell: no seed differs (all {len(shared)} tied)"
        elif underpowered:
            direction = (f"cannot tell: underpowered (every seed that differs favours {b if delta > 0 else a}, "
                         f"but with {k} differing seeds ({len(shared) - k} tied) the smallest reachable p is "
                         f"{min_p:.3g} > alpha {config.alpha:g})")
        else:
            direction = f"no significant difference (adjusted p {adjusted:.3f} > alpha {config.alpha:g})"
        out.append(Comparison(game=game, a=a, b=b, seeds=shared, delta=delta, p=p, p_holm=adjusted,
                              tied=len(shared) - k, min_p=min_p, underpowered=underpowered, direction=direction))
    return out
