"""A `ChatModel` for any OpenAI-compatible server (vLLM, `automem serve`, OpenAI itself).

With vLLM's multi-LoRA serving, an adapter is just another model name: `model="memory-lora"`
talks to the adapter, `model=<base>` to the base weights. Retries (connection errors,
timeouts, 408/409/429/5xx, exponential backoff from 0.5 s to 8 s with jitter, honouring
`Retry-After`) are the openai client's own; a failure after them becomes
`TransientModelError` (the episode task may try again later), any other failure (400, 404,
a context overflow) `ModelError` at once, with the server's message.

The adapter-management helpers use vLLM's runtime LoRA endpoints (vLLM needs
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` for them).
"""

from __future__ import annotations

import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, get_args

# openai's own HTTP library (a fork of httpx): always installed along with openai
import httpx2
import openai

from agent_core.grammar import Grammar
from agent_core.models.base import ModelError, TransientModelError
from agent_core.models.tool_calls import ChatTurn, ToolCall, ToolChoice, ToolCompletion
from agent_core.records import Completion, FinishReason, Message, SamplingParams


def server_root(base_url: str) -> str:
    """`http://host:port` from either `http://host:port` or `http://host:port/v1`."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def api_url(base_url: str) -> str:
    """The OpenAI API base (`.../v1`) from either form of the server address."""
    return server_root(base_url) + "/v1"


def _transient(status: int) -> bool:
    """Statuses a later attempt may not meet (the openai client retries these too)."""
    return status in (408, 409, 429) or status >= 500


def _api_key(api_key: str | None) -> str:
    # local servers ignore the key, but the client insists on one
    return api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"


def _error_text(response: httpx2.Response) -> str:
    """The server's error message (OpenAI/vLLM JSON shapes or plain text)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500]
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        if "message" in body:
            return str(body["message"])
    return str(body)[:500]


def _request(
    method: str, url: str, api_key: str | None, timeout_s: float, json: Any = None
) -> httpx2.Response:
    """One HTTP call with connection failures as `ModelError` naming the URL."""
    try:
        response = httpx2.request(
            method,
            url,
            json=json,
            headers={"Authorization": f"Bearer {_api_key(api_key)}"},
            timeout=timeout_s,
        )
    except httpx2.TimeoutException as exc:
        raise TransientModelError(f"model server at {url} did not answer within {timeout_s} s") from exc
    except httpx2.TransportError as exc:
        raise TransientModelError(f"model server at {url} is not reachable: {exc}") from exc
    if response.status_code >= 400:
        kind = TransientModelError if _transient(response.status_code) else ModelError
        raise kind(f"model server at {url} answered {response.status_code}: {_error_text(response)}")
    return response


def list_models(base_url: str, api_key: str | None = None, timeout_s: float = 10.0) -> list[str]:
    """Names the server serves (`GET /v1/models`): the base model and any loaded adapters."""
    response = _request("GET", api_url(base_url) + "/models", api_key, timeout_s)
    return [item["id"] for item in response.json().get("data", [])]


def served_card(base_url: str, model: str, api_key: str | None = None, timeout_s: float = 10.0) -> dict | None:
    """The card `GET /v1/models` gives for `model` (vLLM: `root`, the path or hub name the
    base was loaded from; `automem serve` also `config`, the base's architecture and sizes);
    None when the server does not serve `model`."""
    response = _request("GET", api_url(base_url) + "/models", api_key, timeout_s)
    for item in response.json().get("data", []):
        if item.get("id") == model:
            return item
    return None


_FINISH_REASONS = frozenset(get_args(FinishReason)) - {"unknown"}


def finish_reason(raw: str | None) -> FinishReason:
    """The server's finish reason as it gave it; "unknown" when it gave none (None) or one
    that `FinishReason` does not list (never mapped to "stop": a reply that did not end by
    itself must not pass for complete)."""
    return raw if raw in _FINISH_REASONS else "unknown"  # type: ignore[return-value]


