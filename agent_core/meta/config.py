"""The meta-LLM's configuration: its endpoint, its mode (one call, or an agent over the trace
store) and that agent's budget, and the model it resolves to. Without an endpoint, each
loop falls back to its rule-based counterpart."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent_core.models.base import ChatModel
from agent_core.records import SamplingParams
from agent_core.meta.loop import AgentBudget


class MetaLLMConfig(BaseModel):
    """The meta-LLM endpoint comes from the environment unless given: AUTOMEM_META_BASE_URL,
    AUTOMEM_META_MODEL, the key in AUTOMEM_META_API_KEY, and AUTOMEM_META_MODE (`mode`).
    Without an endpoint the rule-based reviewer / curator is used."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["auto", "openai", "rules", "scripted"] = Field(
        "auto", description="auto: openai when an endpoint is configured, else rules; scripted: "
        "replay `replies` (tests and dry runs).")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint of the meta-LLM.")
    model: str | None = Field(None, description="Meta-LLM model name.")
    api_key_env: str = Field("AUTOMEM_META_API_KEY", description="Environment variable holding the key.")
    max_tokens: int = Field(8192, ge=256, le=200_000, description="Reply budget (a whole scaffold).")
    temperature: float = Field(0.2, ge=0.0, le=2.0)
    replies: list[str] = Field(default_factory=list, description="Scripted backend: replies in order "
                               "(agentic mode: each a JSON tool call {\"name\": ..., \"arguments\": {...}}).")
    mode: Literal["single-call", "agentic"] = Field(
        "single-call", description="single-call: one prompt holding the review bundle (reviewer) or the pool "
        "digest (curator); agentic: the meta-LLM reads the trace store through tools under `agent`'s budget "
        "(needs an endpoint with tool calls).")
    agent: AgentBudget = Field(default_factory=AgentBudget, description="Budget of the agentic reviewer or curator.")

    def resolved(self) -> "MetaLLMConfig":
        base_url = self.base_url or os.environ.get("AUTOMEM_META_BASE_URL")
        model = self.model or os.environ.get("AUTOMEM_META_MODEL")
        backend = self.backend
        if backend == "auto":
            backend = "openai" if base_url else "rules"
        if backend == "openai" and not (base_url and model):
            raise ValueError("the meta-LLM reviewer needs base_url and model (or AUTOMEM_META_BASE_URL "
                             "and AUTOMEM_META_MODEL)")
        mode = self.mode if "mode" in self.model_fields_set else os.environ.get("AUTOMEM_META_MODE", self.mode)
        if mode not in ("single-call", "agentic"):
            raise ValueError(f"AUTOMEM_META_MODE must be single-call or agentic, not {mode!r}")
        return self.model_copy(update=dict(backend=backend, base_url=base_url, model=model, mode=mode))

    def check(self) -> None:
        cfg = self.resolved()
        if cfg.backend == "openai":
            from agent_core.models.openai_client import check_reachable

            check_reachable(cfg.base_url)

    def params(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature)

    def chat_model(self) -> ChatModel | None:
        """The meta-LLM, or None when the rule-based fallback is configured."""
        cfg = self.resolved()
        if cfg.backend == "rules":
            return None
        if cfg.backend == "scripted":
            return _scripted(tuple(cfg.replies))
        from agent_core.models.openai_client import OpenAIChatModel

        return OpenAIChatModel(base_url=cfg.base_url, model=cfg.model,
                               api_key=os.environ.get(cfg.api_key_env), timeout_s=600.0)

    def tool_model(self, model: ChatModel) -> ChatModel:
        """The model the agentic reviewer or curator calls: `model` (the endpoint's, with tool
        calls), or with the scripted backend `replies` as JSON tool calls replayed in order
        (the last repeats)."""
        return _scripted_tools(tuple(self.replies)) if self.resolved().backend == "scripted" else model

    def identity(self) -> str:
        """What distinguishes this meta-LLM's output (part of review and curation cache keys)."""
        cfg = self.resolved()
        # the single-call meta-LLM's identity is what it was before the agentic option existed
        plain = {"mode", "agent"} if cfg.mode == "single-call" else set()
        return cfg.model_dump_json(exclude={"api_key_env"} | plain)


@lru_cache(maxsize=None)
def _scripted(replies: tuple[str, ...]) -> ChatModel:
    """One scripted meta-LLM per script and process: its replies go on in order across the
    calls of a run (review attempts, training trials), as a real conversation partner's would."""
    from agent_core.models.scripted import ScriptedModel

    return ScriptedModel(list(replies), model_id="scripted-meta", when_exhausted="repeat_last")


@lru_cache(maxsize=None)
def _scripted_tools(replies: tuple[str, ...]) -> ChatModel:
    """One scripted tool model per script and process (its replies go on across reviews)."""
    from agent_core.models.tool_calls import ScriptedToolModel

    calls = []
    for r in replies:
        try:
            data = json.loads(r)
            calls.append((data["name"], data.get("arguments", {})))
        except (json.JSONDecodeError, KeyError, TypeError):
            calls.append(r)  # plain text: the loop reminds the model to call a tool
    return ScriptedToolModel(calls, model_id="scripted-meta", when_exhausted="repeat_last")
