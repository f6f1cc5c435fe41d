"""The inner loop with the scripted model on the tiny game."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent_core.models.base import Roles
from agent_core.conversation import rebuild_contexts
from agent_core.diagnostics import diagnose
from agent_core.episode import run_episode
from agent_core.models.base import ModelError
from agent_core.models.config import RoutineScript
from agent_core.models.scripted import ScriptedModel
from agent_core.scaffold import Scaffold
from agent_core.trace import read_trace
from environments import make_env

LOG_REPLY = "<|APPEND|>action_log.md|step done<|END|>\n<|DONE|>"
PLAN_REPLY = "<|SEARCH|>key<|END|>"
ACT_REPLY = "<|ACTION|>look<|END|>"


def by_routine(log=LOG_REPLY, plan=PLAN_REPLY, act=ACT_REPLY):
    """The built-in scripted policy: replies by the routine the last prompt asks for."""
    return RoutineScript(log=log, plan=plan, act=act).reply


#: what the latest prompt asks for, by the text the agent and the tiny scaffold write
_CUES = (("world action", "act"), ("PLAN continues", "plan_more"), ("PLAN routine", "plan"),
         ("LOG continues", "log_more"), ("LOG routine", "log"))


def by_turn(**replies):
    """Replies by what the latest prompt asks for: a routine's first turn (`log`, `plan`), its
    next turns after a look-up (`log_more`, `plan_more`; a callable gets the messages), the
    action (`act`); <|DONE|> otherwise."""
    def reply(messages):
        last = messages[-1].content
        for cue, key in _CUES:
            if cue in last and key in replies:
                r = replies[key]
                return r(messages) if callable(r) else r
        return "<|DONE|>"
    return reply


def play(tmp_path, roles, steps=3, scaffold=None, seed=0):
    env = make_env("tiny")
    sc = scaffold or Scaffold.builtin("tiny")
    summary = run_episode(env, sc, roles, seed=seed, max_steps=steps, out_dir=tmp_path / "ep")
    return summary, read_trace(summary.trace_path)


def test_log_and_plan_write_consult_and_act(tmp_path):
    model = ScriptedModel(by_routine())
    summary, trace = play(tmp_path, Roles(memory=model))
    assert summary.steps == 3 and trace.complete
    memory = (tmp_path / "ep" / "memory" / "action_log.md").read_text()
    assert memory.count("step done") == 3
    for step in trace.steps:
        assert [op.op for op in step.memory_ops] == ["append", "search"]
        assert [(c.routine, c.role) for c in step.calls][:2] == [("log", "memory"), ("plan", "memory")]
        assert step.action == "look" and step.action_source == "model"
    d = diagnose(trace)
    assert d.writes == 3 and d.consults == 3 and d.write_search_ratio == 1.0
    assert d.duplicate_write_ratio == pytest.approx(2 / 3)  # the same line appended again
    assert d.growth_chars_per_step > 0


def test_two_roles_share_one_conversation(tmp_path):
    memory = ScriptedModel(by_routine(plan="<|SEARCH|>door<|END|><|DONE|>"), model_id="specialist")
    action = ScriptedModel(by_routine(), model_id="base")
    _, trace = play(tmp_path, Roles(memory=memory, action=action), steps=2)
    calls = [c for s in trace.steps for c in s.calls]
    assert {(c.role, c.model) for c in calls} == {("memory", "specialist"), ("action", "base")}
    contexts = rebuild_contexts(calls)
    act_index = next(i for i, c in enumerate(calls) if c.role == "action")
    seen_by_action = "\n".join(m.content for m in contexts[act_index])
    # the memory role's consultation and its results are in the action role's context
    assert "<|SEARCH|>door<|END|>" in seen_by_action and "SEARCH:" in seen_by_action
    # the rebuilt contexts are exactly what each scripted model received
    received = memory.calls + action.calls
    assert sorted(json.dumps([m.model_dump() for m in c]) for c in contexts) == sorted(
        json.dumps([m.model_dump() for m in c]) for c in received)


def test_shared_model_may_act_during_plan(tmp_path):
    model = ScriptedModel(by_turn(log=LOG_REPLY, plan="<|READ|>strategy.md<|END|>",
                                  plan_more="<|ACTION|>wait<|END|>"))
    _, trace = play(tmp_path, Roles(memory=model), steps=2)
    for step in trace.steps:
        assert step.action == "wait" and all(c.role == "memory" for c in step.calls)
        assert [c.routine for c in step.calls] == ["log", "plan", "plan"]


def _seeded(tmp_path, files: dict[str, str]) -> Scaffold:
    """The tiny v0 scaffold with memory files seeded with `files`' text."""
    import yaml

    root = Scaffold.builtin("tiny").write_copy(tmp_path / "s")
    cfg = yaml.safe_load((root / "scaffold.yaml").read_text())
    for f in cfg["memory_files"]:
        f["initial"] = files.get(f["name"], f.get("initial", ""))
    (root / "scaffold.yaml").write_text(yaml.safe_dump(cfg))
    return Scaffold(root)