def check_reachable(base_url: str, api_key: str | None = None, timeout_s: float = 3.0) -> list[str]:
    """Fail fast (before an episode starts) when the server is down; returns its model names."""
    try:
        return list_models(base_url, api_key=api_key, timeout_s=timeout_s)
    except ModelError as exc:
        raise ModelError(
            f"{exc}. Start it first (`automem serve` or a vLLM server) or fix the base URL."
        ) from exc


def load_lora_adapter(
    base_url: str, name: str, path: str | Path, api_key: str | None = None, timeout_s: float = 120.0,
    load_inplace: bool = False,
) -> None:
    """Load a LoRA adapter from `path` (a folder on the server's machine) under `name`;
    `load_inplace` replaces an adapter already loaded under that name (vLLM answers 400 to
    an existing name without it)."""
    body = {"lora_name": name, "lora_path": str(path)}
    if load_inplace:
        body["load_inplace"] = True
    _request("POST", api_url(base_url) + "/load_lora_adapter", api_key, timeout_s, json=body)


def ensure_adapter(base_url: str, adapter_dir: str | Path, server_dir: str | Path | None = None,
                   api_key: str | None = None) -> str:
    """Serve the adapter folder under its (content-addressed) folder name and return that
    name: loaded, or reloaded in place when the name is already served. `server_dir`: the
    folder as the server sees it. A refusal raises ModelError with the server's message."""
    name = Path(adapter_dir).name
    path = server_dir or adapter_dir
    load_lora_adapter(base_url, name, path, api_key, load_inplace=name in list_models(base_url, api_key))
    return name


def unload_lora_adapter(
    base_url: str, name: str, api_key: str | None = None, timeout_s: float = 30.0
) -> None:
    """Unload the LoRA adapter `name` from the server."""
    _request(
        "POST",
        api_url(base_url) + "/unload_lora_adapter",
        api_key,
        timeout_s,
        json={"lora_name": name},
    )


@lru_cache(maxsize=32)
def _shared_client(base_url: str, api_key: str, timeout_s: float, max_retries: int) -> openai.OpenAI:
    """One client, so one pool of kept-alive connections, per server and settings for the
    whole process: episodes build their models afresh, and a client per episode cost an SSL
    context (4% of the flow process's samples at 16 episodes in flight) and new connections
    each time. The client is thread-safe; its pool holds up to 1,000 connections."""
    return openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries)


