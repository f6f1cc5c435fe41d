import pytest

from agent_core.gate import GateConfig, gate

SEEDS = list(range(8))


@pytest.mark.parametrize("test", ["bootstrap", "sign"])
def test_clear_win_is_promoted(test):
    inc = [0.1, 0.2, 0.1, 0.0, 0.2, 0.1, 0.1, 0.0]
    cand = [x + 0.1 for x in inc]
    v = gate(SEEDS, inc, cand, GateConfig(test=test))
    assert v.promote and v.delta == pytest.approx(0.1) and v.p_value <= 0.1


@pytest.mark.parametrize("test", ["bootstrap", "sign"])
def test_noise_is_not_promoted(test):
    inc = [0.1, 0.2, 0.1, 0.0, 0.2, 0.1, 0.1, 0.0]
    cand = [0.4, 0.0, 0.1, 0.1, 0.1, 0.2, 0.0, 0.0]  # a slightly higher mean, as many losses as wins
    v = gate(SEEDS, inc, cand, GateConfig(test=test))
    assert v.delta > 0 and not v.promote and "noise" in v.reason


@pytest.mark.parametrize("cand", [[0.1] * 8, [0.0] * 8])
def test_ties_and_regressions_keep_the_incumbent(cand):
    v = gate(SEEDS, [0.1] * 8, cand)
    assert not v.promote and "no improvement" in v.reason


def test_verdict_is_deterministic_and_inputs_checked():
    a = gate(SEEDS, [0.0] * 8, [0.1, 0, 0.1, 0, 0.1, 0, 0, 0.1])
    b = gate(SEEDS, [0.0] * 8, [0.1, 0, 0.1, 0, 0.1, 0, 0, 0.1])
    assert a == b
    with pytest.raises(ValueError):
        gate([0, 1], [0.1], [0.2, 0.3])
