"""The promotion gate: a candidate replaces the incumbent only if it improves mean
progression on the same seeds and a paired test over seeds says the gain is not noise.
Ties and regressions keep the incumbent. Used by both outer loops."""

from __future__ import annotations

import math
import random
import statistics
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    test: Literal["bootstrap", "sign"] = Field(
        "bootstrap", description="Paired test over seeds: paired bootstrap of the mean "
        "difference, or a one-sided sign test.")
    alpha: float = Field(0.1, gt=0.0, lt=1.0, description="Largest p-value that still promotes.")
    min_delta: float = Field(0.0, ge=0.0, description="Smallest mean improvement that counts.")
    resamples: int = Field(10_000, ge=100, le=1_000_000, description="Bootstrap resamples.")
    seed: int = Field(0, description="Bootstrap seed (the verdict is deterministic).")


class GateVerdict(BaseModel):
    promote: bool
    reason: str
    test: str
    seeds: list[int]
    incumbent: list[float]
    candidate: list[float]
    mean_incumbent: float
    mean_candidate: float
    delta: float
    p_value: float


def paired_p_value(diffs: list[float], config: GateConfig) -> float:
    """One-sided p-value for 'the candidate is not better' given per-seed differences."""
    if config.test == "sign":
        wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
        n = wins + losses  # ties carry no information in a sign test
        if n == 0:
            return 1.0
        return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n
    rng = random.Random(config.seed)
    n = len(diffs)
    not_better = sum(
        statistics.fmean(diffs[rng.randrange(n)] for _ in range(n)) <= 0 for _ in range(config.resamples))
    return not_better / config.resamples


def gate(seeds: list[int], incumbent: list[float], candidate: list[float],
         config: GateConfig | None = None) -> GateVerdict:
    """Compare per-seed progressions (same seeds, same order) and decide."""
    config = config or GateConfig()
    if not (len(seeds) == len(incumbent) == len(candidate)) or not seeds:
        raise ValueError("gate needs one incumbent and one candidate result per seed")
    diffs = [c - i for i, c in zip(incumbent, candidate)]
    delta = statistics.fmean(diffs)
    p = paired_p_value(diffs, config)
    if delta <= config.min_delta + 1e-12:  # float noise in a tie is no improvement
        reason = f"no improvement: mean delta {delta:+.4f} (needs > {config.min_delta:g})"
        promote = False
    elif p > config.alpha:
        reason = f"improvement {delta:+.4f} may be noise: {config.test} p = {p:.3f} > alpha {config.alpha:g}"
        promote = False
    else:
        reason = f"improvement {delta:+.4f}, {config.test} p = {p:.3f} <= alpha {config.alpha:g}"
        promote = True
    return GateVerdict(promote=promote, reason=reason, test=config.test, seeds=seeds,
                       incumbent=incumbent, candidate=candidate,
                       mean_incumbent=statistics.fmean(incumbent),
                       mean_candidate=statistics.fmean(candidate), delta=delta, p_value=p)
