"""Shared text machinery for NLE games (NetHack and MiniHack).

Turns NLE observations into text (screen, message, status lines, inventory, and a short
description of what is around the hero), builds a named action vocabulary from an NLE
action set, seeds NLE reproducibly and dismisses `--More--` prompts. nle itself is
imported lazily, so importing this module is cheap.
"""

from __future__ import annotations

import abc
import os
from functools import lru_cache
from typing import Any

import numpy as np

from .base import Observation, TextEnv, normalise_action

#: the observation keys the text needs
OBS_KEYS = ("glyphs", "blstats", "tty_chars", "message", "inv_letters", "inv_strs", "screen_descriptions")

_COMPASS = {"N": "north", "E": "east", "S": "south", "W": "west",
            "NE": "northeast", "SE": "southeast", "SW": "southwest", "NW": "northwest"}  # fmt: skip
_PRIMARY = {"UP": "up", "DOWN": "down", "WAIT": "wait", "MORE": "more"}
_ALIASES = {"pickup": ("pick up",), "up": ("go up",), "down": ("go down",), "more": ("enter",)}
#: named commands left out: they end the game or leave it (BALROG leaves them out too)
_EXCLUDED = {"QUIT", "SAVE", "SHELL"}
_MORE = b"--More--"
_MAX_MORE = 32  # bound on --More-- dismissals per step; a real screen needs a handful


def action_vocabulary(actions: tuple[Any, ...] | list[Any]) -> tuple[list[str], list[int]]:
    """Names for an NLE action set, and for each name the index into `actions`.

    Primary names (BALROG style): compass moves ("north", "far north"), "up", "down",
    "wait", "more", commands by their NLE name in lower case ("search", "pickup",
    "kick", ...), text keys ("minus", "space", "0"-"9"). Then a few aliases ("pick up",
    "go up", "go down", "enter") and, where the action set has more than moves, raw keys
    for menus and prompts: each printable key by itself ("a", "y", "<", ",") and upper
    case letters as "shift a". NLE's action set has no separate letter keys: a letter is
    the command bound to it, which is what NetHack reads in a menu. Commands that end or
    leave the game (quit, save, shell) and their keys are left out. Every name is unique
    after normalisation (case and whitespace).
    """
    primary: list[tuple[str, int]] = []
    raw: list[tuple[str, int]] = []
    for i, action in enumerate(actions):
        cls, name, key = type(action).__name__, action.name, int(action.value)
        if cls.startswith("Compass"):
            label = ("far " if "Longer" in cls else "") + _COMPASS[name]
        elif name in _EXCLUDED:
            continue
        elif name in _PRIMARY:
            label = _PRIMARY[name]
        elif cls == "TextCharacters" and name.startswith("NUM_"):
            label = name[4:]
        else:
            label = name.lower()
        primary.append((label, i))
        primary.extend((alias, i) for alias in _ALIASES.get(label, ()))
        if 32 < key < 127:
            char = chr(key)
            raw.append((f"shift {char.lower()}" if char.isupper() else char, i))
    if all(type(a).__name__.startswith("Compass") for a in actions):
        raw = []  # a moves-only task never prompts: raw keys would only add noise
    names: list[str] = []
    index: list[int] = []
    seen: set[str] = set()
    for label, i in primary + raw:  # primary names first: they win any clash
        key = normalise_action(label)
        if key not in seen:
            seen.add(key)
            names.append(label)
            index.append(i)
    return names, index


@lru_cache(maxsize=1)
def _glyph_kinds() -> np.ndarray:
    """Per glyph: 0 plain (unexplored, floor, corridor), 1 wall, 2 worth mentioning."""
    from nle import nethack

    kinds = np.full(nethack.MAX_GLYPH + 1, 2, np.uint8)
    kinds[nethack.MAX_GLYPH] = 0  # NO_GLYPH
    plain = {0, 19, 20, 21, 22}  # S_stone, S_room, S_darkroom, S_corr, S_litcorr
    for glyph in range(nethack.MAX_GLYPH):
        if nethack.glyph_is_cmap(glyph):
            cmap = nethack.glyph_to_cmap(glyph)
            if cmap in plain:
                kinds[glyph] = 0
            elif 1 <= cmap <= 11 or cmap == 17:  # S_vwall .. S_trwall, S_bars (Boxoban's walls)
                kinds[glyph] = 1
    return kinds


