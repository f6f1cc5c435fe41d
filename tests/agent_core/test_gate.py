import pytest

from agent_core.gate import (GateConfig, adjust, confirm, gate, holm, permutation_p_value,
                             sign_p_value, smallest_p)

SEEDS = list(range(8))


@pytest.mark.parametrize("diffs, expected", [
    ([0.01], 1 / 2),                 # one seed: half of the two sign assignments
    ([0.05, 0.05], 1 / 4),           # the old bootstrap said p = 0 for these two
    ([0.1, 0.2, 0.0, 0.0], 4 / 16),  # two up, two tied (the bootstrap said 0.064)
    ([1, 2, 3, 4], 1 / 16),          # only the identity reaches the observed sum 10
    ([1, 2, 3, -1], 3 / 16),         # |d| = 1,2,3,1: sums >= 5 are +7 and the two +5 (one 1 flipped)
    ([0.0, 0.0, 0.0], 1.0),
    ([], 1.0),
])
def test_permutation_p_values_match_hand_computed_references(diffs, expected):
    assert permutation_p_value(diffs) == pytest.approx(expected)


@pytest.mark.parametrize("diffs, expected", [
    ([0.1, 0.2, 0.0, 0.0], 1 / 4),   # ties carry no information: 2 wins of 2
    ([1, 1, 1, -1], 5 / 16),         # P(X >= 3), X ~ Bin(4, 1/2)
    ([0, 0], 1.0),
])
def test_sign_p_values_match_hand_computed_references(diffs, expected):
    assert sign_p_value(diffs) == pytest.approx(expected)


def test_beyond_sixteen_seeds_the_test_is_monte_carlo_close_to_exact_and_never_zero():
    diffs = [0.1] * 20  # exact: 1/2^20
    p = permutation_p_value(diffs, resamples=2000, seed=1)
    assert 0 < p <= 1 / 2001 + 1e-12
    mixed = [0.1, -0.1] * 10 + [0.05]  # a tiny edge: p near a half
    assert 0.3 < permutation_p_value(mixed, resamples=4000) < 0.7


@pytest.mark.parametrize("alpha, need", [(0.1, 4), (0.05, 5), (0.25, 2), (0.0625, 4), (0.5, 1), (0.01, 7)])
def test_minimum_seed_count_is_where_the_best_p_value_reaches_alpha(alpha, need):
    config = GateConfig(alpha=alpha)
    assert config.min_seeds() == need
    assert permutation_p_value([0.1] * need) <= alpha < permutation_p_value([0.1] * (need - 1)) if need > 1 else True
    config.check_seeds(need)
    if need > 1:
        with pytest.raises(ValueError, match=rf"use at least {need} seeds"):
            config.check_seeds(need - 1)


@pytest.mark.parametrize("test", ["permutation", "sign"])
def test_clear_win_is_promoted(test):
    inc = [0.1, 0.2, 0.1, 0.0, 0.2, 0.1, 0.1, 0.0]
    cand = [x + 0.1 for x in inc]
    v = gate(SEEDS, inc, cand, GateConfig(test=test))
    assert v.promote and v.delta == pytest.approx(0.1) and v.p_value == pytest.approx(1 / 256)


@pytest.mark.parametrize("test", ["permutation", "sign"])
def test_noise_is_not_promoted(test):
    inc = [0.1, 0.2, 0.1, 0.0, 0.2, 0.1, 0.1, 0.0]
    cand = [0.4, 0.0, 0.1, 0.1, 0.1, 0.2, 0.0, 0.0]  # a slightly higher mean, as many losses as wins
    v = gate(SEEDS, inc, cand, GateConfig(test=test))
    assert v.delta > 0 and not v.promote and "noise" in v.reason


def test_two_seeds_of_gain_are_not_enough_at_the_default_alpha():
    v = gate([0, 1], [0.0, 0.0], [0.05, 0.05])
    assert not v.promote and v.p_value == pytest.approx(0.25)


def test_regressions_keep_the_incumbent_and_say_worse():
    v = gate(SEEDS, [0.1] * 8, [0.0] * 8)
    assert not v.promote and v.reason.startswith("worse") and not v.underpowered
    assert v.outcome == "kept incumbent (worse)"


@pytest.mark.parametrize("test", ["permutation", "sign"])
@pytest.mark.parametrize("incumbent, candidate", [
    ([1, 1, 1, 0], [0, 0, 0, 0]),            # the case: three losses, one tie, 1/2^3 > alpha
    ([0.5] * 8, [0.4] + [0.5] * 7),           # one loss and seven ties: nothing reachable, still worse
])
def test_a_regression_with_ties_is_worse_not_underpowered(test, incumbent, candidate):
    v = gate(list(range(len(incumbent))), incumbent, candidate, GateConfig(alpha=0.1, test=test))
    assert v.min_p > 0.1  # no result on so few differing seeds could have promoted...
    # ...but the candidate lost every one of them: that is what the verdict says
    assert not v.promote and not v.underpowered and v.outcome == "kept incumbent (worse)"
    assert v.reason.startswith("worse: the candidate lost on all") and "underpowered" not in v.reason


def test_all_ties_say_no_seed_differs():
    v = gate(SEEDS, [0.1] * 8, [0.1] * 8)
    assert not v.promote and not v.underpowered and v.tied == 8 and v.min_p == 1.0
    assert v.outcome == "no seed differs" and v.reason.startswith("no seed differs: all 8 seeds tied")


