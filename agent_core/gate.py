"""The promotion gate: a candidate replaces the incumbent only if it improves mean
progression on the same seeds and an exact paired test over seeds says the gain is not
noise. Ties and regressions keep the incumbent. Used by both outer loops.

The test is one-sided: H0 "the candidate is not better", statistic the mean per-seed
difference (candidate - incumbent).
- `permutation` (default): the sign-flip permutation test. Under H0 each seed's difference
  is as likely negative as positive, so the p-value is the share of the 2^n sign
  assignments whose mean is at least the observed one: exact up to `EXACT_MAX_SEEDS`
  seeds, Monte Carlo beyond (with the +1 correction, so p is never 0).
- `sign`: the sign test on wins and losses (ties carry no information).

With n seeds the smallest p-value either test can give is 1/2^n (every seed better), so a
promotion at level alpha needs n >= log2(1/alpha) seeds: `min_seeds`. Configurations below
it are refused (`check_seeds`), because their gate could never promote. Several candidates
judged on the same seeds (the training loop's trials) are corrected with Holm's method
(`holm`), and a winner must win again on confirmation seeds that no reviewer or curator saw.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: seed counts up to this are tested exactly (2^16 sign assignments); Monte Carlo beyond
EXACT_MAX_SEEDS = 16


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    test: Literal["permutation", "sign"] = Field(
        "permutation", description="Paired one-sided test over seeds: sign-flip permutation test "
        "of the mean difference (exact up to 16 seeds), or the sign test.")
    alpha: float = Field(0.1, gt=0.0, lt=1.0, description="Largest p-value that still promotes.")
    min_delta: float = Field(0.0, ge=0.0, description="Smallest mean improvement that counts.")
    resamples: int = Field(20_000, ge=100, le=1_000_000,
                           description="Monte Carlo sign assignments beyond 16 seeds.")
    seed: int = Field(0, description="Monte Carlo seed (the verdict is deterministic).")

    def min_seeds(self, tests: int = 1) -> int:
        """The fewest seeds with which a promotion is possible at `alpha` when `tests`
        candidates are judged on them (Holm multiplies the smallest p-value by `tests`)."""
        return max(1, math.ceil(math.log2(tests / self.alpha) - 1e-12))

    def check_seeds(self, n: int, what: str = "evaluation seeds", tests: int = 1) -> None:
        """Refuse a seed set too small to ever promote, with the reason."""
        need = self.min_seeds(tests)
        if n < need:
            among = f" and Holm's correction over {tests} trials" if tests > 1 else ""
            raise ValueError(
                f"{n} {what} can never pass the gate: with {n} seeds the smallest possible p-value "
                f"is 1/2^{n} = {0.5 ** n:.3g}, above alpha {self.alpha:g}{among}; use at least "
                f"{need} seeds (or a larger gate.alpha{', or fewer trials' if tests > 1 else ''})")


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
    #: the p-value after correction for the other candidates judged on the same seeds
    adjusted_p: float | None = None
    #: the same comparison on confirmation seeds (None: not reached or not configured)
    confirmation: "GateVerdict | None" = None


def permutation_p_value(diffs: list[float], resamples: int = 20_000, seed: int = 0) -> float:
    """One-sided sign-flip permutation p-value of the mean of `diffs` (exact up to
    EXACT_MAX_SEEDS values, Monte Carlo beyond)."""
    n = len(diffs)
    if n == 0:
        return 1.0
    observed = sum(diffs) - 1e-9 * max(1.0, sum(abs(d) for d in diffs))  # float ties count as ties
    if n <= EXACT_MAX_SEEDS:
        hits = sum(sum(s * d for s, d in zip(signs, diffs)) >= observed
                   for signs in itertools.product((1, -1), repeat=n))
        return hits / 2 ** n
    rng = random.Random(seed)
    hits = sum(sum(d if rng.random() < 0.5 else -d for d in diffs) >= observed for _ in range(resamples))
    return (hits + 1) / (resamples + 1)


def sign_p_value(diffs: list[float]) -> float:
    """One-sided sign-test p-value: P(at least this many wins among the non-tied seeds)."""
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    n = wins + losses
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def paired_p_value(diffs: list[float], config: GateConfig) -> float:
    """One-sided p-value for 'the candidate is not better' given per-seed differences."""
    if config.test == "sign":
        return sign_p_value(diffs)
    return permutation_p_value(diffs, config.resamples, config.seed)


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values (same order): a family of m tests is controlled at alpha by
    rejecting where the adjusted p-value is <= alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


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


def adjust(verdict: GateVerdict, adjusted_p: float, config: GateConfig) -> GateVerdict:
    """`verdict` judged again with its multiplicity-corrected p-value."""
    if not verdict.promote or adjusted_p <= config.alpha:
        return verdict.model_copy(update={"adjusted_p": adjusted_p})
    return verdict.model_copy(update={
        "adjusted_p": adjusted_p, "promote": False,
        "reason": f"{verdict.reason}, but Holm-adjusted p = {adjusted_p:.3f} > alpha {config.alpha:g} "
                  "over the trials judged on these seeds"})


def confirm(verdict: GateVerdict, confirmation: GateVerdict) -> GateVerdict:
    """A winner promotes only if it also wins on the confirmation seeds."""
    if not verdict.promote or confirmation.promote:
        return verdict.model_copy(update={"confirmation": confirmation,
                                          "reason": f"{verdict.reason}; confirmed: {confirmation.reason}"})
    return verdict.model_copy(update={"confirmation": confirmation, "promote": False,
                                      "reason": f"{verdict.reason}; not confirmed on seeds "
                                                f"{confirmation.seeds}: {confirmation.reason}"})
