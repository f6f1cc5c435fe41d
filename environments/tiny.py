"""Tiny deterministic text games, for fast tests of agents and pipelines.

`key-door` (`TinyEnv`): five rooms on a grid: four ordinary rooms joined as a tree, plus a
vault behind a locked door. A key lies in one ordinary room. Take the key, open the door,
enter the vault. The layout, the key's room and the door's room all come from
`random.Random(seed)`.

`recall` (`RecallEnv`): a game that needs memory. Which of four coloured doors leads out is
said once, in the first observation; a corridor of 17 to 20 steps follows (longer than every shipped
scaffold's history window, the baseline's included, and nothing in it repeats the fact); at its end a wrong door ends
the game. An agent that wrote the fact down and looks it up finishes; one that cannot see it
any more guesses (1 in 4). `recall-short` is the same game with a corridor of 6 to 8 steps
(for CPU budgets): still beyond the memory scaffolds' windows, within the baseline's.
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
        _check_args("key-door", task, max_steps)
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


def _check_args(own: str, task: str, max_steps: int) -> None:
    """EnvError unless `task` is the class's own task and `max_steps` is positive."""
    if task != own:
        from .registry import GAMES  # the one list of tiny's tasks (registry imports no game)

        hint = f" (task {task!r} is built by make_env('tiny', {task!r}))" if task in GAMES["tiny"].tasks else ""
        raise EnvError(f"unknown task {task!r} for this tiny game class; valid tasks: "
                       f"{', '.join(GAMES['tiny'].tasks)}{hint}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise EnvError(f"max_steps must be a positive integer, got {max_steps!r}")


def _opposite(d: str) -> str:
    return {"north": "south", "south": "north", "east": "west", "west": "east"}[d]


COLOURS = ("red", "green", "blue", "yellow")
#: corridor length range (steps between the fact and the choice): longer than every shipped
#: scaffold's history window, the context-window baseline's 16 steps included, so only an
#: agent that wrote the fact down can know it at the doors
CORRIDOR_STEPS = (17, 20)
#: `recall-short`: the same game with a corridor of 6-8 steps, for CPU budgets (a local model
#: plays ~4 s a step here). Still longer than the memory scaffolds' history windows (2-3
#: past steps), so a memory agent must write the fact down; but within the context-window
#: baseline's 16 steps, so that baseline needs no memory at this length.
CORRIDOR_STEPS_SHORT = (6, 8)
RECALL_MILESTONES = ("reached the doors", "opened the way out")
#: what the corridor shows, one line a step, drawn per seed; none names a colour
_SIGHTS = ("Dust lies thick on the floor.", "A cold draught blows past.", "Your steps echo.",
           "Water drips from the ceiling.", "A torch flickers on the wall.", "The floor creaks.",
           "Cobwebs hang from the beams.", "It smells of damp stone.", "An old rug covers the floor.")


class RecallEnv(TextEnv):
    """The `recall` task: remember which door leads out. Progression (BALROG style, in
    [0, 1]): 0.5 on reaching the doors, 1.0 on opening the right one; a wrong door ends the
    episode where it stands (0.5)."""

    game = "tiny"
    actions = ["go forward", *[f"open {c} door" for c in COLOURS], "look", "wait"]
    instructions = (
        "You stand at the entrance of a long corridor. At its far end are four doors, "
        f"{', '.join(COLOURS[:-1])} and {COLOURS[-1]}: one leads out, and opening a wrong one ends the game. "
        "Which door leads out is told to you once, at the entrance. Walk with go forward, then open "
        "the door that leads out. Actions: " + ", ".join(actions) + "."
    )

    def __init__(self, task: str = "recall", max_steps: int = 50) -> None:
        _check_args(task if task in ("recall", "recall-short") else "recall", task, max_steps)
        self._corridor = CORRIDOR_STEPS_SHORT if task == "recall-short" else CORRIDOR_STEPS
        self.task = task
        self.max_steps = max_steps
        self._milestones = 0
        super().__init__()

    def reset(self, seed: int) -> Observation:
        first = super().reset(seed)
        # an invalid first action re-shows the last observation: without the fact, said once
        self._last = self._observe("You arrive at the entrance.")
        return first

    def _reset(self, seed: int) -> Observation:
        rng = random.Random(seed)
        self._exit = rng.choice(COLOURS)
        self._length = rng.randint(*self._corridor)
        self._order = rng.sample(COLOURS, len(COLOURS))  # how the doors are listed: unrelated to the exit
        self._sights = [rng.choice(_SIGHTS) for _ in range(self._length)]
        self._pos, self._milestones, self._over = 0, 0, False
        fact = (f"An old guard at the entrance tells you: \"The way out is the {self._exit} door.\" "
                "Then he walks away.")
        return self._observe("You arrive at the entrance.", fact)

    def _observe(self, message: str, fact: str = "") -> Observation:
        if self._pos < self._length:
            where = ("You are at the entrance of the corridor." if self._pos == 0 else
                     f"You are in the corridor. {self._sights[self._pos]}")
            left = self._length - self._pos
            lines = [where, f"The corridor goes on ahead: {left} step{'s' if left > 1 else ''} to its end."]
        else:
            doors = ", ".join(self._order[:-1]) + f" and {self._order[-1]}"
            lines = [f"You are at the end of the corridor. Four doors stand before you: {doors}."]
        if fact:
            lines.append(fact)
        return Observation("\n".join(lines), f"Last: {message}")

    def _step(self, index: int) -> tuple[Observation, float, bool, dict[str, Any]]:
        before = self._milestones
        action = self.actions[index]
        if action == "go forward":
            if self._pos < self._length:
                self._pos += 1
                msg = "You walk forward."
                if self._pos == self._length:
                    self._milestones = 1
                    msg = "You walk forward and reach the doors."
            else:
                msg = "The corridor ends here; the doors are in front of you."
        elif action.startswith("open "):
            colour = action.split()[1]
            if self._pos < self._length:
                msg = "There is no door here; the doors are at the end of the corridor."
            elif colour == self._exit:
                self._milestones, self._over = 2, True
                msg = f"The {colour} door opens onto daylight. You are out. You win!"
            else:
                self._over = True
                msg = f"The {colour} door opens onto a dead end and locks behind you. The game is over."
        elif action == "look":
            msg = "You look around."
        else:
            msg = "You wait."
        done = self._over or self.steps + 1 >= self.max_steps
        reward = (self._milestones - before) / len(RECALL_MILESTONES)
        info = {"milestones": list(RECALL_MILESTONES[: self._milestones]), "won": self._milestones == 2}
        return self._observe(msg), reward, done, info

    @property
    def progression(self) -> float:
        return self._milestones / len(RECALL_MILESTONES)

    def solution(self) -> list[str]:
        """The shortest winning action sequence from the current state (for tests)."""
        return ["go forward"] * (self._length - self._pos) + [f"open {self._exit} door"]
