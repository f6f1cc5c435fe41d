"""The Environment protocol and the shared text-game base class.

Every game is a text game: `reset(seed)` returns an `Observation`, `step(action)` takes an
action *name* from `actions` and returns a `StepResult`. Action matching is forgiving about
case and whitespace; an action outside the vocabulary never reaches the game: the
observation reports it back and `invalid_actions` counts it (as BALROG's robust agents do).
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class EnvError(ValueError):
    """Bad input to an environment (unknown game/task, bad seed, missing data or package).
    A ValueError, so command lines print it as a plain message."""


@dataclass(frozen=True)
class Observation:
    """What the agent sees: long-term context (map/surroundings) and short-term context
    (inventory, vital stats, last message)."""

    long_term: str
    short_term: str

    @property
    def text(self) -> str:
        return f"{self.long_term}\n\n{self.short_term}".strip()

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class StepResult:
    observation: Observation
    reward: float
    done: bool
    #: the canonical action name played, or None when the action was invalid
    action: str | None
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Environment(Protocol):
    game: str
    task: str
    #: the world-action vocabulary, as names the model writes
    actions: list[str]
    #: rules text for the prompt
    instructions: str
    #: count of actions outside the vocabulary this episode
    invalid_actions: int

    @property
    def progression(self) -> float: ...

    def reset(self, seed: int) -> Observation: ...

    def step(self, action: str) -> StepResult: ...

    def close(self) -> None: ...


def normalise_action(text: str) -> str:
    """Case- and whitespace-insensitive key for action matching."""
    return re.sub(r"\s+", " ", text.strip()).lower()


def check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise EnvError(f"seed must be a non-negative integer, got {seed!r}")
    return seed


class TextEnv(abc.ABC):
    """Base class: action matching, invalid-action accounting, seed checks, done guard.

    Subclasses set `game`, `task`, `actions`, `instructions` and implement `_reset(seed)`
    and `_step(index)` (index into `actions`), plus `progression`.
    """

    game: str
    task: str
    actions: list[str]
    instructions: str
    #: settings beyond game/task/seed that change what is played (e.g. Boxoban's level files);
    #: part of every episode key (`registry.env_options` gives the same without building one)
    options: dict[str, str] = {}

    def __init__(self) -> None:
        self.invalid_actions = 0
        self._index = {normalise_action(a): i for i, a in enumerate(self.actions)}
        self._last: Observation | None = None
        self._done = False
        self.steps = 0

    # -- subclass hooks -------------------------------------------------
    @abc.abstractmethod
    def _reset(self, seed: int) -> Observation: ...

    @abc.abstractmethod
    def _step(self, index: int) -> tuple[Observation, float, bool, dict[str, Any]]: ...

    @property
    @abc.abstractmethod
    def progression(self) -> float: ...

    # -- public API ------------------------------------------------------
    def reset(self, seed: int) -> Observation:
        check_seed(seed)
        self.invalid_actions = 0
        self.steps = 0
        self._done = False
        self._last = self._reset(seed)
        return self._last

    def match_action(self, action: str) -> int | None:
        return self._index.get(normalise_action(action)) if isinstance(action, str) else None

    def step(self, action: str) -> StepResult:
        if self._last is None:
            raise RuntimeError("call reset(seed) before step()")
        if self._done:
            raise RuntimeError("episode is over; call reset(seed)")
        index = self.match_action(action)
        if index is None:
            self.invalid_actions += 1
            shown = action if isinstance(action, str) else repr(action)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            note = f"unknown action {shown!r}; valid actions are: {', '.join(self.actions)}"
            obs = Observation(self._last.long_term, f"{note}\n{self._last.short_term}")
            return StepResult(obs, 0.0, False, None, {"invalid_action": True})
        obs, reward, done, info = self._step(index)
        self.steps += 1
        self._last = obs
        self._done = done
        return StepResult(obs, float(reward), bool(done), self.actions[index], info)

    def close(self) -> None:  # pragma: no cover - trivial default
        pass
