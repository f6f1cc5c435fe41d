"""Memory diagnostics from a trace: the yardsticks of both outer loops.

The paper's figures: per-step memory growth 138 -> 6 characters after scaffold
optimisation; write-to-search ratio 0.84 -> 0.39 (Crafter) after specialist training.
"""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, Field

from agent_core.commands import CONSULT_OPS
from agent_core.scaffold import WRITE_OPS
from pathlib import Path

from agent_core.trace import TRACE_NAME, Trace, read_summary, read_trace

#: operations that write memory / consult it (for the write-to-search ratio)
WRITES = frozenset(WRITE_OPS) - {"delete"}
CONSULTS = frozenset(CONSULT_OPS)


def sql_list(ops: frozenset[str] | tuple[str, ...]) -> str:
    """Op names as an SQL list for queries over the archive's memory_ops, e.g. `'read', 'tail'`."""
    return ", ".join(f"'{o}'" for o in sorted(ops))


def per_step_means(trace_paths: list[str] | list[Path], fields: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    """Per field of `StepRecord`, (step, mean over the episodes) for every step; each trace
    is read once."""
    import statistics

    by_step: dict[str, dict[int, list[float]]] = {f: {} for f in fields}
    for path in trace_paths:
        for step in read_trace(path).steps:
            for f in fields:
                by_step[f].setdefault(step.step, []).append(float(getattr(step, f)))
    return {f: [(k, statistics.fmean(v)) for k, v in sorted(s.items())] for f, s in by_step.items()}


class Diagnostics(BaseModel):
    steps: int
    progression: float
    growth_chars_per_step: float = Field(description="(final - initial memory chars) / steps")
    write_search_ratio: float | None = Field(description="writes / (search+read+tail); None when no consult")
    duplicate_write_ratio: float = Field(description="share of writes whose text was already in the file")
    invalid_op_rate: float = Field(description="invalid operations / (operations + parse errors)")
    ops_per_step: float
    prompt_tokens_per_step: float
    writes: int
    consults: int
    longest_no_progress: int = Field(description="longest run of steps without a progression increase")
    most_repeated_action: str | None
    most_repeated_action_share: float
    progression_curve: list[float]


def diagnose(trace: Trace) -> Diagnostics:
    steps = trace.steps
    n = len(steps)
    ops = [op for s in steps for op in s.memory_ops]
    writes = [op for op in ops if op.op in WRITES and op.ok]
    consults = sum(op.op in CONSULTS and op.ok for op in ops)
    invalid = sum(s.invalid_ops for s in steps)
    # invalid ops include parse errors that produced no op record: count them as attempts too
    failed_ops = sum(not op.ok for op in ops)
    attempts = len(ops) + (invalid - failed_ops)
    initial = steps[0].memory_chars - sum(op.delta_chars for op in steps[0].memory_ops) if n else 0
    final = steps[-1].memory_chars if n else 0
    curve = [s.progression for s in steps]
    actions = Counter(s.action_text for s in steps)
    top, top_count = actions.most_common(1)[0] if actions else (None, 0)
    return Diagnostics(
        steps=n,
        progression=curve[-1] if curve else 0.0,
        growth_chars_per_step=(final - initial) / n if n else 0.0,
        write_search_ratio=len(writes) / consults if consults else None,
        duplicate_write_ratio=sum(op.duplicate for op in writes) / len(writes) if writes else 0.0,
        invalid_op_rate=invalid / attempts if attempts else 0.0,
        ops_per_step=len(ops) / n if n else 0.0,
        prompt_tokens_per_step=sum(c.prompt_tokens for s in steps for c in s.calls) / n if n else 0.0,
        writes=len(writes),
        consults=consults,
        longest_no_progress=_longest_flat(curve),
        most_repeated_action=top,
        most_repeated_action_share=top_count / n if n else 0.0,
        progression_curve=curve,
    )


def _longest_flat(curve: list[float]) -> int:
    best = run = 0
    prev = None
    for p in curve:
        run = run + 1 if prev is not None and p <= prev else 1
        best = max(best, run)
        prev = p if prev is None else max(prev, p)
    return best if curve else 0


DIAGNOSTICS_NAME = "diagnostics.json"


def diagnose_path(trace_path: Path | str) -> Diagnostics:
    """Diagnostics of a trace file, kept beside a finished trace (which never changes)."""
    trace_path = Path(trace_path)
    if trace_path.is_dir():
        trace_path = trace_path / TRACE_NAME
    saved = trace_path.parent / DIAGNOSTICS_NAME
    finished = read_summary(trace_path) is not None
    if finished and saved.is_file():
        return Diagnostics.model_validate_json(saved.read_text())
    result = diagnose(read_trace(trace_path))
    if finished:
        saved.write_text(result.model_dump_json())
    return result
