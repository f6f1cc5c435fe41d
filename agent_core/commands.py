"""The command protocol small models follow: tagged text such as
``<|APPEND|>notes.md|saw a key at 3,4<|END|>``.

Arguments are separated by '|', split at most (number of arguments - 1) times, so the last
argument may contain '|'. The parser is forgiving about form (tag names in any case, spaces
inside a tag, whitespace around arguments, prose outside tags, a missing `<|END|>` at the
very end of a reply that was not cut off, a stray `<|END|>`) but never guesses: an unknown op, a wrong number of
arguments, a command left open before the next tag, a `<|/OP|>` closing tag, or a reply with
no command each give a one-line error, which the caller counts as an invalid operation.
Tags are found with one bounded regular expression, so parsing is linear in the reply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

OpKind = Literal["write", "read", "control", "world"]

#: what the parser strips around arguments: ASCII whitespace, which the reply grammars
#: spell out the same way (every regex dialect agrees on it; not so on Unicode spaces)
WHITESPACE = " \t\n\r\f\v"
#: errors listed per reply; further ones are summarised in one line (see ParseResult.error_count)
MAX_ERRORS = 20

#: how an argument is shown in usage lines
_PLACEHOLDERS = {"lines": "start-end"}

TAG_RE = re.compile(r"<\|[ \t]{0,8}(/?)[ \t]{0,8}([A-Za-z_]{1,24})[ \t]{0,8}\|>")


@dataclass(frozen=True)
class OpSpec:
    """One op of the protocol: argument names in order, how many are required."""

    name: str
    args: tuple[str, ...]
    required: int
    kind: OpKind
    #: arguments that must not be empty after stripping
    nonempty: frozenset[str] = frozenset()
    #: False only for DONE, which stands alone
    needs_end: bool = True
    help: str = ""

    @property
    def read_only(self) -> bool:
        """A memory read op (READ, TAIL, SEARCH, LIST)."""
        return self.kind == "read"

    @property
    def memory(self) -> bool:
        """Runs against the memory directory (not DONE or ACTION)."""
        return self.kind in ("read", "write")

    @property
    def usage(self) -> str:
        """The syntax, e.g. ``<|READ|>file[|lines]<|END|>``."""
        shown = [_PLACEHOLDERS.get(a, a) for a in self.args]
        req = "|".join(shown[: self.required])
        opt = "".join(f"[|{a}]" for a in shown[self.required:])
        return f"<|{self.name.upper()}|>{req}{opt}" + ("<|END|>" if self.needs_end else "")


def _spec(name: str, args: tuple[str, ...], required: int, kind: OpKind, nonempty: tuple[str, ...],
          help: str, needs_end: bool = True) -> OpSpec:
    return OpSpec(name, args, required, kind, frozenset(nonempty), needs_end, help)


OPS: dict[str, OpSpec] = {s.name: s for s in (
    _spec("create", ("file", "text"), 1, "write", ("file",), "create a new file"),
    _spec("append", ("file", "text"), 2, "write", ("file",), "add lines at the end of a file"),
    _spec("rewrite", ("file", "text"), 2, "write", ("file",), "replace a whole file"),
    _spec("replace", ("file", "old", "new"), 3, "write", ("file", "old"), "replace a passage"),
    _spec("upsert", ("file", "key", "value"), 3, "write", ("file", "key"),
          "set the line 'key: value' (replaces the line with that key)"),
    _spec("read", ("file", "lines"), 1, "read", ("file",), "show a file or lines start-end, e.g. 3-10"),
    _spec("tail", ("file", "n"), 1, "read", ("file",), "show the last n lines (default 10)"),
    _spec("search", ("query",), 1, "read", ("query",), "find a keyword in all files"),
    _spec("list", (), 0, "read", (), "list the files"),
    _spec("delete", ("file",), 1, "write", ("file",), "delete a file"),
    _spec("done", (), 0, "control", (), "finish this routine", needs_end=False),
    _spec("action", ("name",), 1, "world", ("name",), "commit the world action"),
)}
# The op sets, each in the table's order: the one vocabulary of the grammar, the scaffold's
# allowed_ops, the agent, the diagnostics and the curator's SQL.
#: operations that change memory
WRITE_OPS = tuple(n for n, s in OPS.items() if s.kind == "write")
#: look-ups: they read memory and end the reply (`split_at_look_ups`); LIST included, its
#: names can decide a READ or a write
READ_OPS = tuple(n for n, s in OPS.items() if s.read_only)
#: operations run against the memory directory (not DONE or ACTION)
MEMORY_OPS = WRITE_OPS + READ_OPS
#: writes that add content (DELETE only removes): what the write counts and ratios count
CONTENT_WRITE_OPS = tuple(n for n in WRITE_OPS if n != "delete")
#: look-ups that see memory contents (LIST only shows names): what consult_before_write asks for
CONSULT_OPS = ("read", "tail", "search")

CORRECTION_HINT = ("Write each command as <|OP|>arg1|arg2<|END|>, e.g. <|APPEND|>notes.md|text<|END|>, "
                   "<|READ|>notes.md|1-20<|END|>, <|SEARCH|>keyword<|END|>, <|ACTION|>name<|END|>; "
                   "finish with <|DONE|>.")
NO_COMMAND = ("could not parse reply: expected commands like <|APPEND|>file|text<|END|> or <|DONE|>; "
              "no command tag found")
_KNOWN = ", ".join(n.upper() for n in OPS)


@dataclass(frozen=True)
class Command:
    """One parsed command: `op` lowercase, named string arguments, and the raw tagged text."""

    op: str
    args: dict[str, str]
    raw: str


@dataclass(frozen=True)
class ParseResult:
    """Commands in reply order and one-line errors (at most MAX_ERRORS + 1 listed);
    `error_count` is the number of errors found, listed or not."""

    commands: list[Command]
    errors: list[str]
    error_count: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "error_count", max(self.error_count, len(self.errors)))


def _snip(text: str, limit: int = 40) -> str:
    """A one-line excerpt of model text for an error message."""
    one = " ".join(text[: limit + 1].split())
    return one[:limit] + ("..." if len(one) > limit or len(text) > limit else "")


class _Parser:
    def __init__(self, text: str, truncated: bool = False):
        self.text = text
        self.truncated = truncated
        self.commands: list[Command] = []
        self.errors: list[str] = []
        self.count = 0

    def error(self, msg: str) -> None:
        self.count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(msg)

    def finish(self, spec: OpSpec, body: str, raw: str) -> None:
        op = spec.name.upper()
        if not spec.args:
            if body.strip(WHITESPACE):
                self.error(f"{op} takes no arguments, got {_snip(body)!r}: write {spec.usage}")
                return
            self.commands.append(Command(spec.name, {}, raw))
            return
        parts = [p.strip(WHITESPACE) for p in body.split("|", len(spec.args) - 1)]
        if len(parts) < spec.required:
            names = "|".join(spec.args[: spec.required])
            self.error(f"{op} needs {spec.required} arguments ({names}) separated by '|', "
                       f"got {len(parts)}: write {spec.usage}")
            return
        args = dict(zip(spec.args, parts))
        empty = [a for a in spec.args if a in spec.nonempty and a in args and not args[a]]
        if empty:
            self.error(f"{op}: {', '.join(empty)} is empty: write {spec.usage}")
            return
        self.commands.append(Command(spec.name, args, raw))

    def run(self) -> ParseResult:
        text = self.text
        open_: tuple[OpSpec, int, int] | None = None  # spec, tag start, body start
        for m in TAG_RE.finditer(text):
            closing, name = m.group(1), m.group(2).lower()
            if open_ is not None:
                spec, tag_start, body_start = open_
                open_ = None
                if name == "end" and not closing:
                    self.finish(spec, text[body_start:m.start()], text[tag_start:m.end()])
                    continue
                if closing:
                    self.error(f"close commands with <|END|>, not {_snip(m.group(0))}; "
                               f"<|{spec.name.upper()}|> was not run")
                    continue
                self.error(f"unclosed <|{spec.name.upper()}|> before {_snip(m.group(0))} was not run: "
                           "end every command with <|END|>")
            if closing:
                self.error(f"{_snip(m.group(0))} is not a command: close commands with <|END|>")
                continue
            if name == "end":  # stray END: nothing to close
                continue
            spec = OPS.get(name)
            if spec is None:
                self.error(f"unknown op {_snip(m.group(0))}; ops: {_KNOWN}")
            elif not spec.needs_end:
                self.commands.append(Command(spec.name, {}, m.group(0)))
            else:
                open_ = (spec, m.start(), m.end())
        if self.truncated:  # cut off by max_tokens: an open command is incomplete
            what = f"inside <|{open_[0].name.upper()}|>, which was not run" if open_ else "before it ended"
            self.error(f"reply cut off at the token limit {what}: keep replies short and end with <|DONE|>")
        elif open_ is not None:  # missing END at the very end of the reply
            spec, tag_start, body_start = open_
            self.finish(spec, text[body_start:], text[tag_start:])
        if not self.commands and not self.count:
            self.error(NO_COMMAND)
        errors = list(self.errors)
        if self.count > len(errors):
            errors.append(f"... and {self.count - len(errors)} more errors like these")
        return ParseResult(self.commands, errors, self.count)


def parse_reply(text: str, truncated: bool = False) -> ParseResult:
    """Parse a model reply into commands and one-line errors. Never raises.

    `truncated`: the reply was cut off by the token limit (finish reason "length"). That is
    one error, and a command left open at the end is not run (a complete reply may omit its
    last `<|END|>`; a cut-off one may have lost more than that)."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        text = "" if text is None else str(text)
    return _Parser(text, truncated).run()


