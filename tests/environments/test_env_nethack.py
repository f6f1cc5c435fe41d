"""NetHackEnv on the real NLE NetHackChallenge-v0 game."""

from __future__ import annotations

import random

import pytest

from environments import EnvError, make_env
from environments.base import normalise_action
from environments.nethack_env import NetHackEnv, nethack_progression, progression_table

DIVE = ["far north", "far south", "far east", "far west", "far northeast", "far northwest",
        "far southeast", "far southwest", "down", "esc"]  # fmt: skip


@pytest.fixture(scope="module")
def env() -> NetHackEnv:
    env = make_env("nethack")
    yield env  # type: ignore[misc]
    env.close()


def key_of(env: NetHackEnv, name: str) -> int:
    return int(env._env.actions[env._game_actions[env.actions.index(name)]])


def test_vocabulary(env: NetHackEnv) -> None:
    keys = [normalise_action(a) for a in env.actions]
    assert len(keys) == len(set(keys))
    expected = {"north": "k", "far north": "K", "southwest": "b", "search": "s", "pick up": ",", "pickup": ",",
                "go down": ">", "up": "<", "a": "a", "shift a": "A", "y": "y", "n": "n", "esc": "\x1b",
                "enter": "\r", "more": "\r", "kick": "\x04", "0": "0"}  # fmt: skip
    for name, key in expected.items():
        assert key_of(env, name) == ord(key), name
    assert not {"quit", "save", "shell"} & set(env.actions)
    assert "Actions: north, east" in env.instructions


def test_text_observation(env: NetHackEnv) -> None:
    obs = env.reset(1)
    assert obs.long_term.startswith("Map:\n") and "@" in obs.long_term
    assert "Around you:" in obs.long_term and "Walls next to you:" in obs.long_term
    assert "Message: " in obs.short_term and "welcome to NetHack" in obs.short_term
    assert "Dlvl:1" in obs.short_term and "\nInventory:\na: " in obs.short_term
    assert "\x00" not in obs.text


def test_invalid_actions_never_reach_the_game(env: NetHackEnv) -> None:
    env.reset(4)
    game_steps = env._env._steps
    r = env.step("jump into the sea")
    assert r.action is None and env.invalid_actions == 1 and env._env._steps == game_steps
    r = env.step("  Far   EAST ")
    assert r.action == "far east" and env._env._steps > game_steps
    assert env.step("Pick   Up").action == "pick up"
    assert env.invalid_actions == 1


def test_more_is_dismissed(env: NetHackEnv) -> None:
    env.reset(5)
    rng = random.Random(0)
    moves = [a for a in env.actions[:16]] + ["search", "esc"]
    for _ in range(300):
        r = env.step(rng.choice(moves))
        assert "--More--" not in r.observation.long_term
        if r.done:
            break
    assert r.info["turn"] > 50 or r.done  # the game really advanced


def test_progression_function_uses_balrogs_table() -> None:
    table = progression_table()
    assert nethack_progression(1, 1) == 0.0
    assert nethack_progression(5, 3) == max(table["Dlvl:5"], table["Xp:3"])
    assert nethack_progression(2, 14) == max(table["Dlvl:2"], table["Xp:14"]) == table["Xp:14"]
    assert nethack_progression(0, 0) == 0.0  # the zeroed stats after death


def test_descending_raises_progression(env: NetHackEnv) -> None:
    # A fixed random dive that reaches Dlvl 2 quickly on seed 37 (others as fallback).
    for seed in [37, 13, 5, 11]:
        env.reset(seed)
        assert env.progression == 0.0
        rng = random.Random(seed)
        for _ in range(500):
            r = env.step(rng.choice(DIVE))
            if r.done or r.info["depth"] >= 2:
                break
        if r.info["depth"] >= 2:
            break
    assert r.info["depth"] == 2
    assert env.progression == nethack_progression(2, r.info["experience_level"]) == progression_table()["Dlvl:2"]
    r = env.step("up")  # progression is the best reached: going back up keeps it
    assert env.progression == progression_table()["Dlvl:2"]


def test_no_progress_timeout() -> None:
    env = NetHackEnv(no_progress_timeout=5)
    env.reset(0)
    results = [env.step("esc") for _ in range(5)]  # esc never advances the turn counter
    assert [r.done for r in results] == [False] * 4 + [True]
    assert results[-1].info["end_status"] == "ABORTED" and results[-1].info["truncated"]
    env.close()


def test_nothing_written_to_cwd(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = NetHackEnv()
    env.reset(0)
    for a in ["far east", "far west", "search"] * 5:
        env.step(a)
    env.close()
    assert list(tmp_path.iterdir()) == []


def test_same_seed_same_game(env: NetHackEnv) -> None:
    actions = ["far east", "far south", "search", "i", "esc", "far west", "far north", "pick up"] * 4

    def play(seed: int) -> list[str]:
        texts = [env.reset(seed).text]
        texts += [f"{(r := env.step(a)).observation.text}|{r.reward}|{r.done}" for a in actions]
        return texts

    a = play(9)
    assert play(9) == a
    assert play(10)[0] != a[0]


def test_bad_arguments() -> None:
    with pytest.raises(EnvError):
        NetHackEnv(task="score")
    with pytest.raises(EnvError):
        NetHackEnv(no_progress_timeout=0)
