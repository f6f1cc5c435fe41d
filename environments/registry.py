"""Game registry: `make_env(game, task, **kwargs)` builds an environment by name.

Game modules are imported only when a game is made, so `import environments` stays fast
and a game whose optional package is missing fails with a plain `EnvError`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .base import EnvError, Environment

MINIHACK_TASKS = (
    "MazeWalk-9x9",
    "MazeWalk-15x15",
    "Corridor-R3",
    "CorridorBattle-Dark",
    "Quest-Easy",
    "Quest-Medium",
    "Boxoban-Hard",
    "Boxoban-Medium",
)


@dataclass(frozen=True)
class GameSpec:
    module: str
    cls: str
    tasks: tuple[str, ...]
    #: the pip package the game needs beyond the project's core (None: pure Python)
    package: str | None = None
    #: (task, class name) for tasks played by another class of the module than `cls`
    task_classes: tuple[tuple[str, str], ...] = ()

    @property
    def default_task(self) -> str:
        return self.tasks[0]


GAMES: dict[str, GameSpec] = {
    "tiny": GameSpec("environments.tiny", "TinyEnv", ("key-door", "recall", "recall-short"),
                     task_classes=(("recall", "RecallEnv"), ("recall-short", "RecallEnv"))),
    "crafter": GameSpec("environments.crafter_env", "CrafterEnv", ("default",), "crafter"),
    "nethack": GameSpec("environments.nethack_env", "NetHackEnv", ("challenge",), "nle"),
    "minihack": GameSpec("environments.minihack_env", "MiniHackEnv", MINIHACK_TASKS, "minihack"),
}

# Top-level modules whose absence means "install the game's package", not a bug.
_OPTIONAL_MODULES = {"crafter": "crafter", "nle": "nle", "minihack": "minihack", "gymnasium": "gymnasium"}


def list_games() -> list[str]:
    return sorted(GAMES)


def resolve(game: str, task: str | None = None) -> tuple[str, str]:
    """Canonical (game, task) names, matched case-insensitively; EnvError if unknown."""
    if not isinstance(game, str) or game.strip().lower() not in GAMES:
        raise EnvError(f"unknown game {game!r}; valid games: {', '.join(list_games())}")
    name = game.strip().lower()
    spec = GAMES[name]
    if task is None:
        return name, spec.default_task
    by_key = {t.lower(): t for t in spec.tasks}
    if not isinstance(task, str) or task.strip().lower() not in by_key:
        raise EnvError(f"unknown task {task!r} for game {name!r}; valid tasks: {', '.join(spec.tasks)}")
    return name, by_key[task.strip().lower()]


def env_options(game: str, task: str | None = None) -> dict[str, str]:
    """The options an environment built by `make_env(game, task)` reports (`TextEnv.options`),
    without building it: part of episode keys."""
    name, task = resolve(game, task)
    if name == "minihack":
        from environments.boxoban import BOXOBAN_SPLITS, boxoban_dir

        if task in BOXOBAN_SPLITS:
            return {"boxoban_levels": boxoban_dir(task, None)[0]}
    return {}


def make_env(game: str, task: str | None = None, **kwargs: object) -> Environment:
    """Build the environment for `game`/`task`; extra keyword arguments go to its class."""
    name, task = resolve(game, task)
    spec = GAMES[name]
    try:
        cls = getattr(importlib.import_module(spec.module), dict(spec.task_classes).get(task, spec.cls))
        return cls(task=task, **kwargs)
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        if root not in _OPTIONAL_MODULES:
            raise
        raise EnvError(
            f"game {name!r} needs the Python package {_OPTIONAL_MODULES[root]!r} "
            f"(missing module {exc.name!r}); install it with: pip install {_OPTIONAL_MODULES[root]}"
        ) from exc
