"""The meta-LLM's tools over the trace store: real archive (pyarrow + DuckDB) built from
tiny-game episodes played by the scripted model."""

from __future__ import annotations

import json

import pytest

from agent_core.meta.tools import Toolbox
from agent_core.review.agentic import ReviewerToolbox
from agent_core.training.agentic import CuratorToolbox
from agent_core.scaffold import Scaffold
from agent_core.trace import read_trace
from tiny_archive import archive_tiny


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two 6-step tiny episodes, archived."""
    root = tmp_path_factory.mktemp("store")
    scaffold = Scaffold.builtin("tiny")
    return root, scaffold, [read_trace(path) for path in archive_tiny(root, scaffold, 6)]


@pytest.fixture()
def box(store):
    root, scaffold, _ = store
    tools = ReviewerToolbox(root / "archive", scaffold, root / "scaffolds")
    yield tools
    tools.close()


def test_specs_are_openai_function_tools_with_plain_schemas(box):
    specs = box.specs()
    names = [s["function"]["name"] for s in specs]
    assert names == ["sql", "trace", "grep", "memory_at", "memory_diff", "read_file", "submit_revision"]
    for s in specs:
        assert s["type"] == "function"
        params = s["function"]["parameters"]
        assert params["type"] == "object" and params["additionalProperties"] is False
        assert "$ref" not in json.dumps(params) and "$defs" not in params


def test_sql_caps_rows_and_reads_tables(box, store):
    box.caps.max_rows = 3
    r = box.call("sql", {"query": "select episode_id, step from steps order by step desc, episode_id;"})
    assert r.ok
    lines = r.content.splitlines()
    assert lines[0] == "episode_id\tstep" and len(lines) == 1 + 3 + 1
    assert [int(x.split("\t")[1]) for x in lines[1:4]] == [5, 5, 4]  # the query's order kept
    assert lines[-1].startswith("[3 rows shown; more rows exist")
    all_rows = box.call("sql", {"query": "select count(*) as n from steps"})
    assert all_rows.content.splitlines() == ["n", "12", "[1 rows shown]"]


@pytest.mark.parametrize("query", [
    "select * from read_csv('/etc/passwd')",
    "select * from read_text('/etc/passwd')",
    "INSERT INTO steps VALUES (1)",
    "ATTACH '/tmp/x.db' AS x",
    "COPY (select 1) TO '/tmp/automem-copy.csv'",
    "SET enable_external_access = true",
    "select 1; drop view steps",
    "select 1) as q; ATTACH '/tmp/x.db' AS x; select * from (select 1",
])
def test_sql_refuses_files_writes_and_attach(box, query):
    r = box.call("sql", {"query": query})
    assert not r.ok and r.content.startswith("error:")
    # the archive still answers afterwards
    assert box.call("sql", {"query": "select count(*) as n from steps"}).content.splitlines()[1] == "12"


#: run in a fresh process: the sql tool's result and the process's peak RSS (MB) around it
RSS_PROBE = """
import sys
from pathlib import Path
from agent_core.review.agentic import ReviewerToolbox
from agent_core.scaffold import Scaffold
box = ReviewerToolbox(Path(sys.argv[1]), Scaffold.builtin("tiny"), Path(sys.argv[2]))
box.caps.max_rows = 50
box.caps.sql_timeout_s = 120  # what is measured is rows and memory, not speed on a loaded machine
def peak_mb():  # this process's own peak (getrusage's ru_maxrss keeps a forked parent's across exec)
    status = Path("/proc/self/status").read_text()
    return int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]) // 1024
