"""The evaluate flow: arms on the same seeds, intervals, paired tests, plots, the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent_core.models.config import ModelConfig
from agent_core.scaffold import Scaffold
from flows.evaluate import Arm, EvaluateParams, evaluate

EXPLORER = ModelConfig(backend="scripted", policy="tiny-explorer")


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
    [better] = [c for c in result["comparisons"] if c["a"] == "v0" and c["b"] == "revised"]
    # two-sided over 4 seeds: at best 2/16; Holm over the 3 pairs: 3 x 2/16 > alpha 0.1, so
    # 4 seeds cannot tell three arms apart, and the report says so instead of "no difference"
    assert better["delta"] > 0.5 and better["p"] == pytest.approx(2 / 16)
    assert better["p_holm"] == pytest.approx(3 * 2 / 16) and better["underpowered"]
    assert better["direction"].startswith("cannot tell: underpowered")
    assert all(r["ci_low"] is not None and r["episodes"] == 4 for r in rows.values())

    report = Path(result["report"])
    text = report.read_text()
    assert "| revised | 4 | 4 |" in text and "Published reference values (not ours)" in text
    assert "two-sided, Holm's correction over all 3 pairs" in text and "BALROG SE" in text
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