_NEIGHBOURS = [("north", 0, -1), ("northeast", 1, -1), ("east", 1, 0), ("southeast", 1, 1),
               ("south", 0, 1), ("southwest", -1, 1), ("west", -1, 0), ("northwest", -1, -1)]  # fmt: skip


def where(dx: int, dy: int) -> str:
    """'2 steps north and 1 step east' (north is up the screen)."""
    parts = []
    if dy:
        parts.append(f"{abs(dy)} step{'s' if abs(dy) != 1 else ''} {'north' if dy < 0 else 'south'}")
    if dx:
        parts.append(f"{abs(dx)} step{'s' if abs(dx) != 1 else ''} {'west' if dx < 0 else 'east'}")
    return " and ".join(parts) or "here"


def describe_surroundings(glyphs: np.ndarray, descriptions: np.ndarray, x: int, y: int, limit: int = 12) -> str:
    """The nearest thing of each kind on the map (monsters, objects, doors, stairs,
    fountains, traps...), nearest first, plus which neighbouring squares are walls.
    Names are NetHack's own farlook words (`screen_descriptions`), so nothing
    unidentified is given away."""
    kinds = _glyph_kinds()[glyphs]
    found: dict[str, list[int]] = {}  # name -> [distance, dx, dy, count]
    for cy, cx in zip(*(a.tolist() for a in np.nonzero(kinds == 2)), strict=True):
        if cx == x and cy == y:
            continue  # the hero
        name = descriptions[cy, cx].tobytes().split(b"\0", 1)[0].decode("latin-1") or "unknown thing"
        dist = max(abs(cx - x), abs(cy - y))
        entry = found.get(name)
        if entry is None:
            found[name] = [dist, cx - x, cy - y, 1]
        else:
            entry[3] += 1
            if dist < entry[0]:
                entry[:3] = [dist, cx - x, cy - y]
    lines = []
    for name, (_, dx, dy, count) in sorted(found.items(), key=lambda kv: (kv[1][0], kv[0]))[:limit]:
        more = f" ({count} in view)" if count > 1 else ""
        lines.append(f"- {name}: {where(dx, dy)}{more}")
    height, width = kinds.shape
    walls = [
        d for d, dx, dy in _NEIGHBOURS if 0 <= y + dy < height and 0 <= x + dx < width and kinds[y + dy, x + dx] == 1
    ]
    text = "Around you:\n" + ("\n".join(lines) if lines else "- nothing notable in view")
    return text + f"\nWalls next to you: {', '.join(walls) if walls else 'none'}."


def decode(row: np.ndarray) -> str:
    """Bytes of an NLE text array -> str (latin-1, cut at the first NUL, right-stripped)."""
    return row.tobytes().split(b"\0", 1)[0].decode("latin-1").rstrip()


def inventory_text(letters: np.ndarray, strs: np.ndarray) -> str:
    lines = []
    for letter, text in zip(letters.tolist(), strs, strict=True):
        if not letter:
            break
        lines.append(f"{chr(letter)}: {decode(text)}")
    return "\n".join(lines) if lines else "(empty)"


def screen_rows(tty_chars: np.ndarray) -> list[str]:
    return [row.tobytes().decode("latin-1").replace("\0", " ").rstrip() for row in tty_chars]


def _dedent(rows: list[str]) -> list[str]:
    """Drop blank rows at both ends and the common left margin (saves tokens, keeps shape)."""
    while rows and not rows[0].strip():
        rows = rows[1:]
    while rows and not rows[-1].strip():
        rows = rows[:-1]
    margin = min((len(r) - len(r.lstrip()) for r in rows if r.strip()), default=0)
    return [r[margin:] for r in rows]


def render(obs: dict[str, np.ndarray], messages: list[str]) -> Observation:
    """Text observation: long-term = map screen + surroundings; short-term = message,
    status lines and inventory."""
    rows = screen_rows(obs["tty_chars"])
    # A message can stay in the buffer across a --More-- page: drop repeats in a row.
    message = " ".join(m for i, m in enumerate(messages) if m and (i == 0 or m != messages[i - 1]))
    # The top line normally repeats the message; keep it when it holds something else
    # (a menu's title, say).
    top = rows[0].strip()
    body = rows[0:22] if top and top not in message else rows[1:22]
    screen = "\n".join(_dedent(body)) or "(blank)"
    blstats = obs["blstats"]
    around = describe_surroundings(obs["glyphs"], obs["screen_descriptions"], int(blstats[0]), int(blstats[1]))
    long_term = f"Map:\n{screen}\n\n{around}"
    status = "\n".join(r.strip() for r in rows[22:24])
    inventory = inventory_text(obs["inv_letters"], obs["inv_strs"])
    short_term = f"Message: {message or '(none)'}\n\nStatus:\n{status}\n\nInventory:\n{inventory}"
    return Observation(long_term, short_term)


