"""JSONL traces: written line by line as the episode happens, read back tolerantly.

Line 1 is an `EpisodeHeader`, then one `StepRecord` per step (flushed at once, so a crash
or kill loses nothing already played), then an `EpisodeSummary` when the episode finished
or an error record when it failed. A killed run leaves no summary; a torn last line (the
kill landed mid-write) is ignored on reading. Lines end at "\n" and nowhere else: a record may
hold any other line or paragraph separator a model wrote (U+2028, U+0085, \x1c...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pydantic import BaseModel

from agent_core.records import EpisodeHeader, EpisodeSummary, StepRecord

TRACE_NAME = "trace.jsonl"
MEMORY_DIRNAME = "memory"


class TraceWriter:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = self.path.open("w", encoding="utf-8")

    def write(self, record: BaseModel | dict) -> None:
        line = record.model_dump_json() if isinstance(record, BaseModel) else json.dumps(record)
        self._fh.write(line + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Trace:
    path: Path
    header: EpisodeHeader
    steps: list[StepRecord] = field(default_factory=list)
    summary: EpisodeSummary | None = None
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.summary is not None

    @property
    def memory_dir(self) -> Path:
        return self.path.parent / MEMORY_DIRNAME


class TraceError(ValueError):
    pass


def read_jsonl(path: Path | str) -> list[dict]:
    """The records of a JSONL file, split on "\n" only (`str.splitlines` would also split
    inside a record holding U+2028, U+0085, \x1c... as a model may write them). An unfinished
    last line (no "\n" after it: a kill landed mid-write) that is not JSON is left out; any
    other line that is not JSON raises `TraceError` naming every such line, after every other
    line was read."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    unfinished = lines.pop()  # "" when the file ends with a newline
    records: list[dict] = []
    bad: list[int] = []
    for i, line in enumerate(lines + ([unfinished] if unfinished else [])):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines):
                bad.append(i + 1)
    if bad:
        raise TraceError(f"{path}:{bad[0]} is not JSON" + (f" (nor lines {', '.join(map(str, bad[1:]))})"
                                                           if len(bad) > 1 else "")
                         + f"; {len(records)} other lines read")
    return records


def read_trace(path: Path | str) -> Trace:
    """Read a trace; tolerant of a torn final line left by a kill."""
    path = Path(path)
    if path.is_dir():
        path = path / TRACE_NAME
    if not path.is_file():
        raise TraceError(f"no trace at {path}")
    trace: Trace | None = None
    for data in read_jsonl(path):
        kind = data.get("kind")
        if kind == "header":
            trace = Trace(path=path, header=EpisodeHeader.model_validate(data))
        elif trace is None:
            raise TraceError(f"{path} does not start with a header")
        elif kind == "step":
            trace.steps.append(StepRecord.model_validate(data))
        elif kind == "summary":
            trace.summary = EpisodeSummary.model_validate(data)
        elif kind == "error":
            trace.error = data.get("message", "")
    if trace is None:
        raise TraceError(f"{path} has no header")
    return trace


def read_summary(path: Path | str) -> EpisodeSummary | None:
    """The summary of a finished trace, reading only its last line (cheap: cache lookups
    call this for every episode of a flow); None when the trace is absent or unfinished."""
    path = Path(path)
    if path.is_dir():
        path = path / TRACE_NAME
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            tail = fh.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    except OSError:
        return None
    try:
        data = json.loads(tail)
    except json.JSONDecodeError:
        return None
    return EpisodeSummary.model_validate(data) if data.get("kind") == "summary" else None