box.call("sql", {"query": "select count(*) from steps"})  # DuckDB and the views loaded
before = peak_mb()
r = box.call("sql", {"query": sys.argv[3]})
print(int(r.ok), len(r.content.splitlines()) - 2, peak_mb() - before, peak_mb())
print(r.content[-300:].replace(chr(10), " "), file=sys.stderr)
"""


@pytest.mark.parametrize("query, answers", [
    ("select repeat('x', 10000) s from range(100000) --", True),
    ("select * from (select repeat('x', 10000) s from range(100000)) as q --", True),
    ("select s from (select repeat('x', 10000) s from range(100000)) limit 1000000 -- a cap of its own", True),
    # a sort of the whole gigabyte cannot stream: DuckDB's memory limit stops it
    ("select repeat('x', 10000) || i s from range(100000) t(i) order by s limit 1000000 --", False),
])
def test_sql_row_cap_cannot_be_commented_away_and_memory_stays_small(store, tmp_path, query, answers):
    import subprocess
    import sys

    root, _, _ = store
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(root / "archive"), str(tmp_path), query],
                         capture_output=True, text=True, timeout=300, check=True)
    ok, rows, grew_mb, peak = map(int, out.stdout.split())
    assert ok == answers, out.stderr
    if ok:
        assert rows <= 50  # at most the cap (rows shown also stop at the character cap)
    # the whole result is 1 GB. The process's peak RSS grows by what the query holds: a streamed,
    # capped query a few rows (measured: +2 MB over the process's ~130 MB), a query that must
    # hold everything at most DuckDB's limit (128 MB) and its working set (measured: +122 MB).
    # The process's own size before the query depends on the machine, so the growth is what is tested.
    assert grew_mb < (100 if answers else 250), f"peak RSS grew by {grew_mb} MB"
    assert not answers or peak < 200, f"peak RSS {peak} MB"


def test_sql_runs_under_duckdbs_limits_and_reads_no_temp_directory(box, tmp_path, monkeypatch):
    limits = box.call("sql", {"query": "select current_setting('memory_limit') m, current_setting('threads') t, "
                                       "current_setting('temp_directory') d"})
    assert limits.ok and limits.content.splitlines()[1].split("\t") == ["122.0 MiB", "2", ""]
    assert not box.call("sql", {"query": "select 1; SET memory_limit = '10GB'"}).ok
    # DuckDB's default temp directory, <cwd>/.tmp, would be an allowed directory
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "secret.txt").write_text("planted secret")
    for path in (".tmp/secret.txt", str(tmp_path / ".tmp" / "secret.txt")):
        r = box.call("sql", {"query": f"select content from read_text('{path}')"})
        assert not r.ok and "planted secret" not in r.content
    too_big = box.call("sql", {"query": "select list(repeat('x', 1000)) from range(1000000)"})
    assert not too_big.ok and "memory" in too_big.content.lower()


def test_trace_shows_full_calls_and_ops_and_pages(box, store):
    _, _, traces = store
    t = traces[0]
    r = box.call("trace", {"episode": t.header.episode_id[:10], "from_step": 1, "to_step": 2})
    assert r.ok
    step1 = t.steps[1]
    assert f"=== step 1:" in r.content and "=== step 2:" in r.content and "=== step 3" not in r.content
    assert step1.observation in r.content
    assert all(c.reply in r.content for c in step1.calls)
    assert all(m.content in r.content for c in step1.calls for m in c.new_messages)
    assert all(o.result in r.content for o in step1.memory_ops)
    box.caps.max_chars = 500
    page = box.call("trace", {"episode": t.header.episode_id, "from_step": 0, "to_step": 5})
    assert page.ok and "continue with offset=500" in page.content
    nxt = box.call("trace", {"episode": t.header.episode_id, "from_step": 0, "to_step": 5, "offset": 500})
    assert nxt.ok and "characters 500-1000" in nxt.content


def test_grep_finds_hits_with_episode_and_step(box, store):
    import re

    _, _, traces = store
    t = traces[0]
    needle = next(o for s in t.steps for o in s.memory_ops if o.op == "append").args["text"]
    expected = [(s.step, o.args["text"]) for s in t.steps for o in s.memory_ops if needle in json.dumps(o.args)]
    r = box.call("grep", {"pattern": re.escape(needle), "fields": ["op_args"], "episode": t.header.episode_id,
                          "max_hits": 2})
    assert r.ok and f"[2 of {len(expected)} hits shown]" in r.content
    first = r.content.splitlines()[0]
    assert first.startswith(f"{t.header.episode_id[:12]} step {expected[0][0]} op_args:") and needle in first
    assert "no hits" in box.call("grep", {"pattern": "zzqqxx-never"}).content
    assert not box.call("grep", {"pattern": "("}).ok


def test_memory_at_replays_to_the_final_memory_and_diffs(box, store):
    _, _, traces = store
    t = traces[0]
    last = len(t.steps) - 1
    final = {p.name: p.read_text() for p in t.memory_dir.iterdir()}
    box.caps.max_chars = 200_000
    for name, text in final.items():
        r = box.call("memory_at", {"episode": t.header.episode_id, "step": last, "file": name})
        assert r.ok and r.content == text, name
    diff = box.call("memory_diff", {"episode": t.header.episode_id, "step_a": -1, "step_b": last})
    added = [o.args["text"] for s in t.steps for o in s.memory_ops if o.op == "append" and o.ok]
    assert diff.ok and all(f"+{a}" in diff.content for a in added)
    # going back in time replays again from the start
    early = box.call("memory_at", {"episode": t.header.episode_id, "step": 0, "file": "action_log.md"})
    assert early.ok and early.content != final["action_log.md"]
    assert "note:" not in box.call("memory_at", {"episode": t.header.episode_id, "step": 2}).content


@pytest.mark.parametrize("path", ["/etc/passwd", "../../etc/passwd", "agent_core/../../etc/passwd",
                                  "tests/conftest.py", ".venv/pyvenv.cfg", "pyproject.toml",
                                  "environments/tiny.py", "environments"])
def test_read_file_refuses_outside_scaffold_and_code(box, path):
    r = box.call("read_file", {"path": path})
    assert not r.ok and ("outside what you may read" in r.content or "no readable file" in r.content)


def test_read_file_shows_scaffold_and_code(box, store):
    _, scaffold, _ = store
    r = box.call("read_file", {"path": "scaffold.yaml"})
    assert r.ok and r.content.startswith(scaffold.files["scaffold.yaml"].decode()[:100])
    code = box.call("read_file", {"path": "agent_core/memory.py", "offset": 6000})
    assert code.ok and "characters 6000-12000 of" in code.content
    listing = box.call("read_file", {"path": "agent_core/meta"})
    assert listing.ok and "agent_core/meta/tools.py" in listing.content


@pytest.mark.parametrize("name,arguments,expect", [
    ("nope", "{}", "unknown tool 'nope'"),
    ("sql", "{not json", "not valid JSON"),
    ("sql", "[1, 2]", "must be a JSON object"),
    ("sql", {"q": "select 1"}, "bad arguments for sql"),
    ("trace", {"episode": "zzz"}, "no episode 'zzz'"),
    ("trace", {"episode": "", "from_step": -3}, "bad arguments for trace"),
    ("memory_at", {"episode": "", "step": 99}, ""),
])
def test_bad_calls_are_error_results(box, name, arguments, expect):
    r = box.call(name, arguments)
    assert not r.ok and r.content.startswith("error:") and expect in r.content


def test_submit_revision_validates_and_feeds_back(box, store):
    _, scaffold, traces = store
    h = {"failure": "action_log grows without bound", "episode": traces[0].header.episode_id[:8], "step": 3,
         "why": "a keyed table holds one line per key"}
    bad = box.call("submit_revision", {"hypothesis": h, "analysis": "x", "changes": ["reword"],
                                       "files": {"prompts/log.jinja": "Log it."}})
    assert not bad.ok and "rejected: no structural change" in bad.content and bad.accepted is None
    yaml_text = scaffold.files["scaffold.yaml"].decode().replace("history_window: 2", "history_window: 3")
    good = box.call("submit_revision", {"hypothesis": h, "analysis": "longer history", "changes": ["history 3"],
                                        "files": {"scaffold.yaml": yaml_text}})
    assert good.ok and good.accepted["candidate"].config.history_window == 3
    assert "step 3" in good.accepted["revision"].analysis
    assert [s["verdict"] for s in box.submissions] == ["rejected", "valid"]


def test_submit_program_checks_the_selection(store):
    from agent_core.training.curator import OK_TURNS_SQL
    from agent_core.training.program import rule_based_program

    root, scaffold, _ = store
    box = CuratorToolbox(root / "archive", scaffold)
    program = rule_based_program({}).model_dump(mode="json")
    empty = box.call("submit_program", {"program": {**program, "selection_sql": "select 'x' as call_id where false"}})
    assert not empty.ok and "no calls" in empty.content
    ok = box.call("submit_program", {"program": {**program, "selection_sql": OK_TURNS_SQL}})
    assert ok.ok and ok.accepted["program"].selection_sql == OK_TURNS_SQL
    assert not box.call("submit_program", {"program": {"lora": 1}}).ok
    assert isinstance(box, Toolbox)
