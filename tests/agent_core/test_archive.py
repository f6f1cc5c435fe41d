"""The Parquet archive and the sandboxed SQL over it (real pyarrow and DuckDB)."""

from __future__ import annotations

import hashlib

import pytest

from agent_core.models.base import Roles
from agent_core.archive import QueryError, archive_trace, connect, run_query
from agent_core.episode import run_episode
from agent_core.models.config import RoutineScript
from agent_core.models.scripted import ScriptedModel
from agent_core.scaffold import Scaffold
from environments import make_env


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    root = tmp_path_factory.mktemp("eps")
    out = []
    for seed in (0, 1):
        model = ScriptedModel(RoutineScript().reply)
        s = run_episode(make_env("tiny"), Scaffold.builtin("tiny"), Roles(memory=model), seed, 3, root / str(seed))
        out.append(s.trace_path)
    return out


def digest(paths):
    return {p.relative_to(p.parents[3]).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_archive_is_partitioned_and_idempotent(tmp_path, traces):
    first = digest([p for t in traces for p in archive_trace(t, tmp_path)])
    again = digest([p for t in traces for p in archive_trace(t, tmp_path)])
    assert first == again and len(first) == 10  # 5 tables x 2 episodes
    assert all("/game=tiny/scaffold_hash=" in k for k in first)


def test_query_reads_every_table(tmp_path, traces):
    for t in traces:
        archive_trace(t, tmp_path)
    con = connect(tmp_path)
    assert con.execute("select count(*) from episodes where game = 'tiny'").fetchone()[0] == 2
    assert con.execute("select count(*) from steps").fetchone()[0] == 6
    ops = con.execute("select op, count(*) from memory_ops group by op order by op").fetchall()
    assert ops == [("append", 6), ("search", 6)]
    calls = con.execute("select routine, role, count(*) from calls group by all order by all").fetchall()
    assert ("log", "memory", 6) in calls
    # messages are nested rows; args a map
    assert con.execute("select new_messages[1].role from calls where call_index = 0 limit 1").fetchone()[0] == "system"
    assert con.execute("select args['file'] from memory_ops where op = 'append' limit 1").fetchone()[0] == "action_log.md"


def test_empty_archive_still_binds(tmp_path):
    assert run_query(tmp_path, "select count(*) as n from calls").column("n").to_pylist() == [0]


@pytest.mark.parametrize("sql", [
    "select * from read_csv('/etc/passwd')",
    "COPY (select 1) TO 'out.csv'",
    "ATTACH '/tmp/other.db'",
    "select 1; select 2",
    "SET enable_external_access = true",
    "select * from '/etc/hostname'",
    "drop view steps",
])
def test_sql_sandbox_refuses_file_access_and_writes(tmp_path, traces, sql):
    archive_trace(traces[0], tmp_path)
    with pytest.raises(QueryError):
        run_query(tmp_path, sql)
    assert not (tmp_path / "out.csv").exists()


def test_query_time_limit(tmp_path, traces):
    archive_trace(traces[0], tmp_path)
    with pytest.raises(QueryError, match="time limit"):
        run_query(tmp_path, "select count(*) from range(100000000000) a", timeout_s=0.5)


def test_episodes_carry_the_diagnostics_and_old_files_gain_them(tmp_path, traces):
    import pyarrow.parquet as pq

    from agent_core.diagnostics import ARCHIVE_COLUMNS, diagnose_path

    files = archive_trace(traces[0], tmp_path)
    con = connect(tmp_path)
    try:
        row = con.execute(f"SELECT {', '.join(ARCHIVE_COLUMNS)} FROM episodes").fetchone()
    finally:
        con.close()
    d = diagnose_path(traces[0])
    assert row == tuple(getattr(d, c) for c in ARCHIVE_COLUMNS)  # the same definition, as columns
    # an archive written before the columns existed: the finished trace is archived again
    episodes = next(f for f in files if "/episodes/" in f.as_posix())
    pq.write_table(pq.read_table(episodes).drop_columns(list(ARCHIVE_COLUMNS)), episodes)
    archive_trace(traces[0], tmp_path)
    assert set(ARCHIVE_COLUMNS) <= set(pq.read_schema(episodes).names)


def test_an_archive_written_before_the_chains_table_gains_it(tmp_path, traces):
    files = archive_trace(traces[0], tmp_path)
    chains = next(f for f in files if "/chains/" in f.as_posix())
    chains.unlink()
    assert chains in archive_trace(traces[0], tmp_path) and chains.is_file()
