"""The evaluate flow: arms on the same seeds, intervals, paired tests, plots, the cache."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import yaml

from agent_core.evaluation import bootstrap_ci, estimate, per_seed
from agent_core.models.config import ModelConfig
from agent_core.scaffold import Scaffold
from flows.evaluate import Arm, EvaluateParams, evaluate

EXPLORER = ModelConfig(backend="scripted", policy="tiny-explorer")


def test_interval_and_standard_error_match_hand_computations():
    # two values: the bootstrap mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the
    # 2.5% and 97.5% percentiles are 0 and 1
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    values = [0.0, 1 / 3, 1 / 3, 1.0]
    e = estimate(values)
    assert e.mean == pytest.approx(5 / 12) and e.n == 4
    sd = ((25 / 144 + 1 / 144 + 1 / 144 + 49 / 144) / 3) ** 0.5  # deviations from 5/12, n - 1
    assert e.se == pytest.approx(sd / 2)
    assert 0.0 <= e.ci_low <= e.mean <= e.ci_high <= 1.0 and estimate(values) == e  # deterministic
    assert estimate([0.5] * 3).model_dump() == {"n": 3, "mean": 0.5, "se": 0.0, "ci_low": 0.5, "ci_high": 0.5}
    # MiniHack: each seed averaged over its tasks first
    assert per_seed([("A", 0, 1.0), ("B", 0, 0.0), ("A", 1, 1.0), ("B", 1, 1.0)]) == {0: 0.5, 1: 1.0}


def _revised(tmp_path: Path) -> str:
    dest = Scaffold.builtin("tiny").write_copy(tmp_path / "revised")
    raw = yaml.safe_load((dest / "scaffold.yaml").read_text())
    raw["log"]["consult_before_write"] = True
    (dest / "scaffold.yaml").write_text(yaml.safe_dump(raw))
    return str(dest)


def test_three_arms_on_the_same_seeds_with_plots_and_a_free_rerun(tmp_path):
    ws = tmp_path / "ws"
    params = EvaluateParams(arms=[Arm(scaffold="baseline"), Arm(scaffold="v0"),
                                  Arm(scaffold=_revised(tmp_path), name="revised")],
                            games=["tiny"], seeds=[0, 1, 2, 3], max_steps=20, models=EXPLORER,
                            workspace=str(ws), concurrency=4)
    result = evaluate(params)
    rows = {r["arm"]: r for r in result["table"]}
    assert set(rows) == {"baseline", "v0", "revised"} and all(r["n"] == 4 for r in rows.values())
    # the explorer takes the key only when a look-up confirmed it: only the revision makes it look
    assert rows["v0"]["mean"] == 0.0 and rows["revised"]["mean"] > 0.5
    traces = sorted(ws.glob("episodes/tiny/*/trace.jsonl"))
    assert len(traces) == 12
    better = [c for c in result["comparisons"] if c["a"] == "v0" and c["b"] == "revised"]
    assert better and better[0]["better"] and better[0]["p"] == pytest.approx(1 / 16)

    report = Path(result["report"])
    text = report.read_text()
    assert "| revised | 4 |" in text and "Published reference values (not ours)" in text
    pngs = sorted(report.parent.glob(f"{report.stem}-*.png"))
    assert len(pngs) == 3
    from matplotlib import image

    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 1_000 < png.stat().st_size < 80_000
        assert image.imread(png).shape[0] > 100  # decodes as an image
        assert f"]({png.name})" in text

    stamps = {t: t.stat().st_mtime_ns for t in traces}
    again = evaluate(params)  # every episode is cached: nothing is played again
    assert {t: t.stat().st_mtime_ns for t in sorted(ws.glob("episodes/tiny/*/trace.jsonl"))} == stamps
    assert again["table"] == result["table"]


def test_no_data_gives_a_no_data_figure():
    from agent_core.plots import bars_with_intervals, lines

    for fig in (bars_with_intervals("a.png", "empty", []), lines("b.png", "empty", {}, "x", "y")):
        assert fig.png[:4] == b"\x89PNG" and fig.markdown(inline=True).startswith("![empty](data:image/png;base64,")


@pytest.mark.parametrize("arms, message", [
    ([{"scaffold": "no/such/dir"}], "no scaffold.yaml"),
    ([{"scaffold": "v0"}, {"scaffold": "v0"}], "distinct"),
    ([{"scaffold": "v0"}, {"scaffold": "baseline", "max_steps": 5}], "different step budgets"),
    ([{"scaffold": "baseline", "adapter": "adapters/x"}], "no memory role"),
    ([], "at least 1"),
])
def test_bad_arms_fail_before_anything_plays(tmp_path, arms, message):
    with pytest.raises(ValueError, match=message):
        EvaluateParams(arms=arms, games=["tiny"], models=EXPLORER, workspace=str(tmp_path))