def seed_nle(env: Any, seed: int) -> None:
    """Seed NetHack's RNGs for the next reset: same seed, same game, in any process.

    NLE's own `seed()` works for MiniHack, but NetHackChallenge forbids it (the NeurIPS
    challenge wanted unseeded games) by replacing the instance's seeding methods; the
    class method underneath is the same call, so use that for both. reseed=False turns
    off NetHack's reseeding from true randomness; the env must be built with
    fix_moon_phase=True so moon phase and Friday 13th come from the seed, not the clock.
    """
    from nle import nethack

    core = seed % (2**63)  # NetHack takes unsigned longs
    disp = (seed * 2654435761 + 1) % (2**63)  # a different stream for the display RNG
    nethack.Nethack.set_initial_seeds(env.nethack, core, disp, False, None)


class NLETextEnv(TextEnv):
    """A TextEnv over an unwrapped NLE env: vocabulary, seeding, --More--, rendering.

    Subclasses set game/task/instructions, build the NLE env, call `_setup(env)` and
    implement `_track(obs, info)` (progression bookkeeping) and `progression`.
    """

    max_steps: int

    def _setup(self, gym_env: Any, max_steps: int) -> None:
        from nle.nethack import MiscAction

        self._gym_env = gym_env
        self._env = gym_env.unwrapped  # step the raw env: the gym wrappers only add checks
        self.max_steps = max_steps
        self.actions, self._game_actions = action_vocabulary(self._env.actions)
        game_actions = list(self._env.actions)
        self._more = game_actions.index(MiscAction.MORE) if MiscAction.MORE in game_actions else None
        super().__init__()

    @abc.abstractmethod
    def _track(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> bool:
        """Update progression from the latest observation and NLE info; True ends the
        episode (a subclass's own timeout)."""

    def _play(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any], list[str]]:
        """Step the game, then press Enter while the screen shows --More-- (bounded),
        adding up rewards and collecting the messages."""
        obs, reward, term, trunc, info = self._env.step(action)
        messages = [decode(obs["message"])]
        reward = float(reward)
        for _ in range(_MAX_MORE):
            if term or trunc or self._more is None or _MORE not in obs["tty_chars"].tobytes():
                break
            obs, r, term, trunc, info = self._env.step(self._more)
            reward += float(r)
            messages.append(decode(obs["message"]))
        return obs, reward, bool(term), bool(trunc), info, messages

    def _reset(self, seed: int) -> Observation:
        # NetHack's high-score list lives in the env's private directory, grows with every
        # death and is printed on the death screen: empty it, so that an episode depends
        # on its seed alone.
        vardir = getattr(self._env.nethack, "_vardir", None)
        if vardir and os.path.isfile(os.path.join(vardir, "record")):
            open(os.path.join(vardir, "record"), "w").close()
        seed_nle(self._env, seed)
        obs, info = self._env.reset()
        messages = [decode(obs["message"])]
        if self._more is not None and _MORE in obs["tty_chars"].tobytes():
            obs, _, _, _, info, more = self._play(self._more)
            messages += more
        self._track(obs, info)
        return render(obs, messages)

    def _step(self, index: int) -> tuple[Observation, float, bool, dict[str, Any]]:
        obs, reward, term, trunc, info, messages = self._play(self._game_actions[index])
        stop = self._track(obs, info)
        status = info.get("end_status")
        blstats = obs["blstats"]
        out = {
            # a subclass's timeout reads as NLE's own would: ABORTED
            "end_status": "ABORTED" if stop and not term else getattr(status, "name", str(status)),
            "depth": int(blstats[12]),
            "experience_level": int(blstats[18]),
            "turn": int(blstats[20]),
            "truncated": trunc or stop,
        }
        done = term or trunc or stop or self.steps + 1 >= self.max_steps
        return render(obs, messages), reward, done, out

    def close(self) -> None:
        self._gym_env.close()
