"""The training loop end to end: scripted agent and scripted meta-LLM, real LoRA training
on the local model, two-role specialist evaluation, gate."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agent_core.meta import MetaLLMConfig
from agent_core.models.config import ModelConfig, RoutineScript
from agent_core.registry import load_registry
from agent_core.trace import read_trace
from agent_core.training.program import LoraSettings, rule_based_program
from flows.training_loop import TrainingLoopParams, training_loop

AGENT = ModelConfig(backend="scripted", script=RoutineScript(
    log="<|SEARCH|>hall<|END|><|UPSERT|>map.md|hall|exits north<|END|><|DONE|>",
    plan="<|READ|>map.md<|END|><|DONE|>"))
SMALL_LORA = LoraSettings(rank=4, alpha=8, target_modules=["q_proj", "v_proj"], learning_rate=1e-3, epochs=1,
                          batch_size=4, max_seq_len=256, max_steps=2, schedule="constant")


def program_json() -> str:
    program = rule_based_program({"memory_calls": {"log": 1, "plan": 1}, "games": {}})
    return program.model_copy(update={"lora": SMALL_LORA}).model_dump_json()


def params(ws: Path, **kw) -> TrainingLoopParams:
    base = dict(game="tiny", pool_seeds=[10, 11], eval_seeds=[0, 1], max_steps=4, models=AGENT,
                meta=MetaLLMConfig(backend="scripted", replies=[program_json()]), trials=1,
                concurrency=2, workspace=str(ws))
    return TrainingLoopParams(**{**base, **kw})


@pytest.mark.slow
def test_training_loop_trains_evaluates_and_gates(tmp_path, local_model, server_url):
    ws = tmp_path / "ws"
    result = training_loop(params(ws))
    [trial] = result["trials"]
    adapter = Path(trial["adapter"])
    assert {"adapter_config.json", "adapter_model.safetensors", "loss_curve.json"} <= {p.name for p in adapter.iterdir()}
    assert trial["examples"] > 0 and len(trial["loss_curve"]) == 2
    # the specialist played the memory role, the base model the action role, in one conversation
    spec_traces = [read_trace(t) for t in ws.glob("episodes/tiny/*/trace.jsonl")
                   if adapter.name in read_trace(t).header.memory_model]
    assert len(spec_traces) == 2
    roles = {(c.role, c.model) for t in spec_traces for s in t.steps for c in s.calls}
    assert {r for r, _ in roles} == {"memory", "action"} and len({m for _, m in roles}) == 2
    assert trial["verdict"]["promote"] is False  # a scripted agent cannot improve: no promotion
    assert set(trial["comparison"]) >= {"progression", "write_search_ratio", "growth_chars_per_step"}
    assert load_registry(ws).adapters == {}
    assert Path(result["report"]).read_text().count("| write_search_ratio |") == 1

    # the trained adapter serves by model name through `automem serve` (vLLM's surface)
    from agent_core.models.openai_client import OpenAIChatModel, list_models, load_lora_adapter, unload_lora_adapter
    from agent_core.records import Message, SamplingParams

    load_lora_adapter(server_url, adapter.name, adapter)
    try:
        assert adapter.name in list_models(server_url)
        reply = OpenAIChatModel(server_url, adapter.name, max_retries=0).complete(
            [Message(role="user", content="LOG routine")], SamplingParams(max_tokens=4))
        assert reply.model == adapter.name or reply.completion_tokens > 0
    finally:
        unload_lora_adapter(server_url, adapter.name)

    stamp = (adapter / "train_result.json").stat().st_mtime_ns
    again = training_loop(params(ws))  # unchanged program and data: not retrained
    assert again["trials"][0]["adapter"] == trial["adapter"]
    assert (adapter / "train_result.json").stat().st_mtime_ns == stamp


def test_unusable_programs_train_nothing(tmp_path):
    ws = tmp_path / "ws"
    replies = ["not json", program_json().replace('"rank":4', '"rank":0')]
    result = training_loop(params(ws, meta=MetaLLMConfig(backend="scripted", replies=replies), trials=2))
    errors = [t["error"] for t in result["trials"]]
    assert "program rejected" in errors[0] and "rank" in errors[1]
    assert not (ws / "adapters").exists() and result["promoted"] is None


def test_pool_and_eval_seeds_must_be_disjoint(tmp_path):
    with pytest.raises(ValidationError, match="disjoint"):
        params(tmp_path, pool_seeds=[0, 5])
