"""The agentic reviewer as a named option of the scaffold loop (scripted tool calls), on a
temporary Prefect API: it reads the archive through tools, its candidate is validated,
played and gated like the single-call reviewer's; one that never submits is "no revision"."""

from __future__ import annotations

import json
from pathlib import Path

from agent_core.meta.config import MetaLLMConfig
from agent_core.models.config import ModelConfig
from agent_core.meta.loop import AgentBudget, render_review_trace
from agent_core.scaffold import Scaffold
from agent_core.trace import read_jsonl
from flows.scaffold_loop import ScaffoldLoopParams, artifact_key, scaffold_loop


def params(ws: Path, reviewer: MetaLLMConfig) -> ScaffoldLoopParams:
    return ScaffoldLoopParams(game="tiny", seeds=[0, 1, 2, 3], confirm_seeds=[10, 11, 12, 13], max_steps=20,
                              models=ModelConfig(backend="scripted", policy="tiny-explorer"), iterations=1,
                              patience=1, concurrency=3, workspace=str(ws), reviewer=reviewer)


def call(name: str, **arguments) -> str:
    return json.dumps({"name": name, "arguments": arguments})


def test_agentic_reviewer_reads_the_archive_and_its_candidate_is_gated(tmp_path):
    ws = tmp_path / "ws"
    yaml_text = Scaffold.builtin("tiny").files["scaffold.yaml"].decode().replace(
        "log:\n", "log:\n  consult_before_write: true\n", 1)
    reviewer = MetaLLMConfig(backend="scripted", mode="agentic", agent=AgentBudget(max_steps=5), replies=[
        call("sql", query="select count(*) as looked from memory_ops where op in ('read', 'search', 'tail')"),
        call("submit_revision", hypothesis={"failure": "the agent never looks up where it noted the key",
                                            "episode": "any", "step": 0, "why": "a look-up before writing"},
             analysis="no look-ups at all", changes=["LOG: consult_before_write"], files={"scaffold.yaml": yaml_text}),
    ])
    result = scaffold_loop(params(ws, reviewer))
    [entry] = result["history"]
    assert entry["reviewer"] == "agentic:scripted-meta"
    # the explorer takes the key only when a look-up showed it: the revision makes it look, so
    # it wins every evaluation seed and every confirmation seed
    assert entry["candidate"] and entry["verdict"] == "promoted", entry["reason"]
    assert "; confirmed: improvement" in entry["reason"] and result["incumbent"].endswith(entry["candidate"])
    assert Scaffold.load(ws / "scaffolds" / entry["candidate"]).config.log.consult_before_write
    assert (ws / "verdicts" / f"{entry['incumbent']}-vs-{entry['candidate']}.json").is_file()
    [record] = list((ws / "reviews").iterdir())
    lines = read_jsonl(record / "agent-0.jsonl")
    sql = next(x for x in lines if x["kind"] == "tool" and x["name"] == "sql")
    assert sql["ok"] and sql["content"].startswith("looked\n")
    assert lines[-1]["stop_reason"] == "submitted"
    proposal = json.loads((record / "proposal.json").read_text())
    assert proposal["analysis"].startswith("Hypothesis: the agent never looks up")
    shown = render_review_trace(record / "agent-0.jsonl")
    assert "**sql** ok:" in shown and "## End: submitted (stopped by submitted)" in shown
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["agentic-review-agent-0"])), limit=1)
    assert "**sql** ok:" in artifact.data
    with get_client(sync_client=True) as client:
        [analysis] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[f"scaffold-loop-{artifact_key(params(ws, reviewer).game)}-analysis"])), limit=1)
    usage = entry["attempts"][0]["usage"]
    assert (f"meta-LLM 2 calls, {usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens"
            in analysis.data) and f"{result['env_steps'][entry['candidate']]} environment steps" in analysis.data
    # the reviewer's ledger is in the archive, one row per call, tied to the candidate it wrote
    from agent_core.archive import run_query

    rows = run_query(ws / "archive", "SELECT * FROM meta_calls ORDER BY call_index").to_pylist()
    assert [r["call_index"] for r in rows] == [0, 1] and {r["role"] for r in rows} == {"reviewer"}
    assert {r["candidate"] for r in rows} == {entry["candidate"]} and {r["stop_reason"] for r in rows} == {"submitted"}
    assert sum(r["prompt_tokens"] for r in rows) == usage["prompt_tokens"]
    assert rows[0]["scaffold_hash"] == entry["incumbent"] and rows[0]["game"] == "tiny"


