"""An OpenAI-compatible server over a `LocalModel`: the part of vLLM's surface AutoMem uses.

Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/chat/completions` (the request's
`model` picks the base or a LoRA adapter; `structured_outputs` constrains the reply with the
same engine as `LocalModel`), `POST /v1/load_lora_adapter` and
`POST /v1/unload_lora_adapter` (vLLM's bodies and answers; `load_inplace` loads the new
weights under a temporary name while the old ones serve, then swaps them in once the replies
running on the old weights are done: no request gets 404 or a reply cut by the reload, and a
failed reload keeps the old adapter). Errors use vLLM's JSON shape
`{"error": {"message", "type", "param", "code"}}` so the openai client reports them well.
A CPU stand-in for vLLM on machines without a GPU; `automem serve` runs it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError

from agent_core.grammar import Grammar
from agent_core.models.base import ModelError
from agent_core.models.batching import DEFAULT_MAX_BATCH
from agent_core.models.devices import INFERENCE_DTYPE
from agent_core.models.weights import base_signature
from agent_core.records import Message, SamplingParams

if TYPE_CHECKING:
    from agent_core.models.local import LocalModel

_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}


def _error(code: int, message: str, param: str | None = None) -> JSONResponse:
    kind = _ERROR_TYPES.get(code, "Error")
    body = {"message": message, "type": kind, "param": param, "code": code}
    return JSONResponse({"error": body}, status_code=code)


class ChatMessageIn(BaseModel):
    role: str
    #: a string, or OpenAI content parts (only text parts are understood)
    content: str | list[dict[str, Any]] | None = None
    #: an assistant message's tool calls, a tool result's call id (`tool_calls.py`)
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class ChatRequest(BaseModel):
    model: str
    messages: list[ChatMessageIn]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    #: vLLM's structured outputs: one of regex, grammar (Lark), choice
    structured_outputs: dict[str, Any] | None = None
    #: OpenAI function tools; arguments constrained to each tool's schema (`tool_calls.py`)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


class LoadLoRARequest(BaseModel):
    lora_name: str
    lora_path: str
    #: vLLM: replace an adapter already loaded under this name
    load_inplace: bool = False


class UnloadLoRARequest(BaseModel):
    lora_name: str
    lora_int_id: int | None = None


def _to_message(m: ChatMessageIn) -> Message:
    role = "system" if m.role == "developer" else m.role
    if role not in ("system", "user", "assistant"):
        raise ValueError(f"unsupported message role {m.role!r}")
    if isinstance(m.content, list):
        content = "".join(p.get("text", "") for p in m.content if p.get("type") == "text")
    else:
        content = m.content or ""
    return Message(role=role, content=content)


def _tools_answer(model: LocalModel, req: ChatRequest) -> dict[str, Any] | JSONResponse:
    """A request with tools or tool messages (`tool_calls.serve_tools`)."""
    from agent_core.models.tool_calls import ToolRequestError, serve_tools

    if req.structured_outputs:
        return _error(400, "structured_outputs and tools cannot be combined", param="tools")
    params = SamplingParams(max_tokens=req.max_completion_tokens or req.max_tokens or 32768,
                            temperature=1.0 if req.temperature is None else req.temperature,
                            top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed)
    try:
        return serve_tools(model, req.model, [m.model_dump() for m in req.messages], req.tools,
                           req.tool_choice, params)
    except (ToolRequestError, ValueError, ModelError) as exc:
        return _error(400, str(exc), param="tools")


class _NameGate:
    """Per served name: replies share it, an in-place swap takes it alone. A swap waits for
    the replies already running on the old weights (they finish with them) and holds back
    new ones until the new weights are in (a short, in-memory step), so no reply is cut or
    mixed by a reload. Swaps go first (writer preference), so a busy name cannot starve one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running: Counter[str] = Counter()
        self._swaps: Counter[str] = Counter()  # waiting or running
        self._swapping: set[str] = set()

    @contextmanager
    def reply(self, name: str) -> Iterator[None]:
        with self._cond:
            while self._swaps[name]:
                self._cond.wait()
            self._running[name] += 1
        try:
            yield
        finally:
            with self._cond:
                self._running[name] -= 1
                self._cond.notify_all()

    @contextmanager
    def swap(self, name: str) -> Iterator[None]:
        with self._cond:
            self._swaps[name] += 1
            while self._running[name] or name in self._swapping:
                self._cond.wait()
            self._swapping.add(name)
        try:
            yield
        finally:
            with self._cond:
                self._swapping.discard(name)
                self._swaps[name] -= 1
                self._cond.notify_all()


