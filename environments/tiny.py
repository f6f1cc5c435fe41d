"""A tiny deterministic key-and-door text game, for fast tests of agents and pipelines.

Five rooms on a grid: four ordinary rooms joined as a tree, plus a vault behind a locked
door. A key lies in one ordinary room. Take the key, open the door, enter the vault.
The layout, the key's room and the door's room all come from `random.Random(seed)`.
"""

from __future__ import annotations

import random
from typing import Any

from .base import EnvError, Observation, TextEnv

DIRS: dict[str, tuple[int, int]] = {"north": (0, -1), "south": (0, 1), "east": (1, 0), "west": (-1, 0)}
ROOM_NAMES = ("hall", "library", "kitchen", "garden", "cellar", "gallery", "study")
MILESTONES = ("took the key", "opened the door", "reached the vault")


class TinyEnv(TextEnv):
    """Tiny key-door game; progression counts milestones (key, door, vault) in thirds."""

    game = "tiny"
    actions = ["go north", "go south", "go east", "go west", "take key", "open door", "look", "wait"]
    instructions = (
        "You are in a small house of rooms. Somewhere lies a key; a locked door leads to the "
        "vault. Take the key, open the door, then enter the vault to win. Actions: "
        + ", ".join(actions)
        + "."
    )

    def __init__(self, task: str = "key-door", max_steps: int = 50) -> None:
        if task != "key-door":
            raise EnvError(f"unknown task {task!r} for game 'tiny'; valid tasks: key-door")
        if max_steps < 1:
            raise EnvError(f"max_steps must be positive, got {max_steps}")
        self.task = task
        self.max_steps = max_steps
        self._milestones = 0
        super().__init__()

    # -- world generation ------------------------------------------------
    def _generate(self, seed: int) -> None:
        rng = random.Random(seed)
        names = rng.sample(ROOM_NAMES, 4)
        cells = [(0, 0)]
        self._exits: dict[int, dict[str, int]] = {0: {}}

        def free_slots() -> list[tuple[int, str]]:
            return [
                (i, d)
                for i, (x, y) in enumerate(cells)
                for d, (dx, dy) in DIRS.items()
                if (x + dx, y + dy) not in cells
            ]

        # Grow a tree of rooms: each new room hangs off a random free side of an old one.
        for _ in range(3):
            i, d = rng.choice(free_slots())
            (x, y), (dx, dy) = cells[i], DIRS[d]
            cells.append((x + dx, y + dy))
            new = len(cells) - 1
            self._exits[i][d] = new
            self._exits[new] = {_opposite(d): i}
        # The vault hangs off a non-start room, behind the locked door.
        i, d = rng.choice([s for s in free_slots() if s[0] != 0])
        self._door_room, self._door_dir = i, d
        self._vault = len(cells)
        self._names = names + ["vault"]
        self._key_room: int | None = rng.choice([1, 2, 3])
        self._room = 0
        self._has_key = False
        self._door_open = False
        self._milestones = 0

    # -- rendering ---------------------------------------------------------
    def _observe(self, message: str) -> Observation:
        room = self._room
        lines = [f"You are in the {self._names[room]}."]
        exits = sorted(self._exits.get(room, {}))
        if room == self._door_room:
            state = "an open" if self._door_open else "a locked"
            lines.append(f"There is {state} door to the {self._door_dir}.")
            if self._door_open:
                exits = sorted(exits + [self._door_dir])
        lines.append(f"Exits: {', '.join(exits) if exits else 'none'}.")
        if self._key_room == room:
            lines.append("A key lies on the floor.")
        inventory = "a key" if self._has_key else "nothing"
        return Observation("\n".join(lines), f"You carry: {inventory}.\nLast: {message}")

    # -- TextEnv hooks -------------------------------------------------------
    def _reset(self, seed: int) -> Observation:
        self._generate(seed)
        return self._observe("You wake up in the house.")

    def _step(self, index: int) -> tuple[Observation, float, bool, dict[str, Any]]:
        before = self._milestones
        action = self.actions[index]
        room = self._room
        if action.startswith("go "):
            d = action[3:]
            if d in self._exits[room]:
                self._room = self._exits[room][d]
                msg = f"You go {d}."
            elif room == self._door_room and d == self._door_dir:
                if self._door_open:
                    self._room = self._vault
                    self._milestones = 3
                    msg = "You step into the vault. You win!"
                else:
                    msg = "The door is locked."
            else:
                msg = "You cannot go that way."
        elif action == "take key":
            if self._key_room == room:
                self._key_room, self._has_key = None, True
                self._milestones = max(self._milestones, 1)
                msg = "You take the key."
            else:
                msg = "There is no key here."
        elif action == "open door":
            if room != self._door_room:
                msg = "There is no door here."
            elif self._door_open:
                msg = "The door is already open."
            elif not self._has_key:
                msg = "The door is locked and you have no key."
            else:
                self._door_open = True
                self._milestones = 2
                msg = "You unlock and open the door."
        elif action == "look":
            msg = "You look around."
        else:
            msg = "You wait."
        won = self._room == self._vault
        done = won or self.steps + 1 >= self.max_steps
        reward = (self._milestones - before) / len(MILESTONES)
        info = {"milestones": list(MILESTONES[: self._milestones]), "won": won}
        return self._observe(msg), reward, done, info

    @property
    def progression(self) -> float:
        return self._milestones / len(MILESTONES)

    # -- helpers for tests and scripted play ---------------------------------
    def solution(self) -> list[str]:
        """A shortest action sequence that wins from the current state (for tests)."""
        plan: list[str] = []
        room = self._room
        if not self._has_key and self._key_room is not None:
            plan += self._path(room, self._key_room) + ["take key"]
            room = self._key_room
        plan += self._path(room, self._door_room)
        if not self._door_open:
            plan.append("open door")
        return plan + [f"go {self._door_dir}"]

    def _path(self, start: int, goal: int) -> list[str]:
        frontier, seen = [(start, [])], {start}
        while frontier:
            room, path = frontier.pop(0)
            if room == goal:
                return path
            for d, nxt in sorted(self._exits.get(room, {}).items()):
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append((nxt, path + [f"go {d}"]))
        raise RuntimeError("rooms are not connected")  # the generator builds a tree


def _opposite(d: str) -> str:
    return {"north": "south", "south": "north", "east": "west", "west": "east"}[d]
