"""The tiny games: TinyEnv (key-door) and RecallEnv (recall, a game that needs memory)."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from environments import EnvError, Environment, Observation, make_env
from agent_core.scaffold import Scaffold
from environments.tiny import COLOURS, CORRIDOR_STEPS, CORRIDOR_STEPS_SHORT, RecallEnv, TinyEnv
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


SEEDS = st.integers(min_value=0, max_value=2**40)


def any_actions(env_class: type, max_size: int) -> st.SearchStrategy[list[str]]:
    """The game's action names mixed with arbitrary text (invalid actions)."""
    return st.lists(st.one_of(st.sampled_from(env_class.actions), st.text(max_size=12)), max_size=max_size)


def steps_of(env, seed: int, actions: list[str]):  # noqa: ANN001, ANN201
    """The step results of `actions` from `seed`, up to the step that ends the episode."""
    env.reset(seed)
    for a in actions:
        result = env.step(a)
        yield result
        if result.done:
            return


@settings(max_examples=60, deadline=None)
@given(seed=SEEDS, actions=any_actions(TinyEnv, 40))
def test_any_action_sequence_keeps_invariants(seed: int, actions: list[str]) -> None:
    env = TinyEnv()
    invalid, last = 0, 0.0
    for r in steps_of(env, seed, actions):
        invalid += r.action is None
        assert 0.0 <= env.progression <= 1.0 and env.progression >= last
        last = env.progression
    assert env.invalid_actions == invalid


# -- tiny/recall: a fact shown once, a corridor longer than the history window, a final choice --

FACT = re.compile(r"The way out is the (\w+) door")


def walk(env: RecallEnv, seed: int, actions: list[str]) -> list[Observation]:
    seen = [env.reset(seed)]
    for a in actions:
        seen.append(env.step(a).observation)
    return seen


@pytest.mark.parametrize("seed", range(8))
def test_recall_fact_is_shown_once_then_a_corridor_longer_than_the_history_window(seed: int) -> None:
    env = make_env("tiny", "recall")
    assert isinstance(env, RecallEnv) and isinstance(env, Environment) and env.task == "recall"
    env.reset(seed)
    plan = env.solution()
    seen = walk(env, seed, ["dance"] + plan[:-1] + ["look", "wait", "go forward", "open purple door"])
    texts = [o.text for o in seen]
    [colour] = FACT.findall(texts[0])
    assert plan[-1] == f"open {colour} door" and colour in COLOURS
    assert not any(FACT.search(t) for t in texts[1:])  # never repeated, whatever is played
    corridor = [o.long_term for o in seen[1:len(plan)]]  # an invalid action, then the corridor
    assert len(corridor) == len(plan) - 1 and not any(c in t for t in corridor for c in COLOURS)
    gap = len(plan) - 1  # steps from the fact to the choice
    assert gap >= CORRIDOR_STEPS[0] >= 6
    for shipped in ("tiny", "baseline"):  # out of every shipped scaffold's window
        assert gap > Scaffold.builtin(shipped).config.history_window
    assert all(c in texts[len(plan)] for c in COLOURS)  # at the doors, all four named


@pytest.mark.parametrize("seed", range(8))
def test_recall_short_is_the_same_game_with_a_corridor_beyond_the_memory_scaffolds_windows(seed: int) -> None:
    short, full = make_env("tiny", "recall-short"), make_env("tiny", "recall")
    assert isinstance(short, RecallEnv) and short.task == "recall-short"
    first = short.reset(seed)
    assert first.text.splitlines()[2:] == full.reset(seed).text.splitlines()[2:]  # the same fact, said once
    gap = len(short.solution()) - 1
    assert CORRIDOR_STEPS_SHORT[0] <= gap <= CORRIDOR_STEPS_SHORT[1] < CORRIDOR_STEPS[0]
    for shipped in ("tiny", "crafter", "minihack", "nethack"):  # memory scaffolds: out of their windows
        cfg = Scaffold.builtin(shipped).config
        assert gap > cfg.history_window + cfg.history_stride - 1
    seen = walk(short, seed, short.solution())
    assert short.progression == 1.0 and "You win" in seen[-1].text


