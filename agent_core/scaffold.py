"""Scaffolds: the memory structure the outer loop optimises.

A scaffold is a directory, content-addressed by a hash of its files:

    scaffold.yaml        ScaffoldConfig (validated here)
    prompts/*.jinja      system, log, plan, act (rendered with StrictUndefined)
    hooks.py             optional code-level revisions (observation post-processing,
                         write validation), run confined (agent_core.hooks)

Nothing rewrites a scaffold in place: a revision is a new directory with a new hash.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import jinja2
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent_core.commands import MEMORY_OPS, READ_OPS, WRITE_OPS
from agent_core.grammar import GrammarError, log_grammar, plan_grammar
from agent_core.hooks import HookCodeError, HookRunner, check_source
from agent_core.memory import MemoryLimits
from agent_core.records import SamplingParams

#: prompts every scaffold must provide
REQUIRED_PROMPTS = ("system", "log", "plan", "act")
#: prompts of the context-window baseline (no PLAN routine)
CONTEXT_WINDOW_PROMPTS = ("system", "log", "act")
BUILTIN_DIR = Path(__file__).parent / "scaffolds"


_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ScaffoldError(ValueError):
    """A scaffold directory that cannot be used, with the reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MemoryFileSpec(_Strict):
    """An initial memory file and what it is for (shown to the model)."""

    name: str = Field(description="File name inside the memory directory.")
    kind: Literal["append-log", "keyed-table", "document"] = Field(
        description="append-log: chronological lines; keyed-table: one `key: value` line per "
        "key (use UPSERT); document: free text rewritten as a whole."
    )
    purpose: str = Field(description="One line telling the model what belongs in the file.")
    initial: str = Field("", description="Initial contents.")


class RoutineConfig(_Strict):
    """Limits and vocabulary of one routine."""

    allowed_ops: list[str] = Field(description="Memory operations this routine may use.")
    max_ops: int = Field(4, ge=0, le=64, description="Memory operations executed per step.")
    max_turns: int = Field(2, ge=1, le=16, description="Model calls per step in this routine. A look-up "
                           "group ends its call, and the routine goes on with the next, so a routine "
                           "that looks up needs at least 2.")
    consult_before_write: bool = Field(
        False, description="Refuse writes in this routine until the model has searched or read "
        "memory in the same step (against blind appends).")

    @field_validator("allowed_ops")
    @classmethod
    def _known_ops(cls, ops: list[str]) -> list[str]:
        ops = [o.lower() for o in ops]
        unknown = sorted(set(ops) - set(MEMORY_OPS))
        if unknown:
            raise ValueError(f"unknown operations {unknown}; valid: {list(MEMORY_OPS)}")
        return ops


class Demonstration(_Strict):
    """A worked exchange placed after the system prompt (never cut by the history window):
    small models copy the form of earlier replies far better than they follow rules."""

    user: str = Field(description="What the agent is shown (e.g. an observation and the LOG prompt).")
    assistant: str = Field(description="A reply in the command format.")


