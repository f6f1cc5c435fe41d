"""Candidate scaffolds: the reviewer's reply format, the constraints every revision must
keep, and validation before any evaluation.

Reply format (the reviewer's prompt shows it; anything else is rejected, never repaired):

    <analysis>what went wrong and why</analysis>
    <changes>
    - one line per change
    </changes>
    <file path="scaffold.yaml">...</file>
    <file path="prompts/system.jinja">...</file>
    ...                              (the complete new scaffold directory)
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import yaml
from pydantic import BaseModel

from agent_core.hooks import (HOOK_IMPORTS, HOOK_NAMES, HookCodeError, HookConfinementError, HookError, HookLimits, HookRunner,
                              HookTimeout, check_source)
from agent_core.scaffold import (REQUIRED_PROMPTS, Scaffold, ScaffoldConfig, ScaffoldError, hash_files,
                                 write_scaffold_files)

__all__ = ["HOOK_IMPORTS", "HOOK_NAMES", "CandidateError", "Revision", "check_constraints", "check_hook_source",
           "format_revision", "materialise", "parse_revision", "run_hooks_sandboxed", "validate_candidate"]
_PATH = re.compile(r"^(scaffold\.yaml|hooks\.py|prompts/[a-z][a-z0-9_]{0,31}\.jinja)$")
_FILE = re.compile(r'<file path="([^"\n]*)">\n?(.*?)</file>', re.S)
_BLOCK = re.compile(r"<(analysis|changes)>(.*?)</\1>", re.S)


class NoRevision(Exception):
    """No revision this time: the rule-based reviewer found nothing its remedies address, or a
    meta-LLM's reply did not end by itself (`reply` keeps its verbatim text for the record)."""

    def __init__(self, message: str, reply: str | None = None):
        super().__init__(message)
        self.reply = reply


class CandidateError(ValueError):
    """A revision that cannot be used; the message is fed back to the reviewer."""


class Revision(BaseModel):
    analysis: str
    changes: list[str]
    files: dict[str, str]


def format_revision(revision: Revision) -> str:
    changes = "\n".join(f"- {c}" for c in revision.changes)
    files = "\n".join(f'<file path="{p}">\n{t}</file>' for p, t in sorted(revision.files.items()))
    return f"<analysis>\n{revision.analysis}\n</analysis>\n<changes>\n{changes}\n</changes>\n{files}\n"


