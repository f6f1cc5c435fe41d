"""Memory diagnostics from a trace: the yardsticks of both outer loops, defined once here.

The paper's two diagnostics (its figures: memory growth 138 -> 6 characters per step after
scaffold optimisation; write-to-search ratio 0.84 -> 0.39 on Crafter after specialist
training):

- **write-to-search ratio** = write operations that succeeded (CREATE, APPEND, REWRITE,
  REPLACE, UPSERT) / look-ups that succeeded and showed memory contents (SEARCH, READ,
  TAIL). Failed and refused operations did nothing to memory and are not counted.
- **memory growth per step** = (memory characters after the last step - characters the
  episode started with, i.e. the scaffold's seeded files) / steps.

Over several episodes both are pooled: total writes / total look-ups, total growth / total
steps (`aggregate`; `sql_aggregate` is the same over the archive's `episodes` columns,
which `agent_core.archive` fills from `diagnose`). Every report, the nightly history,
`evaluate`, the archive and the plots use these.

What memory did (per episode, `memory_use`): a look-up was *used* when it returned something
and its result stood in the context of a later model call of the same step whose reply
wrote memory successfully or committed the world action (by call order in
`StepRecord.calls`; a look-up whose result came back after the same reply's writes did not
reach them); a write *followed a look-up* when an earlier call of its step made a look-up
that returned something and whose result it saw. Look-ups here are READ, TAIL, SEARCH and
LIST that succeeded; one that returned nothing (`MemoryOp.empty`: no hits, an empty file, no
files) is counted as a look-up but never as used.

Where credit for memory flows (`memory_chains`, one `MemoryChain` each, archived as the
`chains` table): a *write* (a successful, non-duplicate CREATE, APPEND, REWRITE, REPLACE or
UPSERT) -> a later *look-up* (a successful, non-empty SEARCH, READ or TAIL of a later step)
whose result holds one of the lines the write put into memory (`written_text`, stripped,
verbatim; of several writes of the same line the latest before the look-up gets it) -> the
*decision*: the first later call of the look-up's step whose context held the look-up's
result and whose reply wrote memory or committed the world action (`_decided`, `_sees`, as
for `lookups_used`) -> the *gain*: the progression at the end of the look-up's step minus
that at the end of the step before (0 before the first). A chain is *credited* when the gain
is positive: the write was read back and acted on, and the episode progressed. Nothing in
it reads the game's words.

Where a chain cannot start yet (a model that never looks anything up), a write still earns
credit in hindsight when it *kept a passage* (`kept_passage`): what it wrote copies, word for
word, a run of at least `KEPT_MIN_WORDS` words of its step's observation, that run is at
least `KEPT_MIN_SHARE` of the written line's words (the line says what was seen, not what
was made up), and no later observation of the episode shows that run again: the write kept
what was about to leave the agent's view, which is what memory is for. Words are compared
lower-cased, letters and digits only; this reads no game's words either.
"""

from __future__ import annotations

import re
import statistics
from difflib import SequenceMatcher
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, Field, computed_field

from agent_core.commands import CONSULT_OPS, CONTENT_WRITE_OPS, READ_OPS
from agent_core.records import StepRecord
from agent_core.trace import TRACE_NAME, Trace, read_summary, read_trace