class ScaffoldConfig(_Strict):
    """`scaffold.yaml`."""

    name: str = Field(description="Human-readable name, e.g. crafter-v0.")
    game: str = Field(description="The game this scaffold was written for ('any': every game).")
    agent: Literal["memory", "context-window"] = Field(
        "memory", description="memory: LOG and PLAN over a memory directory, then the action; "
        "context-window: BALROG's baseline, no memory files and no routines: the last "
        "`history_window` observation/action pairs in the prompt, then the action.")
    description: str = Field("", description="What changed relative to the parent, and why.")
    parent: str | None = Field(None, description="Hash of the scaffold this one revises.")
    memory_files: list[MemoryFileSpec] = Field(default_factory=list, description="Initial memory files.")
    limits: MemoryLimits = Field(default_factory=MemoryLimits, description="Memory size caps.")
    log: RoutineConfig = Field(default_factory=lambda: RoutineConfig(allowed_ops=[]),
                               description="The LOG routine: record what the last action led to.")
    plan: RoutineConfig = Field(default_factory=lambda: RoutineConfig(allowed_ops=[]),
                                description="The PLAN routine: consult memory, then act.")
    action_attempts: int = Field(
        2, ge=1, le=8, description="Action-role calls before the default action is played."
    )
    default_action: str | None = Field(
        None, description="Played (and counted) when no valid action is committed; "
        "None means the game's first action."
    )
    demonstrations: list[Demonstration] = Field(
        default_factory=list, description="Few-shot turns after the system prompt.")
    history_window: int = Field(
        4, ge=0, le=1000, description="Past steps of conversation kept in the context: 0 means "
        "only the current step (the system prompt and demonstrations are always kept)."
    )
    history_stride: int = Field(
        1, ge=1, le=1000, description="Past steps the window drops at once when it is full: it keeps "
        "history_window to history_window + history_stride - 1 past steps. 1: exactly the last "
        "history_window. A larger stride lets a model server's prefix cache serve the steps in "
        "between (a window that moves every step makes the whole history be recomputed every "
        "step), at the cost of longer contexts on average."
    )
    max_reply_chars: int = Field(
        16_000, ge=100, le=10_000_000, description="Longest reply kept (in the conversation and the "
        "trace); a longer one is cut with a marker and counts as cut off.")
    model: SamplingParams = Field(default_factory=SamplingParams, description="Sampling parameters.")

    @model_validator(mode="after")
    def _plan_read_only(self) -> "ScaffoldConfig":
        writes = sorted(set(self.plan.allowed_ops) & set(WRITE_OPS))
        if writes:
            raise ValueError(f"plan.allowed_ops may only hold read operations {list(READ_OPS)}; got {writes}")
        names = [f.name for f in self.memory_files]
        if len(names) != len(set(names)):
            raise ValueError(f"memory_files has duplicate names: {names}")
        if self.agent == "context-window":
            if self.memory_files or self.log.allowed_ops or self.plan.allowed_ops:
                raise ValueError("a context-window agent has no memory: memory_files, log.allowed_ops "
                                 "and plan.allowed_ops must be empty")
            return self
        try:  # the reply grammars must exist (checked here, before any episode)
            log_grammar(self.log.allowed_ops, self.log.max_ops).check()
            if self.log.consult_before_write:
                log_grammar(self.log.allowed_ops, self.log.max_ops, consult_first=True).check()
            plan_grammar(self.plan.allowed_ops, self.plan.max_ops, ["placeholder"]).check()
        except GrammarError as exc:
            raise ValueError(f"no reply grammar can be built: {exc}") from exc
        # a look-up ends its turn: its results are used in a later turn of the same routine
        if self.log.consult_before_write and (self.log.max_turns < 2 or self.log.max_ops < 2):
            raise ValueError("log.consult_before_write needs log.max_turns >= 2 and log.max_ops >= 2 (a "
                             "look-up turn, then a turn that writes); got max_turns="
                             f"{self.log.max_turns}, max_ops={self.log.max_ops}: no write could ever run")
        if self.plan.allowed_ops and (self.plan.max_turns < 2 or self.plan.max_ops < 1):
            raise ValueError("plan.allowed_ops holds look-ups, which end their turn, so PLAN needs "
                             "plan.max_turns >= 2 and plan.max_ops >= 1 for their results to reach the "
                             f"action; got max_turns={self.plan.max_turns}, max_ops={self.plan.max_ops} "
                             "(or allow no look-ups in PLAN)")
        return self