@pytest.mark.parametrize("constrain", [False, True])
def test_a_look_up_reaches_the_decision_it_was_made_for(tmp_path, constrain):
    """The look-up ends the reply; its result is in the context of the turn that acts, so
    what memory holds changes the action."""
    def act_on_what_was_found(messages):
        found = "map.md:1: vault is east" in messages[-1].content
        return "<|ACTION|>go east<|END|>" if found else "<|ACTION|>go west<|END|>"

    model = by_turn(log="<|DONE|>", plan="<|SEARCH|>vault<|END|>", plan_more=act_on_what_was_found)
    actions = {}
    for name, files in (("noted", {"map.md": "vault is east"}), ("blank", {})):
        _, trace = play(tmp_path / name, Roles(memory=ScriptedModel(model), constrain=constrain), steps=1,
                        scaffold=_seeded(tmp_path / name, files))
        step = trace.steps[0]
        assert [op.op for op in step.memory_ops] == ["search"] and step.ops_not_run == 0
        actions[name] = step.action
    assert actions == {"noted": "go east", "blank": "go west"}


def test_commands_after_a_look_up_in_one_free_text_reply_are_not_run_and_counted(tmp_path):
    model = by_turn(log="<|SEARCH|>hall<|END|><|APPEND|>progress.md|noted<|END|><|DONE|>")
    _, trace = play(tmp_path, Roles(memory=ScriptedModel(model)), steps=1)
    step = trace.steps[0]
    assert [op.op for op in step.memory_ops if op.routine == "log"] == ["search"]
    assert step.ops_not_run == 2  # the APPEND and the DONE
    assert "noted" not in (tmp_path / "ep" / "memory" / "progress.md").read_text()
    told = step.calls[1].new_messages[-1].content
    assert "2 command(s) after the look-up(s) not run" in told and "LOG continues" in told
    assert [c.routine for c in step.calls][:2] == ["log", "log"]  # the routine went on after the look-up


def test_a_nethack_map_row_is_written_and_read_back_byte_for_byte(tmp_path):
    row = "|..<..|  |-.>-|"
    model = by_turn(log=f"<|APPEND|>map.md|{row}<|END|><|DONE|>", plan="<|READ|>map.md<|END|>",
                    plan_more="<|ACTION|>look<|END|>")
    _, trace = play(tmp_path, Roles(memory=ScriptedModel(model), constrain=True), steps=1)
    assert (tmp_path / "ep" / "memory" / "map.md").read_text().splitlines()[-1] == row
    read = next(op for op in trace.steps[0].memory_ops if op.op == "read")
    assert read.ok and row in read.result
    assert trace.steps[0].invalid_ops == 0


