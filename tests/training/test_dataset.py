"""Building the training set from a real archive: sandboxing, verbatim targets, exact
contexts, composition and content addressing."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_core.archive import connect
from agent_core.commands import OPS, format_command, parse_reply
from agent_core.training.dataset import build_dataset, compose, load_examples, strip_actions
from agent_core.training.program import (
    Composition,
    CurationProgram,
    LoraSettings,
    ProgramError,
    RoutineMix,
    pool_digest,
    rule_based_program,
)

LORA = LoraSettings(rank=4, alpha=8, target_modules=["q_proj", "v_proj"], learning_rate=1e-3, max_seq_len=64)


def program(sql: str = "select call_id from calls", **comp) -> CurationProgram:
    composition = dict(routine_mix=RoutineMix(log=0.5, plan=0.5), max_per_episode=100, min_examples=1,
                       max_examples=1000, top_episode_share=1.0)
    composition.update(comp)
    return CurationProgram(selection_sql=sql, composition=Composition(**composition), lora=LORA)


def replies(root: Path) -> dict[str, tuple[str, str, str]]:
    con = connect(root)
    try:
        return {cid: (routine, role, reply) for cid, routine, role, reply in
                con.execute("select call_id, routine, role, reply from calls").fetchall()}
    finally:
        con.close()


# -- the SQL is sandboxed on the program path -------------------------------------------------

@pytest.mark.parametrize("sql", [
    "select * from read_csv('/etc/passwd')",
    "select content as call_id from read_text('/etc/hostname')",
    "select * from '/etc/hostname'",
    "COPY (select call_id from calls) TO '{out}/out.csv'",
    "COPY calls TO '{archive}/leak.parquet'",
    "ATTACH '{out}/other.db' AS other",
    "select call_id from calls; drop view calls",
    "INSTALL httpfs",
    "SET enable_external_access = true",
    "CREATE TABLE t AS select call_id from calls",
    "select call_id from calls where call_id in (select * from read_parquet('/etc/*.parquet'))",
])
def test_selection_sql_is_sandboxed(archive, tmp_path, sql):
    out = tmp_path / "datasets"
    sql = sql.format(out=tmp_path, archive=archive.root)
    before = sorted(p for p in archive.root.rglob("*"))
    with pytest.raises(ProgramError) as info:
        build_dataset(archive.root, program(sql), out)
    assert info.value.reason.startswith("selection_sql refused")
    assert not out.exists()  # nothing was written: no dataset, no temp folder
    assert sorted(tmp_path.iterdir()) == []
    assert sorted(p for p in archive.root.rglob("*")) == before


def test_selection_time_limit_and_shape(archive, tmp_path):
    with pytest.raises(ProgramError, match="time limit"):
        build_dataset(archive.root, program("select count(*)::varchar as call_id from range(100000000000)"),
                      tmp_path, timeout_s=0.5)
    with pytest.raises(ProgramError, match="must return a column named call_id"):
        build_dataset(archive.root, program("select episode_id from calls"), tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sql", [
    "select call_id from calls where false",
    "select call_id from calls where routine = 'nonexistent'",
    "select null as call_id",
])
def test_empty_selection_is_refused(archive, tmp_path, sql):
    with pytest.raises(ProgramError, match="^selection returned no calls$"):
        build_dataset(archive.root, program(sql), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_selection_of_only_action_calls_is_refused(archive, tmp_path):
    with pytest.raises(ProgramError, match="no usable memory-role"):
        build_dataset(archive.root, program("select call_id from calls where role = 'action'"), tmp_path)
    assert list(tmp_path.iterdir()) == []


# -- examples are verbatim, memory-only, action-free, with exact contexts -----------------------

@pytest.fixture(scope="module")
def everything(archive, tmp_path_factory):
    """All calls selected (action-role ones too): the builder must keep only memory turns."""
    out = tmp_path_factory.mktemp("datasets")
    info = build_dataset(archive.root, program(), out)
    return info, load_examples(info.path)


def test_examples_are_verbatim_memory_turns_without_actions(archive, everything):
    info, examples = everything
    calls = replies(archive.root)
    memory = {cid for cid, (routine, role, _) in calls.items() if role == "memory"}
    action_only = {cid for cid in memory if calls[cid][2] == "<|ACTION|>look<|END|>"}
    # every memory call but the PLAN-acts model's action-only replies, no other
    assert {e["meta"]["call_id"] for e in examples} == memory - action_only
    # consult: 16 steps x (2 LOG + 2 PLAN); PLAN-acts: 8 steps x (1 LOG + 1 PLAN look-up)
    assert info.examples == len(examples) == 80 and len(action_only) == 8
    assert info.per_routine == {"log": 40, "plan": 40} and info.per_game == {"tiny": 80}
    for e in examples:
        routine, role, reply = calls[e["meta"]["call_id"]]
        assert role == "memory" and routine == e["meta"]["routine"]
        assert e["target"] == reply and "<|ACTION|>" not in e["target"].upper()  # verbatim
        commands = parse_reply(e["target"]).commands
        assert not parse_reply(e["target"]).errors
        # every memory turn ends with DONE or with the look-up group that ended the reply
        assert commands[-1].op == "done" or OPS[commands[-1].op].read_only
    card = json.loads((info.path / "data_card.json").read_text())
    assert card["filters"].get("actions_removed", 0) == 0 and card["filters"]["dropped_action_only"] == 8
    assert card["filters"]["dropped_not_memory_role"] == 16


def test_contexts_are_exactly_what_the_model_received(archive, everything):
    _, examples = everything
    for e in examples:
        episode_id, n = e["meta"]["call_id"].rsplit(":", 1)
        seen = archive.received[episode_id][int(n)]
        assert e["messages"] == [m.model_dump() for m in seen]
        assert e["messages"][0]["role"] == "system" and e["messages"][-1]["role"] == "user"


def test_dataset_is_content_addressed_and_reused(archive, everything, tmp_path):
    info, _ = everything
    again = build_dataset(archive.root, program(), info.path.parent)
    assert again.reused and again.path == info.path and again.digest == info.digest
    elsewhere = build_dataset(archive.root, program(), tmp_path)
    assert not elsewhere.reused and elsewhere.path.name == info.path.name
    for name in ("train.jsonl", "data_card.json", "data_card.md"):
        assert (elsewhere.path / name).read_bytes() == (info.path / name).read_bytes()
    # the LoRA settings and rationale do not change the data; the composition does
    other = program().model_copy(update={"lora": LORA.model_copy(update={"rank": 16}), "rationale": "x"})
    assert build_dataset(archive.root, other, tmp_path).path == elsewhere.path
    smaller = build_dataset(archive.root, program(max_examples=10), tmp_path)
    assert smaller.path != elsewhere.path and smaller.examples == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({elsewhere.digest, smaller.digest})


def test_data_card(everything, base_path, tmp_path, archive):
    info, _ = everything
    card = json.loads((info.path / "data_card.json").read_text())
    assert card["query"] == "select call_id from calls" and card["program"]["lora"]["rank"] == 4
    assert card["per_game_routine"] == {"tiny/log": 40, "tiny/plan": 40}
    assert card["target_chars"]["min"] > 0 and card["context_chars"]["max"] > card["context_chars"]["min"]
    md = (info.path / "data_card.md").read_text()
    assert info.digest in md and "select call_id from calls" in md

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_path, local_files_only=True)
    with_tokens = build_dataset(archive.root, program(max_examples=6), tmp_path, tokenizer=tok)
    card = json.loads((with_tokens.path / "data_card.json").read_text())
    assert 0 < card["target_tokens"]["max"] < card["context_tokens"]["min"]


# -- composition ----------------------------------------------------------------------------

def test_rule_based_selection_keeps_consult_before_write(archive, tmp_path):
    prog = rule_based_program(pool_digest(archive.root))
    info = build_dataset(archive.root, prog.model_copy(update={"composition": prog.composition.model_copy(
        update={"routine_mix": RoutineMix(log=1.0, plan=0.0)})}), tmp_path)
    examples = load_examples(info.path)
    logs = [e for e in examples if e["meta"]["routine"] == "log"]
    # the episodes above the mean progression (the consulting ones that took the key) give their
    # look-up turns and the writes that followed them; the others (the PLAN-acts episodes append
    # without searching first) give nothing, having no credited chain
    assert {e["meta"]["episode_id"] for e in examples} <= {
        e for e, p in archive.progression.items() if p > sum(archive.progression.values()) / 6}
    assert {e["target"] for e in logs} <= {"<|SEARCH|>saw<|END|>", "<|APPEND|>action_log.md|saw: step done<|END|><|DONE|>"}
    # 12 turns selected (6 links of credited chains, all LOG, and as many outcome turns drawn by
    # the digest of their call ids, which change with the sources; PLAN turns that only said DONE
    # did no memory work): a LOG-only mix keeps every selected LOG turn
    assert info.per_routine == {"log": pool_digest(archive.root)["rule_based_turns"]["log"], "plan": 0}


def test_top_episode_share_keeps_the_best_episodes(archive, tmp_path):
    info = build_dataset(archive.root, program(top_episode_share=0.5), tmp_path)
    episodes = {e["meta"]["episode_id"] for e in load_examples(info.path)}
    assert len(episodes) == 3
    assert all(archive.progression[e] == max(archive.progression.values()) for e in episodes)


def test_caps_and_mix_are_deterministic(archive, tmp_path):
    prog = program(max_per_episode=3, routine_mix=RoutineMix(log=0.25, plan=0.75), max_examples=12)
    first = build_dataset(archive.root, prog, tmp_path / "a")
    examples = load_examples(first.path)
    # which calls survive the per-episode cap is a seeded sample keyed by episode ids (which
    # change with the protocol version), so the counts are checked against the rules, not pinned
    total = sum(first.per_routine.values())
    assert 0 < total <= 12 and abs(first.per_routine["log"] - 0.25 * total) < 1
    assert max(Counter(e["meta"]["episode_id"] for e in examples).values()) <= 3
    again = build_dataset(archive.root, prog, tmp_path / "b")
    assert (again.path / "train.jsonl").read_bytes() == (first.path / "train.jsonl").read_bytes()
    reseeded = build_dataset(archive.root, prog.model_copy(update={"composition": prog.composition.model_copy(
        update={"seed": 1})}), tmp_path / "c")
    assert reseeded.digest != first.digest


def test_too_few_examples_is_a_failed_trial(archive, tmp_path):
    with pytest.raises(ProgramError, match="fewer than min_examples 100"):
        build_dataset(archive.root, program(min_examples=100, max_examples=200), tmp_path)
    # a routine asked for but not selected leaves nothing at all
    with pytest.raises(ProgramError, match="composition leaves 0 examples"):
        build_dataset(archive.root, program("select call_id from calls where routine = 'plan'",
                                            routine_mix=RoutineMix(log=1.0, plan=0.0)), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_compose_largest_remainder():
    cands = [dict(call_id=f"e{i % 2}:{i}", episode_id=f"e{i % 2}", game="g", call_index=i,
                  routine="log" if i < 10 else "plan", target="t") for i in range(20)]
    prog = program(routine_mix=RoutineMix(log=0.33, plan=0.67), max_examples=14)
    chosen = compose(cands, {"e0": 1.0, "e1": 0.0}, prog, Counter())
    assert Counter(c["routine"] for c in chosen) == {"log": 5, "plan": 9}
    assert chosen == sorted(chosen, key=lambda c: (c["episode_id"], c["call_index"]))


# -- action removal ---------------------------------------------------------------------------

def test_strip_actions_cuts_verbatim():
    assert strip_actions("<|SEARCH|>key<|END|><|ACTION|>look<|END|>") == "<|SEARCH|>key<|END|>"
    assert strip_actions("I will look.\n<| action |>go north<|END|>\n<|DONE|>") == "I will look.\n\n<|DONE|>"
    assert strip_actions("<|ACTION|>go north") == ""  # missing END at the very end
    assert strip_actions("<|READ|>a.md<|END|>") == "<|READ|>a.md<|END|>"
    assert strip_actions("<|ACTION|><|READ|>a.md<|END|>") is None  # malformed: not cut, dropped


_memory_cmd = st.sampled_from([
    format_command("search", query="key"), format_command("read", file="map.md", lines="1-5"),
    format_command("append", file="notes.md", text="saw a door | locked"), format_command("done")])
_action_cmd = st.sampled_from([format_command("action", name="go north"), "<|action|> look <|END|>"])


@settings(deadline=None)
@given(st.lists(st.tuples(st.one_of(_memory_cmd, _action_cmd), st.sampled_from(["", " ", "\n", "ok. "])),
                max_size=6))
def test_strip_actions_keeps_everything_else(parts):
    reply = "".join(sep + cmd for cmd, sep in parts)
    expected = "".join(sep + (cmd if "ACTION" not in cmd.upper() else "") for cmd, sep in parts)
    out = strip_actions(reply)
    assert out == expected
    assert [c for c in parse_reply(out).commands] == [c for c in parse_reply(reply).commands if c.op != "action"]


def test_leftovers_of_killed_builds_are_cleared(archive, tmp_path):
    import os

    old, fresh = tmp_path / ".tmp-0123-old", tmp_path / ".tmp-4567-live"
    for d in (old, fresh):
        d.mkdir()
        (d / "train.jsonl").write_text("partial")
    os.utime(old, (0, 0))
    info = build_dataset(archive.root, program(max_examples=4), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([info.digest, fresh.name])


class _Replies:
    """A memory model whose LOG replies are given per step (some cut off by the token limit)."""

    model_id = "replies"

    def __init__(self, log_replies):
        self.log_replies, self.step = list(log_replies), 0

    def complete(self, messages, params, constraint=None):
        from agent_core.models.config import RoutineScript
        from agent_core.records import Completion

        if "LOG routine" in messages[-1].content:
            text, finish, *closed = self.log_replies[self.step % len(self.log_replies)]
            self.step += 1
            return Completion(text=text, finish_reason=finish, closed_at_budget=bool(closed),
                              written=closed[0] if closed else None)
        return Completion(text=RoutineScript(plan="<|SEARCH|>key<|END|><|ACTION|>look<|END|>").reply(messages))


def test_cut_off_replies_and_operations_beyond_the_cap_are_never_targets(tmp_path):
    from agent_core.models.base import Roles
    from agent_core.archive import archive_trace
    from agent_core.episode import run_episode
    from agent_core.scaffold import Scaffold
    from environments import make_env

    good = "<|APPEND|>map.md|a hall<|END|><|SEARCH|>hall<|END|>"  # writes, then a look-up ends it
    over_cap = "<|APPEND|>map.md|x<|END|>" * 6 + "<|DONE|>"  # tiny v0 runs at most 4
    after_look_up = "<|SEARCH|>hall<|END|><|APPEND|>map.md|late<|END|><|DONE|>"  # the write never ran
    cut = "<|SEARCH|>door<|END|><|APPEND|>map.md|a do"
    model = _Replies([(good, "stop"), (over_cap, "stop"), (after_look_up, "stop"), (cut, "length")])
    s = run_episode(make_env("tiny"), Scaffold.builtin("tiny"), Roles(memory=model), 0, 4, tmp_path / "ep")
    archive_trace(s.trace_path, tmp_path / "archive")
    info = build_dataset(tmp_path / "archive", program(), tmp_path / "sets")
    targets = [e["target"] for e in load_examples(info.path)]
    assert good in targets and over_cap not in targets and after_look_up not in targets
    assert not any(t.startswith(cut) for t in targets)
    card = json.loads((info.path / "data_card.json").read_text())
    assert card["filters"]["dropped_ops_not_run"] == 2 and card["filters"]["dropped_truncated"] == 1
    # PLAN's free-text action after its look-up never ran: cut out, the look-up is the target
    assert "<|SEARCH|>key<|END|>" in targets and card["filters"]["actions_removed"] == 4


def test_replies_closed_at_the_budget_run_but_are_targets_only_when_a_program_asks(tmp_path):
    from agent_core.models.base import Roles
    from agent_core.archive import archive_trace
    from agent_core.diagnostics import diagnose
    from agent_core.episode import run_episode
    from agent_core.scaffold import Scaffold
    from agent_core.trace import read_trace
    from environments import make_env

    own = "<|APPEND|>map.md|a hall<|END|><|SEARCH|>hall<|END|>"
    closed = "<|APPEND|>map.md|a long corridor<|END|><|DONE|>"  # the backend completed it
    written = "<|APPEND|>map.md|a long corridor to the"
    model = _Replies([(own, "stop"), (closed, "stop", written)])
    s = run_episode(make_env("tiny"), Scaffold.builtin("tiny"), Roles(memory=model), 0, 4, tmp_path / "ep")
    trace = read_trace(s.trace_path)
    calls = [c for st in trace.steps for c in st.calls if c.reply == closed]
    assert len(calls) == 2 and all(c.closed_at_budget and c.written == written for c in calls)
    assert any(op.op == "append" and op.ok and "corridor" in op.args.get("text", "") for st in trace.steps
               for op in st.memory_ops)  # the agent ran the closed reply
    assert diagnose(trace).closed_replies == 2
    archive_trace(s.trace_path, tmp_path / "archive")
    info = build_dataset(tmp_path / "archive", program(), tmp_path / "sets")
    targets = [e["target"] for e in load_examples(info.path)]
    assert own in targets and closed not in targets
    card = json.loads((info.path / "data_card.json").read_text())
    assert card["filters"]["dropped_closed_at_budget"] == 2
    asked = build_dataset(tmp_path / "archive", program(closed_replies=True), tmp_path / "sets")
    assert closed in [e["target"] for e in load_examples(asked.path)]


@pytest.mark.slow
def test_long_contexts_are_cut_in_the_middle_keeping_system_prompt_and_demonstrations(base_path):
    from transformers import AutoTokenizer

    from agent_core.training.encoding import encode_example

    tok = AutoTokenizer.from_pretrained(base_path, local_files_only=True)
    messages = [{"role": "system", "content": "SYSTEM RULES " * 5},
                {"role": "user", "content": "DEMO QUESTION"}, {"role": "assistant", "content": "DEMO ANSWER"},
                *[{"role": "user", "content": f"old step {i} " * 20} for i in range(5)],
                {"role": "user", "content": "LATEST OBSERVATION"}]
    target = "<|DONE|>"
    encoded = encode_example(tok, messages, target, max_seq_len=120, fixed=3)
    assert len(encoded.input_ids) == 120
    text = tok.decode(encoded.input_ids)
    assert text.startswith("<|im_start|>system\nSYSTEM RULES") and "DEMO ANSWER" in text
    assert "LATEST OBSERVATION" in text and text.rstrip().endswith("<|DONE|><|im_end|>")
    assert "old step 0" not in text  # the middle of the history went
    # the fixed messages alone do not fit: the example is dropped, never cut at the front
    assert encode_example(tok, messages, target, max_seq_len=30, fixed=3) is None