def hash_files(files: dict[str, bytes]) -> str:
    """Content hash of a set of files (relative path -> bytes), order-independent."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + hashlib.sha256(files[rel]).digest())
    return h.hexdigest()[:16]


def _read_tree(root: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            raise ScaffoldError(f"scaffold contains a symlink: {p.relative_to(root)}")
        if p.is_file() and "__pycache__" not in p.parts:
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


class Scaffold:
    """A loaded, validated scaffold directory."""

    _loaded: dict[tuple[str, str], "Scaffold"] = {}

    def __init__(self, root: Path | str, files: dict[str, bytes] | None = None):
        self.root = Path(root)
        if not (self.root / "scaffold.yaml").is_file():
            raise ScaffoldError(f"{self.root} has no scaffold.yaml")
        self.files = files if files is not None else _read_tree(self.root)
        self.hash = hash_files(self.files)
        try:
            raw = yaml.load(self.files["scaffold.yaml"].decode(), Loader=_YamlLoader)
            self.config = ScaffoldConfig.model_validate(raw)
        except (yaml.YAMLError, ValidationError, UnicodeDecodeError) as exc:
            raise ScaffoldError(f"scaffold.yaml is invalid: {exc}") from exc
        required = REQUIRED_PROMPTS if self.config.agent == "memory" else CONTEXT_WINDOW_PROMPTS
        missing = [p for p in required if f"prompts/{p}.jinja" not in self.files]
        if missing:
            raise ScaffoldError(f"scaffold is missing required prompts: {missing}")
        env = jinja2.Environment(
            undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False
        )
        try:
            self._templates = {
                name: env.from_string(self.files[f"prompts/{name}.jinja"].decode())
                for name in (Path(k).stem for k in self.files if k.startswith("prompts/") and k.endswith(".jinja"))
            }
        except jinja2.TemplateSyntaxError as exc:
            raise ScaffoldError(f"prompt template has a syntax error: {exc}") from exc

    @classmethod
    def load(cls, root: Path | str) -> "Scaffold":
        """Like `Scaffold(root)`, but parsed once per content: reading and hashing the files
        is cheap, validating and compiling the templates is not (cache keys call this)."""
        root = Path(root)
        if not (root / "scaffold.yaml").is_file():
            raise ScaffoldError(f"{root} has no scaffold.yaml")
        files = _read_tree(root)
        key = (str(root.resolve()), hash_files(files))
        if key not in cls._loaded:
            cls._loaded[key] = cls(root, files)
        return cls._loaded[key]

    @classmethod
    def builtin(cls, game: str) -> "Scaffold":
        """The shipped v0 scaffold for a game."""
        path = BUILTIN_DIR / game
        if not path.is_dir():
            valid = sorted(p.name for p in BUILTIN_DIR.iterdir() if p.is_dir())
            raise ScaffoldError(f"no built-in scaffold for {game!r}; available: {valid}")
        return cls.load(path)

    def render(self, prompt: str, **variables: Any) -> str:
        """Render a prompt; a missing variable raises (StrictUndefined)."""
        try:
            return self._templates[prompt].render(**variables).strip()
        except KeyError:
            raise ScaffoldError(f"scaffold has no prompt {prompt!r}") from None
        except jinja2.UndefinedError as exc:
            raise ScaffoldError(f"prompt {prompt!r} uses an undefined variable: {exc}") from exc

    @cached_property
    def hooks_source(self) -> str | None:
        """The scaffold's `hooks.py` (None without one), checked by `agent_core.hooks.check_source`;
        `ScaffoldError` when the code is refused."""
        if "hooks.py" not in self.files:
            return None
        try:
            source = self.files["hooks.py"].decode()
            check_source(source, f"hooks.py of scaffold {self.hash}")
        except (HookCodeError, UnicodeDecodeError) as exc:
            raise ScaffoldError(f"hooks.py is refused: {exc}") from exc
        return source

    def hook_runner(self, confinement: str = "os") -> HookRunner | None:
        """A new runner of the scaffold's hooks (None without hooks.py), its worker started on
        the first call: one per episode, so that no hook state crosses episodes. The caller
        closes it. `ScaffoldError` when the code is refused; `HookConfinementError` when
        `confinement` is "os" and this machine cannot confine hooks."""
        source = self.hooks_source
        if source is None:
            return None
        return HookRunner(source, filename=f"hooks.py of scaffold {self.hash}", confinement=confinement)

    def write_copy(self, dest: Path) -> Path:
        """Copy this scaffold's files to `dest` (a new directory)."""
        write_scaffold_files(dest, {k: v for k, v in self.files.items()})
        return dest


def write_scaffold_files(dest: Path, files: dict[str, bytes | str]) -> None:
    """Write a scaffold directory from a file mapping (paths must stay inside `dest`)."""
    dest = Path(dest)
    for rel, content in files.items():
        target = (dest / rel).resolve()
        if not target.is_relative_to(dest.resolve()):
            raise ScaffoldError(f"scaffold file escapes its directory: {rel!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)
