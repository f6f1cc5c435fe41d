"""MiniHack tasks (BALROG's suite) as text games.

Same text and action machinery as NetHack (`nle_text`). As in BALROG: 100 steps per
episode, progression 1.0 when the episode ends with the task solved (NLE's end status
TASK_SUCCESSFUL, the step where the reward reaches 1), else 0.

Boxoban's level files are normally downloaded by minihack at run time; here they must be
on disk: pass `boxoban_levels=DIR` or set AUTOMEM_BOXOBAN_LEVELS=DIR, where DIR has the
layout of https://github.com/deepmind/boxoban-levels (`medium/train/*.txt`, `hard/*.txt`).
"""

from __future__ import annotations

import random
import warnings
from functools import lru_cache
from typing import Any

import numpy as np

from .base import EnvError, Observation
from .nle_text import OBS_KEYS, NLETextEnv
from .boxoban import BOXOBAN_SPLITS, boxoban_dir
from .registry import MINIHACK_TASKS

_GOALS = {
    "MazeWalk": "find the staircase down (>) in a dark maze and step onto it",
    "Corridor": "find the staircase down (>) through corridors joining rooms and step onto it",
    "CorridorBattle": "fight through the monsters of a dark corridor and reach the staircase down (>)",
    "Quest": "cross the water or lava, deal with the monsters and reach the staircase down (>); "
    "the items you find (wands, rings, potions...) may help",
    "Boxoban": "push every boulder (`) onto a fountain ({); boulders move when you walk into "
    "them and cannot be pulled",
}


def import_minihack() -> None:
    with warnings.catch_warnings():  # minihack imports pkg_resources, which warns
        warnings.simplefilter("ignore")
        import minihack  # noqa: F401  (registers the MiniHack envs with gymnasium)


@lru_cache(maxsize=1)
def _seeded_boxoban() -> type:
    from minihack.envs.boxohack import BoxoHack

    class SeededBoxoban(BoxoHack):
        """BoxoHack that picks its level with its own RNG: minihack's uses the global
        `random` module, which NetHack's seeds do not reach."""

        def __init__(self, *args: Any, level_rng: random.Random, **kwargs: Any) -> None:
            self.level_rng = level_rng
            super().__init__(*args, **kwargs)

        def reset(self, *args: Any, **kwargs: Any) -> Any:
            # minihack 1.0.2 + nle 1.3 check the goal inside NLE's reset, before BoxoHack
            # sets it (AttributeError on the first reset, last episode's goal later):
            # no goal yet means "running".
            self._goal_pos_set = None
            return super().reset(*args, **kwargs)

        def get_lvl_gen(self) -> Any:
            levels = self._levels
            self._levels = [self.level_rng.choice(levels)]  # leave minihack one choice
            try:
                return super().get_lvl_gen()
            finally:
                self._levels = levels

    return SeededBoxoban


class MiniHackEnv(NLETextEnv):
    """One MiniHack task; the action set is the task's own (named as for NetHack)."""

    game = "minihack"

    def __init__(self, task: str = "MazeWalk-9x9", max_steps: int = 100, boxoban_levels: str | None = None) -> None:
        if task not in MINIHACK_TASKS:
            raise EnvError(f"unknown task {task!r} for game 'minihack'; valid tasks: {', '.join(MINIHACK_TASKS)}")
        if max_steps < 1:
            raise EnvError(f"max_steps must be positive, got {max_steps}")
        self.task = task
        # BALROG's minihack_kwargs; fix_moon_phase so seeded games do not follow the clock.
        kwargs: dict[str, Any] = dict(
            observation_keys=OBS_KEYS,
            character="@",
            autopickup=False,
            penalty_step=-0.01,
            penalty_time=0.0,
            penalty_mode="constant",
            savedir=None,
            save_ttyrec_every=0,
            fix_moon_phase=True,
        )
        if task in BOXOBAN_SPLITS:
            level_set, split = boxoban_dir(task, boxoban_levels)  # before any minihack import
            self.options = {"boxoban_levels": level_set}
            import_minihack()
            # As minihack's MiniHackBoxobanMedium/Hard, with the levels read from level_set.
            kwargs.update(level_set=level_set, level_mode=split, reward_shaping_coefficient=0.1, penalty_time=-0.001)
            self._level_rng: random.Random | None = random.Random(0)
            try:
                env: Any = _seeded_boxoban()(level_rng=self._level_rng, **kwargs)
            except IndexError as exc:  # files present but no level parsed out of them
                raise EnvError(f"no Boxoban levels could be read from {level_set!r}: {exc}") from exc
        else:
            import gymnasium

            import_minihack()
            self._level_rng = None
            env = gymnasium.make(f"MiniHack-{task}-v0", disable_env_checker=True, **kwargs)
        self._solved = False
        self._setup(env, max_steps)
        goal = _GOALS[task.split("-")[0]]
        self.instructions = (
            f"You play MiniHack {task}, a small NetHack level: {goal}. You have {max_steps} "
            "steps. The map uses NetHack's symbols (@ you, > stairs down, letters monsters). "
            "Actions: " + ", ".join(self.actions) + "."
        )

    def _reset(self, seed: int) -> Observation:
        self._solved = False
        if self._level_rng is not None:
            self._level_rng.seed(seed)
        return super()._reset(seed)

    def _track(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> bool:
        status = info.get("end_status")
        if status is not None and status == self._env.StepStatus.TASK_SUCCESSFUL:
            self._solved = True
        return False

    @property
    def progression(self) -> float:
        return 1.0 if self._solved else 0.0
