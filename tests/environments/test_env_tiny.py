"""TinyEnv: the fast deterministic key-door game."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from environments import EnvError, Environment, make_env
from environments.tiny import TinyEnv
from replay import play




@pytest.mark.parametrize("seed", range(8))
def test_full_solve_reaches_progression_one(seed: int) -> None:
    env = TinyEnv()
    assert isinstance(env, Environment)
    env.reset(seed)
    plan = env.solution()
    total, seen = 0.0, []
    for i, action in enumerate(plan):
        r = env.step(action)
        total += r.reward
        seen.append(env.progression)
        assert r.done == (i == len(plan) - 1)
    assert env.progression == 1.0 and total == pytest.approx(1.0)
    assert seen == sorted(seen)  # milestones only ever add up
    assert r.info["won"] and r.info["milestones"] == ["took the key", "opened the door", "reached the vault"]
    with pytest.raises(RuntimeError):
        env.step("look")


def test_milestones_are_thirds() -> None:
    env = TinyEnv()
    env.reset(3)
    plan = env.solution()
    for action in plan[: plan.index("take key") + 1]:
        r = env.step(action)
    assert env.progression == pytest.approx(1 / 3) and "a key" in r.observation.short_term
    for action in env.solution()[:-1]:  # walk to the door and open it
        r = env.step(action)
    assert env.progression == pytest.approx(2 / 3)
    assert "There is an open door" in r.observation.long_term


def test_locked_door_and_no_key_messages() -> None:
    env = TinyEnv()
    env.reset(0)
    r = env.step("open door")
    assert "no door" in r.observation.short_term or "no key" in r.observation.short_term
    assert env.progression == 0.0


def test_determinism_and_seeds_vary() -> None:
    env = TinyEnv()
    actions = ["go north", "go east", "take key", "go south", "go west", "open door", "look"] * 3
    assert play(env, 5, actions) == play(TinyEnv(), 5, actions) == play(env, 5, actions)
    layouts = {env.reset(s).long_term + str(env.solution()) for s in range(10)}
    assert len(layouts) > 3


def test_max_steps_ends_episode() -> None:
    env = make_env("tiny", max_steps=4)
    env.reset(0)
    results = [env.step("wait") for _ in range(4)]
    assert [r.done for r in results] == [False, False, False, True]
    assert env.progression == 0.0


def test_invalid_and_forgiving_actions() -> None:
    env = TinyEnv()
    first = env.reset(1)
    r = env.step("dance")
    assert r.action is None and not r.done and r.info == {"invalid_action": True}
    assert env.invalid_actions == 1 and env.steps == 0
    assert "unknown action 'dance'" in r.observation.short_term
    assert r.observation.long_term == first.long_term
    r = env.step("   LOOK  ")
    assert r.action == "look" and env.steps == 1
    r = env.step("Go    North")
    assert r.action == "go north"


def test_bad_arguments() -> None:
    with pytest.raises(EnvError):
        TinyEnv(task="other")
    with pytest.raises(EnvError):
        TinyEnv(max_steps=0)
    with pytest.raises(RuntimeError):
        TinyEnv().step("look")


def test_fast() -> None:
    env = TinyEnv(max_steps=10_000)
    env.reset(0)
    start = time.perf_counter()
    for _ in range(2000):
        env.step("look")
    assert (time.perf_counter() - start) / 2000 < 200e-6  # microseconds, with a wide margin


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**40),
    actions=st.lists(st.one_of(st.sampled_from(TinyEnv.actions), st.text(max_size=12)), max_size=40),
)
def test_any_action_sequence_keeps_invariants(seed: int, actions: list[str]) -> None:
    env = TinyEnv()
    env.reset(seed)
    invalid, last = 0, 0.0
    for a in actions:
        if env._done:
            break
        r = env.step(a)
        invalid += r.action is None
        assert 0.0 <= env.progression <= 1.0 and env.progression >= last
        last = env.progression
    assert env.invalid_actions == invalid
