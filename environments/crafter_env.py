"""Crafter as a text game, following BALROG's Crafter language-wrapper conventions.

The text comes from the semantic map: for each kind of thing in the visible 9x7 area, the
nearest one with its distance and compass direction; what the player faces; vitals and
inventory. Pixels are not rendered unless asked for (`render=True`): rendering costs
several times more than the game step itself, and the text never uses it.
"""

from __future__ import annotations

import operator
from typing import Any

import crafter
import numpy as np

from .base import EnvError, Observation, TextEnv

# BALROG's names for crafter.constants.actions, in the same order.
ACTIONS = [
    "Noop",
    "Move West",
    "Move East",
    "Move North",
    "Move South",
    "Do",
    "Sleep",
    "Place Stone",
    "Place Table",
    "Place Furnace",
    "Place Plant",
    "Make Wood Pickaxe",
    "Make Stone Pickaxe",
    "Make Iron Pickaxe",
    "Make Wood Sword",
    "Make Stone Sword",
    "Make Iron Sword",
]
_CRAFTER_ACTIONS = [
    "noop", "move_left", "move_right", "move_up", "move_down", "do", "sleep",
    "place_stone", "place_table", "place_furnace", "place_plant",
    "make_wood_pickaxe", "make_stone_pickaxe", "make_iron_pickaxe",
    "make_wood_sword", "make_stone_sword", "make_iron_sword",
]  # fmt: skip
if list(crafter.constants.actions) != _CRAFTER_ACTIONS:  # a crafter release reordered them
    raise RuntimeError(f"unexpected crafter action order: {crafter.constants.actions}")

VITALS = ("health", "food", "drink", "energy")
ACHIEVEMENTS: list[str] = list(crafter.constants.achievements)  # 22 in crafter 1.8
SKIP = frozenset({"grass", "sand", "path"})  # too common to list (as BALROG)
VIEW = (9, 9)  # crafter's view; the bottom rows show the inventory, leaving a 9x7 map
LOCAL = (9, 7)

INSTRUCTIONS = (
    "You play Crafter, a 2D survival game. Each step you choose one action. Collect "
    "materials, craft tools, keep health, food, drink and energy up (eat cows or plants, "
    "drink water, sleep at night) and avoid or fight zombies and skeletons. Progress is "
    "measured by unlocking achievements: " + ", ".join(ACHIEVEMENTS) + ".\n"
    "Actions: Noop (do nothing); Move West/East/North/South (move, or turn to face a "
    "blocked cell); Do (collect from or attack what you face: trees give wood, stone and "
    "coal need a wood pickaxe, iron a stone pickaxe, diamond an iron pickaxe; water gives "
    "drink); Sleep; Place Stone/Table/Furnace/Plant (table: wood; furnace: stone, near a "
    "table; plant: sapling, on grass); Make Wood/Stone/Iron Pickaxe and Sword (near a "
    "table; iron tools also need a furnace). North is up on the map."
)


