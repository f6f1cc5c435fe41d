"""The registry: which scaffold and which adapter are the incumbents, per game.

A small JSON file in the workspace, replaced atomically (write a temp file, then rename):
a crash mid-promotion leaves either the old or the new registry, never a torn one. Updates
hold an exclusive lock on a lock file beside it, so concurrent promoters (flows on one
machine, or on several sharing a filesystem with working locks) never lose each other's
update. Paths inside the workspace are stored relative to it, so a workspace can be moved
or mirrored; `incumbent_path` resolves them.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, Field

from agent_core.files import atomic_write

REGISTRY_NAME = "registry.json"


class Registry(BaseModel):
    scaffolds: dict[str, str] = Field(default_factory=dict, description="game -> incumbent scaffold directory")
    adapters: dict[str, str] = Field(default_factory=dict, description="game -> incumbent adapter directory")
    history: list[dict] = Field(default_factory=list, description="every promotion, in order")


def load_registry(workspace: Path) -> Registry:
    path = Path(workspace) / REGISTRY_NAME
    return Registry.model_validate_json(path.read_text()) if path.is_file() else Registry()


def save_registry(workspace: Path, registry: Registry) -> None:
    workspace = Path(workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    atomic_write(workspace / REGISTRY_NAME, registry.model_dump_json(indent=2), fsync=True, prefix=".registry-")


@contextmanager
def _locked(workspace: Path) -> Iterator[None]:
    workspace.mkdir(parents=True, exist_ok=True)
    with open(workspace / f".{REGISTRY_NAME}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _relative(workspace: Path, path: str) -> str:
    p = Path(path)
    if p.is_absolute() and p.resolve().is_relative_to(workspace.resolve()):
        return p.resolve().relative_to(workspace.resolve()).as_posix()
    return str(path)


def incumbent_path(workspace: Path, kind: str, game: str) -> str | None:
    """The incumbent `kind` ("scaffolds" or "adapters") for `game` as a usable path."""
    stored = getattr(load_registry(workspace), kind).get(game)
    if stored is None:
        return None
    return stored if Path(stored).is_absolute() else str(Path(workspace) / stored)


def promote(workspace: Path, kind: str, game: str, path: str, **why: object) -> Registry:
    """Make `path` the incumbent `kind` ("scaffolds" or "adapters") for `game`: a
    read-modify-write under the registry's lock."""
    if kind not in ("scaffolds", "adapters"):
        raise ValueError(f"kind must be scaffolds or adapters, got {kind!r}")
    workspace = Path(workspace)
    stored = _relative(workspace, path)
    with _locked(workspace):
        registry = load_registry(workspace)
        previous = getattr(registry, kind).get(game)
        getattr(registry, kind)[game] = stored
        registry.history.append({"kind": kind, "game": game, "path": stored, "previous": previous,
                                 **{k: json.loads(json.dumps(v, default=str)) for k, v in why.items()}})
        save_registry(workspace, registry)
    return registry
