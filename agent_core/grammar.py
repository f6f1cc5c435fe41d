"""The command protocol as a grammar: what each model call may reply, enforced while decoding.

Every grammar is built here, from the op table in `commands.py`, the scaffold's routine
settings and the game's action names; nothing else writes one. A grammar is a regular
expression: the one constraint every structured-generation engine takes (llguidance and
xgrammar in vLLM, llguidance in `LocalModel` and `automem serve`) and that Python's `re`
can check a reply against.

- ACT: exactly `<|ACTION|>name<|END|>`, `name` one of the game's actions, spelled exactly.
- A memory-role turn (LOG, or the consultation part of PLAN): writes (zero or more; PLAN
  allows none), then one ending:
  - a group of look-ups (READ, TAIL, SEARCH, LIST): the reply ends there; the agent runs
    them, their results go into the conversation and the routine continues with a new turn,
    so a look-up always reaches the decision it was made for;
  - `<|DONE|>`;
  - in PLAN, when one model plays both roles, the world action instead of `<|DONE|>`.
  At most `ops_left` operations in all. On the routine's last turn, or with no operations
  left, only the endings remain (a look-up there could reach nothing), so a routine always
  ends cleanly.

With `consult_before_write` and no successful look-up yet in the step, a LOG turn is
look-ups only, as the agent would refuse a write before one.

Arguments: a file name is one of the memory's files (CREATE's follows MemoryDir's name
rule); line ranges and counts are digits; every text is one line (memory files hold lines;
small models otherwise fill replies with blank lines). Texts may hold '<' and '|' wherever
the parser can tell them from tags and separators, so NetHack's map rows (`|..<..|`) can be
written down: never the pair '<|' (a tag starts so), and a text followed by another
argument holds no '|' and does not end in '<'. A required text starts with a visible
character and is at most `TEXT_MAX_CHARS` long ('<' and the character after it count as
one). Only short bounds appear as regex repeats: a reply's total length is capped by
`max_tokens` (engines compile long bounded repeats slowly).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Literal

from agent_core.commands import CONSULT_OPS, OPS, OpSpec

#: longest text argument (characters)
TEXT_MAX_CHARS = 160
GrammarKind = Literal["regex", "lark"]

_NAME = r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}"  # memory_input.NAME_RE (the '..' rule is valid_name's)
_RANGE = r"[0-9]{1,6}(-[0-9]{1,6})?"
_COUNT = r"[0-9]{1,4}"


def _text(extra: str = "", last: bool = True) -> str:
    """A one-line text argument. `last`: the command's final argument, which may hold '|'
    (the parser splits a body at most (arguments - 1) times) and may end in '<' (what
    follows is a tag). '<' is always followed by something other than '<' or '|', so no
    text ever holds '<|'."""
    # spelled-out whitespace (commands.WHITESPACE) rather than \s: every regex dialect reads
    # it the same, and it is exactly what the parser strips
    bar = "" if last else r"\|"
    plain = rf"[^<{bar}\n\r{extra}]"
    visible = rf"[^<{bar}\n\r{extra} \t\f\v]"
    lt = rf"<[^<|\n\r{extra}]"
    tail = "<?" if last else ""
    return rf"({visible}|{lt})({plain}|{lt}){{0,{TEXT_MAX_CHARS - 1}}}{tail}"


#: the pattern of each argument, by argument name (commands.OPS names every argument)
_ARG_PATTERNS = {
    "file": _NAME,
    "lines": _RANGE,
    "n": _COUNT,
    "query": _text(),
    "key": _text(":", last=False),  # MemoryDir: a key has no ':'
    "old": _text(last=False),
    "new": _text(),
    "text": _text(),
    "value": _text(),
}


class GrammarError(ValueError):
    """No grammar can be built (e.g. a routine that allows nothing): a scaffold error."""


@dataclass(frozen=True)
class Grammar:
    """One constraint on a reply: its text form, and a short digest that traces record."""

    text: str
    kind: GrammarKind = "regex"

    @cached_property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.kind}\0{self.text}".encode()).hexdigest()[:16]

    def request_field(self) -> dict[str, str]:
        """vLLM's `structured_outputs` request field (its current one; `guided_*` is gone)."""
        return {"regex" if self.kind == "regex" else "grammar": self.text}

    @classmethod
    def from_request(cls, field: dict) -> "Grammar":
        """The constraint of a `structured_outputs` request field (`automem serve`).
        Raises ValueError for what this server does not implement."""
        given = {k: v for k, v in field.items() if v is not None}
        if len(given) != 1:
            raise ValueError(f"structured_outputs takes exactly one of regex, grammar, choice; got {sorted(given)}")
        (key, value), = given.items()
        if key == "regex" and isinstance(value, str):
            return cls(value, "regex")
        if key == "grammar" and isinstance(value, str):
            return cls(value, "lark")
        if key == "choice" and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return cls("(" + "|".join(re.escape(v) for v in value) + ")", "regex")
        raise ValueError(f"structured_outputs.{key} is not supported here; use regex (a string), "
                         "grammar (Lark text) or choice (a list of strings)")

    def llguidance(self) -> str:
        """The grammar in llguidance's serialised form."""
        from llguidance import LLMatcher

        if self.kind == "regex":
            return LLMatcher.grammar_from_regex(self.text)
        return LLMatcher.grammar_from_lark(self.text)

    def check(self) -> None:
        """Compile it with llguidance; GrammarError with the engine's message if it cannot."""
        from llguidance import LLMatcher

        message = LLMatcher.validate_grammar(self.llguidance())
        if message:
            raise GrammarError(f"grammar does not compile: {message}")

    def matches(self, reply: str) -> bool:
        """Whether `reply` is a complete sentence of this grammar (regex grammars only)."""
        if self.kind != "regex":
            raise ValueError("only regex grammars can be checked without an engine")
        return _compiled(self.text).fullmatch(reply) is not None