def per_step_means(trace_paths: list[str] | list[Path], fields: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    """Per field of `StepRecord`, (step, mean over the episodes) for every step; each trace
    is read once."""
    by_step: dict[str, dict[int, list[float]]] = {f: {} for f in fields}
    for path in trace_paths:
        for step in read_trace(path).steps:
            for f in fields:
                by_step[f].setdefault(step.step, []).append(float(getattr(step, f)))
    return {f: [(k, statistics.fmean(v)) for k, v in sorted(s.items())] for f, s in by_step.items()}


class MemoryUse(BaseModel):
    """What memory did in one episode (see the module docstring)."""

    lookups: int = Field(0, description="Successful READ/TAIL/SEARCH/LIST operations.")
    lookups_used: int = Field(0, description="Look-ups that returned something (successful, not empty) "
                              "and whose result stood in the context of a later call of the same step "
                              "that wrote memory or committed the action.")
    writes_after_lookup: int = Field(0, description="Successful writes made by a call that saw the result "
                                     "of a look-up that returned something, of an earlier call in the same step.")
    distinct_actions: int = Field(0, description="Distinct world actions taken (the action text when invalid).")
    distinct_written_texts: int = Field(0, description="Distinct texts written by successful writes.")
    kept_passages: int = Field(0, description="Successful writes that kept a passage of the step's "
                               "observation that no later observation showed again (`kept_passage`).")


def written_text(op) -> str:
    """The text a write puts into memory (UPSERT: its `key: value` line; REPLACE: the new passage)."""
    a = op.args
    if op.op == "upsert":
        return f"{a.get('key', '').strip()}: {a.get('value', '').strip()}"
    return (a.get("new") if op.op == "replace" else a.get("text", "")) or ""


_WORD = re.compile(r"[a-z0-9]+")
#: a kept passage: at least this many consecutive words of the observation, verbatim ...
KEPT_MIN_WORDS = 4
#: ... and at least this share of the written line's words
KEPT_MIN_SHARE = 0.75


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _longest_run(line: list[str], seen: list[str]) -> list[str]:
    """The longest run of consecutive words of `line` that stands in `seen` (the earliest one)."""
    match = SequenceMatcher(None, line, seen, autojunk=False).find_longest_match(0, len(line), 0, len(seen))
    return line[match.a:match.a + match.size]


def kept_passage(text: str, observation: str, later: list[str]) -> bool:
    """Whether a write of `text` at a step showing `observation` kept a passage that the
    `later` observations never show again (see the module docstring)."""
    seen = _words(observation)
    after = [f" {' '.join(_words(o))} " for o in later]
    for line in text.splitlines():
        words = _words(line)
        run = _longest_run(words, seen)
        if len(run) >= KEPT_MIN_WORDS and len(run) >= KEPT_MIN_SHARE * len(words) \
                and not any(f" {' '.join(run)} " in o for o in after):
            return True
    return False


def kept_writes(steps: list[StepRecord]) -> set[tuple[int, int]]:
    """(step, op index) of every successful, non-duplicate write over `steps` (one episode)
    that kept a passage (`kept_passage`)."""
    observations = [s.observation for s in steps]
    return {(s.step, k) for n, s in enumerate(steps) for k, op in enumerate(s.memory_ops)
            if op.ok and not op.duplicate and op.op in CONTENT_WRITE_OPS
            and kept_passage(written_text(op), s.observation, observations[n + 1:])}


def _decided(step: StepRecord) -> list[bool]:
    """Per call of the step: its reply wrote memory successfully or committed the action (the
    step's last call, when the model's action was taken: nothing runs after the action)."""
    wrote = {op.call_id for op in step.memory_ops if op.ok and op.op in CONTENT_WRITE_OPS}
    out = [c.call_id in wrote for c in step.calls]
    if step.calls and step.action_source == "model":
        out[-1] = True
    return out


def _sees(later, earlier) -> bool:
    """Whether `later`'s context holds the results of `earlier`'s operations: they are the
    user message right after `earlier`'s reply (log index `earlier.context_end + 1`)."""
    at = earlier.context_end + 1
    return later.window_start <= at < later.context_end


def memory_use(steps: list[StepRecord]) -> MemoryUse:
    """What memory did over `steps` (one episode)."""
    lookups = used = writes_after = 0
    written: set[str] = set()
    for step in steps:
        order = {c.call_id: i for i, c in enumerate(step.calls)}
        decided = _decided(step)
        looked = sorted({order[op.call_id] for op in step.memory_ops
                         if op.ok and not op.empty and op.op in READ_OPS and op.call_id in order})
        for op in step.memory_ops:
            i = order.get(op.call_id)
            if not op.ok or i is None:
                continue
            if op.op in READ_OPS:
                lookups += 1
                used += not op.empty and any(decided[j] and _sees(step.calls[j], step.calls[i])
                                             for j in range(i + 1, len(step.calls)))
            elif op.op in CONTENT_WRITE_OPS:
                written.add(written_text(op))
                writes_after += any(k < i and _sees(step.calls[i], step.calls[k]) for k in looked)
    return MemoryUse(lookups=lookups, lookups_used=used, writes_after_lookup=writes_after,
                     distinct_actions=len({s.action if s.action is not None else s.action_text for s in steps}),
                     distinct_written_texts=len(written), kept_passages=len(kept_writes(steps)))


class MemoryChain(BaseModel):
    """A write -> look-up -> decision -> gain chain of one episode (see the module docstring)."""

    write_step: int = Field(description="Step of the write.")
    write_call_id: str = Field(description="The model call whose reply made the write.")
    write_op_index: int = Field(description="The write's index in its step's memory_ops.")
    lookup_step: int = Field(description="Step of the look-up (later than the write's).")
    lookup_call_id: str = Field(description="The model call whose reply made the look-up.")
    lookup_op_index: int = Field(description="The look-up's index in its step's memory_ops.")
    decision_call_id: str = Field(description="The first later call of the look-up's step that saw its "
                                  "result and wrote memory or committed the action.")
    gain: float = Field(description="Progression at the end of the look-up's step minus at the end of "
                        "the step before.")

    @computed_field
    @property
    def credited(self) -> bool:
        """The chain earns the write and the look-up credit: the episode progressed."""
        return self.gain > 0


def _lines(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines() if line.strip()}


def memory_chains(steps: list[StepRecord]) -> list[MemoryChain]:
    """Every write -> look-up -> decision chain over `steps` (one episode), in look-up order."""
    chains: list[MemoryChain] = []
    #: earlier steps' writes, oldest first: (step, op index, call id, the lines it wrote)
    written: list[tuple[int, int, str, set[str]]] = []
    before = 0.0
    for step in steps:
        order = {c.call_id: i for i, c in enumerate(step.calls)}
        decided = _decided(step)
        for k, op in enumerate(step.memory_ops):
            i = order.get(op.call_id)
            if not op.ok or op.empty or op.op not in CONSULT_OPS or i is None:
                continue
            decision = next((step.calls[j] for j in range(i + 1, len(step.calls))
                             if decided[j] and _sees(step.calls[j], step.calls[i])), None)
            if decision is None:
                continue
            claimed: set[str] = set()  # lines a later write of the same text already got
            for w_step, w_index, w_call, lines in reversed(written):
                shown = {line for line in lines - claimed if line in op.result}
                if shown:
                    chains.append(MemoryChain(
                        write_step=w_step, write_call_id=w_call, write_op_index=w_index, lookup_step=step.step,
                        lookup_call_id=op.call_id, lookup_op_index=k, decision_call_id=decision.call_id,
                        gain=step.progression - before))
                claimed |= shown
        written += [(step.step, k, op.call_id, _lines(written_text(op))) for k, op in enumerate(step.memory_ops)
                    if op.ok and not op.duplicate and op.op in CONTENT_WRITE_OPS]
        before = step.progression
    return chains


class Diagnostics(MemoryUse):
    steps: int
    progression: float
    growth_chars_per_step: float = Field(description="(final - initial memory chars) / steps; the initial "
                                         "characters are the scaffold's seeded files")
    write_search_ratio: float | None = Field(description="successful writes / successful consults "
                                             "(search, read, tail); None when no consult")
    initial_memory_chars: int = Field(0, description="Memory characters before the first step (seeded files).")
    memory_growth_chars: int = Field(0, description="Final - initial memory characters.")
    duplicate_write_ratio: float = Field(description="share of writes whose text was already in the file")
    invalid_op_rate: float = Field(description="invalid operations / (operations + parse errors)")
    ops_per_step: float
    prompt_tokens_per_step: float
    writes: int = Field(description="Successful write operations (not DELETE).")
    consults: int = Field(description="Successful SEARCH/READ/TAIL operations.")
    closed_replies: int = Field(0, description="Model replies the backend closed at its token budget "
                                "(`closed_at_budget`: their ending is not the model's; never a training "
                                "target unless a curation program asks for them).")
    longest_no_progress: int = Field(description="longest run of steps without a progression increase")
    most_repeated_action: str | None
    most_repeated_action_share: float
    progression_curve: list[float]


def diagnose(trace: Trace) -> Diagnostics:
    steps = trace.steps
    n = len(steps)
    ops = [op for s in steps for op in s.memory_ops]
    writes = [op for op in ops if op.op in CONTENT_WRITE_OPS and op.ok]
    consults = sum(op.op in CONSULT_OPS and op.ok for op in ops)
    invalid = sum(s.invalid_ops for s in steps)
    # invalid ops include parse errors that produced no op record: count them as attempts too
    failed_ops = sum(not op.ok for op in ops)
    attempts = len(ops) + (invalid - failed_ops)
    initial = steps[0].memory_chars - sum(op.delta_chars for op in steps[0].memory_ops) if n else 0
    final = steps[-1].memory_chars if n else initial
    curve = [s.progression for s in steps]
    actions = Counter(s.action_text for s in steps)
    top, top_count = actions.most_common(1)[0] if actions else (None, 0)
    return Diagnostics(
        steps=n,
        progression=curve[-1] if curve else 0.0,
        growth_chars_per_step=(final - initial) / n if n else 0.0,
        write_search_ratio=len(writes) / consults if consults else None,
        initial_memory_chars=initial,
        memory_growth_chars=final - initial,
        duplicate_write_ratio=sum(op.duplicate for op in writes) / len(writes) if writes else 0.0,
        invalid_op_rate=invalid / attempts if attempts else 0.0,
        ops_per_step=len(ops) / n if n else 0.0,
        prompt_tokens_per_step=sum(c.prompt_tokens for s in steps for c in s.calls) / n if n else 0.0,
        writes=len(writes),
        consults=consults,
        closed_replies=sum(c.closed_at_budget for s in steps for c in s.calls),
        longest_no_progress=_longest_flat(curve),
        most_repeated_action=top,
        most_repeated_action_share=top_count / n if n else 0.0,
        progression_curve=curve,
        **memory_use(steps).model_dump(),
    )


class GroupDiagnostics(BaseModel):
    """The paper's two diagnostics over a group of episodes (pooled), and what memory did."""

    episodes: int
    steps: int
    writes: int
    consults: int
    memory_growth_chars: int
    write_search_ratio: float | None = Field(description="Total writes / total consults (None: no consult).")
    growth_chars_per_step: float | None = Field(description="Total memory growth / total steps (None: no step).")
    lookups: int = 0
    lookups_used: int = 0
    writes_after_lookup: int = 0
    distinct_actions_per_episode: float | None = None
    distinct_written_texts_per_episode: float | None = None


def aggregate(diagnostics: list[Diagnostics]) -> GroupDiagnostics:
    """Pool per-episode diagnostics (`sql_aggregate` is the same over the archive)."""
    d = diagnostics
    steps, writes, consults = sum(x.steps for x in d), sum(x.writes for x in d), sum(x.consults for x in d)
    growth = sum(x.memory_growth_chars for x in d)
    return GroupDiagnostics(
        episodes=len(d), steps=steps, writes=writes, consults=consults, memory_growth_chars=growth,
        write_search_ratio=writes / consults if consults else None,
        growth_chars_per_step=growth / steps if steps else None,
        lookups=sum(x.lookups for x in d), lookups_used=sum(x.lookups_used for x in d),
        writes_after_lookup=sum(x.writes_after_lookup for x in d),
        distinct_actions_per_episode=statistics.fmean(x.distinct_actions for x in d) if d else None,
        distinct_written_texts_per_episode=statistics.fmean(x.distinct_written_texts for x in d) if d else None)


#: the per-episode columns of the archive's `episodes` table that come from `diagnose`
ARCHIVE_COLUMNS = ("initial_memory_chars", "memory_growth_chars", "writes", "consults", "lookups",
                   "lookups_used", "writes_after_lookup", "distinct_actions", "distinct_written_texts",
                   "kept_passages")


def sql_aggregate(alias: str = "e") -> str:
    """`aggregate` as SQL select expressions over the archive's `episodes` table (`alias`),
    to use with GROUP BY; columns in the order of `GroupDiagnostics`' fields."""
    a = f"{alias}."
    return (f"count(*) AS episodes, sum({a}steps) AS steps, sum({a}writes) AS writes, "
            f"sum({a}consults) AS consults, sum({a}memory_growth_chars) AS memory_growth_chars, "
            f"sum({a}writes) / nullif(sum({a}consults), 0) AS write_search_ratio, "
            f"sum({a}memory_growth_chars) / nullif(sum({a}steps), 0) AS growth_chars_per_step, "
            f"sum({a}lookups) AS lookups, sum({a}lookups_used) AS lookups_used, "
            f"sum({a}writes_after_lookup) AS writes_after_lookup, "
            f"avg({a}distinct_actions) AS distinct_actions_per_episode, "
            f"avg({a}distinct_written_texts) AS distinct_written_texts_per_episode")


def group_from_row(row: tuple) -> GroupDiagnostics:
    """A `GroupDiagnostics` from the columns `sql_aggregate` selects (in its order)."""
    names = list(GroupDiagnostics.model_fields)
    values = dict(zip(names, row))
    return GroupDiagnostics(**{k: (0 if v is None and k in ("steps", "writes", "consults", "memory_growth_chars",
                                                            "lookups", "lookups_used", "writes_after_lookup")
                                   else v) for k, v in values.items()})


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
