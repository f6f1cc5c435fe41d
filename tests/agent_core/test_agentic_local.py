"""Tool calls on the real local model through `automem serve`: arguments valid by
construction (llguidance JSON schema), and the reviewer agent running end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent_core.models.base import Roles
from agent_core.archive import archive_trace
from agent_core.episode import run_episode
from agent_core.models.config import RoutineScript
from agent_core.models.openai_client import OpenAIChatModel
from agent_core.models.scripted import ScriptedModel
from agent_core.models.tool_calls import ChatTurn
from agent_core.records import SamplingParams
from agent_core.trace import read_jsonl
from agent_core.meta.loop import AgentBudget
from agent_core.review.agentic import AgenticReviewer
from agent_core.review.bundle import build_bundle
from agent_core.meta.tool_specs import ToolCaps
from agent_core.review.agentic import ReviewerToolbox
from agent_core.scaffold import Scaffold
from environments import make_env

pytestmark = pytest.mark.slow
TINY = Scaffold.builtin("tiny")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("local-agent")
    s = run_episode(make_env("tiny"), TINY, Roles(memory=ScriptedModel(RoutineScript().reply)), 0, 3, root / "ep")
    archive_trace(s.trace_path, root / "archive")
    return root, s.trace_path


def test_serve_returns_a_schema_valid_tool_call(local_model: Any, server_url: str, store) -> None:
    root, _ = store
    box = ReviewerToolbox(root / "archive", TINY, root / "scaffolds")
    client = OpenAIChatModel(server_url, local_model.model_id, timeout_s=120, max_retries=0)
    specs = box.specs(["trace", "memory_at"])
    out = client.complete_tools([ChatTurn(role="system", content="You review an agent's episodes."),
                                 ChatTurn(role="user", content="Show me the memory after step 1.")],
                                SamplingParams(max_tokens=64, temperature=0.0, seed=0), specs, "required")
    assert out.finish_reason in ("stop", "tool_calls") and len(out.tool_calls) == 1, out
    call = out.tool_calls[0]
    assert call.name in ("trace", "memory_at")
    box.tools[call.name].args.model_validate(json.loads(call.arguments))  # valid by construction
    with pytest.raises(ValidationError):  # (the check can fail)
        box.tools[call.name].args.model_validate({"unexpected": 1})
    box.close()


def test_reviewer_agent_on_the_local_model_calls_tools_and_ends_in_budget(local_model: Any, server_url: str,
                                                                         store, tmp_path: Path) -> None:
    root, trace = store
    client = OpenAIChatModel(server_url, local_model.model_id, timeout_s=120, max_retries=0)
    budget = AgentBudget(max_steps=5, reply_max_tokens=160, temperature=0.0, context_cap_tokens=3_000, keep_recent=1)
    reviewer = AgenticReviewer(client, root / "archive", root / "scaffolds", tmp_path, budget,
                               ToolCaps(max_chars=1_000))
    try:
        reviewer.review(build_bundle(TINY, [trace]), TINY, [])
    except Exception as exc:  # NoRevision: the small model rarely writes a valid scaffold
        assert type(exc).__name__ == "NoRevision" and "no revision" in str(exc)
    run = reviewer.runs[0]
    assert run.replies <= 5 and run.tool_calls >= 3, run.summary()
    records = read_jsonl(run.trace_path)
    tools = [r for r in records if r["kind"] == "tool"]
    assert not [t for t in tools if "bad arguments" in t["content"] or "not valid JSON" in t["content"]]
    assert run.ledger.tokens == sum(r["prompt_tokens"] + r["completion_tokens"] for r in records if r["kind"] == "call")
