"""Traces survive anything a model writes: every reader splits JSONL on "\\n" only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from agent_core.models.base import Roles
from agent_core.archive import archive_trace, run_query
from agent_core.episode import run_episode
from agent_core.models.config import RoutineScript
from agent_core.models.scripted import ScriptedModel
from agent_core.meta.loop import render_review_trace
from agent_core.scaffold import Scaffold
from agent_core.trace import TraceError, read_trace
from automem_cli.main import app
from environments import make_env

#: every character `str.splitlines` ends a line at, and every C0 and C1 control character
SEPARATORS = [chr(c) for c in (*range(0x20), 0x7f, *range(0x80, 0xa0), 0x2028, 0x2029)]


def _play_and_read_back(out: Path, text: str) -> None:
    """Play two tiny steps whose LOG reply holds `text` (through the real agent and trace
    writer), then read the trace back with every reader: the reader, the archive and
    `automem trace show`."""
    reply = f"<|APPEND|>action_log.md|{text}<|END|><|DONE|>"
    model = ScriptedModel(RoutineScript(log=reply).reply, enforce_grammar=False)
    summary = run_episode(make_env("tiny"), Scaffold.builtin("tiny"), Roles(memory=model), 0, 2, out / "episode")
    raw = Path(summary.trace_path).read_text(encoding="utf-8")
    assert raw.count("\n") == 4  # header, two steps, summary: one "\n" each, none inside a record
    trace = read_trace(summary.trace_path)
    assert trace.complete and len(trace.steps) == 2
    logs = [c.reply for s in trace.steps for c in s.calls if c.routine == "log"]
    assert logs == [reply, reply]
    archive_trace(summary.trace_path, out / "archive")
    table = run_query(out / "archive", "select reply from calls where routine = 'log' order by call_id")
    assert table.column("reply").to_pylist() == logs
    shown = CliRunner().invoke(app, ["trace", "show", summary.trace_path, "--full"])
    assert shown.exit_code == 0, shown.output
    assert "step 1" in shown.output and "incomplete" not in shown.output


def test_a_reply_holding_every_separator_and_control_character_reads_back(tmp_path):
    _play_and_read_back(tmp_path, "a" + "b".join(SEPARATORS) + "c")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from([*SEPARATORS, "a", " ", "é", "\u0000"]), min_size=1, max_size=30))
def test_any_reply_text_reads_back(tmp_path_factory, text):
    _play_and_read_back(tmp_path_factory.mktemp("trace"), text)


def _played(tmp_path: Path) -> Path:
    reply = "<|APPEND|>action_log.md|a\u2028b\u0085c<|END|><|DONE|>"
    model = ScriptedModel(RoutineScript(log=reply).reply)
    return Path(run_episode(make_env("tiny"), Scaffold.builtin("tiny"), Roles(memory=model), 0, 3,
                            tmp_path / "e").trace_path)


def test_a_line_that_is_not_json_fails_with_its_number_after_every_other_line_is_read(tmp_path):
    path = _played(tmp_path)
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[2] = "not json"
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(TraceError, match=r"trace\.jsonl:3 is not JSON; 4 other lines read"):
        read_trace(path)
    lines[1] = "{torn"
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(TraceError, match=r"trace\.jsonl:2 is not JSON \(nor lines 3\); 3 other lines read"):
        read_trace(path)


def test_a_torn_last_line_is_left_out(tmp_path):
    path = _played(tmp_path)
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: text.rindex("\n", 0, -1) + 20], encoding="utf-8")  # the summary cut by a kill
    trace = read_trace(path)
    assert not trace.complete and len(trace.steps) == 3


def test_a_review_trace_holding_separators_renders(tmp_path):
    path = tmp_path / "agent-0.jsonl"
    text = "found\u2028it\u0085here\x1c"
    records = [{"kind": "start", "model": "m", "tools": ["t"], "task": "look",
                "budget": {"max_steps": 2, "max_review_tokens": 10}}, {"kind": "note", "text": text}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    assert text in render_review_trace(path)