@pytest.mark.parametrize("junk", [
    "", "I think I will go north.", "\x00\xff\xfe" * 50, "<|APPEND|>../../etc/passwd|x<|END|>",
    "<|WRITE|>a|b<|END|>", "x" * 200_000, "<|SEARCH|>" + "(a+)+$" * 100 + "<|END|>",
    "<|APPEND|>/abs/path|x<|END|><|ACTION|>fly<|END|>",
])
def test_any_model_output_never_crashes_an_episode(tmp_path, junk):
    model = ScriptedModel(lambda messages: junk)
    summary, trace = play(tmp_path, Roles(memory=model), steps=2)
    assert summary.steps == 2 and trace.complete
    assert all(s.action_source == "default" or s.action_text for s in trace.steps)
    assert not (tmp_path / "etc").exists() and not Path("/abs/path").exists()
    if "SEARCH" not in junk:
        assert summary.invalid_ops > 0


def test_unparseable_reply_gets_a_correction_and_default_action(tmp_path):
    model = ScriptedModel(lambda messages: "hello there")
    _, trace = play(tmp_path, Roles(memory=model), steps=1)
    step = trace.steps[0]
    assert step.action_source == "default" and step.action == "look"  # tiny's default
    contexts = rebuild_contexts(step.calls)
    assert any("could not parse" in m.content.lower() or "no action found" in m.content.lower()
               for m in contexts[-1])
    assert step.invalid_ops >= 3


def test_plan_cannot_write(tmp_path):
    model = ScriptedModel(by_routine(plan="<|APPEND|>strategy.md|sneaky<|END|><|DONE|>"))
    _, trace = play(tmp_path, Roles(memory=model), steps=1)
    plan_ops = [op for op in trace.steps[0].memory_ops if op.routine == "plan"]
    assert plan_ops and not plan_ops[0].ok and "not allowed" in plan_ops[0].result
    assert "sneaky" not in (tmp_path / "ep" / "memory" / "strategy.md").read_text()


def test_model_down_fails_clearly_and_keeps_trace(tmp_path):
    replies = [LOG_REPLY, PLAN_REPLY, ACT_REPLY]  # exactly one step, then the model is gone
    model = ScriptedModel(replies, when_exhausted="error")
    with pytest.raises(ModelError):
        play(tmp_path, Roles(memory=model), steps=5)
    trace = read_trace(tmp_path / "ep")
    assert len(trace.steps) == 1 and not trace.complete and trace.error


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from agent_core.models.base import Roles
    from agent_core.episode import run_episode
    from agent_core.models.scripted import ScriptedModel
    from agent_core.scaffold import Scaffold
    from environments import make_env

    def slow(messages):
        time.sleep(0.02)
        last = messages[-1].content
        if "Commit one world action" in last:
            return "<|ACTION|>look<|END|>"
        return "<|APPEND|>action_log.md|tick<|END|><|DONE|>"

    env = make_env("tiny", max_steps=100000)
    run_episode(env, Scaffold.builtin("tiny"), Roles(memory=ScriptedModel(slow)), seed=1,
                max_steps=100000, out_dir=Path(sys.argv[1]))
