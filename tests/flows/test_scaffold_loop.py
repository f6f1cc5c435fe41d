"""The scaffold loop flow on a temporary Prefect API: tiny game, scripted agent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_core.models.config import ModelConfig, RoutineScript
from agent_core.registry import load_registry
from agent_core.meta.config import MetaLLMConfig
from flows.scaffold_loop import ScaffoldLoopParams, scaffold_loop

# writes, then a look-up that ends the reply (its result comes back; the next turn is DONE)
GROWING = RoutineScript(log="<|APPEND|>map.md|visited the hall again<|END|>"
                            "<|UPSERT|>map.md|hall|exits north, east<|END|><|SEARCH|>hall<|END|>", plan="<|DONE|>")


def params(ws: Path, **kw) -> ScaffoldLoopParams:
    base = dict(game="tiny", seeds=[0, 1, 2, 3], confirm_seeds=[10, 11, 12, 13], max_steps=6, models=ModelConfig(backend="scripted", script=GROWING),
                iterations=2, patience=1, concurrency=3, workspace=str(ws))
    return ScaffoldLoopParams(**{**base, **kw})


def headers(ws: Path) -> dict[str, str]:
    return {t.parent.name: t.read_text().splitlines()[0] for t in ws.glob("episodes/*/*/trace.jsonl")}


def test_rule_based_iteration_evaluates_gates_and_keeps_records(tmp_path):
    ws = tmp_path / "ws"
    result = scaffold_loop(params(ws))
    [entry] = result["history"]  # patience 1: a kept incumbent ends the loop
    # the scripted agent's progression cannot change: every seed ties, and the record says so
    # rather than "no improvement" or "underpowered"
    assert entry["reviewer"] == "rule-based" and entry["verdict"] == "no seed differs"
    assert entry["reason"].startswith("no seed differs: all 4 seeds tied")
    candidate = ws / "scaffolds" / entry["candidate"]
    assert (candidate / "scaffold.yaml").is_file()
    verdict = json.loads((ws / "verdicts" / f"{entry['incumbent']}-vs-{entry['candidate']}.json").read_text())
    assert verdict["promote"] is False and verdict["seeds"] == [0, 1, 2, 3]
    assert verdict["confirmation"] is None  # only a winner plays the confirmation seeds
    assert load_registry(ws).scaffolds == {}  # the incumbent stays
    assert len(headers(ws)) == 8  # 4 seeds x (incumbent, candidate)

    before = headers(ws)
    again = scaffold_loop(params(ws))  # a re-run reuses rollouts and the review round
    assert again["history"][0]["candidate"] == entry["candidate"] and headers(ws) == before


def test_a_revision_that_really_helps_is_confirmed_and_promoted_and_the_next_iteration_builds_on_it(tmp_path):
    """A rule-based agent that takes the key only when a look-up confirmed where it recorded
    it: under v0 it never looks up; the reviewer's consult_before_write revision makes it."""
    ws = tmp_path / "ws"
    explorer = ModelConfig(backend="scripted", policy="tiny-explorer")
    result = scaffold_loop(params(ws, models=explorer, max_steps=20, iterations=2, patience=1))
    first = result["history"][0]
    assert first["verdict"] == "promoted", first["reason"]
    verdict = json.loads((ws / "verdicts" / f"{first['incumbent']}-vs-{first['candidate']}.json").read_text())
    assert verdict["promote"] and verdict["p_value"] == pytest.approx(1 / 16)  # all 4 seeds better
    assert verdict["incumbent"] == [0.0] * 4 and min(verdict["candidate"]) > 0
    confirmation = verdict["confirmation"]
    assert confirmation["seeds"] == [10, 11, 12, 13] and confirmation["promote"]
    candidate = ws / "scaffolds" / first["candidate"]
    assert "consult_before_write: true" in (candidate / "scaffold.yaml").read_text()
    registry = load_registry(ws)
    assert registry.scaffolds["tiny"] == f"scaffolds/{first['candidate']}"  # workspace-relative
    assert result["incumbent"].endswith(first["candidate"])
    # the next iteration starts from the promoted scaffold
    if len(result["history"]) > 1:
        assert result["history"][1]["incumbent"] == first["candidate"]
    again = scaffold_loop(params(ws, models=explorer, max_steps=20, iterations=1, patience=1))
    assert again["history"][0]["incumbent"] == first["candidate"]