def test_recall_progression_partial_at_the_doors_full_on_the_right_one_final_on_a_wrong_one() -> None:
    env = RecallEnv()
    env.reset(5)
    plan = env.solution()
    seen = []
    for a in plan[:-1]:
        r = env.step(a)
        seen.append(env.progression)
    assert seen[:-1] == [0.0] * (len(plan) - 2) and seen[-1] == 0.5 and r.reward == 0.5 and not r.done
    assert r.info == {"milestones": ["reached the doors"], "won": False}
    r = env.step(plan[-1])
    assert env.progression == 1.0 and r.done and r.reward == 0.5 and r.info["won"]

    wrong = next(c for c in COLOURS if f"open {c} door" != plan[-1])
    env.reset(5)
    for a in plan[:-1]:
        env.step(a)
    r = env.step(f"open {wrong} door")
    assert r.done and env.progression == 0.5 and r.reward == 0.0 and "game is over" in r.observation.text
    with pytest.raises(RuntimeError):
        env.step(plan[-1])  # a wrong door is final


def test_recall_doors_before_the_end_and_walking_past_it() -> None:
    env = RecallEnv()
    env.reset(2)
    r = env.step("open red door")
    assert "no door here" in r.observation.short_term and not r.done and env.progression == 0.0
    for _ in range(env.solution().count("go forward")):
        env.step("go forward")
    r = env.step("go forward")
    assert "corridor ends here" in r.observation.short_term and env.progression == 0.5


def test_recall_is_deterministic_and_seeds_vary() -> None:
    actions = ["go forward"] * 5 + ["look", "open blue door", "go forward", "wait", "go forward",
                                    "go forward", "go forward", "open red door"]
    assert play(RecallEnv(), 4, actions) == play(RecallEnv(), 4, actions) == play(make_env("tiny", "recall"), 4, actions)
    envs = [RecallEnv() for _ in range(40)]
    games = {(FACT.search(e.reset(s).text)[1], len(e.solution())) for s, e in enumerate(envs)}
    assert {c for c, _ in games} == set(COLOURS)  # every door is the way out on some seed
    assert {n - 1 for _, n in games} == set(range(CORRIDOR_STEPS[0], CORRIDOR_STEPS[1] + 1))


def test_recall_guessing_the_first_listed_door_wins_about_one_in_four() -> None:
    """The doors' order says nothing about the way out: a guesser wins by chance only."""
    wins = 0
    for seed in range(200):
        env = RecallEnv()
        env.reset(seed)
        doors = walk(env, seed, env.solution()[:-1])[-1].text
        first = re.search(r"stand before you: (\w+)", doors)[1]
        env.step(f"open {first} door")
        wins += env.progression == 1.0
    assert 25 <= wins <= 75  # 1 in 4 of 200 is 50


def test_recall_bad_task_names_list_the_valid_ones() -> None:
    with pytest.raises(EnvError, match=r"unknown task 'remember' for game 'tiny'; valid tasks: key-door, recall"):
        make_env("tiny", "remember")
    with pytest.raises(EnvError, match=r"valid tasks: key-door, recall.*make_env\('tiny', 'key-door'\)"):
        RecallEnv(task="key-door")
    with pytest.raises(EnvError, match="valid tasks: key-door, recall"):
        TinyEnv(task="recall")
    with pytest.raises(EnvError, match="max_steps must be a positive integer"):
        RecallEnv(max_steps=0)
    env = make_env("tiny", "Recall", max_steps=3)
    env.reset(0)
    assert [env.step("wait").done for _ in range(3)] == [False, False, True]


@settings(max_examples=60, deadline=None)
@given(seed=SEEDS, actions=any_actions(RecallEnv, 30))
def test_recall_any_action_sequence_keeps_invariants(seed: int, actions: list[str]) -> None:
    env = RecallEnv()
    last = 0.0
    for r in steps_of(env, seed, actions):
        assert env.progression in (0.0, 0.5, 1.0) and env.progression >= last
        assert not FACT.search(r.observation.text)
        last = env.progression
