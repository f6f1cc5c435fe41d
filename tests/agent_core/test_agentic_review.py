"""The meta-LLM agent loop over the trace store, with the scripted tool-calling model:
submission, budgets and ledger, elision, truncated replies, bad calls, and the planted
defect of a 2,000-step trace that the single-call bundle cannot show."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from agent_core.models.base import Roles
from agent_core.archive import archive_trace
from agent_core.episode import run_episode
from agent_core.models.base import ModelError
from agent_core.models.scripted import ScriptedModel
from agent_core.models.tool_calls import ScriptedToolModel, ToolCall, ToolCompletion
from agent_core.meta.loop import AgentBudget, Price, run_agent
from agent_core.review.agentic import AgenticReviewer
from agent_core.training.agentic import AgenticCurator
from agent_core.review.bundle import build_bundle
from agent_core.review.candidate import parse_revision
from agent_core.review.propose import propose
from agent_core.meta.tool_specs import ToolCaps
from agent_core.review.agentic import ReviewerToolbox
from agent_core.scaffold import Scaffold
from agent_core.trace import read_jsonl, read_trace
from environments import make_env

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_trace import DUPLICATE_TEXT, write_synthetic_trace  # noqa: E402
from tiny_archive import archive_tiny  # noqa: E402

TINY = Scaffold.builtin("tiny")
STRUCTURAL = TINY.files["scaffold.yaml"].decode().replace("history_window: 2", "history_window: 3")


def submission(step: int = 1, episode: str = "e", files: dict | None = None) -> tuple[str, dict]:
    return ("submit_revision", {
        "hypothesis": {"failure": "duplicate writes", "episode": episode, "step": step, "why": "more history"},
        "analysis": "the agent repeats itself", "changes": ["history window 2 -> 3"],
        "files": files if files is not None else {"scaffold.yaml": STRUCTURAL}})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("agentic")
    return root, archive_tiny(root, TINY, 5)


def agent(store, model, budget=None, caps=None, tmp_path=None):
    root, _ = store
    box = ReviewerToolbox(root / "archive", TINY, root / "scaffolds", caps)
    run = run_agent(model, box, "system", "task", budget or AgentBudget(), tmp_path / "review.jsonl",
                    "submit_revision")
    box.close()
    return run, read_jsonl(tmp_path / "review.jsonl")


def test_tools_then_submission_is_accepted_and_traced(store, tmp_path):
    _, traces = store
    eid = read_trace(traces[0]).header.episode_id
    model = ScriptedToolModel([("sql", {"query": "select count(*) as n from steps"}),
                               ("trace", {"episode": eid, "from_step": 1, "to_step": 1}),
                               submission(1, eid)])
    run, records = agent(store, model, tmp_path=tmp_path)
    assert run.stop_reason == "submitted" and run.verdict == "submitted" and run.replies == 3
    assert run.accepted["candidate"].config.history_window == 3
    kinds = [r["kind"] for r in records]
    assert kinds == ["start", "call", "tool", "call", "tool", "call", "tool", "end"]
    assert records[2]["content"].splitlines()[1] == "10"  # the sql result the model saw
    assert "=== step 1:" in records[4]["content"]
    # the model saw each tool result as a tool message answering its call
    seen = model.calls[1][-1]
    assert seen.role == "tool" and seen.tool_call_id == model.calls[1][-2].tool_calls[0].id


def test_ledger_sums_equal_the_per_call_usage_and_a_token_cap_stops(store, tmp_path):
    replies = [ToolCompletion(tool_calls=[ToolCall(name="sql", arguments='{"query": "select 1 as x"}')],
                              prompt_tokens=900 + 100 * i, completion_tokens=40) for i in range(50)]
    budget = AgentBudget(max_review_tokens=5_000, reply_max_tokens=100, max_steps=50)
    run, records = agent(store, ScriptedToolModel(replies), budget, tmp_path=tmp_path)
    assert run.stop_reason == "max_review_tokens" and run.accepted is None and run.verdict == "no revision"
    usage = [r for r in records if r["kind"] == "call"]
    assert run.ledger.prompt_tokens == sum(r["prompt_tokens"] for r in usage) == sum(900 + 100 * i for i in range(len(usage)))
    assert run.ledger.completion_tokens == 40 * len(usage)
    assert run.ledger.tokens <= budget.max_review_tokens < run.ledger.tokens + 1_000 + 100 * len(usage)
    assert records[-1]["stop_reason"] == "max_review_tokens" and records[-1]["totals"]["calls"] == len(usage)


def test_cost_cap_through_the_price_table(store, tmp_path):
    model = ScriptedToolModel([("sql", {"query": "select 1 as x"})], when_exhausted="repeat_last")
    budget = AgentBudget(max_cost_usd=0.05, prices={"scripted-tools": Price(input_per_mtok=10.0, output_per_mtok=30.0)},
                         reply_max_tokens=256)
    run, _ = agent(store, model, budget, tmp_path=tmp_path)
    assert run.stop_reason == "max_cost_usd" and 0 < run.ledger.cost_usd <= 0.05
    expected = sum(c.prompt_tokens * 10 / 1e6 + c.completion_tokens * 30 / 1e6 for c in run.ledger.calls)
    assert run.ledger.cost_usd == pytest.approx(expected)


def test_never_submitting_ends_at_the_step_budget_as_no_revision(store, tmp_path):
    root, traces = store
    model = ScriptedToolModel([("grep", {"pattern": "saw"})], when_exhausted="repeat_last")
    reviewer = AgenticReviewer(model, root / "archive", root / "scaffolds", tmp_path / "rec",
                               AgentBudget(max_steps=4))
    bundle = build_bundle(TINY, traces)
    proposal = propose(reviewer, bundle, TINY, root / "scaffolds", tmp_path / "rec", max_attempts=3)
    assert proposal.candidate_dir is None and len(model.calls) == 4
    assert proposal.attempts == [{"attempt": 0, "verdict": "no revision",
                                  "reason": f"no revision: {reviewer.runs[0].summary()}",
                                  "usage": {**reviewer.runs[0].ledger.totals(), "stop_reason": "max_steps"}}]
    assert "stopped by max_steps after 4 replies" in proposal.attempts[0]["reason"]
    ledger = json.loads((tmp_path / "rec" / "agent-0.ledger.json").read_text())
    assert ledger["verdict"] == "no revision" and ledger["totals"]["calls"] == 4


@pytest.mark.parametrize("finish", ["length", "abort"])
def test_truncated_reply_is_never_adopted(store, tmp_path, finish):
    name, args = submission()
    cut = ToolCompletion(tool_calls=[ToolCall(name=name, arguments=json.dumps(args))], finish_reason=finish)
    model = ScriptedToolModel([cut, ("sql", {"query": "select 1 as x"})], when_exhausted="repeat_last")
    run, records = agent(store, model, AgentBudget(max_steps=3), tmp_path=tmp_path)
    assert run.accepted is None and run.stop_reason == "max_steps"
    assert not [r for r in records if r["kind"] == "tool" and r["name"] == "submit_revision"]
    assert f"finish reason {finish!r}" in model.calls[1][-1].content and "discarded" in model.calls[1][-1].content
    assert all(not t.tool_calls or t.tool_calls[0].name != "submit_revision" for t in model.calls[1])


def test_bad_calls_come_back_as_errors_and_the_loop_goes_on(store, tmp_path):
    model = ScriptedToolModel([
        ToolCompletion(tool_calls=[ToolCall(name="nope", arguments="{}"),
                                   ToolCall(name="sql", arguments="{broken")]),
        "I think I am done.",
        ("submit_revision", {"analysis": "missing everything"}),
        submission(),
    ])
    run, records = agent(store, model, AgentBudget(tool_choice="auto"), tmp_path=tmp_path)
    tools = [r for r in records if r["kind"] == "tool"]
    assert [t["ok"] for t in tools] == [False, False, False, True] and run.stop_reason == "submitted"
    assert "unknown tool" in tools[0]["content"] and "not valid JSON" in tools[1]["content"]
    assert "Call a tool" in model.calls[2][-1].content


def test_old_tool_outputs_are_elided_past_the_context_cap(store, tmp_path):
    _, traces = store
    eid = read_trace(traces[0]).header.episode_id
    window = ("trace", {"episode": eid, "from_step": 0, "to_step": 4})
    model = ScriptedToolModel([window] * 8 + [submission()])
    budget = AgentBudget(context_cap_tokens=5_000, keep_recent=2)
    run, records = agent(store, model, budget, ToolCaps(max_chars=6_000), tmp_path)
    assert run.stop_reason == "submitted" and run.elided > 0
    last = model.calls[-1]
    results = [t for t in last if t.role == "tool"]
    assert any(t.content.startswith("[tool output elided") for t in results)
    assert all(not t.content.startswith("[tool output elided") for t in results[-2:])
    # what the model was shown stayed near the cap (a result of up to 1,500 tokens may be added last)
    assert max(sum(len(t.content) for t in c) for c in model.calls) // 4 < 5_000 + 1_600
    assert [r for r in records if r["kind"] == "elided"]


def test_a_model_without_tool_calls_is_refused_with_the_single_call_option(store, tmp_path):
    with pytest.raises(TypeError, match="single-call reviewer"):
        agent(store, ScriptedModel(["x"]), tmp_path=tmp_path)


def test_curator_agent_inspects_the_pool_then_submits(store, tmp_path):
    from agent_core.training.curator import OK_TURNS_SQL
    from agent_core.training.program import rule_based_program

    root, _ = store
    program = rule_based_program({}).model_dump(mode="json")
    model = ScriptedToolModel([("sql", {"query": "select routine, count(*) from calls group by all"}),
                               ("submit_program", {"program": {**program, "selection_sql": "select 1 as nope"}}),
                               ("submit_program", {"program": {**program, "selection_sql": OK_TURNS_SQL},
                                                   "hypothesis": "ok turns only"})])
    curator = AgenticCurator(model, root / "archive", tmp_path)
    out = curator.program(TINY, {}, [])
    assert out.selection_sql == OK_TURNS_SQL and curator.runs[0].replies == 3
    assert out.rationale == "ok turns only"  # the hypothesis stays with the program
    assert "call_id" in model.calls[2][-1].content  # the rejection it fixed
    # the next curation sees each earlier trial's hypothesis beside its outcome
    trial = {"trial": 0, "program": out.model_dump(mode="json"), "examples": 12, "final_loss": 0.5}
    again = AgenticCurator(ScriptedToolModel([]), root / "archive", tmp_path)
    with pytest.raises(ModelError):  # the empty script: only the prompt matters here
        again.program(TINY, {}, [trial])
    task = again.model.calls[0][1].content
    assert 'trial 0: hypothesis "ok turns only"; 12 examples' in task and "final training loss 0.500" in task


def duplicating_explorer(duplicates: bool):
    """`tiny_explorer` with the planted habit: each LOG appends DUPLICATE_TEXT three times
    (with `duplicates`) unless a look-up of this step showed the line already there, then
    notes the room and, where it lies, the key; every PLAN searches for the key, so both
    scaffolds look memory up before the action (which takes the key when that search showed
    it here). What the duplicates do: LOG has 4 operations, so three repeated lines and the
    room leave no room for the key's note; a scaffold that looks up before writing shows
    the line is there, and the note fits. Its replies are offered longest first, cut at the
    end as constrained decoding cuts them."""
    from agent_core.models.policies import asked_for, own_replies, step_messages, tiny_explorer

    room_re = re.compile(r"You are in the (\w+)\.")
    seen = re.compile(rf"^map\.md:\d+: {re.escape(DUPLICATE_TEXT)}$", re.MULTILINE)

    def replies(messages):
        asked = asked_for(messages)
        if asked == "act":
            return tiny_explorer(messages)
        mine = own_replies(messages)
        if asked == "plan":
            return ["<|DONE|>"] if "<|SEARCH|>key<|END|>" in mine else ["<|SEARCH|>key<|END|>", "<|DONE|>"]
        if asked != "log":
            return ["<|DONE|>"]
        observation, since = step_messages(messages)
        room = (room_re.search(observation) or [None, "nowhere"])[1]
        writes = [f"<|APPEND|>map.md|{DUPLICATE_TEXT}<|END|>"] * 3 if duplicates and not seen.search(since) else []
        writes.append(f"<|UPSERT|>map.md|{room}|visited<|END|>")
        if "A key lies on the floor." in observation:
            writes.append(f"<|UPSERT|>map.md|key|{room}<|END|>")
        cut = ["".join(writes[:k]) + "<|DONE|>" for k in range(len(writes), 0, -1)]
        look = [] if "<|SEARCH|>wall<|END|>" in mine else ["<|SEARCH|>wall<|END|>"]
        return cut + look + ["<|DONE|>"]

    return replies


def test_planted_defect_in_2000_steps_found_through_the_tools_not_in_the_bundle(tmp_path):
    """A duplicate-write storm from step 1,400 of a 2,000-step trace: the scripted reviewer
    finds the step with sql, reads it, and submits a hypothesis naming it; the candidate is
    validated and gated. The single-call bundle of the same trace does not show that step."""
    trace = write_synthetic_trace(tmp_path / "ep", TINY, steps=2000, defect_at=1400)
    archive_trace(trace, tmp_path / "archive")

    def policy(turns):
        results = [t.content for t in turns if t.role == "tool"]
        if not results:
            return "sql", {"query": "select episode_id, min(step) as first_step from memory_ops "
                                    "where duplicate group by episode_id"}
        first = int(re.search(r"synthetic2000\t(\d+)", results[0]).group(1))
        if len(results) == 1:
            return "trace", {"episode": "synthetic2000", "from_step": first, "to_step": first}
        if len(results) == 2:
            assert DUPLICATE_TEXT in results[1]
            return "memory_diff", {"episode": "synthetic2000", "step_a": first - 1, "step_b": first}
        yaml_text = TINY.files["scaffold.yaml"].decode().replace("log:\n", "log:\n  consult_before_write: true\n", 1)
        return ("submit_revision", {
            "hypothesis": {"failure": "a storm of duplicate appends to map.md", "episode": "synthetic2000",
                           "step": first, "why": "looking up before writing shows the line is there"},
            "analysis": f"from step {first} every LOG appends '{DUPLICATE_TEXT}' three times",
            "changes": ["LOG: consult_before_write"], "files": {"scaffold.yaml": yaml_text}})

    model = ScriptedToolModel(policy)
    reviewer = AgenticReviewer(model, tmp_path / "archive", tmp_path / "scaffolds", tmp_path / "rec",
                               AgentBudget(max_steps=10))
    bundle = build_bundle(TINY, [trace])
    proposal = propose(reviewer, bundle, TINY, tmp_path / "scaffolds", tmp_path / "rec")
    assert proposal.candidate_dir and Scaffold.load(proposal.candidate_dir).config.log.consult_before_write
    assert "(episode synthetic2000, step 1400)" in proposal.analysis
    assert reviewer.runs[0].replies == 4
    # gated like any candidate: incumbent and candidate play the same tiny seeds with a policy
    # that has the planted habit, paired test; the verdict turns on the duplicates alone
    from agent_core.gate import gate

    candidate = Scaffold.load(proposal.candidate_dir)

    def play(scaffold, duplicates: bool):
        roles = Roles(memory=ScriptedModel(duplicating_explorer(duplicates)), constrain=True)
        out = tmp_path / "gate" / f"{scaffold.hash}-{duplicates}"
        return [run_episode(make_env("tiny"), scaffold, roles, seed, 20, out / str(seed)).progression
                for seed in range(4)]

    verdict = gate(list(range(4)), play(TINY, True), play(candidate, True))
    assert verdict.promote and verdict.mean_incumbent == 0.0, verdict.reason
    # the same policy without the duplicates: the candidate's look-up changes nothing
    control = gate(list(range(4)), play(TINY, False), play(candidate, False))
    assert control.outcome == "no seed differs" and control.mean_incumbent > 0.0, control.reason
    # the gap this closes: the bundle's excerpts never reach the defect
    rendered = bundle.render()
    assert "### step 1400:" not in rendered and DUPLICATE_TEXT not in rendered.split("# Step-log excerpts")[1]
    assert all(x.last_step < 1400 for x in bundle.excerpts)


class CutOffModel:
    """A `ChatModel` whose replies all hit the token limit (finish_reason "length")."""

    model_id = "cut-off"

    def __init__(self, text: str) -> None:
        self.text = text

    def complete(self, messages, params, constraint=None):
        from agent_core.records import Completion

        return Completion(text=self.text, finish_reason="length", model=self.model_id)


def test_single_call_reviewer_never_adopts_a_cut_off_reply(store, tmp_path):
    from agent_core.review.candidate import Revision, format_revision
    from agent_core.review.reviewers import MetaLLMReviewer

    root, traces = store
    files = {k: v.decode() for k, v in TINY.files.items()} | {"scaffold.yaml": STRUCTURAL}
    complete = format_revision(Revision(analysis="a", changes=["history 3"], files=files))
    assert parse_revision(complete)  # it would parse: only the finish reason marks it cut off
    proposal = propose(MetaLLMReviewer(CutOffModel(complete)), build_bundle(TINY, traces), TINY,
                       root / "scaffolds", tmp_path)
    assert proposal.candidate_dir is None and proposal.attempts[0]["verdict"] == "no revision"
    assert "cut off at its token limit" in proposal.attempts[0]["reason"]


def test_single_call_curator_never_adopts_a_cut_off_program():
    from agent_core.records import SamplingParams
    from agent_core.training.curator import MetaLLMCurator
    from agent_core.training.program import ProgramError, rule_based_program

    curator = MetaLLMCurator(CutOffModel(rule_based_program({}).model_dump_json()), SamplingParams(max_tokens=300))
    with pytest.raises(ProgramError, match="cut off"):
        curator.program(TINY, {}, [])


def test_the_next_review_sees_hypotheses_diffs_and_per_seed_outcomes(store, tmp_path):
    from agent_core.gate import GateConfig, gate

    root, traces = store
    ws = tmp_path / "ws"
    first = AgenticReviewer(ScriptedToolModel([submission(4, "abc")]), root / "archive", ws / "scaffolds",
                            ws / "reviews" / "r1")
    bundle = build_bundle(TINY, traces)
    proposal = propose(first, bundle, TINY, ws / "scaffolds", ws / "reviews" / "r1")
    candidate = Path(proposal.candidate_dir).name
    verdict = gate([0, 1, 2, 3], [0.5, 0.5, 0.25, 0.5], [0.5, 0.25, 0.25, 0.5], GateConfig())
    (ws / "verdicts").mkdir()
    (ws / "verdicts" / f"{TINY.hash}-vs-{candidate}.json").write_text(verdict.model_dump_json())
    second = AgenticReviewer(ScriptedToolModel([]), root / "archive", ws / "scaffolds", ws / "reviews" / "r2")
    task = second.task_prompt(bundle, TINY, [])
    assert f"candidate {candidate}: Hypothesis: duplicate writes (episode abc, step 4)" in task
    assert "changes: history window 2 -> 3" in task and "outcome: not promoted" in task
    assert "seed 1: 0.500 -> 0.250" in task
    assert "-history_window: 2" in task and "+history_window: 3" in task
    # a workspace without verdicts has no history
    other = AgenticReviewer(ScriptedToolModel([]), root / "archive", tmp_path / "elsewhere" / "scaffolds", tmp_path)
    assert "candidate " not in other.task_prompt(bundle, TINY, [])


def test_the_mode_comes_from_the_environment_unless_given(store, tmp_path, monkeypatch):
    from agent_core.meta.config import MetaLLMConfig
    from agent_core.review.reviewers import MetaLLMReviewer, RuleBasedReviewer, make_reviewer

    root, _ = store
    where = (root / "archive", root / "scaffolds", tmp_path)
    monkeypatch.setenv("AUTOMEM_META_MODE", "agentic")
    scripted = MetaLLMConfig(backend="scripted", replies=['{"name": "sql", "arguments": {"query": "select 1"}}'])
    assert isinstance(make_reviewer(scripted, *where), AgenticReviewer)
    assert '"mode":"agentic"' in scripted.identity()
    explicit = MetaLLMConfig(backend="scripted", mode="single-call", replies=["x"])
    assert isinstance(make_reviewer(explicit, *where), MetaLLMReviewer) and '"mode":' not in explicit.identity()
    assert isinstance(make_reviewer(MetaLLMConfig(backend="rules"), *where), RuleBasedReviewer)
    monkeypatch.setenv("AUTOMEM_META_MODE", "clever")
    with pytest.raises(ValueError, match="single-call or agentic"):
        scripted.resolved()


def test_the_cli_shows_a_review_trace(store, tmp_path):
    from typer.testing import CliRunner

    from automem_cli.main import app

    _, traces = store
    run, _ = agent(store, ScriptedToolModel([("sql", {"query": "select 7 as seven"}), submission()]),
                   tmp_path=tmp_path)
    out = CliRunner().invoke(app, ["trace", "review", run.trace_path])
    assert out.exit_code == 0, out.output
    assert "`sql({\"query\": \"select 7 as seven\"})`" in out.output and "seven\n7" in out.output
    assert "## End: submitted (stopped by submitted)" in out.output
    bad = CliRunner().invoke(app, ["trace", "review", str(traces[0])])
    assert bad.exit_code == 2 and "not the review's start" in bad.output


def test_every_sft_example_keeps_its_provenance_in_the_data_card(store, tmp_path):
    from agent_core.training.curator import OK_TURNS_SQL
    from agent_core.training.dataset import build_dataset, load_examples
    from agent_core.training.program import rule_based_program

    root, _ = store
    program = rule_based_program({})
    program = program.model_copy(update={"selection_sql": OK_TURNS_SQL, "composition": program.composition.model_copy(
        update={"min_examples": 1})})
    info = build_dataset(root / "archive", program, tmp_path / "sft")
    card = json.loads((info.path / "data_card.json").read_text())
    examples = load_examples(info.path)
    assert len(card["provenance"]) == len(examples) == info.examples > 0
    assert card["provenance"] == [[e["meta"]["episode_id"], e["meta"]["step"], e["meta"]["call_id"],
                                   e["meta"]["routine"]] for e in examples]
    md = (info.path / "data_card.md").read_text()
    episode, step, call_id, routine = card["provenance"][0]
    assert f"| {episode} | {step} | {call_id} | {routine} |" in md


def test_an_endpoint_that_ignores_required_tool_calls_gets_one_clear_error(store, tmp_path):
    with pytest.raises(ModelError, match="does not serve tool calls; use the single-call mode"):
        agent(store, ScriptedToolModel(["Here is my review: all good."]), tmp_path=tmp_path)
    end = read_jsonl(tmp_path / "review.jsonl")[-1]
    assert end["kind"] == "error"


def test_the_ledger_goes_into_the_archive_and_round_trips(store, tmp_path):
    """Each call's ledger entry becomes a `meta_calls` row (one file per run, written again
    unchanged); the sums over the table are the ledger's totals, and the reviewer's own sql
    tool reads it."""
    import shutil

    from agent_core.archive import archive_meta_calls, run_query
    from agent_core.meta.loop import archive_ledgers
    from agent_core.meta.prompts import archive_tables

    root, traces = store
    archive = tmp_path / "archive"
    shutil.copytree(root / "archive", archive)
    model = ScriptedToolModel([("sql", {"query": "select count(*) as n from steps"}), ("grep", {"pattern": "saw"}),
                               submission()])
    budget = AgentBudget(prices={"*": Price(input_per_mtok=3.0, output_per_mtok=15.0)})
    reviewer = AgenticReviewer(model, archive, tmp_path / "scaffolds", tmp_path / "rec", budget)
    proposal = propose(reviewer, build_bundle(TINY, traces), TINY, tmp_path / "scaffolds", tmp_path / "rec",
                       max_attempts=1)
    candidate = proposal.attempts[0]["candidate"]
    ledger = reviewer.runs[0].ledger
    files = archive_ledgers(tmp_path / "rec", archive, role="reviewer", mode="agentic", game="tiny",
                            scaffold_hash=TINY.hash, candidates={0: candidate})
    assert len(files) == 1 and files[0].parts[-4:-1] == ("meta_calls", "game=tiny", f"scaffold_hash={TINY.hash}")
    sums = run_query(archive, "SELECT count(*) AS calls, sum(prompt_tokens) AS p, sum(completion_tokens) AS c, "
                     "sum(cost_usd) AS usd, list_distinct(list(stop_reason)) AS stop, list_distinct(list(candidate)) "
                     "AS cand, list_distinct(list(role)) AS role FROM meta_calls").to_pylist()[0]
    assert (sums["calls"], sums["p"], sums["c"]) == (len(ledger.calls), ledger.prompt_tokens, ledger.completion_tokens)
    assert sums["usd"] == pytest.approx(ledger.cost_usd) and ledger.cost_usd > 0
    assert sums["stop"] == ["submitted"] and sums["cand"] == [candidate] and sums["role"] == ["reviewer"]
    calls = run_query(archive, "SELECT call_index, tool_calls, model FROM meta_calls ORDER BY call_index").to_pylist()
    assert calls == [{"call_index": c.call, "tool_calls": c.tool_calls, "model": "scripted-tools"}
                     for c in ledger.calls]
    assert [c["tool_calls"] for c in calls] == [["sql"], ["grep"], ["submit_revision"]]
    # idempotent: archiving the same ledger again rewrites the same file, no rows added
    assert archive_ledgers(tmp_path / "rec", archive, role="reviewer", mode="agentic", game="tiny",
                           scaffold_hash=TINY.hash, candidates={0: candidate}) == files
    assert run_query(archive, "SELECT count(*) AS n FROM meta_calls").to_pylist() == [{"n": 3}]
    # the episode tables are untouched, and the agent's own sql tool reads the table
    assert run_query(archive, "SELECT count(*) AS n FROM episodes").to_pylist() == [{"n": 2}]
    assert "meta_calls" in archive_tables() and "cost_usd" in archive_tables()["meta_calls"]
    box = ReviewerToolbox(archive, TINY, tmp_path / "scaffolds")
    try:
        out = box.call("sql", json.dumps({"query": "select role, sum(prompt_tokens) as p from meta_calls group by role"}))
    finally:
        box.close()
    assert out.ok and out.content.startswith("role\tp\nreviewer\t") and str(ledger.prompt_tokens) in out.content
    # the archive's report shows the run's ledger
    from agent_core.report import archive_report

    text = archive_report(archive, tmp_path / "report.md").read_text()
    [line] = [x for x in text.splitlines() if x.startswith("| reviewer | rec/agent-0@")]
    assert line.endswith(f"| - | {candidate} | 3 | {ledger.prompt_tokens:,} | {ledger.completion_tokens:,} | "
                         f"{ledger.cost_usd:.4f} | submitted |"), line
    # bad rows are refused with what is valid
    with pytest.raises(ValueError, match="no column.*'tokens'.*its columns: run_id"):
        archive_meta_calls(archive, "tiny", TINY.hash, "x", [{"role": "curator", "tokens": 1}])
    with pytest.raises(ValueError, match="role must be one of"):
        archive_meta_calls(archive, "tiny", TINY.hash, "x", [{"role": "judge"}])


def test_an_archive_without_meta_calls_still_answers_queries_on_them(store):
    """Before any meta-LLM run is archived the table is empty, with its columns and types."""
    from agent_core.archive import SCHEMAS, run_query

    root, _ = store
    empty = run_query(root / "archive", "SELECT * FROM meta_calls WHERE list_contains(tool_calls, 'sql')")
    assert empty.num_rows == 0
    assert {f.name: f.type for f in empty.schema if f.name in SCHEMAS["meta_calls"].names} == \
        {f.name: f.type for f in SCHEMAS["meta_calls"]}
