"""The Parquet trace archive: one schema, defined here, for episodes, steps, model calls,
memory operations and the memory chains credit flows along, and for the meta-LLM's own
calls (the agentic reviewer's and curator's ledger, `meta_calls`).

Layout (hive partitions, so a query on one game or scaffold touches only its files):

    <root>/<table>/game=<game>/scaffold_hash=<hash>/<episode_id>.parquet
    <root>/meta_calls/game=<game>/scaffold_hash=<hash>/<run>.parquet   (one file per review/curation)

The partition columns (`game`, `scaffold_hash`) live in the path, not in the files; DuckDB
reads them back as columns (`connect`).

Archival is idempotent: an episode's rows and file names depend only on its trace, and
files are replaced atomically, so archiving the same traces twice gives the same files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from agent_core.diagnostics import ARCHIVE_COLUMNS, diagnose, kept_writes, memory_chains
from agent_core.files import atomic_write
from agent_core.trace import Trace, read_summary, read_trace

_MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
PARTITIONS = ("game", "scaffold_hash")
_KEYS = [("episode_id", pa.string()), ("task", pa.string()), ("seed", pa.int64())]

#: The archive's schema, table by table (partition columns excluded). Columns mirror the
#: record models in `agent_core.records` (StepRecord, ModelCall, MemoryOp, EpisodeHeader/Summary);
#: the episodes' diagnostic counts (`diagnostics.ARCHIVE_COLUMNS`) come from
#: `diagnostics.diagnose`, so SQL over them (`diagnostics.sql_aggregate`) means what the
#: reports computed from traces mean.
SCHEMAS: dict[str, pa.Schema] = {
    "episodes": pa.schema(_KEYS + [
        ("memory_model", pa.string()), ("action_model", pa.string()), ("max_steps", pa.int64()),
        ("sampling", pa.string()), ("started_at", pa.string()), ("complete", pa.bool_()),
        ("steps", pa.int64()), ("progression", pa.float64()), ("total_reward", pa.float64()),
        ("invalid_actions", pa.int64()), ("invalid_ops", pa.int64()), ("default_actions", pa.int64()),
        ("memory_chars", pa.int64()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
        ("end_reason", pa.string()), ("error", pa.string())]
        + [(name, pa.int64()) for name in ARCHIVE_COLUMNS]),
    "steps": pa.schema(_KEYS + [
        ("step", pa.int64()), ("observation", pa.string()), ("action", pa.string()),
        ("action_text", pa.string()), ("action_source", pa.string()), ("reward", pa.float64()),
        ("done", pa.bool_()), ("progression", pa.float64()), ("invalid_ops", pa.int64()),
        ("memory_chars", pa.int64()), ("memory_lines", pa.int64()), ("elapsed_s", pa.float64()),
        ("hook_errors", pa.list_(pa.string())),
        # grammars first used in the step, digest -> text (the calls' `grammar` digests name them)
        ("grammars", pa.map_(pa.string(), pa.string()))]),
    "calls": pa.schema(_KEYS + [
        ("step", pa.int64()), ("call_id", pa.string()), ("call_index", pa.int64()),
        ("routine", pa.string()), ("role", pa.string()), ("model", pa.string()),
        ("messages_digest", pa.string()), ("fixed_prefix", pa.int64()), ("window_start", pa.int64()), ("context_end", pa.int64()),
        ("new_messages", _MESSAGES), ("reply", pa.string()), ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()), ("latency_s", pa.float64()),
        ("finish_reason", pa.string()), ("closed_at_budget", pa.bool_()), ("written", pa.string()),
        ("grammar", pa.string())]),
    "memory_ops": pa.schema(_KEYS + [
        ("step", pa.int64()), ("op_index", pa.int64()), ("call_id", pa.string()),
        ("routine", pa.string()), ("op", pa.string()), ("args", pa.map_(pa.string(), pa.string())),
        ("ok", pa.bool_()), ("result", pa.string()), ("delta_chars", pa.int64()),
        ("duplicate", pa.bool_()), ("empty", pa.bool_()), ("hook_error", pa.string()),
        # the write kept a passage of its step's observation that no later one showed again
        # (`diagnostics.kept_passage`): credit in hindsight, for a curation program's SQL
        ("kept", pa.bool_())]),
    # one row per write -> look-up -> decision chain (`diagnostics.MemoryChain`, from
    # `diagnostics.memory_chains`): the credit a curation program's SQL can select by
    "chains": pa.schema(_KEYS + [
        ("write_step", pa.int64()), ("write_call_id", pa.string()), ("write_op_index", pa.int64()),
        ("lookup_step", pa.int64()), ("lookup_call_id", pa.string()), ("lookup_op_index", pa.int64()),
        ("decision_call_id", pa.string()), ("gain", pa.float64()), ("credited", pa.bool_())]),
    # one row per meta-LLM call of an agentic review or curation: the ledger's entry
    # (`review.agentic.CallUsage`, `call` as call_index) and what the run belongs to;
    # game/scaffold_hash: the reviewed incumbent's, or the curated pool's scaffold
    "meta_calls": pa.schema([
        ("run_id", pa.string()), ("role", pa.string()), ("mode", pa.string()),
        ("call_index", pa.int64()), ("model", pa.string()), ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()), ("cost_usd", pa.float64()), ("latency_s", pa.float64()),
        ("finish_reason", pa.string()), ("tool_calls", pa.list_(pa.string())),
        ("stop_reason", pa.string()), ("verdict", pa.string()), ("candidate", pa.string()),
        ("trial", pa.int64()), ("env_steps", pa.int64())]),
}
#: the tables written per episode (`archive_trace`); `meta_calls` is written per meta-LLM run
TABLES = ("episodes", "steps", "calls", "memory_ops", "chains")
META_TABLE = "meta_calls"
META_ROLES = ("reviewer", "curator")


def rows(trace: Trace) -> dict[str, list[dict[str, Any]]]:
    """The archive rows of one trace, table by table."""
    h = trace.header
    keys = dict(episode_id=h.episode_id, game=h.game, task=h.task, seed=h.seed,
                scaffold_hash=h.scaffold_hash)
    s = trace.summary
    episode = {**keys, **h.model_dump(include={"memory_model", "action_model", "max_steps", "started_at"}),
               "sampling": h.sampling.model_dump_json(), "complete": s is not None, "error": trace.error,
               "steps": len(trace.steps),
               "progression": trace.steps[-1].progression if trace.steps else 0.0,
               **diagnose(trace).model_dump(include=set(ARCHIVE_COLUMNS))}
    if s:
        episode.update(s.model_dump(include={"progression", "total_reward", "invalid_actions",
                                             "invalid_ops", "default_actions", "memory_chars",
                                             "prompt_tokens", "completion_tokens", "end_reason"}))
    out: dict[str, list[dict[str, Any]]] = {"episodes": [episode], "steps": [], "calls": [], "memory_ops": [],
                                            "chains": [{**keys, **c.model_dump()} for c in memory_chains(trace.steps)]}
    call_index = 0
    kept = kept_writes(trace.steps)
    for st in trace.steps:
        out["steps"].append({**keys, **st.model_dump(exclude={"kind", "episode_id", "calls", "memory_ops"})})
        for call in st.calls:
            out["calls"].append({**keys, "step": st.step, "call_index": call_index,
                                 **call.model_dump()})
            call_index += 1
        for i, op in enumerate(st.memory_ops):
            out["memory_ops"].append({**keys, "step": st.step, "op_index": i,
                                      **{**op.model_dump(), "args": list(op.args.items())},
                                      "kept": (st.step, i) in kept})
    return out


def partition_path(root: Path, table: str, game: str, scaffold_hash: str, episode_id: str) -> Path:
    return Path(root) / table / f"game={game}" / f"scaffold_hash={scaffold_hash}" / f"{episode_id}.parquet"


def archive_trace(trace_path: Path | str, root: Path | str) -> list[Path]:
    """Write one trace's rows into the archive; returns its archive files.

    A finished trace never changes, so when its files are already archived with today's
    columns they are kept as they are; an unfinished one is archived again (it may have
    grown), and so is one archived before a column was added."""
    summary = read_summary(trace_path)
    if summary is not None:
        done = [partition_path(Path(root), t, summary.game, summary.scaffold_hash, summary.episode_id)
                for t in TABLES]
        if all(p.is_file() for p in done) and _current(done):
            return done
    trace = read_trace(trace_path)
    h = trace.header
    written = []
    for table, table_rows in rows(trace).items():
        schema = SCHEMAS[table]
        data = pa.Table.from_pylist(
            [{name: r.get(name) for name in schema.names} for r in table_rows], schema=schema)
        dest = partition_path(Path(root), table, h.game, h.scaffold_hash, h.episode_id)
        _write_atomic(data, dest)
        written.append(dest)
    return written


def archive_meta_calls(root: Path | str, game: str, scaffold_hash: str, name: str,
                       rows: list[dict[str, Any]]) -> Path:
    """Write one meta-LLM run's ledger (`rows`, one per call, columns of `SCHEMAS['meta_calls']`)
    as one file, atomically; `name` (the file's stem) identifies the run, so writing the same
    run again replaces its file. A row with a column the table lacks, or a role other than
    `META_ROLES`, is refused (ValueError)."""
    schema = SCHEMAS[META_TABLE]
    for r in rows:
        unknown = sorted(set(r) - set(schema.names))
        if unknown:
            raise ValueError(f"meta_calls has no column(s) {unknown}; its columns: {', '.join(schema.names)}")
        if r.get("role") not in META_ROLES:
            raise ValueError(f"meta_calls role must be one of {META_ROLES}, not {r.get('role')!r}")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ValueError(f"a meta_calls run name must be a plain file stem, not {name!r}")
    data = pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in rows], schema=schema)
    dest = partition_path(Path(root), META_TABLE, game, scaffold_hash, name)
    _write_atomic(data, dest)
    return dest


def _current(files: list[Path]) -> bool:
    """Whether archived files have every column of today's schema (reads the footers only)."""
    try:
        return all(set(SCHEMAS[t].names) <= set(pq.read_schema(f).names) for t, f in zip(TABLES, files))
    except (OSError, pa.ArrowInvalid):
        return False


def _write_atomic(table: pa.Table, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


#: DuckDB's own limits on a sandboxed connection (the settings below are those of the pinned
#: DuckDB version; pyproject pins it because the sandbox relies on them)
SQL_MEMORY_MB = 512
SQL_THREADS = 2


def connect(root: Path | str, *, sandbox: bool = True, memory_mb: int = SQL_MEMORY_MB, threads: int = SQL_THREADS):
    """A DuckDB connection with one view per archive table (`episodes`, `steps`, `calls`,
    `memory_ops`, `chains`, `meta_calls`), partition columns included.

    With `sandbox` (the default), file access is limited to the archive, DuckDB may use at
    most `memory_mb` of memory and `threads` threads, spills nowhere (no temp directory: a
    query that does not fit fails; DuckDB would otherwise add its temp directory,
    `<cwd>/.tmp`, to the allowed directories), and the configuration is locked, so SQL
    cannot read other files or lift a limit. (Writes inside the archive are still possible
    at this level: `run_query` accepts only a single read-only statement.)"""
    import duckdb

    root = Path(root).resolve()
    con = duckdb.connect(":memory:")
    if sandbox:
        con.execute(f"SET memory_limit = '{int(memory_mb)}MB'")
        con.execute(f"SET threads = {int(threads)}")
        con.execute("SET temp_directory = ''")
        con.execute("SET allowed_directories = [?]", [str(root) + os.sep])
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    for table, schema in SCHEMAS.items():
        glob = root / table / "*" / "*" / "*.parquet"
        if any((root / table).glob("*/*/*.parquet")):
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{_quote(glob)}', "
                        "hive_partitioning = true, union_by_name = true)")
        else:  # an empty table with the right columns, so queries still bind
            cols = [f'CAST(NULL AS {_duck_type(f.type)}) AS "{f.name}"' for f in schema]
            cols += [f'CAST(NULL AS VARCHAR) AS "{p}"' for p in PARTITIONS]
            con.execute(f"CREATE VIEW {table} AS SELECT {', '.join(cols)} WHERE false")
    return con


class QueryError(ValueError):
    pass


def run_query(root: Path | str, sql: str, timeout_s: float = 30.0, max_rows: int | None = None,
              memory_mb: int = SQL_MEMORY_MB):
    """Run one read-only SQL statement over the archive, sandboxed, time- and memory-limited.
    Returns a pyarrow Table of at most `max_rows` rows: the cap is a limit on DuckDB's
    relation, not text around the query (which a trailing comment could remove), so no more
    rows than that are ever produced."""
    import threading

    import duckdb

    con = connect(root, sandbox=True, memory_mb=memory_mb)
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"SQL does not parse: {exc}") from exc
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        kinds = [st.type.name for st in statements]
        raise QueryError(f"only one read-only SELECT statement is allowed, got {kinds or 'nothing'}")
    timer = threading.Timer(timeout_s, con.interrupt)
    timer.start()
    try:
        relation = con.sql(sql)
        return (relation.limit(max_rows) if max_rows is not None else relation).to_arrow_table()
    except duckdb.InterruptException:
        raise QueryError(f"query exceeded its time limit of {timeout_s:g} s") from None
    except duckdb.Error as exc:
        raise QueryError(f"query failed: {exc}") from exc
    finally:
        timer.cancel()
        con.close()


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_float64(t):
        return "DOUBLE"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_map(t):
        return "MAP(VARCHAR, VARCHAR)"
    if pa.types.is_list(t):
        return f"{_duck_type(t.value_type)}[]"
    if pa.types.is_struct(t):
        return f"STRUCT({', '.join(f'{f.name} {_duck_type(f.type)}' for f in t)})"
    return "VARCHAR"
