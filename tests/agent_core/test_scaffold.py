from pathlib import Path

import pytest

from agent_core.scaffold import Scaffold, ScaffoldError


@pytest.mark.parametrize("game", ["tiny", "crafter", "minihack", "nethack"])
def test_builtin_scaffolds_load_and_render(game):
    sc = Scaffold.builtin(game)
    assert sc.config.game == game and len(sc.hash) == 16
    assert Scaffold.builtin(game).hash == sc.hash  # content-addressed: stable


def copy(tmp_path: Path, game="tiny") -> Path:
    return Scaffold.builtin(game).write_copy(tmp_path / "s")


def test_hash_follows_content(tmp_path):
    root = copy(tmp_path)
    before = Scaffold(root).hash
    (root / "prompts" / "plan.jinja").write_text("PLAN routine, changed. {{ done }}")
    assert Scaffold(root).hash != before


def test_strict_undefined(tmp_path):
    root = copy(tmp_path)
    (root / "prompts" / "plan.jinja").write_text("{{ no_such_variable }}")
    with pytest.raises(ScaffoldError, match="undefined"):
        Scaffold(root).render("plan")


@pytest.mark.parametrize("mutate, message", [
    (lambda r: (r / "prompts" / "act.jinja").unlink(), "missing required prompts"),
    (lambda r: (r / "scaffold.yaml").write_text("name: [unclosed"), "invalid"),
    (lambda r: (r / "scaffold.yaml").write_text(
        (r / "scaffold.yaml").read_text().replace("allowed_ops: [read, tail, search, list]",
                                                  "allowed_ops: [read, append]")), "read operations"),
    (lambda r: (r / "scaffold.yaml").write_text(
        (r / "scaffold.yaml").read_text().replace("max_turns: 2", "max_turns: 0", 1)), "max_turns"),
    (lambda r: (r / "scaffold.yaml").write_text(
        (r / "scaffold.yaml").read_text() + "surprise: 1\n"), "surprise"),
])
def test_invalid_scaffolds_are_refused_with_reason(tmp_path, mutate, message):
    root = copy(tmp_path)
    mutate(root)
    with pytest.raises(ScaffoldError, match=message):
        Scaffold(root)


def test_unknown_builtin_lists_valid():
    with pytest.raises(ScaffoldError, match="crafter"):
        Scaffold.builtin("chess")
