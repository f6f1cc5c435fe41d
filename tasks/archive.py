"""Archive tasks: JSONL traces -> the Parquet archive; diagnostics from traces."""

from __future__ import annotations

from prefect import task

from agent_core.archive import archive_trace
from agent_core.diagnostics import Diagnostics, diagnose_path


@task(name="archive_traces")
def archive_traces(trace_paths: list[str], archive_root: str) -> list[str]:
    """Idempotent: archiving the same traces again rewrites the same files."""
    return [str(p) for trace in trace_paths for p in archive_trace(trace, archive_root)]


@task(name="diagnose_traces")
def diagnose_traces(trace_paths: list[str]) -> list[Diagnostics]:
    return [diagnose_path(p) for p in trace_paths]
