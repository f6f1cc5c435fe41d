"""What the memory's look-ups show the model: the in-memory cache of each file (with a
lazily built case-folded search index) and the renderings of READ, TAIL, SEARCH and LIST,
numbered and kept within `max_read_chars` (truncated with a note that says how to see more).

Lines are split on `\\n` only; line numbers are 1-based. Nothing here touches the disk: the
memory directory (`memory.MemoryDir`) fills the cache and checks the model's arguments.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping

from agent_core.memory_input import Refusal

#: longest search hit line shown (the part around the match is kept)
HIT_CHARS = 160
_NOTE_RESERVE = 200  # room kept for a header/truncation note inside max_read_chars


def _split_lines(text: str) -> list[str]:
    """Lines of a text split on '\\n' (a final newline does not start an empty line)."""
    if not text:
        return []
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return lines


def _count_lines(text: str) -> int:
    return 0 if not text else text.count("\n") + (not text.endswith("\n"))


class CachedFile:
    """Cached content of one file, with a lazily built case-folded search index."""

    __slots__ = ("text", "lines", "_folded", "_starts", "_split")

    def __init__(self, text: str):
        self.text = text
        self.lines = _count_lines(text)
        self._folded: str | None = None
        self._starts: list[int] = []
        self._split: list[str] = []

    def split(self) -> list[str]:
        if not self._split and self.text:
            self._split = _split_lines(self.text)
        return self._split

    def index(self) -> tuple[str, list[str], list[int]]:
        """(case-folded text joined by '\\n', original lines, start offset of each folded line)."""
        if self._folded is None:
            folded = [ln.casefold() for ln in self.split()]
            starts, pos = [], 0
            for ln in folded:
                starts.append(pos)
                pos += len(ln) + 1
            self._folded, self._starts = "\n".join(folded), starts
        return self._folded, self._split, self._starts


def _read_budget(max_read_chars: int) -> int:
    """Characters left for the rows of one look-up, after room for its header and notes."""
    return max_read_chars - _NOTE_RESERVE


def _clip(line: str, budget: int) -> str:
    return line if len(line) <= budget else line[: max(0, budget - 3)] + "..."


def render_read(name: str, lines: list[str], start: int | None, end: int | None, max_read_chars: int) -> str:
    """The 1-based inclusive line range start-end (None: the first / last line) of a
    non-empty file, lines numbered; refused when the range is out of the file."""
    total = len(lines)
    s = 1 if start is None else start
    e = total if end is None else min(end, total)
    if s < 1 or s > total:
        raise Refusal(f"{name} has {total} lines; start line {s} is out of range")
    if e < s:
        raise Refusal(f"end line {e} is before start line {s}")
    budget, shown = _read_budget(max_read_chars), []
    for no in range(s, e + 1):
        row = _clip(f"{no}: {lines[no - 1]}", budget)
        if shown and len(row) + 1 > budget:
            break
        shown.append(row)
        budget -= len(row) + 1
    last = s + len(shown) - 1
    text = f"{name} lines {s}-{last} of {total}:\n" + "\n".join(shown)
    if last < e:
        text += f"\n[truncated at max_read_chars={max_read_chars}; READ {name}|{last + 1}-{e} for more]"
    return text


def render_tail(name: str, lines: list[str], count: int, max_read_chars: int) -> str:
    """The last `count` lines of a non-empty file, numbered."""
    total = len(lines)
    first = max(1, total - count + 1)
    budget, shown = _read_budget(max_read_chars), []
    for no in range(total, first - 1, -1):
        row = _clip(f"{no}: {lines[no - 1]}", budget)
        if shown and len(row) + 1 > budget:
            break
        shown.append(row)
        budget -= len(row) + 1
    shown.reverse()
    top = total - len(shown) + 1
    note = (f"[truncated at max_read_chars={max_read_chars}; "
            f"READ {name}|{first}-{top - 1} for earlier lines]\n") if top > first else ""
    return f"{name} lines {top}-{total} of {total}:\n{note}" + "\n".join(shown)


def search_hits(files: Mapping[str, CachedFile], query: str, max_read_chars: int,
                max_search_hits: int) -> tuple[list[str], str]:
    """Case-insensitive literal substring search over all files: the `file:line: text` hit
    rows, in file-name and line order, and the note on why the search stopped early ("")."""
    fq = query.casefold()
    budget, hits, stopped = _read_budget(max_read_chars), [], ""
    for name in sorted(files):
        folded, lines, starts = files[name].index()
        pos = folded.find(fq)
        while pos >= 0:
            if len(hits) >= max_search_hits:
                stopped = f"[stopped at max_search_hits={max_search_hits}; use a more specific keyword]"
                break
            i = bisect_right(starts, pos) - 1
            line, col = lines[i], pos - starts[i]
            if len(line) > HIT_CHARS:
                lo = max(0, min(col - HIT_CHARS // 3, len(line) - HIT_CHARS))
                line = ("..." if lo else "") + line[lo:lo + HIT_CHARS] + "..."
            row = _clip(f"{name}:{i + 1}: {line}", budget)
            if hits and len(row) + 1 > budget:
                stopped = f"[truncated at max_read_chars={max_read_chars}; use a more specific keyword]"
                break
            hits.append(row)
            budget -= len(row) + 1
            pos = folded.find(fq, starts[i + 1]) if i + 1 < len(starts) else -1
        if stopped:
            break
    return hits, stopped


def list_rows(files: Mapping[str, CachedFile], max_read_chars: int) -> str:
    """One `name: lines, chars` row per file, sorted, with a note on the files not shown."""
    budget, rows = _read_budget(max_read_chars), []
    for name in sorted(files):
        f = files[name]
        row = f"{name}: {f.lines} lines, {len(f.text):,} chars"
        if len(row) + 1 > budget:
            rows.append(f"[{len(files) - len(rows)} more files not shown]")
            break
        rows.append(row)
        budget -= len(row) + 1
    return "\n".join(rows)