""")


def test_kill_mid_episode_keeps_every_played_step(tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(out)], cwd=Path(__file__).parents[2])
    trace_file = out / "trace.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline:
        if trace_file.exists() and trace_file.read_text().count('"kind":"step"') >= 5:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    trace = read_trace(out)
    assert not trace.complete and len(trace.steps) >= 5
    assert [s.step for s in trace.steps] == list(range(len(trace.steps)))
    memory = (out / "memory" / "action_log.md").read_text()
    assert memory.count("tick") >= len(trace.steps)
    # re-running in the same place keeps the killed attempt beside the new one
    env = make_env("tiny")
    run_episode(env, Scaffold.builtin("tiny"), Roles(memory=ScriptedModel(by_routine())), seed=1,
                max_steps=2, out_dir=out)
    assert read_trace(out / "attempts" / "0").steps == trace.steps
    assert read_trace(out).complete


@pytest.mark.parametrize("lookup, written, empty", [
    ("<|READ|>no-such-file.md<|END|>", False, False),  # a failed look-up saw nothing
    ("<|LIST|>", False, False),                         # names only, not contents
    ("<|SEARCH|>hall<|END|>", True, False),             # a hit in map.md
    ("<|READ|>map.md<|END|>", True, False),
    # no hits, an empty file: it returned nothing, which still shows the text is not there yet
    # (the refusal says so); the record says it was empty, and the diagnostics never count it used
    ("<|SEARCH|>no such words<|END|>", True, True),
    ("<|READ|>progress.md<|END|>", True, True),
])
def test_consult_before_write(tmp_path, lookup, written, empty):
    import yaml

    root = _seeded(tmp_path, {"map.md": "a hall with a door"}).root
    cfg = yaml.safe_load((root / "scaffold.yaml").read_text())
    cfg["log"]["consult_before_write"] = True
    (root / "scaffold.yaml").write_text(yaml.safe_dump(cfg))
    model = ScriptedModel(by_turn(log=lookup, log_more="<|APPEND|>progress.md|noted<|END|><|DONE|>"))
    _, trace = play(tmp_path, Roles(memory=model), steps=1, scaffold=Scaffold(root))
    looked, append = trace.steps[0].memory_ops[:2]
    assert append.op == "append" and append.ok is written
    assert looked.empty is empty  # the record says the look-up returned nothing
    assert ("noted" in (tmp_path / "ep" / "memory" / "progress.md").read_text()) is written


def test_under_consult_before_write_a_failed_look_up_ends_the_turn_and_is_no_consult(tmp_path):
    """Constrained: the first LOG turn is look-ups only; a failed one returns its error, and the
    next (last) turn may only end the routine."""
    import yaml

    root = _seeded(tmp_path, {"map.md": "hall"}).root
    cfg = yaml.safe_load((root / "scaffold.yaml").read_text())
    cfg["log"]["consult_before_write"] = True
    (root / "scaffold.yaml").write_text(yaml.safe_dump(cfg))
    model = ScriptedModel(by_turn(log="<|READ|>map.md|900-901<|END|>", log_more="<|DONE|>", act=ACT_REPLY))
    _, trace = play(tmp_path, Roles(memory=model, constrain=True), steps=1, scaffold=Scaffold(root))
    step = trace.steps[0]
    [read] = [op for op in step.memory_ops if op.routine == "log"]
    assert read.op == "read" and not read.ok
    grammars = step.grammars
    log_calls = [c for c in step.calls if c.routine == "log"]
    assert len(log_calls) == 2 and grammars[log_calls[1].grammar] == "<\\|DONE\\|>"
    assert read.result in log_calls[1].new_messages[-1].content


class _CutOff:
    """A model whose LOG replies are cut off by the token limit (finish reason "length")."""

    model_id = "cut"

    def __init__(self, log_reply: str):
        self.log_reply = log_reply

    def complete(self, messages, params, constraint=None):
        from agent_core.records import Completion

        reply = by_routine()(messages)
        if "LOG routine" in messages[-1].content:
            return Completion(text=self.log_reply, finish_reason="length")
        return Completion(text=reply)


@pytest.mark.parametrize("cut", ["<|APPEND|>action_log.md|half a sente",
                                 "<|APPEND|>action_log.md|whole<|END|>"])
def test_a_reply_cut_off_by_the_token_limit_is_invalid_and_its_open_command_not_run(tmp_path, cut):
    _, trace = play(tmp_path, Roles(memory=_CutOff(cut)), steps=1)
    step = trace.steps[0]
    log_call = step.calls[0]
    assert log_call.finish_reason == "length"
    assert step.invalid_ops == 1
    ran = [op.args.get("text") for op in step.memory_ops if op.routine == "log"]
    assert ran == ([] if "half" in cut else ["whole"])  # complete commands before the cut still run
    feedback = step.calls[1].new_messages[0].content
    assert "cut off at the token limit" in feedback


def test_operations_beyond_max_ops_are_invalid_with_one_line_of_feedback(tmp_path):
    many = "<|APPEND|>action_log.md|x<|END|>" * 9 + "<|DONE|>"
    _, trace = play(tmp_path, Roles(memory=ScriptedModel(by_routine(log=many))), steps=1)
    step = trace.steps[0]
    cap = Scaffold.builtin("tiny").config.log.max_ops
    assert len([op for op in step.memory_ops if op.routine == "log"]) == cap
    assert step.invalid_ops == 9 - cap
    feedback = step.calls[1].new_messages[0].content.splitlines()
    assert sum("not run" in line for line in feedback) == 1
    assert f"{9 - cap} operation(s) not run: at most {cap} per LOG." in feedback


def test_constrained_calls_record_their_grammar_once_per_trace(tmp_path):
    from agent_core.grammar import Grammar

    grammatical = by_routine(log="<|APPEND|>action_log.md|step done<|END|><|DONE|>", plan="<|DONE|>")
    _, trace = play(tmp_path, Roles(memory=ScriptedModel(grammatical), constrain=True), steps=3)
    recorded = {}
    for step in trace.steps:
        assert not set(step.grammars) & set(recorded)  # each text once
        recorded.update(step.grammars)
        for call in step.calls:
            assert call.grammar in recorded  # its text came with this step or an earlier one
            if call.finish_reason == "stop":
                assert Grammar(recorded[call.grammar]).matches(call.reply), call.reply
    routines = {(c.routine, c.role) for s in trace.steps for c in s.calls}
    assert routines == {("log", "memory"), ("plan", "memory"), ("plan", "action")}
    _, free = play(tmp_path / "free", Roles(memory=ScriptedModel(by_routine())), steps=1)
    assert all(c.grammar is None for c in free.steps[0].calls) and not free.steps[0].grammars


def test_each_reply_is_stored_once_and_huge_replies_are_cut_with_a_marker(tmp_path):
    huge = "<|APPEND|>action_log.md|" + "x" * 50_000 + "<|END|><|DONE|>"
    _, trace = play(tmp_path, Roles(memory=ScriptedModel(by_routine(log=huge))), steps=2)
    line = (tmp_path / "ep" / "trace.jsonl").read_text().split("\n")[1]
    assert len(line) < 2 * 16_000 + 20_000  # the reply is not repeated in the next call
    calls = [c for s in trace.steps for c in s.calls]
    log_call = calls[0]
    assert log_call.reply.endswith(f"[... {len(huge) - 16_000:,} characters cut]")
    assert log_call.finish_reason == "length" and trace.steps[0].invalid_ops >= 1
    assert not [op for op in trace.steps[0].memory_ops if op.routine == "log"]  # the cut command never ran
    for call in calls[1:]:
        assert all(m.content != log_call.reply for m in call.new_messages)
    # the contexts are still exactly rebuilt from the trace
    assert len(rebuild_contexts(calls)) == len(calls)


def test_a_failing_hook_is_recorded_as_a_hook_error_and_never_ends_the_episode(tmp_path):
    src = Scaffold.builtin("tiny").write_copy(tmp_path / "scaffold")
    (src / "hooks.py").write_text(
        "def postprocess_observation(text):\n    return 1 / 0\n\n"
        "def validate_write(op, args, files):\n    return {}['missing']\n")
    summary, trace = play(tmp_path, Roles(memory=ScriptedModel(by_routine())), steps=2, scaffold=Scaffold(src))
    assert summary.steps == 2 and trace.complete
    for step in trace.steps:
        # hooks run confined (agent_core.hooks): the hook's own error arrives inside a HookError
        assert step.hook_errors == ["postprocess_observation: HookError: ZeroDivisionError: division by zero"]
        [write] = [op for op in step.memory_ops if op.op == "append"]
        assert write.ok and write.hook_error == "validate_write: HookError: KeyError: 'missing'"  # not a refusal
    from agent_core.archive import archive_trace, connect

    archive_trace(summary.trace_path, tmp_path / "archive")
    con = connect(tmp_path / "archive")
    assert con.execute("select count(*) from memory_ops where hook_error is not null").fetchone()[0] == 2
    assert con.execute("select hook_errors[1] from steps limit 1").fetchone()[0].startswith("postprocess")
