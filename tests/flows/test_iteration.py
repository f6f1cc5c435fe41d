"""The nightly iteration end to end on the tiny game: both loops, one report with the
training plots and the history across nights."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_core.meta.config import MetaLLMConfig
from agent_core.models.config import ModelConfig
from flows.iteration import IterationParams, iteration


@pytest.mark.slow
def test_nightly_iteration_promotes_a_scaffold_trains_an_adapter_and_reports_with_plots(tmp_path):
    """Plumbing of the nightly run. The agent is the rule-based explorer (scripted backend),
    so the adapter is really trained but its evaluation is the same policy under the
    adapter's name; the trained adapter playing on the local model is
    tests/flows/test_training_loop.py."""
    ws = tmp_path / "ws"
    params = IterationParams(
        game="tiny", eval_seeds=[0, 1, 2, 3], confirm_seeds=[10, 11, 12, 13], pool_seeds=[100], max_steps=20,
        iterations=1, patience=1, trials=1, concurrency=4, workspace=str(ws),
        models=ModelConfig(backend="scripted", policy="tiny-explorer"), meta=MetaLLMConfig(),
        train_budget={"max_steps": 2, "max_batch_size": 2, "max_seq_len": 1024})
    result = iteration(params)
    assert result["scaffold_loop"]["history"][0]["verdict"] == "promoted"
    [trial] = result["training_loop"]["trials"]
    assert trial["examples"] > 0 and len(trial["loss_curve"]) == 2
    report = Path(result["report"])
    text = report.read_text()
    assert "## History across nights" in text and "| night | scaffold |" in text
    for png in ("loss.png", "memory.png"):  # the training loop's plots, linked beside the report
        name = next(p.name for p in report.parent.glob(f"training-loop-*-{png}"))
        assert f"]({name})" in text and (report.parent / name).read_bytes()[:4] == b"\x89PNG"
    for name in ("history", "growth", "write-search"):  # the paper's two diagnostics, by scaffold
        png = report.parent / f"{report.stem}-{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and f"]({png.name})" in text
    # both scaffolds of the night are in the history: the incumbent and the promoted candidate
    assert text.count(f"| {result['scaffold_loop']['history'][0]['candidate']} |") == 1
