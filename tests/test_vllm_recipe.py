"""The GPU path (issue 24, item 2): the vLLM recipe turns on vLLM's batch-invariant mode where
the GPU supports it (compute capability 9.0+), the model config records whether the server
runs it (in the episode key), and reports say replays are not exact where it is off.

No GPU or vLLM here: `nvidia-smi` and `vllm` are stand-ins on PATH that report a compute
capability and record the environment vLLM would start with."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent_core.models.config import ModelConfig

SERVE = Path(__file__).resolve().parents[1] / "deployments" / "vllm" / "serve.sh"


def _serve(tmp_path: Path, cap: str | None, **env: str) -> tuple[str, str]:
    """Run serve.sh with a stand-in GPU of compute capability `cap` (None: no nvidia-smi);
    (what it printed, VLLM_BATCH_INVARIANT as the stand-in vLLM saw it)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    seen = tmp_path / "seen"
    if cap is not None:
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\necho {cap}\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    (bin_dir / "vllm").write_text(f'#!/bin/sh\necho "${{VLLM_BATCH_INVARIANT:-unset}}" > {seen}\nexit 3\n')
    (bin_dir / "vllm").chmod(0o755)
    path = f"{bin_dir}:/usr/bin:/bin"
    done = subprocess.run(["bash", str(SERVE), "some/base", "1"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": path, "VLLM": str(bin_dir / "vllm"), **env})
    assert done.returncode != 0 and "exited before it was healthy" in done.stderr  # the stand-in stops
    return done.stdout, seen.read_text().strip()


@pytest.mark.parametrize("cap, env, on", [
    ("9.0", {}, True), ("10.0", {}, True), ("8.6", {}, False), (None, {}, False),
    ("9.0", {"BATCH_INVARIANT": "0"}, False), ("8.0", {"BATCH_INVARIANT": "1"}, True),
])
def test_the_recipe_turns_batch_invariance_on_where_the_gpu_supports_it(tmp_path, cap, env, on):
    printed, seen = _serve(tmp_path, cap, **env)
    assert seen == ("1" if on else "unset")
    assert ("batch-invariant: on" if on else "batch-invariant: off") in printed


def test_a_bad_batch_invariant_setting_is_refused(tmp_path):
    done = subprocess.run(["bash", str(SERVE), "some/base", "1"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "BATCH_INVARIANT": "yes"})
    assert done.returncode == 2 and "must be auto, 1 or 0" in done.stderr


def test_the_served_models_identity_records_batch_invariance_and_reports_say_when_replays_are_not_exact():
    off = ModelConfig(backend="openai", base_url="http://127.0.0.1:9/v1", model="m")
    on = off.model_copy(update={"batch_invariant": True})
    assert off.identity()["batch_invariant"] == "off" and on.identity()["batch_invariant"] == "on"
    assert off.identity() != on.identity()  # another episode key
    assert "Replays are not exact" in (off.replay_note() or "") and on.replay_note() is None
    local = ModelConfig(backend="local", device="cpu")
    assert local.identity()["batch_invariant"] == "on" and local.replay_note() is None


def test_the_gpu_preset_asks_for_batch_invariance():
    import yaml

    preset = yaml.safe_load((SERVE.parents[1] / "presets" / "nightly-gpu.yaml").read_text())
    assert ModelConfig(**preset["params"]["models"]).identity()["batch_invariant"] == "on"


def test_the_evaluation_report_says_when_replays_are_not_exact(tmp_path):
    from flows.evaluate import Arm, EvaluateParams, evaluation_markdown

    def report(**models) -> str:
        params = EvaluateParams(arms=[Arm(scaffold="baseline")], games=["tiny"], workspace=str(tmp_path),
                                models=ModelConfig(backend="openai", base_url="http://127.0.0.1:9/v1", model="m",
                                                   **models))
        return evaluation_markdown(params, 10, ["tiny"], [], [])

    assert "Replays are not exact" in report()
    assert "Replays are not exact" not in report(batch_invariant=True)