def parse_revision(text: str) -> Revision:
    """Strict parse of a reviewer reply; `CandidateError` says exactly what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise CandidateError("empty reply: expected <analysis>, <changes> and <file path=...> blocks")
    blocks = {m.group(1): m.group(2).strip() for m in _BLOCK.finditer(text)}
    for name in ("analysis", "changes"):
        if name not in blocks:
            raise CandidateError(f"missing <{name}>...</{name}> block (or it is not closed)")
    opened = len(re.findall(r"<file\b", text))
    files: dict[str, str] = {}
    for m in _FILE.finditer(text):
        path = m.group(1).strip()
        if not _PATH.match(path):
            raise CandidateError(f"file {path!r} is outside the scaffold; allowed: scaffold.yaml, "
                                 "prompts/<name>.jinja, hooks.py")
        if path in files:
            raise CandidateError(f"file {path!r} appears twice")
        files[path] = m.group(2)
    if opened != len(files):
        raise CandidateError(f"reply is truncated or malformed: {opened} <file> tags but {len(files)} "
                             "complete <file path=\"...\">...</file> blocks")
    rest = _FILE.sub("", _BLOCK.sub("", text)).strip()
    if rest:
        raise CandidateError(f"text outside the blocks is not allowed: {rest[:80]!r}")
    missing = [p for p in ("scaffold.yaml", *(f"prompts/{n}.jinja" for n in REQUIRED_PROMPTS)) if p not in files]
    if missing:
        raise CandidateError(f"the revision must be a complete scaffold; missing files: {missing}")
    changes = [c.strip().lstrip("-* ").strip() for c in blocks["changes"].splitlines() if c.strip()]
    if not blocks["analysis"] or not changes:
        raise CandidateError("<analysis> and <changes> must not be empty")
    return Revision(analysis=blocks["analysis"], changes=changes, files=files)


def _structure(config: dict) -> dict:
    """The structural part of a scaffold config (what a revision must change at least once)."""
    keep = ("limits", "log", "plan", "history_window", "history_stride")
    files = [(f["name"], f["kind"]) for f in config.get("memory_files", [])]
    return {"files": files, **{k: config.get(k) for k in keep}}


def check_constraints(incumbent: Scaffold, files: dict[str, str]) -> None:
    """The rules every revision keeps: world-action behaviour untouched, same game and
    sampling, at least one structural change, hook code that compiles confined."""
    try:
        new = yaml.safe_load(files["scaffold.yaml"]) or {}
    except yaml.YAMLError as exc:
        raise CandidateError(f"scaffold.yaml does not parse: {exc}") from exc
    if not isinstance(new, dict):
        raise CandidateError("scaffold.yaml must be a mapping")
    old = incumbent.config.model_dump()
    if files.get("prompts/act.jinja", "").strip() != incumbent.files["prompts/act.jinja"].decode().strip():
        raise CandidateError("prompts/act.jinja commits world actions and must not change")
    for key in ("game", "action_attempts", "default_action", "model"):
        default = type(incumbent.config).model_fields[key].get_default(call_default_factory=True)
        value = new.get(key, default.model_dump() if hasattr(default, "model_dump") else default)
        if value != old[key] and not (key == "model" and _same_model(value, old[key])):
            raise CandidateError(f"{key!r} controls world actions or the comparison and must stay {old[key]!r}")
    try:
        candidate_cfg = ScaffoldConfig.model_validate(new).model_dump()
    except Exception as exc:
        raise CandidateError(f"scaffold.yaml is invalid: {exc}") from exc
    hooks_changed = files.get("hooks.py", "") != incumbent.files.get("hooks.py", b"").decode()
    if _structure(candidate_cfg) == _structure(old) and not hooks_changed:
        raise CandidateError("no structural change: change memory files (names/kinds), limits, routine "
                             "operations or limits, history window, or hooks.py - not only wording")
    if "hooks.py" in files:
        check_hook_source(files["hooks.py"])


def _same_model(a: object, b: dict) -> bool:
    from agent_core.records import SamplingParams

    try:
        return SamplingParams.model_validate(a).model_dump() == b
    except Exception:
        return False


def check_hook_source(source: str) -> None:
    """Hook code must compile under RestrictedPython with the confinement rules of
    `agent_core.hooks.check_source`; `CandidateError` with the reason otherwise."""
    try:
        check_source(source)
    except HookCodeError as exc:
        raise CandidateError(str(exc)) from exc


SAMPLE_INPUTS = {
    "observations": ["You see: tree 2 steps to your north-west.\nInventory: wood 1", "", "x" * 5000],
    "writes": [
        ["append", {"file": "map.md", "text": "tree at (3, 4)"}, {"map.md": "tree at (1, 1)\n"}],
        ["upsert", {"file": "map.md", "key": "(3,4)", "value": "tree"}, {"map.md": ""}],
        ["rewrite", {"file": "strategy.md", "text": ""}, {}],
    ],
}


def run_hooks_sandboxed(hooks_path: Path, timeout_s: float = 5.0, memory_mb: int = 512) -> dict:
    """Run `hooks.py` on sample inputs in its confined worker (`agent_core.hooks.HookRunner`)
    with a time limit per call and a memory limit; the results by hook, or `CandidateError`."""
    source = Path(hooks_path).read_text()
    check_hook_source(source)
    limits = HookLimits(call_timeout_s=timeout_s, cpu_s=max(1, int(timeout_s)), memory_mb=memory_mb)
    out: dict[str, list] = {}
    try:
        runner = HookRunner(source, limits)  # always confined here: a candidate is checked fail-closed
    except HookConfinementError as exc:
        raise CandidateError(f"hooks.py cannot be checked on this machine ({exc}); a revision without "
                             "hooks.py can") from None
    with runner:
        calls = [("postprocess_observation", [o]) for o in SAMPLE_INPUTS["observations"]]
        calls += [("validate_write", w) for w in SAMPLE_INPUTS["writes"]]
        for name, args in calls:
            if name not in runner.hooks:
                continue
            try:
                value = runner.call(name, *args)
            except HookTimeout:
                raise CandidateError(f"hooks.py did not finish on sample inputs within {timeout_s:g} s") from None
            except HookError as exc:
                reason = str(exc)
                if "MemoryError" in reason:
                    reason = f"exceeded the {memory_mb} MB memory limit ({reason})"
                raise CandidateError(f"hooks.py failed on sample inputs: {reason[:300]}") from None
            out.setdefault(name, []).append(value[:200] if isinstance(value, str) and name ==
                                            "postprocess_observation" else value)
    return out


def materialise(files: dict[str, str], scaffolds_root: Path) -> Path:
    """Write a candidate into the content-addressed scaffold store (atomic), return its dir."""
    data = {k: v.encode() for k, v in files.items()}
    dest = Path(scaffolds_root) / hash_files(data)
    if dest.is_dir():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=".candidate-", dir=scaffolds_root))
    try:
        write_scaffold_files(tmp, data)
        tmp.rename(dest)
    except FileExistsError:
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def validate_candidate(revision: Revision, incumbent: Scaffold, scaffolds_root: Path) -> Scaffold:
    """Everything before evaluation: constraints, schema, templates with the real variables,
    hooks on sample inputs in their confined worker, and a short smoke episode on the tiny game. Returns the stored
    candidate scaffold; `CandidateError` with the reason otherwise (nothing is stored)."""
    check_constraints(incumbent, revision.files)
    staging = Path(tempfile.mkdtemp(prefix="candidate-check-"))
    try:
        write_scaffold_files(staging, revision.files)
        try:
            candidate = Scaffold(staging)
        except ScaffoldError as exc:
            raise CandidateError(str(exc)) from exc
        if "hooks.py" in revision.files:
            run_hooks_sandboxed(staging / "hooks.py")
        smoke_episode(candidate, staging / "smoke")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    Path(scaffolds_root).mkdir(parents=True, exist_ok=True)
    return Scaffold.load(materialise(revision.files, scaffolds_root))


def smoke_episode(scaffold: Scaffold, out_dir: Path, steps: int = 3) -> None:
    """Play a few steps of the tiny game with the scripted agent: every template renders
    with the real variables and the loop runs."""
    from agent_core.models.base import Roles
    from agent_core.episode import run_episode
    from agent_core.models.config import RoutineScript
    from agent_core.models.scripted import ScriptedModel
    from environments import make_env

    try:
        run_episode(make_env("tiny"), scaffold, Roles(memory=ScriptedModel(RoutineScript().reply)),
                    seed=0, max_steps=steps, out_dir=out_dir)
    except Exception as exc:
        raise CandidateError(f"smoke episode on the tiny game failed: {type(exc).__name__}: {exc}") from exc
