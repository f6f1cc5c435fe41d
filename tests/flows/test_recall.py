"""tiny/recall through the evaluate flow: the scripted recall policy finishes where memory keeps
the fact and guesses where it cannot."""

from __future__ import annotations

from pathlib import Path

import yaml

from agent_core.models.config import ModelConfig
from agent_core.commands import READ_OPS
from agent_core.scaffold import Scaffold
from agent_core.trace import read_trace
from flows.evaluate import Arm, EvaluateParams, evaluate

RECALL = ModelConfig(backend="scripted", policy="tiny-recall")


def _no_writes(tmp_path: Path) -> str:
    dest = Scaffold.builtin("tiny").write_copy(tmp_path / "no-writes")
    raw = yaml.safe_load((dest / "scaffold.yaml").read_text())
    raw["log"]["allowed_ops"] = list(READ_OPS)  # memory can be read, never written
    (dest / "scaffold.yaml").write_text(yaml.safe_dump(raw))
    return str(dest)


def test_memory_decides_tiny_recall_and_the_context_window_baseline_can_only_guess(tmp_path):
    ws = tmp_path / "ws"
    params = EvaluateParams(arms=[Arm(scaffold="v0"), Arm(scaffold=_no_writes(tmp_path), name="no-writes"),
                                  Arm(scaffold="baseline")],
                            games=["tiny/recall"], seeds=list(range(8)), max_steps=24, models=RECALL,
                            workspace=str(ws), concurrency=4)
    result = evaluate(params)
    rows = {r["arm"]: r for r in result["table"]}
    assert rows["v0"]["mean"] == 1.0  # wrote the way out, looked it up at the doors
    assert 0.5 <= rows["no-writes"]["mean"] < 0.75  # reached the doors, then guessed
    # the context-window baseline keeps 16 steps in view, fewer than the 17-20 step corridor:
    # at the doors the game's words are gone, and it guesses like the agent that cannot write
    assert 0.5 <= rows["baseline"]["mean"] < 0.75
    traces = [read_trace(t) for t in ws.glob("episodes/tiny/*/trace.jsonl")]
    assert len(traces) == 24 and {t.header.task for t in traces} == {"recall"}
