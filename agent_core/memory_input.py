"""What the memory operations accept from the model: file names, texts, line numbers and
line ranges, each checked or parsed here; bad input raises `Refusal`, whose text is what the
model sees (`memory.MemoryDir` turns it into a failed `OpResult`).

Choices:
- File names match `NAME_RE` and contain no `..`; surrounding whitespace and one leading
  `./` are dropped before checking (so `./notes.md ` is `notes.md`); anything else is refused
  with the rule.
- Line numbers are whole numbers (`12`, ` +12 `); a range is `start-end`, `start-` (to the
  end) or `n` (one line), with a few other separators (`..`, `:`, `,`, `to`, dashes).
"""

from __future__ import annotations

import re

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = ("file names are 1-64 characters from A-Z a-z 0-9 . _ -, start with a letter or "
             "digit and contain no '..' (no folders or paths)")
_INT_RE = re.compile(r"\+?(\d{1,9})")
_RANGE_RE = re.compile(r"(?:lines?\s{0,4})?(\d{1,9})(?:\s{0,4}(-|–|—|\.\.|:|,|to)\s{0,4}(\d{1,9})?)?",
                       re.IGNORECASE)


class Refusal(Exception):
    """Bad model input: becomes a failed OpResult."""


def show(value: object, limit: int = 40) -> str:
    """A short, one-line, quoted rendering of model input for messages."""
    r = repr(value if not isinstance(value, str) else value[:limit])
    return r + ("..." if isinstance(value, str) and len(value) > limit else "")


def valid_name(name: str) -> bool:
    """Whether `name` is a valid memory file name as it stands (nothing stripped)."""
    return NAME_RE.fullmatch(name) is not None and ".." not in name


def check_name(name: object) -> str:
    """The file name the model meant (whitespace and one leading `./` dropped), refused
    with the rule when it is not valid."""
    if not isinstance(name, str):
        raise Refusal(f"invalid file name {show(name)}: {NAME_RULE}")
    n = name.strip()
    n = n[2:] if n.startswith("./") else n
    if not valid_name(n):
        raise Refusal(f"invalid file name {show(name)}: {NAME_RULE}")
    return n


def check_text(text: object, what: str = "text") -> str:
    """`text` when it is a string without NUL characters; refused otherwise."""
    if not isinstance(text, str):
        raise Refusal(f"{what} must be text, got {type(text).__name__}")
    if "\x00" in text:
        raise Refusal(f"{what} contains a NUL character")
    return text


def parse_int(value: object, what: str) -> int | None:
    """A non-negative int from an int or a string like ' 12 ' / '+12'; None when empty."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        s = value.strip()
        if not s:
            return None
        m = _INT_RE.fullmatch(s)
        if m:
            return int(m.group(1))
    raise Refusal(f"{what} must be a whole number, got {show(value)}")


def parse_range(value: object) -> tuple[int | None, int | None]:
    """(start, end) from 'start-end', 'start-' (to the end) or 'n' (one line); empty: whole file."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    m = _RANGE_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if not m:
        raise Refusal(f"line range {show(value)} not understood: use start-end, e.g. 3-10")
    start, sep, end = int(m.group(1)), m.group(2), m.group(3)
    if sep is None:  # "3": one line
        return start, start
    return start, (int(end) if end is not None else None)  # "3-": to the end
