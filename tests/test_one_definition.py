"""One definition of the paper's two diagnostics: the reports, the nightly history, the
evaluation, the training loop's comparison and the archive's SQL give the same numbers for
the same episodes (pooled: total successful writes / total successful consults, total
growth over the seeded files / total steps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_core.models.base import Roles
from agent_core.archive import archive_trace, connect
from agent_core.diagnostics import aggregate, diagnose_path
from agent_core.episode import run_episode
from agent_core.gate import GateConfig
from agent_core.models.config import RoutineScript
from agent_core.models.scripted import ScriptedModel
from agent_core.report import agent_diagnostics, archive_report
from agent_core.scaffold import Scaffold
from environments import make_env
from flows.common import summary_markdown
from flows.evaluate import summarise
from flows.iteration import best_per_night, night_rows
from flows.training_loop import side_by_side


def consult(writes: int, plan_reads: bool) -> RoutineScript:
    """Looks up, then writes `writes` lines (LOG), and reads again in PLAN if `plan_reads`."""
    appends = "".join(f"<|APPEND|>map.md|saw {i}: step done<|END|>" for i in range(writes))
    return RoutineScript(log="<|SEARCH|>saw<|END|>", log_next=appends + "<|DONE|>",
                         plan="<|READ|>map.md<|END|>" if plan_reads else "<|DONE|>", plan_next="<|DONE|>",
                         act="<|ACTION|>look<|END|>")


SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def played(tmp_path_factory):
    work = tmp_path_factory.mktemp("one-definition")
    scaffold = Scaffold.builtin("tiny")
    summaries = []
    for seed in SEEDS:  # writes/consults 1/2, 2/2, 3/1 per step: pooled 6/5, not the mean of the ratios
        model = ScriptedModel(consult(seed + 1, plan_reads=seed < 2).reply, model_id="scripted-consult")
        summaries.append(run_episode(make_env("tiny"), scaffold, Roles(memory=model), seed, 5, work / f"ep{seed}"))
    # another model on the same seeds: the nightly history must leave it out (like with like)
    other = ScriptedModel(RoutineScript().reply, model_id="scripted-other")
    stray = run_episode(make_env("tiny"), scaffold, Roles(memory=other), 0, 5, work / "other")
    for s in [*summaries, stray]:
        archive_trace(s.trace_path, work / "archive")
    return work, scaffold, summaries


def test_every_report_gives_the_same_two_diagnostics(played):
    work, scaffold, summaries = played
    diags = [diagnose_path(s.trace_path) for s in summaries]
    ref = aggregate(diags)
    assert ref.writes > 0 and ref.consults > 0 and ref.memory_growth_chars > 0  # something to compare
    mean_of_ratios = sum(d.write_search_ratio for d in diags) / len(diags)
    assert ref.write_search_ratio != pytest.approx(mean_of_ratios)  # the two poolings differ here
    pairs = {"write_search_ratio": ref.write_search_ratio, "growth_chars_per_step": ref.growth_chars_per_step}

    # evaluate's table
    owners = [("arm", "tiny", s.task, s.seed) for s in summaries]
    [row], _ = summarise(owners, summaries, diags, ["arm"], GateConfig())
    assert {k: row[k] for k in pairs} == pytest.approx(pairs)
    # the training loop's side-by-side
    side = side_by_side(diags, diags, summaries, summaries)
    assert side["write_search_ratio"]["base"] == pytest.approx(pairs["write_search_ratio"], abs=1e-4)
    assert side["growth_chars_per_step"]["specialist"] == pytest.approx(pairs["growth_chars_per_step"], abs=1e-4)
    # the archive's SQL (the archive report's numbers)
    con = connect(work / "archive")
    try:
        group = agent_diagnostics(con)[("tiny", scaffold.hash, "scripted-consult")]
    finally:
        con.close()
    assert group.write_search_ratio == pytest.approx(pairs["write_search_ratio"])
    assert group.growth_chars_per_step == pytest.approx(pairs["growth_chars_per_step"])
    assert group.model_dump(exclude={"write_search_ratio", "growth_chars_per_step",
                                     "distinct_actions_per_episode", "distinct_written_texts_per_episode"}) == \
        ref.model_dump(exclude={"write_search_ratio", "growth_chars_per_step",
                                "distinct_actions_per_episode", "distinct_written_texts_per_episode"})
    # the nightly history: only this model, this budget and these seeds
    [night] = night_rows(work, "tiny", 5, SEEDS, "scripted-consult", promoted={scaffold.hash})
    assert night["seeds"] == 3 and night["all_seeds"] and night["promoted"] and night["episodes"] == 3
    assert night["write_search_ratio"] == pytest.approx(pairs["write_search_ratio"])
    assert night["growth_chars_per_step"] == pytest.approx(pairs["growth_chars_per_step"])
    assert night_rows(work, "tiny", 7, SEEDS, "scripted-consult", promoted=set()) == []  # another budget
    # the printed reports show the same figures
    ratio, growth = f"{pairs['write_search_ratio']:.2f}", f"{pairs['growth_chars_per_step']:.1f}"
    used = f"| {ref.lookups_used}/{ref.lookups} | {ref.writes_after_lookup} |"  # what memory did
    assert ref.lookups_used > 0 and ref.writes_after_lookup > 0
    rollout = summary_markdown(summaries, diags, "rollout")
    assert f"| {growth} | {ratio} {used}" in rollout
    text = archive_report(work / "archive", work / "report.md").read_text()
    assert f"| {growth} | {ratio} {used}" in text


def test_best_per_night_counts_promoted_scaffolds_that_played_every_seed():
    rows = [{"night": "2026-12-01", "promoted": True, "all_seeds": True, "progression": 0.2},
            {"night": "2026-12-01", "promoted": False, "all_seeds": True, "progression": 0.9},  # a rejected candidate
            {"night": "2026-12-02", "promoted": True, "all_seeds": False, "progression": 1.0},  # 2 of 4 seeds
            {"night": "2026-12-02", "promoted": True, "all_seeds": True, "progression": 0.4}]
    assert best_per_night(rows) == [("2026-12-01", 0.2), ("2026-12-02", 0.4)]


def test_promoted_scaffolds_come_from_the_registry_and_include_v0(tmp_path):
    import yaml

    from agent_core.registry import promote
    from flows.iteration import promoted_scaffolds

    v0 = Scaffold.builtin("tiny")
    revised = v0.write_copy(tmp_path / "scaffolds" / "revised")
    raw = yaml.safe_load((revised / "scaffold.yaml").read_text())
    raw["log"]["consult_before_write"] = True
    (revised / "scaffold.yaml").write_text(yaml.safe_dump(raw))
    assert promoted_scaffolds(tmp_path, "tiny") == set()  # nothing promoted, no start given
    assert promoted_scaffolds(tmp_path, "tiny", start="abc") == {"abc"}
    promote(tmp_path, "scaffolds", "tiny", str(revised), reason="test")
    assert promoted_scaffolds(tmp_path, "tiny") == {v0.hash, Scaffold.load(revised).hash}
    assert promoted_scaffolds(tmp_path, "crafter") == set()  # another game's promotions do not count
