"""make_env, game/task/seed validation, missing packages, lazy imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import environments
from environments import GAMES, EnvError, Observation, StepResult, list_games, make_env
from environments.registry import MINIHACK_TASKS, resolve

ROOT = Path(__file__).resolve().parents[2]


def test_exports_and_games() -> None:
    assert set(environments.__all__) >= {"make_env", "EnvError", "Observation", "StepResult", "Environment", "GAMES"}
    assert list_games() == ["crafter", "minihack", "nethack", "tiny"]
    assert GAMES["minihack"].tasks == MINIHACK_TASKS and len(MINIHACK_TASKS) == 8
    assert Observation("a", "b").text == "a\n\nb" and StepResult


def test_unknown_game_and_task_list_the_valid_ones() -> None:
    with pytest.raises(EnvError, match="valid games: crafter, minihack, nethack, tiny"):
        make_env("chess")
    with pytest.raises(EnvError, match="valid tasks: MazeWalk-9x9, MazeWalk-15x15"):
        make_env("minihack", "MazeWalk-99x99")
    with pytest.raises(EnvError, match="valid tasks: default"):
        make_env("crafter", "hard")
    with pytest.raises(EnvError):
        make_env(None)  # type: ignore[arg-type]


def test_names_match_forgivingly() -> None:
    assert resolve(" NetHack ") == ("nethack", "challenge")
    assert resolve("minihack", "mazewalk-9X9") == ("minihack", "MazeWalk-9x9")
    assert resolve("minihack") == ("minihack", "MazeWalk-9x9")
    env = make_env("TINY", "Key-Door")
    assert (env.game, env.task) == ("tiny", "key-door")


@pytest.mark.parametrize("seed", [-1, "3", 1.5, True, None, [1]])
def test_bad_seeds(seed: object) -> None:
    env = make_env("tiny")
    with pytest.raises(EnvError, match="non-negative integer"):
        env.reset(seed)  # type: ignore[arg-type]


def test_bad_seed_on_a_real_game() -> None:
    env = make_env("nethack")
    try:
        with pytest.raises(EnvError):
            env.reset(-5)
        env.reset(2**70)  # huge seeds are fine: reduced for NetHack's unsigned longs
    finally:
        env.close()


@pytest.mark.parametrize(
    ("game", "task", "module", "package"),
    [
        ("crafter", None, "crafter", "crafter"),
        ("nethack", None, "nle", "nle"),
        ("minihack", "Corridor-R3", "minihack", "minihack"),
    ],
)
def test_missing_package_names_it(
    monkeypatch: pytest.MonkeyPatch, game: str, task: str | None, module: str, package: str
) -> None:
    # None in sys.modules makes `import <module>` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.delitem(sys.modules, GAMES[game].module, raising=False)
    with pytest.raises(EnvError, match=f"pip install {package}"):
        make_env(game, task)


def test_import_is_light() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import environments; "
        "heavy = [m for m in ('crafter', 'nle', 'minihack', 'numpy', 'gymnasium') if m in sys.modules]; "
        "print(heavy, time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    heavy, seconds = out.rsplit("]", 1)
    assert heavy + "]" == "[]" and float(seconds) < 0.5
