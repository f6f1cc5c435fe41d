"""Serving: in-place adapter reloads that never lose the name, finish reasons as the server
gave them, and the served base identified by its configuration."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent_core.grammar import act_grammar
from fake_openai import JSONHandler, chat_completion
from agent_core.models.base import ModelError
from agent_core.records import Message, SamplingParams

CHAT = [Message(role="system", content="You play a game."), Message(role="user", content="Where now?")]
GREEDY = SamplingParams(max_tokens=8, temperature=0.0)


class FakeServer:
    """An OpenAI-compatible stand-in: `/v1/models` answers `cards`, chat answers `reply` with
    `finish` as its finish_reason (None is sent as JSON null)."""

    def __init__(self) -> None:
        self.cards: list[dict[str, Any]] = []
        self.reply, self.finish = "move north", "stop"
        self.extra: dict[str, Any] = {}  # more fields of the choice (`automem serve`'s own)
        owner = self

        class Handler(JSONHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_json({"object": "list", "data": owner.cards})

            def do_POST(self) -> None:  # noqa: N802
                self.send_json(chat_completion(self.read_json()["model"], owner.reply, owner.finish, 3, 2,
                                               **owner.extra))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)


@pytest.fixture()
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


# -- finish reasons ---------------------------------------------------------------------------


@pytest.mark.parametrize("sent, recorded", [
    ("stop", "stop"), ("length", "length"), ("abort", "abort"), ("content_filter", "content_filter"),
    ("tool_calls", "tool_calls"), (None, "unknown"), ("something_new", "unknown"),
])
def test_finish_reasons_are_passed_through_as_the_server_gave_them(fake, sent, recorded):
    from agent_core.models.openai_client import OpenAIChatModel

    fake.finish = sent
    got = OpenAIChatModel(fake.url, "m", timeout_s=5, max_retries=0).complete(CHAT, GREEDY)
    assert got.finish_reason == recorded


@pytest.mark.parametrize("finish", ["length", "abort", "content_filter", None])
def test_only_a_reply_that_stopped_by_itself_is_held_to_the_grammar(fake, finish):
    from agent_core.models.openai_client import OpenAIChatModel

    grammar = act_grammar(["move north", "wait"])
    model = OpenAIChatModel(fake.url, "m", timeout_s=5, max_retries=0)
    fake.reply, fake.finish = "<|ACTION|>move no", finish  # a reply that ended early: not proof of anything
    got = model.complete(CHAT, GREEDY, grammar)
    assert got.finish_reason == (finish or "unknown") and got.text == "<|ACTION|>move no"
    fake.finish = "stop"  # the same text claimed complete: the server ignored the grammar
    with pytest.raises(ModelError, match="ignored the structured_outputs constraint"):
        model.complete(CHAT, GREEDY, grammar)


def test_a_reply_the_server_closed_at_its_budget_is_recorded_so(fake):
    from agent_core.models.openai_client import OpenAIChatModel

    model = OpenAIChatModel(fake.url, "m", timeout_s=5, max_retries=0)
    assert not model.complete(CHAT, GREEDY).closed_at_budget  # vLLM and others never say it
    fake.reply, fake.extra = "<|ACTION|>wait<|END|>", {"closed_at_budget": True, "written": "<|ACTION|>wai"}
    got = model.complete(CHAT, GREEDY)
    assert got.closed_at_budget and got.written == "<|ACTION|>wai" and got.finish_reason == "stop"


def test_a_declared_batch_invariance_must_match_what_automem_serve_says(fake):
    from agent_core.models.config import ModelConfig

    fake.cards = [{"id": "m", "root": "/m", "batch_invariant": True}]
    config = ModelConfig(backend="openai", base_url=fake.url, model="m")
    with pytest.raises(ValueError, match="batch_invariant is False in the model config, but the server"):
        config.check()
    config.model_copy(update={"batch_invariant": True}).check()
    fake.cards = [{"id": "m", "root": "/m"}]  # vLLM's card does not say: the config is taken as it is
    config.check()


# -- the served base -----------------------------------------------------------------------


def model_folder(path: Path, **config: Any) -> Path:
    path.mkdir(parents=True)
    base = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "intermediate_size": 1536, "vocab_size": 49152, "max_position_embeddings": 8192}
    (path / "config.json").write_text(json.dumps({**base, **config}))
    return path


def test_the_served_base_is_identified_by_its_configuration_not_its_folder_name(fake, tmp_path):
    from agent_core.models.weights import base_signature
    from flows.training_loop import check_served_base

    served = model_folder(tmp_path / "server" / "smollm2")
    fake.cards = [{"id": "base", "root": "/elsewhere/smollm2", "config": base_signature(served)}]
    check_served_base(fake.url, "base", str(model_folder(tmp_path / "a-copy-named-otherwise")))
    with pytest.raises(ValueError, match=r"not the base the server serves.*hidden_size: served 576, train_base 640"):
        check_served_base(fake.url, "base", str(model_folder(tmp_path / "smollm2", hidden_size=640)))
    with pytest.raises(ValueError, match="not a model folder"):
        check_served_base(fake.url, "base", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="'nope' is not served"):
        check_served_base(fake.url, "nope", str(served))


def test_a_server_without_a_configuration_is_checked_through_a_readable_root(fake, tmp_path):
    from flows.training_loop import check_served_base

    root = model_folder(tmp_path / "served")
    fake.cards = [{"id": "base", "root": str(root)}]  # vLLM's card: no config, the folder it loaded
    check_served_base(fake.url, "base", str(model_folder(tmp_path / "train")))
    with pytest.raises(ValueError, match="num_hidden_layers: served 30, train_base 24"):
        check_served_base(fake.url, "base", str(model_folder(tmp_path / "other", num_hidden_layers=24)))
    fake.cards = [{"id": "base", "root": "HuggingFaceTB/SmolLM2-135M-Instruct"}]  # a hub name: unknowable here
    with pytest.raises(ValueError, match="cannot tell which base 'base'.*serves"):
        check_served_base(fake.url, "base", str(root))


# -- in-place reloads on the real model ------------------------------------------------------


@pytest.fixture(scope="module")
def second_lora(local_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another LoRA adapter (other random weights) for reloading in place."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(local_model.path, local_files_only=True)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, lora_alpha=64)
    out = tmp_path_factory.mktemp("lora2") / "mem2"
    get_peft_model(base, config).save_pretrained(out)
    return out


def _chat(url: str, model: str) -> tuple[int, str]:
    import httpx2

    r = httpx2.post(url + "/v1/chat/completions", timeout=120, json={
        "model": model, "max_tokens": 6, "temperature": 0.0, "messages": [m.model_dump() for m in CHAT]})
    return r.status_code, (r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.text)


def _load(url: str, name: str, path: Path | str) -> Any:
    import httpx2

    return httpx2.post(url + "/v1/load_lora_adapter", timeout=120,
                       json={"lora_name": name, "lora_path": str(path), "load_inplace": True})


@pytest.mark.slow
def test_a_failed_reload_keeps_the_old_adapter_and_a_good_one_swaps_it(
        local_model: Any, lora_dir: Path, second_lora: Path, server_url: str, tmp_path: Path) -> None:
    from agent_core.models import list_models, unload_lora_adapter

    assert _load(server_url, "mem", lora_dir).status_code == 200  # load_inplace on a new name: loaded
    try:
        status, before = _chat(server_url, "mem")
        assert status == 200
        broken = tmp_path / "broken"
        shutil.copytree(lora_dir, broken)
        (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
        for bad in (broken, tmp_path / "missing"):
            r = _load(server_url, "mem", bad)
            assert r.status_code == 400 and "cannot load adapter" in r.text or "no peft adapter" in r.text
            assert list_models(server_url) == [local_model.model_id, "mem"]  # no half-made adapter
            assert _chat(server_url, "mem") == (200, before)  # the old weights still serve
        assert _load(server_url, "mem", second_lora).status_code == 200
        status, after = _chat(server_url, "mem")
        local_model.load_adapter("fresh-mem2", second_lora)  # the same weights loaded the plain way
        try:
            expected = local_model.handle("fresh-mem2").complete(CHAT, SamplingParams(max_tokens=6)).text
        finally:
            local_model.unload_adapter("fresh-mem2")
        assert (status, after) == (200, expected) and after != before
        assert list_models(server_url) == [local_model.model_id, "mem"]
    finally:
        unload_lora_adapter(server_url, "mem")


@pytest.mark.slow
def test_requests_during_reloads_never_get_404_and_each_reply_has_one_set_of_weights(
        local_model: Any, lora_dir: Path, second_lora: Path, server_url: str) -> None:
    from agent_core.models import unload_lora_adapter

    replies = {}
    for path in (second_lora, lora_dir):  # what each adapter answers (greedy)
        assert _load(server_url, "mem", path).status_code == 200
        replies[path] = _chat(server_url, "mem")
    assert replies[lora_dir] != replies[second_lora]
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            answers.append(_chat(server_url, "mem"))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        for path in (second_lora, lora_dir, second_lora, lora_dir):
            assert _load(server_url, "mem", path).status_code == 200
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
        unload_lora_adapter(server_url, "mem")
    assert answers and all(status != 404 for status, _ in answers)
    # replies running at a swap finish with the weights they started with: none is cut or mixed
    assert set(answers) <= set(replies.values()), set(answers) - set(replies.values())