class OpenAIChatModel:
    """`ChatModel` over the chat-completions endpoint of an OpenAI-compatible server.

    Args:
        base_url: server address, with or without the trailing `/v1`.
        model: the served name: base model or LoRA adapter.
        api_key: default `$OPENAI_API_KEY`, else "EMPTY" (local servers ignore it).
        timeout_s: per-attempt timeout.
        max_retries: retries after the first attempt (the openai client's backoff).
        model_id: the name recorded in traces; default `model`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        model_id: str | None = None,
    ) -> None:
        self.base_url = api_url(base_url)
        self.model = model
        self.model_id = model_id or model
        self.max_retries = max_retries
        self._client = _shared_client(self.base_url, _api_key(api_key), timeout_s, max_retries)

    def complete(self, messages: list[Message], params: SamplingParams,
                 constraint: Grammar | None = None) -> Completion:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            # vLLM and older servers know max_tokens; newer ones accept it too
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            kwargs["seed"] = params.seed
        if constraint is not None:
            # vLLM >= 0.10.2; the older guided_* fields are ignored by vLLM >= 0.12 without error
            kwargs["extra_body"] = {"structured_outputs": constraint.request_field()}
        attempts = f"{self.max_retries + 1} attempt(s)"
        started = time.perf_counter()
        try:
            response = self._client.chat.completions.create(**kwargs)
        except openai.APIConnectionError as exc:  # includes timeouts
            raise TransientModelError(
                f"model server at {self.base_url} failed after {attempts}: {exc.message}"
            ) from exc
        except openai.APIStatusError as exc:
            if constraint is not None and exc.status_code in (400, 422) and "structured_outputs" in _error_text(exc.response):
                raise ModelError(
                    f"model server at {self.base_url} rejected the structured_outputs field "
                    f"({_error_text(exc.response)}): it cannot enforce the reply grammar. Use a server "
                    "with structured outputs (vLLM >= 0.10.2, `automem serve`) or set the model "
                    "config's `constrain: off`") from exc
            retried = _transient(exc.status_code)
            raise (TransientModelError if retried else ModelError)(
                f"model server at {self.base_url} answered {exc.status_code} for model "
                f"{self.model!r}" + (f" after {attempts}" if retried else "") + ": "
                + _error_text(exc.response)
            ) from exc
        if not response.choices:
            raise ModelError(f"model server at {self.base_url} returned no choices")
        usage = response.usage
        choice = response.choices[0]
        text = choice.message.content or ""
        finish = finish_reason(choice.finish_reason)
        extra = choice.model_extra or {}
        # only a reply that ended by itself must match: "length", "abort", "content_filter",
        # "unknown" may stop mid-sentence under a grammar the server did enforce
        if constraint is not None and finish == "stop" and constraint.kind == "regex" \
                and not constraint.matches(text):
            raise ModelError(
                f"model server at {self.base_url} ignored the structured_outputs constraint "
                f"(reply {text[:80]!r} does not match the grammar {constraint.digest}): use a server "
                "with structured outputs (vLLM >= 0.10.2, `automem serve`) or set the model config's "
                "`constrain: off`")
        return Completion(
            text=text,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            latency_s=time.perf_counter() - started,
            model=self.model_id,
            finish_reason=finish,
            # `automem serve` says when it closed a reply at its budget (other servers do not)
            closed_at_budget=bool(extra.get("closed_at_budget")),
            written=extra.get("written") if extra.get("closed_at_budget") else None,
        )

    def complete_tools(self, turns: list[ChatTurn], params: SamplingParams, tools: list[dict[str, Any]],
                       tool_choice: ToolChoice = "auto") -> ToolCompletion:
        """A reply that may call `tools` (`tool_calls.ToolChatModel`). A server without tool
        calling (vLLM without `--enable-auto-tool-choice`, most plain servers) gives one
        `ModelError` that names the single-call reviewer, which needs no tools."""
        kwargs: dict[str, Any] = {
            "model": self.model, "messages": [t.openai() for t in turns], "max_tokens": params.max_tokens,
            "temperature": params.temperature, "top_p": params.top_p, "tools": tools, "tool_choice": tool_choice,
        }
        if params.seed is not None:
            kwargs["seed"] = params.seed
        started = time.perf_counter()
        try:
            response = self._client.chat.completions.create(**kwargs)
        except openai.APIConnectionError as exc:
            raise TransientModelError(f"model server at {self.base_url} failed after "
                                      f"{self.max_retries + 1} attempt(s): {exc.message}") from exc
        except openai.APIStatusError as exc:
            message = _error_text(exc.response)
            if exc.status_code in (400, 404, 422, 501) and "tool" in message.lower():
                raise ModelError(
                    f"model server at {self.base_url} does not serve tool calls ({message}): use the "
                    "single-call reviewer or curator (meta-LLM `mode: single-call`), or a server with tool calling "
                    "(`automem serve`, vLLM with --enable-auto-tool-choice --tool-call-parser)") from exc
            raise (TransientModelError if _transient(exc.status_code) else ModelError)(
                f"model server at {self.base_url} answered {exc.status_code} for model {self.model!r}: "
                f"{message}") from exc
        if not response.choices:
            raise ModelError(f"model server at {self.base_url} returned no choices")
        choice, usage = response.choices[0], response.usage
        calls = [ToolCall(id=c.id or ToolCall.model_fields["id"].default_factory(), name=c.function.name,
                          arguments=c.function.arguments or "{}")
                 for c in (choice.message.tool_calls or []) if getattr(c, "function", None)]
        return ToolCompletion(
            text=choice.message.content or "", tool_calls=calls,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            latency_s=time.perf_counter() - started, model=self.model_id,
            finish_reason=finish_reason(choice.finish_reason))
