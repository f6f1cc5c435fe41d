"""The agent's memory: a flat, sandboxed directory of text files that the model edits
through bounded operations.

Every operation returns an `OpResult` and never raises on bad model input (bad names,
missing files, caps, bad line numbers): the refusal text is what the model sees. The
directory is owned by one agent, so contents are cached in memory (search/list never touch
the disk) and every mutation is written through atomically (temp file + `os.replace`).

Choices:
- File names follow `memory_input.NAME_RE` (and its rule); model input is checked there.
  Entries that are symlinks or not regular files are never read or written.
- Lines are split on `\\n` only; line numbers are 1-based. What look-ups show (the cache
  and its search index, the renderings within `max_read_chars`) is `memory_view`'s job.
- A write that would grow a file past `max_file_chars` or memory past `max_total_chars` is
  refused (never truncated); a write that shrinks is always allowed.
- UPSERT keys are one line, non-empty, at most `MAX_KEY_CHARS`, without ':'; a line
  `key: value` matches when the text before its first ':' equals the key after stripping
  (case-sensitive). Upsert replaces the first such line and drops any further ones, so a
  key never appears twice.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from agent_core.commands import OPS
from agent_core.files import atomic_write
from agent_core.memory_input import Refusal, check_name, check_text, parse_int, parse_range, show, valid_name
from agent_core.memory_view import CachedFile, list_rows, render_read, render_tail, search_hits

MAX_KEY_CHARS = 200
_TMP_PREFIX = ".tmp-"  # cannot collide with a valid name (those start with a letter/digit)


class MemoryLimits(BaseModel):
    """Caps on the memory directory and on what one operation shows the model."""

    max_file_chars: int = Field(20_000, ge=1, description="Largest size of one file, in characters.")
    max_total_chars: int = Field(200_000, ge=1, description="Largest total size of all files, in characters.")
    max_files: int = Field(32, ge=1, description="Most files the directory may hold.")
    max_read_chars: int = Field(
        4_000, ge=400, description="Longest text a read, tail, search or list returns (truncated with a note).")
    max_search_hits: int = Field(20, ge=1, description="Most hits one search returns.")


@dataclass(frozen=True)
class OpResult:
    """Outcome of one memory operation."""

    ok: bool
    #: short text the model sees (the result or the refusal)
    text: str
    #: change of total memory size in characters
    delta_chars: int = 0
    #: a look-up that returned nothing: no hits, an empty file, no files
    empty: bool = False


def _guarded(fn: Callable[..., OpResult]) -> Callable[..., OpResult]:
    """Turn refusals and OS errors into failed OpResults."""

    @functools.wraps(fn)
    def wrapper(self: MemoryDir, *args: Any, **kwargs: Any) -> OpResult:
        try:
            return fn(self, *args, **kwargs)
        except Refusal as exc:
            return OpResult(False, str(exc), 0)
        except OSError as exc:
            return OpResult(False, f"{fn.__name__} failed: {exc.strerror or exc}", 0)

    return wrapper


#: apply(): required and optional argument names of each memory operation, from the op
#: table (READ also takes `start`/`end` from callers that are not the text protocol)
_APPLY_ARGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    name: (spec.args[:spec.required], spec.args[spec.required:] + (("start", "end") if name == "read" else ()))
    for name, spec in OPS.items() if spec.memory
}
_ARG_ALIASES = {"name": "file", "keyword": "query"}


class MemoryDir:
    """A sandboxed flat directory of text files, cached in memory, written through to disk.

    `fsync=True` also flushes each write to stable storage (slower); without it a killed
    process still never leaves a half-written file, since files are replaced atomically.
    """

    def __init__(self, root: Path | str, limits: MemoryLimits | None = None, *, fsync: bool = False):
        self.root = Path(root)
        self.limits = limits or MemoryLimits()
        self._fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, CachedFile] = {}
        self._total = 0
        self._load()

    # ------------------------------------------------------------------ state
    def _load(self) -> None:
        """Cache the regular, validly named files already in the directory."""
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.startswith(_TMP_PREFIX) and entry.is_file(follow_symlinks=False):
                    with suppress(OSError):  # leftover of an interrupted write
                        os.unlink(entry.path)
                    continue
                if not valid_name(entry.name) or not entry.is_file(follow_symlinks=False):
                    continue
                text = self._read_disk(entry.path)
                if text is not None:
                    self._files[entry.name] = CachedFile(text)
                    self._total += len(text)

    @staticmethod
    def _read_disk(path: str) -> str | None:
        """Contents of a regular file, never following a symlink; None otherwise."""
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(path, flags)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            return f.read().decode("utf-8", errors="replace")

    def text(self, name: str) -> str | None:
        """One file's content (None when absent), without copying the others."""
        f = self._files.get(name)
        return f.text if f else None

    def names(self) -> list[str]:
        """The file names, sorted."""
        return sorted(self._files)

    def files(self) -> dict[str, str]:
        """Name -> content of every file, sorted by name (a copy)."""
        return {n: self._files[n].text for n in sorted(self._files)}

    @property
    def total_chars(self) -> int:
        return self._total

    @property
    def total_lines(self) -> int:
        return sum(f.lines for f in self._files.values())

    def seed_files(self, files: Mapping[str, str]) -> None:
        """Write initial files (created or overwritten). Raises ValueError on a refusal:
        seeds come from the scaffold, not from the model."""
        for name, text in files.items():
            res = self.rewrite(name, text)
            if not res.ok:
                raise ValueError(f"cannot seed memory file {name!r}: {res.text}")

    # ------------------------------------------------------------------ checks
    def _existing(self, name: str) -> CachedFile:
        f = self._files.get(name)
        if f is None:
            raise Refusal(f"no file named {name}; LIST shows the files")
        self._check_disk(name)
        return f

    def _check_disk(self, name: str) -> Path:
        """The file's path, refused when the entry there is a symlink or not a regular file."""
        path = self.root / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return path
        if not stat.S_ISREG(st.st_mode):
            raise Refusal(f"{name} is not a regular file (symlinks and folders are refused)")
        return path

    # ------------------------------------------------------------------ writing
    def _write(self, name: str, text: str) -> int:
        """Atomically write a whole file within the caps; returns the size change."""
        lim = self.limits
        old = self._files.get(name)
        old_len = len(old.text) if old else 0
        delta = len(text) - old_len
        if old is None and len(self._files) >= lim.max_files:
            raise Refusal(f"refused: max_files={lim.max_files} reached; DELETE a file or reuse one")
        if delta > 0 and len(text) > lim.max_file_chars:
            raise Refusal(f"refused: {name} would have {len(text):,} chars, over max_file_chars="
                          f"{lim.max_file_chars:,} (now {old_len:,}); shorten or summarise it")
        if delta > 0 and self._total + delta > lim.max_total_chars:
            raise Refusal(f"refused: memory would total {self._total + delta:,} chars, over "
                          f"max_total_chars={lim.max_total_chars:,} (now {self._total:,}); "
                          "delete or shorten files first")
        path = self._check_disk(name)
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            raise Refusal("text is not valid unicode (it has a lone surrogate)") from None
        atomic_write(path, data, fsync=self._fsync, prefix=_TMP_PREFIX)
        self._files[name] = CachedFile(text)
        self._total += delta
        return delta

    @_guarded
    def create(self, name: str, text: str = "") -> OpResult:
        """Create a new file; refused when it exists."""
        n, t = check_name(name), check_text(text)
        if n in self._files or os.path.lexists(self.root / n):
            raise Refusal(f"{n} already exists; use APPEND, REPLACE or REWRITE")
        delta = self._write(n, t)
        return OpResult(True, f"created {n} ({len(t)} chars)", delta)

    @_guarded
    def append(self, name: str, text: str) -> OpResult:
        """Add text on its own line(s) at the end of a file (created when missing)."""
        n, t = check_name(name), check_text(text)
        if not t.strip():
            raise Refusal("nothing to append: the text is empty")
        base = self._existing(n).text if n in self._files else ""
        sep = "\n" if base and not base.endswith("\n") else ""
        new = base + sep + t + ("" if t.endswith("\n") else "\n")
        delta = self._write(n, new)
        return OpResult(True, f"appended {len(t)} chars to {n} (now {self._files[n].lines} lines)", delta)

    @_guarded
    def rewrite(self, name: str, text: str) -> OpResult:
        """Replace a whole file (created when missing)."""
        n, t = check_name(name), check_text(text)
        if n in self._files:
            self._existing(n)
        delta = self._write(n, t)
        return OpResult(True, f"rewrote {n} ({len(t)} chars, {self._files[n].lines} lines)", delta)

    @_guarded
    def replace(self, name: str, old: str, new: str) -> OpResult:
        """Replace the first occurrence of a passage."""
        n, o, w = check_name(name), check_text(old, "old"), check_text(new, "new")
        if not o:
            raise Refusal("the passage to replace is empty")
        base = self._existing(n).text
        i = base.find(o)
        if i < 0:
            raise Refusal(f"passage not found in {n}: it must match the file text exactly (READ {n} to check)")
        count = base.count(o)
        delta = self._write(n, base[:i] + w + base[i + len(o):])
        more = f" (first of {count} occurrences)" if count > 1 else ""
        return OpResult(True, f"replaced {len(o)} chars with {len(w)} in {n}{more}", delta)

    @_guarded
    def upsert(self, name: str, key: str, value: str) -> OpResult:
        """Set `key: value` in a keyed file: replace the line with that key, else append."""
        n = check_name(name)
        k, v = check_text(key, "key").strip(), check_text(value, "value")
        if not k or ":" in k or "\n" in k or "\r" in k or len(k) > MAX_KEY_CHARS:
            raise Refusal(f"invalid key {show(key)}: keys are one non-empty line of at most "
                          f"{MAX_KEY_CHARS} chars without ':'")
        if "\n" in v or "\r" in v:
            raise Refusal("the value must be one line")
        v = v.strip()
        line = f"{k}: {v}" if v else f"{k}:"
        out, found, dropped = [], False, 0
        for ln in self._existing(n).split() if n in self._files else []:
            head, colon, _ = ln.partition(":")
            if colon and head.strip() == k:
                if found:
                    dropped += 1
                    continue
                out.append(line)
                found = True
            else:
                out.append(ln)
        if not found:
            out.append(line)
        delta = self._write(n, "\n".join(out) + "\n")
        extra = f" (removed {dropped} duplicate lines)" if dropped else ""
        return OpResult(True, f"{'updated' if found else 'added'} {k} {'in' if found else 'to'} {n}{extra}", delta)

    @_guarded
    def delete(self, name: str) -> OpResult:
        """Delete a file."""
        n = check_name(name)
        f = self._existing(n)
        with suppress(FileNotFoundError):
            os.unlink(self.root / n)
        del self._files[n]
        self._total -= len(f.text)
        return OpResult(True, f"deleted {n} ({len(f.text)} chars)", -len(f.text))

    # ------------------------------------------------------------------ reading
    @_guarded
    def read(self, name: str, start: int | None = None, end: int | None = None) -> OpResult:
        """A whole file or the 1-based inclusive line range start-end, lines numbered."""
        n = check_name(name)
        f = self._existing(n)
        s, e = parse_int(start, "start"), parse_int(end, "end")
        lines = f.split()
        if not lines:
            return OpResult(True, f"{n} is empty", empty=True)
        return OpResult(True, render_read(n, lines, s, e, self.limits.max_read_chars))

    @_guarded
    def tail(self, name: str, n: int = 10) -> OpResult:
        """The last n lines of a file, numbered."""
        name_ = check_name(name)
        f = self._existing(name_)
        count = parse_int(n, "n")
        count = 10 if count is None else count
        if count < 1:
            raise Refusal(f"n must be at least 1, got {count}")
        lines = f.split()
        if not lines:
            return OpResult(True, f"{name_} is empty", empty=True)
        return OpResult(True, render_tail(name_, lines, count, self.limits.max_read_chars))

    @_guarded
    def search(self, query: str) -> OpResult:
        """Case-insensitive literal substring search over all files: `file:line: text` hits."""
        q = check_text(query, "query").strip()
        if not q or "\n" in q or "\r" in q:
            raise Refusal("the search keyword must be one non-empty line")
        hits, stopped = search_hits(self._files, q, self.limits.max_read_chars, self.limits.max_search_hits)
        shown = show(q)
        if not hits:
            return OpResult(True, f"no hits for {shown}", empty=True)
        text = f"{len(hits)} hits for {shown}:\n" + "\n".join(hits)
        return OpResult(True, text + (f"\n{stopped}" if stopped else ""))

    @_guarded
    def list(self) -> OpResult:
        """File names with line and character counts."""
        lim = self.limits
        head = (f"{len(self._files)} files, {self.total_lines} lines, "
                f"{self._total:,}/{lim.max_total_chars:,} chars")
        if not self._files:
            return OpResult(True, head, empty=True)
        return OpResult(True, head + ":\n" + list_rows(self._files, lim.max_read_chars))

    # ------------------------------------------------------------------ dispatch
    @_guarded
    def apply(self, op: str, args: Mapping[str, str]) -> OpResult:
        """Run a memory operation by (case-insensitive) name with string arguments."""
        if not isinstance(op, str) or op.strip().lower() not in _APPLY_ARGS:
            known = ", ".join(o.upper() for o in _APPLY_ARGS)
            raise Refusal(f"unknown memory operation {show(op)}; known: {known}")
        name = op.strip().lower()
        required, optional = _APPLY_ARGS[name]
        if not isinstance(args, Mapping):
            raise Refusal(f"{name.upper()} arguments must be a mapping")
        a: dict[str, Any] = {}
        for k, v in args.items():
            key = _ARG_ALIASES.get(str(k).lower(), str(k).lower())
            if key not in required and key not in optional:
                raise Refusal(f"{name.upper()} takes no argument {show(k)}; "
                              f"arguments: {', '.join(required + optional) or 'none'}")
            a[key] = v
        missing = [k for k in required if k not in a]
        if missing:
            raise Refusal(f"{name.upper()} needs {', '.join(missing)}")
        if name == "create":
            return self.create(a["file"], a.get("text", ""))
        if name in ("append", "rewrite"):
            return getattr(self, name)(a["file"], a["text"])
        if name == "replace":
            return self.replace(a["file"], a["old"], a["new"])
        if name == "upsert":
            return self.upsert(a["file"], a["key"], a["value"])
        if name == "read":
            if "lines" in a:
                start, end = parse_range(a["lines"])
            else:
                start, end = parse_int(a.get("start"), "start"), parse_int(a.get("end"), "end")
            return self.read(a["file"], start, end)
        if name == "tail":
            return self.tail(a["file"], a.get("n", 10))
        if name == "search":
            return self.search(a["query"])
        if name == "delete":
            return self.delete(a["file"])
        return self.list()
