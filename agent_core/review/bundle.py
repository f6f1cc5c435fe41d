"""The review bundle: everything a reviewer needs about the incumbent's episodes, and
nothing it cannot read, cut to a token budget (worst stretches first). Deterministic for
the same inputs, so it caches."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, Field

from agent_core.commands import CONTENT_WRITE_OPS
from agent_core.diagnostics import Diagnostics, diagnose
from agent_core.scaffold import Scaffold
from agent_core.trace import Trace, read_trace

CHARS_PER_TOKEN = 4  # rough, model-independent budget unit


class FileUsage(BaseModel):
    """How one memory file was used across an episode."""

    name: str
    final_chars: int
    writes: int = 0
    duplicate_writes: int = 0
    reads: int = 0
    search_hits: int = 0
    chars_written: int = 0


class EpisodeDigest(BaseModel):
    episode_id: str
    game: str
    task: str
    seed: int
    progression: float
    steps: int
    diagnostics: Diagnostics
    files: list[FileUsage]
    final_memory: dict[str, str] = Field(description="final memory files, each cut to a budget")
    worst_stretch: tuple[int, int] = Field(description="[first, last] step of the longest stretch without progress")


class Excerpt(BaseModel):
    episode_id: str
    seed: int
    first_step: int
    last_step: int
    text: str


class ReviewBundle(BaseModel):
    scaffold_hash: str
    scaffold_files: dict[str, str]
    episodes: list[EpisodeDigest]
    excerpts: list[Excerpt]
    token_budget: int

    def render(self) -> str:
        """The bundle as one markdown document for the reviewer's prompt."""
        parts = [f"# Incumbent scaffold {self.scaffold_hash}"]
        for name, text in self.scaffold_files.items():
            parts.append(f"<file path=\"{name}\">\n{text}\n</file>")
        parts.append("# Episodes")
        for e in self.episodes:
            d = e.diagnostics
            ws = "n/a" if d.write_search_ratio is None else f"{d.write_search_ratio:.2f}"
            parts.append(
                f"## {e.game}/{e.task} seed {e.seed}: progression {e.progression:.3f} in {e.steps} steps\n"
                f"memory growth {d.growth_chars_per_step:.1f} chars/step; write/search {ws}; duplicate writes "
                f"{d.duplicate_write_ratio:.0%}; invalid ops {d.invalid_op_rate:.0%}; ops/step {d.ops_per_step:.1f}; "
                f"prompt tokens/step {d.prompt_tokens_per_step:.0f}; longest stretch without progress "
                f"{d.longest_no_progress} steps ({e.worst_stretch[0]}-{e.worst_stretch[1]}); most repeated action "
                f"{d.most_repeated_action!r} ({d.most_repeated_action_share:.0%})")
            parts.append("| file | final chars | writes | duplicate writes | reads | search hits |\n|---|---|---|---|---|---|\n"
                         + "\n".join(f"| {f.name} | {f.final_chars} | {f.writes} | {f.duplicate_writes} | {f.reads} | {f.search_hits} |"
                                     for f in e.files))
            for name, text in e.final_memory.items():
                parts.append(f"<memory episode=\"{e.seed}\" file=\"{name}\">\n{text}\n</memory>")
        parts.append("# Step-log excerpts (worst stretches first)")
        parts += [f"## seed {x.seed}, steps {x.first_step}-{x.last_step}\n{x.text}" for x in self.excerpts]
        return "\n\n".join(parts)


_HIT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*):\d+:", re.M)


