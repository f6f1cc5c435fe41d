"""The registry of incumbents: atomic, locked, workspace-relative."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from agent_core.registry import REGISTRY_NAME, incumbent_path, load_registry, promote


def _promote_many(workspace: str, worker: int, n: int) -> None:
    for i in range(n):
        promote(Path(workspace), "scaffolds", f"game-{worker}-{i}", str(Path(workspace) / "scaffolds" / f"s{worker}{i}"))


def test_concurrent_promoters_never_lose_an_update(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_promote_many, args=(str(tmp_path), w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    registry = load_registry(tmp_path)
    assert len(registry.scaffolds) == 60 and len(registry.history) == 60
    json.loads((tmp_path / REGISTRY_NAME).read_text())  # never torn


def test_paths_inside_the_workspace_are_stored_relative_and_resolved_back(tmp_path):
    ws = tmp_path / "ws"
    promote(ws, "adapters", "crafter", str(ws / "adapters" / "mem-1"), reason="x")
    promote(ws, "scaffolds", "crafter", "/elsewhere/scaffold")
    stored = json.loads((ws / REGISTRY_NAME).read_text())
    assert stored["adapters"] == {"crafter": "adapters/mem-1"}
    assert stored["scaffolds"] == {"crafter": "/elsewhere/scaffold"}  # outside: kept as given
    moved = tmp_path / "moved"
    ws.rename(moved)  # a moved (or mirrored) workspace still finds its incumbents
    assert incumbent_path(moved, "adapters", "crafter") == str(moved / "adapters" / "mem-1")
    assert incumbent_path(moved, "adapters", "nethack") is None


def test_the_base_weights_digest_tells_apart_bases_of_the_same_name(tmp_path):
    from agent_core.models.weights import weights_digest

    a, b = tmp_path / "a" / "base", tmp_path / "b" / "base"
    for folder, weights in ((a, b"one"), (b, b"two")):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(weights)
    assert weights_digest(a) != weights_digest(b)
    (b / "model.safetensors").write_bytes(b"one")
    assert weights_digest(a) == weights_digest(b)  # content, not folder, decides (cache sees the change)