class RawCrafter(crafter.Env):
    """crafter.Env that is a function of its seed, and whose step/reset skip the pixel
    rendering unless `frames` is set."""

    def __init__(self, *args: Any, frames: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames = frames

    def _obs(self) -> np.ndarray | None:
        return self.render() if self.frames else None

    def _balance_chunk(self, chunk: Any, objs: Any) -> None:
        # crafter keeps a chunk's objects in a set, ordered by memory address, and picks
        # the creature to despawn by its index in that order: the same seed then plays
        # out differently from run to run. Position order (one object per cell) fixes it.
        super()._balance_chunk(chunk, sorted(objs, key=lambda o: (int(o.pos[0]), int(o.pos[1]))))


def _offsets() -> list[tuple[int, int]]:
    """Cell offsets of the local view, nearest first (Manhattan steps), then scan order."""
    w, h = LOCAL
    cells = [(dx, dy) for dx in range(-(w // 2), w // 2 + 1) for dy in range(-(h // 2), h // 2 + 1)]
    return sorted((c for c in cells if c != (0, 0)), key=lambda c: abs(c[0]) + abs(c[1]))


_OFFSETS = _offsets()
# Picks the same cells, in the same order, out of the row-major flattened 9x7 crop.
_IN_ORDER = operator.itemgetter(*[(dx + LOCAL[0] // 2) * LOCAL[1] + dy + LOCAL[1] // 2 for dx, dy in _OFFSETS])


def describe_direction(dx: int, dy: int) -> str:
    """'3 steps to your north-west (2 north, 1 west)': steps, compass, and the split when
    diagonal (north is -y, as on crafter's screen)."""
    ns = "north" if dy < 0 else "south" if dy > 0 else ""
    ew = "west" if dx < 0 else "east" if dx > 0 else ""
    steps = abs(dx) + abs(dy)
    text = f"{steps} step{'s' if steps != 1 else ''} to your {'-'.join(p for p in (ns, ew) if p)}"
    if ns and ew:
        text += f" ({abs(dy)} {ns}, {abs(dx)} {ew})"
    return text


class CrafterEnv(TextEnv):
    """Crafter (64x64 world, 9x9 view) with BALROG's action names and text observation.

    Progression is the fraction of the 22 achievements unlocked this episode. The same
    seed gives the same episode in any process: crafter seeds its world from
    hash((seed, episode)), we reset the episode counter on every reset, and `RawCrafter`
    removes the one dependence on memory addresses.
    """

    game = "crafter"
    actions = ACTIONS
    instructions = INSTRUCTIONS

    def __init__(
        self,
        task: str = "default",
        max_steps: int = 2000,
        render: bool = False,
        size: tuple[int, int] = (64, 64),
    ) -> None:
        if task != "default":
            raise EnvError(f"unknown task {task!r} for game 'crafter'; valid tasks: default")
        if max_steps < 1:
            raise EnvError(f"max_steps must be positive, got {max_steps}")
        self.task = task
        self.max_steps = max_steps
        self._env = RawCrafter(
            area=(64, 64), view=VIEW, size=size, reward=True, length=max_steps, seed=0, frames=render
        )
        # id -> name, from crafter's own tables (materials first, then object classes).
        names = {i: str(m) for m, i in self._env._world._mat_ids.items() if m is not None}
        names.update({i: c.__name__.lower() for c, i in self._env._sem_view._obj_ids.items()})
        self._names = [names.get(i, "nothing") for i in range(max(names) + 1)]
        self._skip = {i for i, n in enumerate(self._names) if n in SKIP or n in ("player", "nothing")}
        self._unlocked: set[str] = set()
        self.frame: np.ndarray | None = None
        super().__init__()

    # -- text ----------------------------------------------------------------
    def _describe(self, semantic: np.ndarray) -> Observation:
        player = self._env._player
        px, py = (int(v) for v in player.pos)
        area_w, area_h = semantic.shape
        w, h = LOCAL
        x0, y0 = px - w // 2, py - h // 2
        if x0 >= 0 and x0 + w <= area_w and y0 >= 0 and y0 + h <= area_h:
            offsets = _OFFSETS
            kinds = _IN_ORDER(semantic[x0 : x0 + w, y0 : y0 + h].ravel().tolist())
        else:  # the view hangs over the world's edge
            offsets = [(dx, dy) for dx, dy in _OFFSETS if 0 <= px + dx < area_w and 0 <= py + dy < area_h]
            kinds = tuple(int(semantic[px + dx, py + dy]) for dx, dy in offsets)
        # Cells are in distance order, so a kind's first index is its nearest cell; the
        # scans run in C, which keeps the text under a tenth of the game step.
        nearest = sorted((kinds.index(k), k) for k in set(kinds) - self._skip)
        lines = []
        if player.health <= 0:
            lines.append("You died.")
        elif player.sleeping:
            lines.append("You are sleeping, and will not be able to act until your energy is full.")
        if nearest:
            seen = "\n".join(f"- {self._names[k]} {describe_direction(*offsets[i])}" for i, k in nearest)
            lines.append(f"You see:\n{seen}")
        else:
            lines.append("You see nothing away from you.")
        fx, fy = px + int(player.facing[0]), py + int(player.facing[1])
        facing = self._names[semantic[fx, fy]] if 0 <= fx < area_w and 0 <= fy < area_h else "nothing"
        lines.append(f"You face {facing} at your front.")

        inv = player.inventory
        status = "\n".join(f"- {v}: {inv[v]}/9" for v in VITALS)
        items = [f"- {k}: {n}" for k, n in inv.items() if k not in VITALS and n > 0]
        inventory = "Your inventory:\n" + "\n".join(items) if items else "You have nothing in your inventory."
        return Observation("\n\n".join(lines), f"Your status:\n{status}\n\n{inventory}")

    def _info(self) -> dict[str, Any]:
        player = self._env._player
        return {
            "achievements": sorted(self._unlocked),
            "inventory": {k: int(v) for k, v in player.inventory.items()},
            "player_pos": [int(v) for v in player.pos],
        }

    # -- TextEnv hooks ---------------------------------------------------------
    def _reset(self, seed: int) -> Observation:
        # crafter seeds the world with hash((seed, episode)) and counts episodes up from 1
        # on each reset: pin both so the same seed always gives the same world.
        self._env._seed = seed
        self._env._episode = 0
        self.frame = self._env.reset()
        self._unlocked = set()
        return self._describe(self._env._sem_view())

    def _step(self, index: int) -> tuple[Observation, float, bool, dict[str, Any]]:
        self.frame, reward, done, info = self._env.step(index)
        self._unlocked = {k for k, v in info["achievements"].items() if v > 0}
        return self._describe(info["semantic"]), reward, done, self._info()

    @property
    def progression(self) -> float:
        return len(self._unlocked) / len(ACHIEVEMENTS)

    # -- helpers -----------------------------------------------------------------
    def semantic_map(self) -> np.ndarray:
        """The current 64x64 semantic map, indexed [x, y] (ids as in crafter)."""
        return self._env._sem_view()

    def id_of(self, name: str) -> int:
        """Semantic id of a material or object name, e.g. 'tree'."""
        return self._names.index(name)

    def render(self) -> np.ndarray:
        """The current frame as pixels (renders on demand; costs a few ms)."""
        return self._env.render()
