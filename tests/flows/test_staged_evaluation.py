"""Staged evaluation in the scaffold loop: a candidate that fails the screen on a few seeds
never plays the rest, the gate or the confirmation seeds; one that passes plays them all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_core.models.config import ModelConfig, RoutineScript
from agent_core.trace import read_jsonl
from flows.scaffold_loop import ScaffoldLoopParams, ScreenConfig, scaffold_loop

# the scripted agent's progression cannot change with the scaffold: no candidate beats it
GROWING = RoutineScript(log="<|APPEND|>map.md|visited the hall again<|END|>"
                            "<|UPSERT|>map.md|hall|exits north, east<|END|><|SEARCH|>hall<|END|>", plan="<|DONE|>")


def params(ws: Path, **kw) -> ScaffoldLoopParams:
    base = dict(game="tiny", seeds=[0, 1, 2, 3], confirm_seeds=[10, 11, 12, 13], max_steps=20, iterations=1,
                patience=1, concurrency=3, workspace=str(ws))
    return ScaffoldLoopParams(**{**base, **kw})


def played(ws: Path) -> dict[str, list[int]]:
    """Scaffold hash -> seeds of the episodes played with it."""
    out: dict[str, list[int]] = {}
    for t in ws.glob("episodes/*/*/trace.jsonl"):
        h = read_jsonl(t)[0]
        out.setdefault(h["scaffold_hash"], []).append(h["seed"])
    return {k: sorted(v) for k, v in out.items()}


def test_a_candidate_failing_the_screen_plays_nothing_more(tmp_path):
    ws = tmp_path / "ws"
    screen = ScreenConfig(seeds=2, min_delta=0.01)
    result = scaffold_loop(params(ws, models=ModelConfig(backend="scripted", script=GROWING), screen=screen))
    [entry] = result["history"]
    assert entry["verdict"] == "kept incumbent" and entry["reason"].startswith("failed the screen on seeds [0, 1]")
    assert "2 candidate episodes not played, up to 40 environment steps saved" in entry["reason"]
    assert played(ws) == {entry["incumbent"]: [0, 1, 2, 3], entry["candidate"]: [0, 1]}
    assert result["env_steps"] == {entry["candidate"]: 40}  # two 20-step screen episodes
    assert not (ws / "verdicts").exists() or not list((ws / "verdicts").iterdir())


def test_a_candidate_passing_the_screen_plays_the_full_gate_and_confirmation(tmp_path):
    ws = tmp_path / "ws"
    explorer = ModelConfig(backend="scripted", policy="tiny-explorer")
    result = scaffold_loop(params(ws, models=explorer, screen=ScreenConfig(seeds=2, min_delta=0.01)))
    [entry] = result["history"]
    # the rule-based consult_before_write revision lets the explorer find the key: it wins everywhere
    assert entry["verdict"] == "promoted", entry["reason"]
    verdict = json.loads((ws / "verdicts" / f"{entry['incumbent']}-vs-{entry['candidate']}.json").read_text())
    assert verdict["seeds"] == [0, 1, 2, 3] and verdict["confirmation"]["seeds"] == [10, 11, 12, 13]
    # each seed played once: the screen's two episodes were the gate's own, reused
    assert played(ws)[entry["candidate"]] == [0, 1, 2, 3, 10, 11, 12, 13]
    # every episode played for it counted once: its 4 + 4 and the incumbent's 4 confirmation episodes
    steps = {s["episode_id"]: s for s in (read_jsonl(t)[-1] for t in ws.glob("episodes/*/*/trace.jsonl"))}
    confirm = sum(v["steps"] for v in steps.values() if v["seed"] >= 10)
    own = sum(v["steps"] for v in steps.values() if v["scaffold_hash"] == entry["candidate"] and v["seed"] < 10)
    assert result["env_steps"] == {entry["candidate"]: own + confirm}


def test_screen_must_be_smaller_than_the_evaluation_seeds(tmp_path):
    with pytest.raises(ValueError, match="must be fewer than the 4 evaluation seeds"):
        params(tmp_path, screen=ScreenConfig(seeds=4))
