"""NetHack (NLE's NetHackChallenge-v0) as a text game, scored like BALROG.

Progression follows BALROG (https://github.com/balrog-ai/BALROG, MIT licence; the table in
`data/balrog_nethack_progression.json` is theirs, licence in `data/BALROG-LICENSE.txt`):
each dungeon depth ("Dlvl:N", NLE's blstats depth) and experience level ("Xp:N") has a
value, the chance that a human player who got that far went on to win; an episode's
progression is the highest value reached by either, over the whole episode.

As in BALROG, `--More--` is dismissed automatically and an episode ends after 150
steps in a row in which NetHack's turn counter does not move (BALROG sets NLE's
`no_progress_timeout: 150`). We count those steps ourselves, one per action: NLE 1.3
counts each step twice (its abort check runs twice per step), so its own setting
would cut off after about 75.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .base import EnvError, Observation
from .nle_text import OBS_KEYS, NLETextEnv

_TABLE = Path(__file__).parent / "data" / "balrog_nethack_progression.json"


@lru_cache(maxsize=1)
def progression_table() -> dict[str, float]:
    return json.loads(_TABLE.read_text())


def nethack_progression(depth: int, experience_level: int) -> float:
    """BALROG's value of a state: the larger of its depth's and experience level's entry
    (states outside the table, such as the zeroed stats after death, count 0)."""
    table = progression_table()
    return max(table.get(f"Dlvl:{depth}", 0.0), table.get(f"Xp:{experience_level}", 0.0))


class NetHackEnv(NLETextEnv):
    """The full game of NetHack, random role (NetHackChallenge-v0), with text observations."""

    game = "nethack"

    def __init__(self, task: str = "challenge", max_steps: int = 100_000, no_progress_timeout: int = 150) -> None:
        if task != "challenge":
            raise EnvError(f"unknown task {task!r} for game 'nethack'; valid tasks: challenge")
        if max_steps < 1 or no_progress_timeout < 1:
            raise EnvError("max_steps and no_progress_timeout must be positive")
        import gymnasium
        import nle  # noqa: F401  (registers the NetHack envs with gymnasium)

        self.task = task
        self.no_progress_timeout = no_progress_timeout
        env = gymnasium.make(
            "NetHackChallenge-v0",
            observation_keys=OBS_KEYS,
            no_progress_timeout=10**9,  # ours instead, see the module docstring
            savedir=None,  # with save_ttyrec_every=0: no ttyrec files, nothing in the cwd
            save_ttyrec_every=0,
            fix_moon_phase=True,  # time-of-month effects from the seed, not the clock
            disable_env_checker=True,
        )
        self._progression = 0.0
        self._turn = -1
        self._stalled = 0
        self._setup(env, max_steps)
        self.instructions = (
            "You play NetHack, the full game: descend as deep as you can and gain experience "
            "levels; progress is the best dungeon level or experience level reached. The map "
            "uses NetHack's symbols (@ you, > < stairs, + door or spellbook, # corridor, letters "
            "monsters). --More-- prompts are dismissed for you. Menus and questions take raw "
            "keys: a letter ('a'), 'shift a' for an upper-case letter, 'y'/'n', 'esc', 'enter'. "
            f"The episode ends after {no_progress_timeout} actions in a row that do not advance "
            "the game's turn counter. Actions: " + ", ".join(self.actions) + "."
        )

    def _reset(self, seed: int) -> Observation:
        self._progression, self._turn, self._stalled = 0.0, -1, 0
        return super()._reset(seed)

    def _track(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> bool:
        blstats = obs["blstats"]
        self._progression = max(self._progression, nethack_progression(int(blstats[12]), int(blstats[18])))
        turn = int(blstats[20])
        self._stalled = self._stalled + 1 if turn == self._turn else 0
        self._turn = turn
        return self._stalled >= self.no_progress_timeout

    @property
    def progression(self) -> float:
        return self._progression