def format_command(op: str, **args: str) -> str:
    """The tagged text of one command, e.g. ``format_command("read", file="a.md", lines="1-5")``.
    Optional arguments may be left out from the end. Raises ValueError for an unknown op or
    argument, a missing one, or values that would not parse back unchanged ('|' in a
    non-final argument, surrounding whitespace, tag-like text)."""
    spec = OPS.get(op.lower()) if isinstance(op, str) else None
    if spec is None:
        raise ValueError(f"unknown op {op!r}; ops: {_KNOWN}")
    unknown = set(args) - set(spec.args)
    if unknown:
        raise ValueError(f"{op}: unknown arguments {sorted(unknown)}; arguments: {list(spec.args)}")
    values: list[str] = []
    for i, name in enumerate(spec.args):
        if name not in args:
            if i < spec.required:
                raise ValueError(f"{op}: missing argument {name!r}")
            if any(a in args for a in spec.args[i:]):
                raise ValueError(f"{op}: optional arguments may only be left out from the end")
            break
        values.append(str(args[name]))
    for i, v in enumerate(values):
        if v != v.strip(WHITESPACE):
            raise ValueError(f"{op}: argument {spec.args[i]!r} has surrounding whitespace")
        if "|" in v and i < len(values) - 1:
            raise ValueError(f"{op}: only the last argument may contain '|' ({spec.args[i]!r} does)")
    raw = f"<|{spec.name.upper()}|>" + "|".join(values) + ("<|END|>" if spec.needs_end else "")
    expected = Command(spec.name, dict(zip(spec.args, values)), raw)
    parsed = parse_reply(raw)
    if parsed.errors or parsed.commands != [expected]:
        raise ValueError(f"{op}: arguments would not parse back unchanged "
                         f"({parsed.errors[0] if parsed.errors else 'they contain tag-like text'})")
    return raw


def split_at_look_ups(commands: list[Command]) -> tuple[list[Command], list[Command]]:
    """A reply's commands as the agent runs them: a group of look-ups ends the reply (their
    results go back to the model before it writes or acts), so the first command after a
    look-up that is not itself one, and all after it, are not run. Returns (the commands up
    to that cut, the commands cut off). The agent and the dataset builder both apply it."""
    looked = False
    for i, cmd in enumerate(commands):
        if looked and cmd.op not in READ_OPS:
            return commands[:i], commands[i:]
        looked |= cmd.op in READ_OPS
    return commands, []
