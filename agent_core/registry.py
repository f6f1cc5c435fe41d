"""The registry: which scaffold and which adapter are the incumbents, per game.

A small JSON file in the workspace, replaced atomically (write a temp file, then rename):
a crash mid-promotion leaves either the old or the new registry, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, Field

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
    fd, tmp = tempfile.mkstemp(dir=workspace, prefix=".registry-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        fh.write(registry.model_dump_json(indent=2))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, workspace / REGISTRY_NAME)


def promote(workspace: Path, kind: str, game: str, path: str, **why: object) -> Registry:
    """Make `path` the incumbent `kind` ("scaffolds" or "adapters") for `game`."""
    if kind not in ("scaffolds", "adapters"):
        raise ValueError(f"kind must be scaffolds or adapters, got {kind!r}")
    registry = load_registry(workspace)
    previous = getattr(registry, kind).get(game)
    getattr(registry, kind)[game] = path
    registry.history.append({"kind": kind, "game": game, "path": path, "previous": previous,
                             **{k: json.loads(json.dumps(v, default=str)) for k, v in why.items()}})
    save_registry(workspace, registry)
    return registry
