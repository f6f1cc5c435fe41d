"""The inner loop with the real local model on real Crafter (a few steps, few tokens)."""

import pytest
import yaml

from agent_core.models.base import Roles
from agent_core.diagnostics import diagnose
from agent_core.episode import run_episode
from agent_core.scaffold import Scaffold
from agent_core.trace import read_trace
from environments import make_env


@pytest.mark.slow
def test_real_crafter_steps_with_local_smollm2(tmp_path, local_model):
    scaffold_dir = Scaffold.builtin("crafter").write_copy(tmp_path / "scaffold")
    cfg = yaml.safe_load((scaffold_dir / "scaffold.yaml").read_text())
    cfg["model"]["max_tokens"] = 16  # a few tokens per call keeps this test short on a CPU
    (scaffold_dir / "scaffold.yaml").write_text(yaml.safe_dump(cfg))
    env = make_env("crafter", max_steps=50)
    summary = run_episode(env, Scaffold(scaffold_dir), Roles(memory=local_model), seed=3, max_steps=2,
                          out_dir=tmp_path / "ep")
    trace = read_trace(summary.trace_path)
    assert trace.complete and len(trace.steps) == 2
    for step in trace.steps:
        assert step.action in env.actions or step.action is None  # a real model may name a bad action
        assert all(c.model == local_model.model_id and c.completion_tokens >= 1 for c in step.calls)
        assert "You face" in step.observation  # Crafter's text observation reached the model
    assert sum(c.prompt_tokens for s in trace.steps for c in s.calls) > 500
    diagnose(trace)  # real, messy output still yields diagnostics
