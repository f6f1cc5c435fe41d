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

A tied seed (difference 0) carries no information for either test: its sign flip changes
nothing. With k seeds that are not tied, the smallest p-value either test can give is 1/2^k
(one-sided, every differing seed better), 2/2^k two-sided (`smallest_p`). So a promotion at
level alpha needs at least log2(1/alpha) seeds that differ: `min_seeds` is refused before
any episode (`check_seeds`). A verdict that does not promote says what happened
(`GateVerdict.outcome`), in this order:
- "no seed differs": every seed tied; the comparison carries no information.
- "kept incumbent (worse)": the candidate lost on every seed that differs.
- "underpowered": the candidate could still win with the seeds it has - it won every seed
  that differs, by more than `min_delta` on average, so nothing it did counts against it -
  but the ties left too few differing seeds for any result to reach alpha (the smallest
  reachable p-value, Holm's factor over the trials included, is above alpha). The reason
  gives that p-value: more seeds are needed to tell.
- "kept incumbent": no improvement, or an improvement the test calls noise (its p-value
  says how much).
Several candidates judged on the same seeds (the training loop's trials) are corrected with
Holm's method (`holm`), and a winner must win again on confirmation seeds that no reviewer
or curator saw; a winner that fails there takes the confirmation's outcome.
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
#: a per-seed difference this small is a tie (float noise of averaging equal scores)
TIE_TOLERANCE = 1e-9


def differing(diffs: list[float]) -> int:
    """How many per-seed differences are not ties: the seeds that carry information."""
    return sum(abs(d) > TIE_TOLERANCE for d in diffs)


def unbeaten(diffs: list[float], min_delta: float = 0.0) -> bool:
    """The candidate won every seed that differs (there is one), by more than `min_delta` on
    average: nothing it did counts against it, only the number of differing seeds can."""
    return differing(diffs) > 0 and all(d > 0 for d in diffs if abs(d) > TIE_TOLERANCE) \
        and statistics.fmean(diffs) > min_delta + 1e-12


def beaten(diffs: list[float]) -> bool:
    """The candidate lost on every seed that differs (there is one)."""
    return differing(diffs) > 0 and all(d < 0 for d in diffs if abs(d) > TIE_TOLERANCE)


def smallest_p(differing_seeds: int, two_sided: bool = False) -> float:
    """The smallest p-value the sign-flip and sign tests can reach with this many differing
    seeds: 1/2^k one-sided, 2/2^k two-sided (1 when none differ)."""
    if differing_seeds <= 0:
        return 1.0
    return min(1.0, (2.0 if two_sided else 1.0) / 2 ** differing_seeds)


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
        if n < need:  # ties observed later can only raise the bar: see `gate`
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
    #: seeds whose difference is a tie (no information for the test)
    tied: int = 0
    #: the smallest p-value this comparison could have reached, given its ties (and, after
    #: `adjust`, the number of candidates judged on the same seeds)
    min_p: float = 0.0
    #: the candidate won every differing seed, but no result on so few differing seeds could
    #: reach alpha (`min_p` > alpha): more seeds are needed to tell
    underpowered: bool = False
    #: the p-value after correction for the other candidates judged on the same seeds
    adjusted_p: float | None = None
    #: the same comparison on confirmation seeds (None: not reached or not configured)
    confirmation: "GateVerdict | None" = None

    @property
    def diffs(self) -> list[float]:
        """Per-seed differences, candidate - incumbent."""
        return [c - i for i, c in zip(self.incumbent, self.candidate)]

    @property
    def outcome(self) -> str:
        """"promoted", "no seed differs", "kept incumbent (worse)", "underpowered" or "kept
        incumbent" (the module's docstring says when); a winner that failed its confirmation
        seeds has the confirmation's outcome."""
        if self.promote:
            return "promoted"
        if self.confirmation is not None:
            return self.confirmation.outcome
        if not differing(self.diffs):
            return "no seed differs"
        if beaten(self.diffs):
            return "kept incumbent (worse)"
        return "underpowered" if self.underpowered else "kept incumbent"


def permutation_p_value(diffs: list[float], resamples: int = 20_000, seed: int = 0,
                        two_sided: bool = False) -> float:
    """Sign-flip permutation p-value of the mean of `diffs` (exact up to EXACT_MAX_SEEDS
    values, Monte Carlo beyond): one-sided (H1: the mean is positive), or two-sided (the
    share of sign assignments whose |sum| is at least the observed |sum|)."""
    n = len(diffs)
    if n == 0:
        return 1.0
    fold = abs if two_sided else (lambda x: x)
    # float ties count as ties
    observed = fold(sum(diffs)) - 1e-9 * max(1.0, sum(abs(d) for d in diffs))
    if n <= EXACT_MAX_SEEDS:
        hits = sum(fold(sum(s * d for s, d in zip(signs, diffs))) >= observed
                   for signs in itertools.product((1, -1), repeat=n))
        return hits / 2 ** n
    rng = random.Random(seed)
    hits = sum(fold(sum(d if rng.random() < 0.5 else -d for d in diffs)) >= observed for _ in range(resamples))
    return (hits + 1) / (resamples + 1)


def sign_p_value(diffs: list[float], two_sided: bool = False) -> float:
    """Sign-test p-value over the non-tied seeds: P(at least this many wins), or two-sided
    twice the smaller tail (at most 1)."""
    wins = sum(d > TIE_TOLERANCE for d in diffs)
    losses = sum(d < -TIE_TOLERANCE for d in diffs)
    n = wins + losses
    if n == 0:
        return 1.0

    def at_least(k: int) -> float:
        return sum(math.comb(n, j) for j in range(k, n + 1)) / 2 ** n

    if not two_sided:
        return at_least(wins)
    return min(1.0, 2 * min(at_least(wins), at_least(losses)))


def paired_p_value(diffs: list[float], config: GateConfig, two_sided: bool = False) -> float:
    """p-value for 'the candidate is not better' (two-sided: 'no difference') given
    per-seed differences, by `config`'s test."""
    if config.test == "sign":
        return sign_p_value(diffs, two_sided)
    return permutation_p_value(diffs, config.resamples, config.seed, two_sided)


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
    k = differing(diffs)
    min_p = reachable_p(k, len(diffs), config)
    underpowered = min_p > config.alpha and unbeaten(diffs, config.min_delta)
    promote = False
    if not k:
        reason = f"no seed differs: all {len(diffs)} seeds tied, so the comparison carries no information"
    elif beaten(diffs):
        reason = (f"worse: the candidate lost on all {k} seeds that differ ({len(diffs) - k} tied; "
                  f"mean delta {delta:+.4f}, {config.test} p = {p:.3f})")
    elif underpowered:
        reason = (f"underpowered: the candidate won all {k} seeds that differ, but {len(diffs) - k} of "
                  f"{len(diffs)} seeds tied, and with {k} the smallest reachable p-value is {min_p:.3g} > "
                  f"alpha {config.alpha:g} (mean delta {delta:+.4f}, {config.test} p = {p:.3f}); more seeds "
                  f"are needed to tell")
    elif delta <= config.min_delta + 1e-12:  # float noise in a tie is no improvement
        reason = f"no improvement: mean delta {delta:+.4f} (needs > {config.min_delta:g})"
    elif p > config.alpha:
        reason = f"improvement {delta:+.4f} may be noise: {config.test} p = {p:.3f} > alpha {config.alpha:g}"
        if min_p > config.alpha:
            reason += f" (with {k} differing seeds no result could reach it: at best {min_p:.3g})"
    else:
        reason = f"improvement {delta:+.4f}, {config.test} p = {p:.3f} <= alpha {config.alpha:g}"
        promote = True
    return GateVerdict(promote=promote, reason=reason, test=config.test, seeds=seeds,
                       incumbent=incumbent, candidate=candidate,
                       mean_incumbent=statistics.fmean(incumbent),
                       mean_candidate=statistics.fmean(candidate), delta=delta, p_value=p,
                       tied=len(diffs) - k, min_p=min_p, underpowered=underpowered)


def reachable_p(differing_seeds: int, n: int, config: GateConfig, two_sided: bool = False) -> float:
    """The smallest p-value `config`'s test can give over `n` seeds of which
    `differing_seeds` are not tied (beyond EXACT_MAX_SEEDS the Monte Carlo floor applies)."""
    floor = 1 / (config.resamples + 1) if config.test == "permutation" and n > EXACT_MAX_SEEDS else 0.0
    return max(smallest_p(differing_seeds, two_sided), floor)


def adjust(verdict: GateVerdict, adjusted_p: float, config: GateConfig, tests: int = 1) -> GateVerdict:
    """`verdict` judged again with its multiplicity-corrected p-value, `tests` candidates
    having been judged on the same seeds (Holm: the best reachable adjusted p-value is
    `tests` times the comparison's smallest one; a candidate that won every differing seed
    and cannot reach alpha that way is underpowered)."""
    family_min = min(1.0, tests * verdict.min_p)
    if not verdict.underpowered and family_min > config.alpha and unbeaten(verdict.diffs, config.min_delta):
        return verdict.model_copy(update={
            "adjusted_p": adjusted_p, "promote": False, "underpowered": True, "min_p": family_min,
            "reason": f"underpowered: with {len(verdict.seeds) - verdict.tied} differing seeds and Holm's "
                      f"correction over {tests} trials the smallest reachable p-value is {tests} x "
                      f"{verdict.min_p:.3g} = {family_min:.3g} > alpha {config.alpha:g} ({verdict.reason})"})
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