def file_usage(trace: Trace) -> list[FileUsage]:
    usage: dict[str, FileUsage] = {}
    final = {p.name: len(p.read_text(errors="replace")) for p in sorted(trace.memory_dir.glob("*")) if p.is_file()}
    for name, size in final.items():
        usage[name] = FileUsage(name=name, final_chars=size)
    for step in trace.steps:
        for op in step.memory_ops:
            name = op.args.get("file", "")
            entry = usage.setdefault(name, FileUsage(name=name, final_chars=final.get(name, 0))) if name else None
            if not op.ok:
                continue
            if op.op in CONTENT_WRITE_OPS and entry:
                entry.writes += 1
                entry.duplicate_writes += op.duplicate
                entry.chars_written += max(op.delta_chars, 0)
            elif op.op in ("read", "tail") and entry:
                entry.reads += 1
            elif op.op == "search":
                for hit in _HIT.findall(op.result):
                    if hit in usage:
                        usage[hit].search_hits += 1
    return sorted(usage.values(), key=lambda f: f.name)


def worst_stretch(curve: list[float]) -> tuple[int, int]:
    """[first, last] step of the longest run without a progression increase."""
    best, start, top = (0, 0), 0, None
    for i, p in enumerate(curve):
        if top is None or p > top:
            start, top = i, p
        if i - start > best[1] - best[0]:
            best = (start, i)
    return best


def _step_text(step, limit: int) -> str:
    lines = [f"### step {step.step}: action {step.action_text!r} -> progression {step.progression:.3f}",
             f"observation: {_cut(step.observation, limit)}"]
    for call in step.calls:
        lines.append(f"[{call.routine}/{call.role}] {_cut(call.reply, limit)}")
    for op in step.memory_ops:
        lines.append(f"  {op.op} {dict(op.args) if len(str(op.args)) < limit else '...'} -> "
                     f"{'ok' if op.ok else 'FAILED'}: {_cut(op.result, limit // 2)}")
    return "\n".join(lines)


def _cut(text: str, limit: int) -> str:
    text = text.replace("\n", " / ")
    return text if len(text) <= limit else text[:limit] + f" ...[{len(text) - limit} more chars]"


def build_bundle(scaffold: Scaffold, trace_paths: list[str | Path], token_budget: int = 12_000,
                 memory_chars_per_file: int = 1_500) -> ReviewBundle:
    traces = sorted((read_trace(p) for p in trace_paths),
                    key=lambda t: (t.header.game, t.header.task, t.header.seed, t.header.episode_id))
    digests = []
    for t in traces:
        curve = [s.progression for s in t.steps]
        memory = {p.name: _cut_block(p.read_text(errors="replace"), memory_chars_per_file)
                  for p in sorted(t.memory_dir.glob("*")) if p.is_file()}
        digests.append(EpisodeDigest(
            episode_id=t.header.episode_id, game=t.header.game, task=t.header.task, seed=t.header.seed,
            progression=curve[-1] if curve else 0.0, steps=len(t.steps), diagnostics=diagnose(t),
            files=file_usage(t), final_memory=memory, worst_stretch=worst_stretch(curve)))
    files = {k: v.decode(errors="replace") for k, v in sorted(scaffold.files.items())}
    bundle = ReviewBundle(scaffold_hash=scaffold.hash, scaffold_files=files, episodes=digests,
                          excerpts=[], token_budget=token_budget)
    budget = token_budget * CHARS_PER_TOKEN - len(bundle.render())
    # worst stretches first: the longest runs without progress, across episodes
    order = sorted(zip(traces, digests), key=lambda td: (td[1].worst_stretch[0] - td[1].worst_stretch[1], td[1].seed))
    excerpts = []
    for trace, digest in order:
        first, last = digest.worst_stretch
        chunks = []
        for step in trace.steps[first:last + 1]:
            text = _step_text(step, 300)
            if budget - len(text) < 0:
                break
            budget -= len(text) + 1
            chunks.append(text)
        if chunks:
            shown_last = first + len(chunks) - 1
            excerpts.append(Excerpt(episode_id=digest.episode_id, seed=digest.seed, first_step=first,
                                    last_step=shown_last, text="\n".join(chunks)))
        if budget <= 0:
            break
    bundle.excerpts = excerpts
    return bundle


def _cut_block(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n...[{len(text) - limit} chars omitted]...\n{text[-half:]}"
