"""Steps per second of each text wrapper next to the raw game underneath it.

Run by hand: `.venv/bin/python benchmarks/bench_envs.py [--rounds 3] [--scale 1.0]`.
Random actions from fixed seeds; only step calls are timed (resets are not: crafter's
world generation alone takes 1-2 s). Each row is the median of several rounds, the
rounds interleaved so that machine noise hits raw and wrapped runs alike.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

StepFn = Callable[[int], bool]  # action index -> done


def timed(reset: Callable[[int], object], step: StepFn, n_actions: int, steps: int, seed: int) -> float:
    """Steps per second over `steps` random steps (resets excluded)."""
    rng = random.Random(seed)
    episode = seed
    reset(episode)
    spent = 0.0
    for _ in range(steps):
        action = rng.randrange(n_actions)
        start = time.perf_counter()
        done = step(action)
        spent += time.perf_counter() - start
        if done:
            episode += 1
            reset(episode)
    return steps / spent


def text_env(env) -> tuple[Callable[[int], object], StepFn, int]:  # noqa: ANN001
    return env.reset, lambda a: env.step(env.actions[a]).done, len(env.actions)


def crafter_cases() -> dict[str, tuple]:
    import crafter

    from environments.crafter_env import CrafterEnv, RawCrafter

    def raw(env) -> tuple:  # noqa: ANN001
        def reset(seed: int) -> None:
            env._seed, env._episode = seed, 0
            env.reset()

        return reset, lambda a: env.step(a)[2], 17

    kw = dict(area=(64, 64), view=(9, 9), size=(64, 64), reward=True, length=2000, seed=0)
    return {
        "crafter raw (renders pixels)": raw(crafter.Env(**kw)),
        "crafter raw, no render": raw(RawCrafter(**kw)),
        "crafter text wrapper": text_env(CrafterEnv()),
    }


def nle_cases() -> dict[str, tuple]:
    import gymnasium
    import nle  # noqa: F401

    from environments.minihack_env import MiniHackEnv, import_minihack
    from environments.nethack_env import NetHackEnv
    from environments.nle_text import OBS_KEYS, seed_nle

    import_minihack()

    def raw(env, n_actions: int) -> tuple:  # noqa: ANN001
        u = env.unwrapped

        def reset(seed: int) -> None:
            seed_nle(u, seed)
            u.reset()

        def step(a: int) -> bool:
            _, _, term, trunc, _ = u.step(a)
            return term or trunc

        return reset, step, n_actions

    nethack = NetHackEnv()
    moves = 16  # both sides draw from the compass moves (random menu keys just stall NetHack)
    raw_nh = gymnasium.make(
        "NetHackChallenge-v0", observation_keys=OBS_KEYS, savedir=None, fix_moon_phase=True, disable_env_checker=True
    )
    quest = MiniHackEnv("Quest-Easy")
    raw_q = gymnasium.make("MiniHack-Quest-Easy-v0", observation_keys=OBS_KEYS, savedir=None, disable_env_checker=True)
    reset_nh, step_nh, _ = text_env(nethack)
    reset_q, step_q, _ = text_env(quest)
    return {
        "nethack raw (NetHackChallenge-v0)": raw(raw_nh, moves),
        "nethack text wrapper (+ --More--)": (reset_nh, step_nh, moves),
        "minihack raw (Quest-Easy)": raw(raw_q, 8),
        "minihack text wrapper (Quest-Easy)": (reset_q, step_q, 8),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the step counts")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from environments.tiny import TinyEnv

    groups = [
        ({"tiny text game": text_env(TinyEnv(max_steps=10**9))}, 20_000),
        (crafter_cases(), 2_000),
        (nle_cases(), 5_000),
    ]
    results: dict[str, list[float]] = {}
    for r in range(args.rounds):
        for cases, steps in groups:
            for name, (reset, step, n_actions) in cases.items():
                results.setdefault(name, []).append(timed(reset, step, n_actions, int(steps * args.scale), seed=r))

    median = {name: statistics.median(v) for name, v in results.items()}
    print(f"{'environment':40} {'steps/s':>10} {'us/step':>9}  note")
    for name, sps in median.items():
        note = ""
        if name == "crafter text wrapper":
            base = median["crafter raw, no render"]
            note = f"{base / sps - 1:+.1%} time vs raw no-render (target <= +20%)"
        elif name == "crafter raw, no render":
            note = f"{sps / median['crafter raw (renders pixels)']:.1f}x faster than rendering"
        elif "wrapper" in name and name.startswith(("nethack", "minihack")):
            raw_name = next(n for n in median if n.startswith(name.split()[0]) and "raw" in n)
            note = f"{median[raw_name] / sps:.1f}x the raw step time"
        print(f"{name:40} {sps:10.0f} {1e6 / sps:9.1f}  {note}")


if __name__ == "__main__":
    main()