def test_agentic_reviewer_that_never_submits_is_no_revision(tmp_path):
    ws = tmp_path / "ws"
    reviewer = MetaLLMConfig(backend="scripted", mode="agentic", agent=AgentBudget(max_steps=3),
                             replies=[call("grep", pattern="key")])
    result = scaffold_loop(params(ws, reviewer))
    [entry] = result["history"]
    assert entry["verdict"] == "no valid candidate" and entry["attempts"][0]["verdict"] == "no revision"
    assert "stopped by max_steps after 3 replies" in entry["reason"]


def test_agentic_curator_is_the_training_loops_option(tmp_path):
    """Loop 2 with `mode: agentic`: the curator inspects the pool's archive through the tools;
    one that never submits a program is a rejected trial (nothing is trained)."""
    from agent_core.models.config import RoutineScript
    from agent_core.training.curator import make_curator
    from flows.training_loop import TrainingLoopParams, training_loop

    meta = MetaLLMConfig(backend="scripted", mode="agentic", agent=AgentBudget(max_steps=2),
                         replies=[call("sql", query="select routine, count(*) as n from calls group by all")])
    assert type(make_curator(meta, None, tmp_path, tmp_path)).__name__ == "AgenticCurator"
    agent = ModelConfig(backend="scripted", script=RoutineScript(
        log="<|UPSERT|>map.md|hall|exits north<|END|><|SEARCH|>hall<|END|>", plan="<|READ|>map.md<|END|>"))
    ws = tmp_path / "ws"
    result = training_loop(TrainingLoopParams(game="tiny", pool_seeds=[10, 11], eval_seeds=[0, 1, 2],
                                              confirm_seeds=[20, 21], max_steps=4, models=agent, meta=meta,
                                              trials=1, gate={"alpha": 0.25}, concurrency=2, workspace=str(ws)))
    [trial] = result["trials"]
    assert trial["error"].startswith("program rejected: no program: no revision: stopped by max_steps after 2 "
                                     "replies"), trial["error"]
    [trace] = list(ws.glob("pools/*/curation/trial-0/curator-0.jsonl"))
    lines = read_jsonl(trace)
    sql = [x for x in lines if x["kind"] == "tool"]
    assert len(sql) == 2 and sql[0]["ok"] and sql[0]["content"].startswith("routine\tn")
    assert result["promoted"] is None
    # the curator's ledger is in the training-loop report and in the pool's archive
    ledger = json.loads(trace.with_name("curator-0.ledger.json").read_text())
    prompt = sum(c["prompt_tokens"] for c in ledger["calls"])
    completion = sum(c["completion_tokens"] for c in ledger["calls"])
    assert len(ledger["calls"]) == 2 and prompt > 0 and completion > 0
    report = Path(result["report"]).read_text()
    trial_section = report.split("## Trial 0", 1)[1]
    assert (f"Curator ledger: 2 calls, {prompt:,} prompt + {completion:,} completion tokens, $0.0000; "
            "curator-0 stopped by max_steps (no revision)") in trial_section, report
    from agent_core.archive import run_query

    [row] = run_query(trace.parents[2] / "archive", "SELECT role, mode, trial, count(*) AS calls, "
                      "sum(prompt_tokens) AS p, sum(completion_tokens) AS c, any_value(stop_reason) AS stop "
                      "FROM meta_calls GROUP BY ALL").to_pylist()
    assert row == {"role": "curator", "mode": "agentic", "trial": 0, "calls": 2, "p": prompt, "c": completion,
                   "stop": "max_steps"}


def test_a_loop_level_token_cap_stops_further_reviews(tmp_path):
    ws = tmp_path / "ws"
    reviewer = MetaLLMConfig(backend="scripted", mode="agentic", agent=AgentBudget(max_steps=2),
                             replies=[call("grep", pattern="key")])
    p = params(ws, reviewer).model_copy(update={"iterations": 3, "patience": 3, "max_meta_tokens": 1})
    result = scaffold_loop(p)
    assert len(result["history"]) == 1  # the first review spent the budget; no second one
    usage = result["history"][0]["attempts"][0]["usage"]
    assert usage["calls"] == 2 and result["meta_usage"]["tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert result["stopped"].startswith("max_meta_tokens: the reviews spent")