def test_too_few_seeds_to_ever_promote_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"3 evaluation seeds can never pass the gate.*at least 4 seeds"):
        params(tmp_path, seeds=[0, 1, 2])
    with pytest.raises(ValueError, match=r"2 confirmation seeds can never pass"):
        params(tmp_path, confirm_seeds=[10, 11])
    with pytest.raises(ValueError, match=r"seeds and confirm_seeds must be disjoint; both hold \[3\]"):
        params(tmp_path, confirm_seeds=[3, 11, 12, 13])
    params(tmp_path, seeds=[0, 1], confirm_seeds=[10, 11], gate={"alpha": 0.25})  # 1/4 <= 0.25


def test_gate_verdicts_feed_the_next_iteration(tmp_path):
    result = scaffold_loop(params(tmp_path / "ws", patience=2))
    first, second = result["history"]
    assert first["verdict"] == "no seed differs"
    # the rule-based remedies are deterministic: told that its candidate lost, it stops
    assert second["verdict"] == "no valid candidate" and "was rejected" in second["reason"]
    assert "not promoted" in second["reason"]


def test_unusable_reviewer_output_is_rejected_cleanly(tmp_path):
    ws = tmp_path / "ws"
    reviewer = MetaLLMConfig(backend="scripted", replies=["<analysis>x</analysis><changes>- y</changes><file path=\"scaffold.yaml\">"])
    result = scaffold_loop(params(ws, reviewer=reviewer, attempts=2))
    [entry] = result["history"]
    assert entry["verdict"] == "no valid candidate"
    assert [a["verdict"] for a in entry["attempts"]] == ["rejected", "rejected"]
    assert "truncated" in entry["attempts"][0]["reason"]
    assert sorted(p.name for p in (ws / "scaffolds").iterdir()) == [entry["incumbent"]]


def test_invalid_parameters_fail_fast(tmp_path):
    with pytest.raises(ValueError, match="valid games"):
        params(tmp_path, game="chess")
    with pytest.raises(ValueError, match="distinct"):
        params(tmp_path, seeds=[1, 1])
    with pytest.raises(ValueError, match="needs base_url"):
        scaffold_loop(params(tmp_path, reviewer=MetaLLMConfig(backend="openai")))


@pytest.mark.slow
def test_meta_llm_reviewer_over_automem_serve(tmp_path, server_url, local_model):
    """The real meta-LLM path: the reviewer talks to `automem serve` with the openai client.
    The 135M model cannot write a scaffold: its reply must be rejected cleanly."""
    ws = tmp_path / "ws"
    reviewer = MetaLLMConfig(backend="openai", base_url=server_url + "/v1", model=local_model.model_id,
                              max_tokens=256)
    result = scaffold_loop(params(ws, reviewer=reviewer, attempts=1, iterations=1, token_budget=1500))
    [entry] = result["history"]
    assert entry["reviewer"] == f"meta-llm:{local_model.model_id}"
    assert entry["verdict"] == "no valid candidate"
    # refused either way: invalid as a revision, or cut off at its 256-token limit (never adopted)
    [attempt] = entry["attempts"]
    assert attempt["verdict"] == "rejected" or (attempt["verdict"] == "no revision" and "'length'" in attempt["reason"])
    [record] = list((ws / "reviews").iterdir())
    assert (record / "attempt-0.reply.txt").read_text().strip()  # the model's verbatim reply is kept
    assert sorted(p.name for p in (ws / "scaffolds").iterdir()) == [entry["incumbent"]]
    assert load_registry(ws).scaffolds == {}
