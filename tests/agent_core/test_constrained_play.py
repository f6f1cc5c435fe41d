"""The real SmolLM2 plays Crafter under the reply grammars: in-process, and through the
openai client against `automem serve` (vLLM's `structured_outputs` field)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent_core.models.base import Roles
from agent_core.commands import parse_reply
from agent_core.episode import run_episode
from agent_core.grammar import Grammar, act_grammar
from agent_core.models.base import ModelError
from agent_core.records import Message, SamplingParams
from agent_core.scaffold import Scaffold
from agent_core.trace import Trace, read_trace
from environments import make_env

pytestmark = pytest.mark.slow


def _play(roles: Roles, out: Path, steps: int) -> Trace:
    env = make_env("crafter", max_steps=steps)
    try:
        summary = run_episode(env, Scaffold.builtin("crafter"), roles, seed=1, max_steps=steps, out_dir=out)
    finally:
        env.close()
    return read_trace(summary.trace_path)


def _check_replies_follow_their_grammars(trace: Trace) -> None:
    grammars: dict[str, str] = {}
    for step in trace.steps:
        grammars.update(step.grammars)
        for call in step.calls:
            assert call.grammar in grammars
            assert call.finish_reason == "stop", call.reply
            assert Grammar(grammars[call.grammar]).matches(call.reply), call.reply
            assert not parse_reply(call.reply).errors


def test_ten_crafter_steps_on_the_local_model_play_valid_actions_and_write_memory(
        local_model: Any, tmp_path: Path) -> None:
    trace = _play(Roles(memory=local_model, constrain=True), tmp_path / "ep", steps=10)
    assert len(trace.steps) == 10 and trace.summary is not None
    assert trace.summary.default_actions == 0
    assert all(s.action_source == "model" and s.action is not None for s in trace.steps)
    _check_replies_follow_their_grammars(trace)
    writes = [op for s in trace.steps for op in s.memory_ops if op.ok and op.delta_chars != 0]
    assert writes, "no successful memory write"
    assert trace.summary.memory_chars > 0


def test_grammar_is_enforced_and_jump_forward_saves_forward_passes(local_model: Any) -> None:
    env = make_env("crafter")
    grammar = act_grammar(env.actions)
    chat = [Message(role="user", content="Say hello.")]  # a prompt that asks for no action at all
    params = SamplingParams(max_tokens=32, temperature=0.0)
    results = {}
    try:
        for jump in (False, True):
            local_model.jump_forward = jump
            local_model.clear_prefix_cache()
            results[jump] = local_model.generate(chat, params, constraint=grammar)
    finally:
        local_model.jump_forward = True
    for r in results.values():
        assert r.finish_reason == "stop" and grammar.matches(r.completion.text), r.completion.text
    assert results[True].forward_passes < results[False].forward_passes
    free = local_model.generate(chat, params)
    assert not grammar.matches(free.completion.text)  # the constraint is what made it valid


def test_openai_client_against_automem_serve_with_structured_outputs(
        local_model: Any, server_url: str, tmp_path: Path) -> None:
    from agent_core.models import OpenAIChatModel
    from agent_core.models.config import ModelConfig

    models = ModelConfig(backend="openai", base_url=server_url, model=local_model.model_id)
    trace = _play(models.build(), tmp_path / "ep", steps=3)
    assert trace.header.memory_model.endswith("@grammar")
    assert trace.summary is not None and trace.summary.default_actions == 0
    _check_replies_follow_their_grammars(trace)

    client = OpenAIChatModel(server_url, local_model.model_id, timeout_s=60, max_retries=0)
    chat = [Message(role="user", content="Pick a colour.")]
    choice = Grammar.from_request({"choice": ["red", "green"]})
    assert client.complete(chat, SamplingParams(max_tokens=8), choice).text in ("red", "green")
    with pytest.raises(ModelError, match="answered 400.*grammar does not compile"):
        client.complete(chat, SamplingParams(max_tokens=8), Grammar("start: (", "lark"))
    import httpx2

    unsupported = httpx2.post(server_url + "/v1/chat/completions", timeout=30, json={
        "model": local_model.model_id, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4,
        "structured_outputs": {"json": {"type": "object"}}})
    assert unsupported.status_code == 400 and "structured_outputs.json" in unsupported.text
