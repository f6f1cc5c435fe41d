"""MiniHackEnv on real MiniHack levels (Boxoban from level files written here)."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import pytest

from environments import EnvError, make_env
from environments.boxoban import BOXOBAN_ENV_VAR
from environments.minihack_env import MiniHackEnv
from replay import play as replay

STEPS = {"north": (0, -1), "south": (0, 1), "east": (1, 0), "west": (-1, 0)}

# Boxoban's file format: '; N', a 10x10 map ('#' wall, '@' you, '$' box, '.' goal), a blank line.
LEVEL_EAST = "; 0\n##########\n#        #\n#        #\n#  @$.   #\n" + "#        #\n" * 5 + "##########\n\n"
LEVEL_NORTH = (
    "; 1\n##########\n#        #\n#   .    #\n#   $    #\n#   @    #\n" + "#        #\n" * 4 + "##########\n\n"
)


def path_to_stairs(screen: list[str]) -> list[str] | None:
    """Shortest cardinal path over seen floor from '@' to '>' on the text map, if any."""
    cells = {(x, y): c for y, row in enumerate(screen) for x, c in enumerate(row)}
    start = next((p for p, c in cells.items() if c == "@"), None)
    prev: dict[tuple[int, int], tuple[tuple[int, int], str] | None] = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cells.get(cell) == ">":
            path = []
            while prev[cell]:
                cell, move = prev[cell]  # type: ignore[misc]
                path.append(move)
            return path[::-1]
        for move, (dx, dy) in STEPS.items():
            nxt = (cell[0] + dx, cell[1] + dy)
            if nxt not in prev and cells.get(nxt) in (".", ">"):
                prev[nxt] = (cell, move)
                queue.append(nxt)
    return None


@pytest.fixture()
def levels(tmp_path: Path) -> Path:
    for rel, text in [("medium/train/000.txt", LEVEL_EAST + LEVEL_NORTH), ("hard/000.txt", LEVEL_NORTH)]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_reaching_the_stairs_solves_mazewalk() -> None:
    env = make_env("minihack", "MazeWalk-9x9")
    assert env.actions == ["north", "east", "south", "west", "northeast", "southeast", "southwest", "northwest"]
    for seed in range(40):  # seeds whose goal is already in sight at the start
        obs = env.reset(seed)
        path = path_to_stairs(obs.long_term.split("Map:\n", 1)[1].split("\n\nAround you:")[0].split("\n"))
        if path:
            break
    assert path, "no seed with the stairs in sight"
    for i, move in enumerate(path):
        assert env.progression == 0.0
        r = env.step(move)
        assert r.done == (i == len(path) - 1)
    assert r.info["end_status"] == "TASK_SUCCESSFUL" and r.reward >= 0.99
    assert env.progression == 1.0
    env.reset(seed)  # a new episode starts unsolved
    assert env.progression == 0.0
    env.close()


def test_step_limit_without_success_scores_zero() -> None:
    env = MiniHackEnv("Corridor-R3", max_steps=3)
    env.reset(0)
    results = [env.step("search") for _ in range(3)]
    assert [r.done for r in results] == [False, False, True] and env.progression == 0.0
    assert {"open", "kick", "search"} <= set(env.actions)
    env.close()


def test_default_step_limit_is_balrogs() -> None:
    env = MiniHackEnv("CorridorBattle-Dark")
    assert env.max_steps == 100 and "100 steps" in env.instructions
    env.close()


def test_invalid_and_forgiving_actions() -> None:
    env = MiniHackEnv("Quest-Easy")
    first = env.reset(3)
    game_steps = env._env._steps
    r = env.step("fly")
    assert r.action is None and env.invalid_actions == 1 and env._env._steps == game_steps
    assert r.observation.long_term == first.long_term
    r = env.step("  EAST")
    assert r.action == "east" and env._env._steps == game_steps + 1
    env.close()


def test_same_seed_same_level() -> None:
    env = MiniHackEnv("Quest-Easy")
    actions = ["east", "far east", "north", "south", "east", "zap", "esc"] * 3

    def play(seed: int) -> list[str]:
        return replay(env, seed, actions)

    a = play(3)
    assert play(3) == a and play(3) == a
    assert any(play(s)[0] != a[0] for s in (4, 5, 6))
    env.close()


def test_boxoban_without_levels_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(BOXOBAN_ENV_VAR, raising=False)
    for task in ("Boxoban-Medium", "Boxoban-Hard"):
        with pytest.raises(EnvError, match=BOXOBAN_ENV_VAR) as err:
            make_env("minihack", task)
        assert "medium/train/*.txt" in str(err.value) and "boxoban_levels=" in str(err.value)
    with pytest.raises(EnvError, match="Looked in"):
        make_env("minihack", "Boxoban-Medium", boxoban_levels=str(tmp_path))  # empty dir
    monkeypatch.setenv(BOXOBAN_ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(EnvError, match="nowhere"):
        make_env("minihack", "Boxoban-Hard")
    (tmp_path / "hard").mkdir()
    (tmp_path / "hard" / "000.txt").write_text("not a level")  # no level block in it
    with pytest.raises(EnvError, match="no Boxoban levels could be read"):
        make_env("minihack", "Boxoban-Hard", boxoban_levels=str(tmp_path))


def test_boxoban_from_local_levels_solved(levels: Path) -> None:
    env = make_env("minihack", "Boxoban-Medium", boxoban_levels=str(levels))
    assert env.actions == ["north", "east", "south", "west"]
    starts = {}
    for seed in range(12):
        starts.setdefault(env.reset(seed).long_term, seed)
    assert len(starts) == 2  # both levels of the file come up
    assert env.reset(5).long_term == env.reset(5).long_term  # and the choice follows the seed
    for text, seed in starts.items():
        env.reset(seed)
        push = "east" if "a boulder: 1 step east" in text else "north"
        r = env.step(push)
        assert r.done and r.info["end_status"] == "TASK_SUCCESSFUL" and env.progression == 1.0
    env.close()


def test_boxoban_levels_from_env_var(levels: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BOXOBAN_ENV_VAR, str(levels))
    env = make_env("minihack", "Boxoban-Hard")
    obs = env.reset(0)
    assert "a boulder: 1 step north" in obs.long_term and "fountain: 2 steps north" in obs.long_term
    r = env.step("west")
    assert not r.done and env.progression == 0.0
    env.close()


def test_unknown_task() -> None:
    with pytest.raises(EnvError, match="valid tasks"):
        MiniHackEnv("Boxoban-Easy")