@lru_cache(maxsize=256)
def _compiled(text: str) -> re.Pattern:
    return re.compile(text, re.DOTALL)


def _tag(name: str) -> str:
    return re.escape(f"<|{name.upper()}|>")


def command_pattern(spec: OpSpec, files: list[str] | None = None) -> str:
    """The pattern of one command, from its spec: `<|OP|>arg|arg[|optional]<|END|>`.
    With `files`, a file argument names one of them (CREATE's follows the name rule)."""
    named = _choice([re.escape(f) for f in files]) if files and spec.name != "create" else None
    args = [named if a == "file" and named else _ARG_PATTERNS[a] for a in spec.args]
    if spec.required == 0 and args:
        raise GrammarError(f"{spec.name}: an op whose arguments are all optional has no pattern yet")
    body = r"\|".join(args[:spec.required]) + "".join(rf"(\|{a})?" for a in args[spec.required:])
    return _tag(spec.name) + body + (_tag("end") if spec.needs_end else "")


def _choice(patterns: list[str]) -> str:
    return "(" + "|".join(patterns) + ")"


def action_pattern(actions: list[str]) -> str:
    """`<|ACTION|>name<|END|>` with `name` one of `actions`, spelled exactly."""
    if not actions:
        raise GrammarError("the game has no actions")
    return _tag("action") + _choice([re.escape(a) for a in actions]) + _tag("end")


def _ops(ops: list[str], routine: str, files: list[str] | None) -> str:
    unknown = [o for o in ops if o not in OPS or not OPS[o].memory]
    if unknown:
        raise GrammarError(f"{routine.upper()} allows unknown operations {unknown}")
    return _choice([command_pattern(OPS[o], files) for o in ops])


def _turn(writes: list[str], lookups: list[str], endings: str, ops_left: int, files: list[str] | None,
          routine: str, may_look_up: bool) -> Grammar:
    """Writes (up to `ops_left`), then an ending; or, when `may_look_up`, writes then a group of
    look-ups, the whole at most `ops_left` operations (the reply ends after the group)."""
    if ops_left < 1:
        return Grammar(endings)
    w = _ops(writes, routine, files) if writes else None
    options = [(f"{w}{{0,{ops_left}}}" if w else "") + endings]
    if may_look_up and lookups:
        look = _ops(lookups, routine, files)
        for k in range(ops_left if w else 1):  # k writes, then 1 to ops_left - k look-ups
            options.append((f"{w}{{{k}}}" if k else "") + f"{look}{{1,{ops_left - k}}}")
    return Grammar(options[0] if len(options) == 1 else _choice(options))


def log_grammar(allowed_ops: list[str], ops_left: int, files: list[str] | None = None,
                consult_first: bool = False, last_turn: bool = False) -> Grammar:
    """One LOG turn: writes, then `<|DONE|>` or a group of look-ups that ends the reply (not on
    the `last_turn`), at most `ops_left` operations. With `files` (the memory's file names),
    commands other than CREATE name one of them. With `consult_first` (the routine's
    `consult_before_write`, no successful look-up yet in this step) the turn is look-ups
    only, or, on the last turn, `<|DONE|>` (no write could run)."""
    if not allowed_ops:
        raise GrammarError(f"LOG must allow at least one operation (log.allowed_ops is empty)")
    unknown = [o for o in allowed_ops if o not in OPS or not OPS[o].memory]
    if unknown:
        raise GrammarError(f"LOG allows unknown operations {unknown}")
    writes = [o for o in allowed_ops if not OPS[o].read_only]
    lookups = [o for o in allowed_ops if OPS[o].read_only]
    if not consult_first:
        return _turn(writes, lookups, _tag("done"), ops_left, files, "log", not last_turn)
    consults = [o for o in lookups if o in CONSULT_OPS]
    if not consults:
        raise GrammarError("LOG has consult_before_write but allows no look-up "
                           f"({', '.join(o.upper() for o in CONSULT_OPS)}): no write could ever run")
    if last_turn or ops_left < 1:
        return Grammar(_tag("done"))
    return Grammar(_ops(lookups, "log", files) + f"{{1,{ops_left}}}")


def plan_grammar(allowed_ops: list[str], ops_left: int, actions: list[str] | None = None,
                 files: list[str] | None = None, last_turn: bool = False) -> Grammar:
    """One PLAN turn of the memory role: a group of look-ups (at most `ops_left`; not on the
    `last_turn`) that ends the reply, or `<|DONE|>`; with `actions` (one model plays both
    roles) the world action may take the place of `<|DONE|>`."""
    writes = [o for o in allowed_ops if o in OPS and not OPS[o].read_only]
    if writes:
        raise GrammarError(f"PLAN may only read memory; it allows {writes}")
    ending = _tag("done") if actions is None else _choice([_tag("done"), action_pattern(actions)])
    if allowed_ops:
        _ops(allowed_ops, "plan", files)  # unknown ops fail here
    return _turn([], list(allowed_ops), ending, ops_left, files, "plan", not last_turn)


def act_grammar(actions: list[str]) -> Grammar:
    """ACT: exactly one world action."""
    return Grammar(action_pattern(actions))