def test_mixed_results_that_could_not_reach_alpha_are_not_underpowered():
    # two wins, one loss, one tie: 1/2^3 > alpha, but the candidate's own loss counts against it
    v = gate([0, 1, 2, 3], [0.0, 0.0, 0.5, 0.5], [1.0, 1.0, 0.4, 0.5], GateConfig(alpha=0.1))
    assert v.min_p > 0.1 and not v.underpowered and v.outcome == "kept incumbent"
    assert "may be noise" in v.reason and "no result could reach it" in v.reason


@pytest.mark.parametrize("test", ["permutation", "sign"])
def test_four_seeds_with_one_tie_are_underpowered_at_alpha_a_tenth(test):
    config = GateConfig(alpha=0.1, test=test)
    config.check_seeds(4)  # four seeds are enough before anything is observed...
    v = gate([0, 1, 2, 3], [0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], config)  # ...but one ties
    # three differing seeds: the best any test can do is 1/2^3 = 2/16 > 0.1
    assert v.tied == 1 and v.min_p == pytest.approx(2 / 16) and v.p_value == pytest.approx(2 / 16)
    assert not v.promote and v.underpowered and v.outcome == "underpowered"
    assert v.reason.startswith("underpowered: the candidate won all 3 seeds that differ")
    assert "smallest reachable p-value is 0.125 > alpha 0.1" in v.reason and "no improvement" not in v.reason
    clean = gate([0, 1, 2, 3], [0.0] * 4, [1.0] * 4, config)  # four clean wins still promote
    assert clean.promote and not clean.underpowered and clean.p_value == pytest.approx(1 / 16)
    assert clean.outcome == "promoted"


def test_holm_over_trials_can_leave_a_comparison_underpowered():
    config = GateConfig(alpha=0.1)
    winner = gate(list(range(4)), [0.0] * 4, [0.1] * 4, config)  # 1/16 alone
    three = adjust(winner, holm([winner.p_value, 0.5, 0.5])[0], config, tests=3)
    # 3 trials: the best reachable adjusted p is 3/16 = 0.1875 > 0.1 whatever happened
    assert not three.promote and three.underpowered and three.min_p == pytest.approx(3 / 16)
    assert "underpowered" in three.reason and "over 3 trials" in three.reason
    # a trial that lost on every differing seed is worse, with or without the correction
    loser = gate(list(range(4)), [0.1] * 4, [0.0, 0.0, 0.0, 0.1], config)
    corrected = adjust(loser, holm([loser.p_value, 0.5, 0.5])[0], config, tests=3)
    assert not corrected.underpowered and corrected.outcome == "kept incumbent (worse)"


@pytest.mark.parametrize("diffs, expected", [
    ([1, 2, 3, -1], 6 / 16),   # |sum| >= 5: the three sums >= 5 and their three mirror images
    ([1, 1, 1, 1], 2 / 16),    # all up or all down
    ([0.5, -0.5], 1.0),        # sum 0: every assignment is as extreme
    ([0.0, 0.2, 0.2], 4 / 8),  # (+,+) and (-,-) on the two that differ, either sign on the tie
])
def test_two_sided_permutation_p_values_by_hand(diffs, expected):
    assert permutation_p_value(diffs, two_sided=True) == pytest.approx(expected)


def test_two_sided_sign_p_values_by_hand():
    assert sign_p_value([1, 1, 1, -1], two_sided=True) == pytest.approx(10 / 16)  # 2 x P(X >= 3)
    assert sign_p_value([-1, -1, -1, -1], two_sided=True) == pytest.approx(2 / 16)
    assert sign_p_value([1, -1], two_sided=True) == 1.0
    assert smallest_p(3, two_sided=True) == pytest.approx(2 / 8) and smallest_p(0) == 1.0


def test_holm_adjusts_like_the_textbook():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5] and holm([]) == []
    assert holm([0.6, 0.6]) == [1.0, 1.0]


def test_best_of_several_trials_must_survive_the_correction():
    config = GateConfig(alpha=0.1)
    winner = gate(list(range(4)), [0.0] * 4, [0.1] * 4, config)  # p = 1/16, promotes alone
    assert winner.promote
    two_trials = adjust(winner, holm([winner.p_value, 0.5])[0], config)  # 2 x 1/16 = 0.125
    assert not two_trials.promote and "Holm-adjusted p = 0.125" in two_trials.reason
    assert adjust(winner, holm([winner.p_value])[0], config).promote


def test_a_winner_must_also_win_on_the_confirmation_seeds():
    config = GateConfig(alpha=0.1)
    winner = gate(list(range(4)), [0.0] * 4, [0.1] * 4, config)
    lost = confirm(winner, gate([10, 11, 12, 13], [0.1] * 4, [0.1] * 4, config))
    assert not lost.promote and "not confirmed on seeds [10, 11, 12, 13]" in lost.reason
    assert lost.outcome == "no seed differs"  # what the confirmation seeds showed
    worse = confirm(winner, gate([10, 11, 12, 13], [0.1] * 4, [0.0] * 4, config))
    assert worse.outcome == "kept incumbent (worse)"
    kept = confirm(winner, gate([10, 11, 12, 13], [0.0] * 4, [0.2] * 4, config))
    assert kept.promote and kept.confirmation.seeds == [10, 11, 12, 13]


def test_verdict_is_deterministic_and_inputs_checked():
    a = gate(SEEDS, [0.0] * 8, [0.1, 0, 0.1, 0, 0.1, 0, 0, 0.1])
    b = gate(SEEDS, [0.0] * 8, [0.1, 0, 0.1, 0, 0.1, 0, 0, 0.1])
    assert a == b
    with pytest.raises(ValueError):
        gate([0, 1], [0.1], [0.2, 0.3])
