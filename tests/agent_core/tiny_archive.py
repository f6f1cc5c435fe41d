"""A small real archive for the trace-store tests: tiny-game episodes played by the scripted
model, archived to Parquet (pyarrow) under `root / "archive"`."""

from __future__ import annotations

from pathlib import Path

from agent_core.archive import archive_trace
from agent_core.episode import run_episode
from agent_core.models.base import Roles
from agent_core.models.config import RoutineScript
from agent_core.models.scripted import ScriptedModel
from agent_core.scaffold import Scaffold
from environments import make_env


def archive_tiny(root: Path, scaffold: Scaffold, steps: int, seeds: tuple[int, ...] = (0, 1)) -> list[Path]:
    """Play and archive one episode per seed; their trace paths."""
    traces = []
    for seed in seeds:
        s = run_episode(make_env("tiny"), scaffold, Roles(memory=ScriptedModel(RoutineScript().reply)), seed, steps,
                        root / "eps" / str(seed))
        archive_trace(s.trace_path, root / "archive")
        traces.append(s.trace_path)
    return traces