def create_app(model: LocalModel) -> FastAPI:
    """The FastAPI app serving `model` and its adapters."""
    app = FastAPI(title="AutoMem model server")
    started = int(time.time())
    base_config = base_signature(model.path)
    gate = _NameGate()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # vLLM answers malformed requests with 400, not FastAPI's 422
        return _error(400, str(exc.errors())[:1000])

    @app.get("/health")
    def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        card = {"object": "model", "created": started, "owned_by": "automem"}
        # `config`: the base's architecture and sizes, so a client can tell which base this is
        # by its configuration, not its folder's name (`weights.base_signature`)
        # `batch_invariant`: a reply does not depend on its batch-mates or the prefix cache
        # (`ModelConfig.batch_invariant` is checked against it)
        data = [{"id": model.model_id, "root": str(model.path), "parent": None, "config": base_config,
                 "batch_invariant": model.batch_invariant, **card}]
        data += [
            {"id": name, "root": str(path), "parent": model.model_id, **card}
            for name, path in model.adapters.items()
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", response_model=None)
    def chat_completions(req: ChatRequest) -> dict[str, Any] | JSONResponse:
        # a plain `def`: FastAPI runs it in its thread pool; LocalModel batches concurrent calls
        if req.model not in model.names:
            return _error(404, f"The model `{req.model}` does not exist.", param="model")
        if req.stream:
            return _error(400, "streaming is not supported by this server", param="stream")
        if req.n != 1:
            return _error(400, "only n=1 is supported", param="n")
        if req.tools or any(m.role == "tool" or m.tool_calls for m in req.messages):
            with gate.reply(req.model):
                return _tools_answer(model, req)
        try:
            messages = [_to_message(m) for m in req.messages]
            params = SamplingParams(
                # omitted: up to the context window, as vLLM does (LocalModel clips it)
                max_tokens=req.max_completion_tokens or req.max_tokens or 32768,
                temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                seed=req.seed,
            )
            constraint = Grammar.from_request(req.structured_outputs) if req.structured_outputs else None
        except (ValueError, ValidationError) as exc:
            return _error(400, str(exc))
        try:
            with gate.reply(req.model):
                result = model.generate(messages, params, model=req.model, constraint=constraint)
        except ModelError as exc:
            return _error(400, str(exc))
        c = result.completion
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": None,
                    "finish_reason": result.finish_reason,
                    # beyond OpenAI's fields: the reply was closed at its budget, and what the model wrote
                    "closed_at_budget": c.closed_at_budget,
                    "written": c.written,
                }
            ],
            "usage": {
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "total_tokens": c.prompt_tokens + c.completion_tokens,
            },
        }

    @app.post("/v1/load_lora_adapter", response_model=None)
    def load_lora_adapter(req: LoadLoRARequest) -> PlainTextResponse | JSONResponse:
        name = req.lora_name
        if name in model.names and not (req.load_inplace and name in model.adapters):
            return _error(400, f"The lora adapter '{name}' has already been loaded.")
        try:
            if req.load_inplace:  # the old adapter serves until the new one is in; a failed load keeps it
                staged = model.stage_adapter(Path(req.lora_path))
                with gate.swap(name):
                    model.swap_adapter(name, staged)
            else:
                model.load_adapter(name, Path(req.lora_path))
        except ModelError as exc:
            return _error(400, str(exc), param="lora_path")
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter", response_model=None)
    def unload_lora_adapter(req: UnloadLoRARequest) -> PlainTextResponse | JSONResponse:
        if req.lora_name not in model.adapters:
            return _error(404, f"The lora adapter '{req.lora_name}' cannot be found.")
        model.unload_adapter(req.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")

    return app


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    model_path: str | Path | None = None,
    adapters: dict[str, Path] | None = None,
    dtype: str = INFERENCE_DTYPE,
    device: str = "auto",
    log_level: str = "info",
    max_batch: int = DEFAULT_MAX_BATCH,
) -> None:
    """Load the local model (default: the prepared SmolLM2) on `device` and serve it until
    interrupted. Concurrent requests (FastAPI runs each in its thread pool) are decoded
    together, up to `max_batch` at once (1: one at a time)."""
    import uvicorn

    from agent_core.models.local import LocalModel

    model = LocalModel(path=model_path, adapters=adapters, dtype=dtype, device=device, max_batch=max_batch)
    uvicorn.run(create_app(model), host=host, port=port, log_level=log_level)
