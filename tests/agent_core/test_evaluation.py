"""Evaluation statistics recomputed by hand: BALROG's standard error, the interval rule,
two-sided pairwise tests with Holm's correction over all pairs and games."""

from __future__ import annotations

import math

import pytest

from agent_core.evaluation import balrog_se, bootstrap_ci, compare_all, estimate, per_seed
from agent_core.gate import GateConfig


def test_balrog_standard_error_pools_tasks_and_divides_by_n():
    # MiniHack-like: two tasks, three seeds; six episodes 1,0 / 0,0 / 1,1
    results = [("A", 0, 1.0), ("B", 0, 0.0), ("A", 1, 0.0), ("B", 1, 0.0), ("A", 2, 1.0), ("B", 2, 1.0)]
    e = estimate(results)
    # BALROG: mean 0.5, population variance ((0.5^2) x 6) / 6 = 0.25, SD 0.5, over sqrt(6) episodes
    assert e.se == pytest.approx(0.5 / math.sqrt(6)) and e.episodes == 6 and e.n == 3
    assert e.mean == pytest.approx(0.5)
    # not the sample SD of the per-seed averages (0.5, 0, 1): 0.5 / sqrt(3)
    assert e.se != pytest.approx(0.5 / math.sqrt(3))
    assert balrog_se([0.3]) == 0.0 and math.isnan(balrog_se([]))
    assert e.ci_low is not None and 0.0 <= e.ci_low <= e.mean <= e.ci_high <= 1.0 and e.ci_note is None
    # MiniHack: each seed averaged over its tasks first
    assert per_seed([("A", 0, 1.0), ("B", 0, 0.0), ("A", 1, 1.0), ("B", 1, 1.0)]) == {0: 0.5, 1: 1.0}


def test_below_three_seeds_there_is_no_interval_and_the_reason_is_given():
    for values in ([0.4], [0.0, 1.0]):
        e = estimate([("t", s, v) for s, v in enumerate(values)])
        assert e.ci_low is None and e.ci_high is None and "at least 3 seeds" in e.ci_note
    one = estimate([("t", 0, 0.4)])
    assert one.se == 0.0 and one.mean == 0.4  # BALROG's formula, as it is, for one episode
    # two values: the bootstrap means are 0, 0.5, 1 (1/4, 1/2, 1/4): the "interval" is the data's range
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)


def test_pairwise_comparisons_are_two_sided_holm_corrected_and_say_which_way():
    seeds6 = range(6)
    by_game = {
        "g1": {"A": {s: 0.0 for s in seeds6}, "B": {s: 1.0 for s in seeds6}, "C": {s: -1.0 for s in seeds6}},
        "g2": {"A": {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0}, "B": {0: 0.1, 1: 0.2, 2: 0.0, 3: -0.1}},
    }
    rows = {(c.game, c.a, c.b): c for c in compare_all(by_game, GateConfig(alpha=0.2))}
    assert len(rows) == 4
    # g1: six seeds all one way, two-sided p = 2/64 each; g2: one tie, |sum| >= 0.2 in 6 of 8 assignments
    assert [rows[k].p for k in sorted(rows)] == pytest.approx([1 / 32, 1 / 32, 1 / 32, 6 / 8])
    # Holm over the 4 pairs of both games: 4 x 1/32, then max(0.125, 3/32), max(0.125, 2/32), max(0.125, 0.75)
    assert [rows[k].p_holm for k in sorted(rows)] == pytest.approx([0.125, 0.125, 0.125, 0.75])
    assert rows[("g1", "A", "B")].direction == "B better than A"
    assert rows[("g1", "A", "C")].direction == "A better than C"  # the first arm named can be the better one
    assert rows[("g1", "B", "C")].direction == "B better than C"
    g2 = rows[("g2", "A", "B")]
    # three seeds differ: the best two-sided p is 2/8 = 0.25 > 0.2, whatever they had shown; but
    # they do not all favour one arm, so the seeds said something: no difference, not "underpowered"
    assert g2.tied == 1 and not g2.underpowered and g2.min_p == pytest.approx(0.25)
    assert g2.direction.startswith("no significant difference")
    # at alpha 0.1 the same g1 pairs no longer survive the correction (0.125 > 0.1)
    strict = compare_all(by_game, GateConfig(alpha=0.1))
    assert all("better" not in c.direction for c in strict)


def test_underpowered_depends_only_on_the_pairs_own_seeds():
    config = GateConfig(alpha=0.3)
    seeds4 = range(4)
    pair = {"A": {s: 0.0 for s in seeds4}, "B": {0: 0.5, 1: 0.5, 2: 0.5, 3: 0.0}}  # three wins, one tie
    few = {"A": {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0}, "B": {0: 0.5, 1: 0.5, 2: 0.0, 3: 0.0}}  # two wins, two ties
    verdicts = []
    for other in ({s: 1.0 for s in range(10)}, {s: 1.0 if s % 2 else -1.0 for s in range(10)}):  # p tiny, p = 1
        by_game = {"g": pair, "h": few, "other": {"A": {s: 0.0 for s in range(10)}, "B": other}}
        rows = {c.game: c for c in compare_all(by_game, config)}
        verdicts.append((rows["g"].min_p, rows["g"].underpowered, rows["h"].min_p, rows["h"].underpowered,
                         rows["h"].direction))
    # whatever the other pairs showed: three differing seeds can reach 2/8 = 0.25 <= 0.3 (not
    # underpowered, though Holm may still keep it from significance), two can reach only 2/4
    assert verdicts[0] == verdicts[1]
    assert verdicts[0][:4] == (pytest.approx(0.25), False, pytest.approx(0.5), True)
    assert verdicts[0][4].startswith("cannot tell: underpowered (every seed that differs favours B")


def test_no_seed_differs_is_said():
    [c] = compare_all({"g": {"A": {0: 0.2, 1: 0.3}, "B": {0: 0.2, 1: 0.3}}})
    assert not c.underpowered and c.direction == "cannot tell: no seed differs (all 2 tied)"
