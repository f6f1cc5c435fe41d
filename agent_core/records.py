"""Typed data, defined once: chat messages, completions, model calls, memory operations,
step records and episode summaries. The JSONL traces and the Parquet archive derive from
these models."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

Role = Literal["system", "user", "assistant"]
Routine = Literal["log", "plan"]
#: who produced a reply: the memory role (LOG + PLAN consultation) or the action role
AgentRole = Literal["memory", "action"]
#: why a reply ended, as the server said: "stop" (by itself), "length" (max_tokens or the
#: context), "tool_calls"/"function_call" (a tool call), "content_filter" (the server's
#: filter cut it), "abort" (vLLM: the request was aborted); "unknown" when the server gave
#: none or a value not listed here. Only "stop" is a reply known to be complete.
FinishReason = Literal["stop", "length", "tool_calls", "function_call", "content_filter", "abort", "unknown"]


class Message(BaseModel):
    role: Role
    content: str


class SamplingParams(BaseModel):
    """Model parameters from the scaffold (a deployment may override temperature and top_p);
    part of every episode's cache key. Each call is sent with its own seed, derived from the
    episode's seed, step and call (`conversation.call_seed`)."""

    max_tokens: int = Field(256, ge=1, le=32768, description="Maximum tokens per reply.")
    temperature: float = Field(0.0, description="0 means greedy decoding; at most 2.")
    top_p: float = Field(1.0, description="Nucleus sampling mass, in (0, 1].")
    seed: int | None = Field(None, description="Mixed into every call's seed (None: the episode's "
                             "seed, step and call alone decide it).")

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float) -> float:
        return check_temperature(v)

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, v: float) -> float:
        return check_top_p(v)


def override_sampling(params: SamplingParams, overrides: dict) -> SamplingParams:
    """`params` with a deployment's overrides (temperature, top_p) applied."""
    return SamplingParams.model_validate({**params.model_dump(), **overrides})


def check_temperature(v: float) -> float:
    """A sampling temperature, or ValueError naming the valid range."""
    if not 0.0 <= v <= 2.0:
        raise ValueError(f"temperature must be between 0 and 2 (0: greedy decoding), got {v}")
    return v


def check_top_p(v: float) -> float:
    """A nucleus-sampling mass, or ValueError naming the valid range."""
    if not 0.0 < v <= 1.0:
        raise ValueError(f"top_p must be greater than 0 and at most 1, got {v}")
    return v


class Completion(BaseModel):
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    model: str = ""
    #: "stop": the reply ended by itself; "length": cut off by max_tokens or the context;
    #: the others as the server gave them (`FinishReason`)
    finish_reason: FinishReason = "stop"
    #: the backend ended the reply at its token budget, not the model: tokens taken back, an
    #: argument completed, `<|END|>` added (finish reason "stop", but not the model's ending)
    closed_at_budget: bool = False
    #: with `closed_at_budget`: the text the model itself wrote before the backend closed it
    written: str | None = None


class ModelCall(BaseModel):
    """One call to a model inside a routine, with the verbatim reply."""

    call_id: str
    routine: Routine
    role: AgentRole
    model: str
    #: digest of the exact message list sent (see `messages_digest`)
    messages_digest: str
    #: the context sent was `log[:fixed_prefix] + log[window_start:context_end]`, where `log`
    #: is the episode's message log: every call's `new_messages` then its `reply` (as an
    #: assistant message), in order (`conversation.rebuild_contexts`); the fixed prefix is the
    #: system prompt and the scaffold's demonstrations
    fixed_prefix: int = 1
    window_start: int
    context_end: int
    #: messages appended to the episode's log since the previous call's reply
    new_messages: list[Message]
    reply: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    #: "length": cut off by the token limit (an invalid reply, never a training target)
    finish_reason: FinishReason = "stop"
    #: the backend closed the reply at its token budget (`Completion.closed_at_budget`): the
    #: agent runs it, but it is a training target only where a curation program asks for such
    #: replies (`Composition.closed_replies`)
    closed_at_budget: bool = False
    #: with `closed_at_budget`: the text the model itself wrote (the reply's end is not its own)
    written: str | None = None
    #: digest of the grammar the reply was decoded under (None: unconstrained); its text is
    #: in the `grammars` of the first step that used it
    grammar: str | None = None


class MemoryOp(BaseModel):
    """One memory operation parsed from a reply, and what the model saw back."""

    call_id: str
    routine: Routine
    op: str
    args: dict[str, str] = Field(default_factory=dict)
    ok: bool
    result: str
    #: characters added to memory by this operation (negative when it shrank)
    delta_chars: int = 0
    #: a write whose text was already present in the file (wasteful logging)
    duplicate: bool = False
    #: a successful look-up that returned nothing (no hits, an empty file, no files): the
    #: diagnostics never count it as used (consult_before_write takes it, and says so)
    empty: bool = False
    #: the scaffold's validate_write hook raised (not a refusal: the operation went on)
    hook_error: str | None = None


class StepRecord(BaseModel):
    """One line of the JSONL trace: everything that happened in one agent step."""

    kind: Literal["step"] = "step"
    episode_id: str
    step: int
    observation: str
    action: str | None
    #: the action text the model committed (may be invalid or the default action)
    action_text: str
    action_source: Literal["model", "default"]
    reward: float
    done: bool
    progression: float
    calls: list[ModelCall]
    memory_ops: list[MemoryOp]
    #: grammars first used in this step, digest -> text (each appears once per trace)
    grammars: dict[str, str] = Field(default_factory=dict)
    #: scaffold hooks that raised in this step (it went on without them)
    hook_errors: list[str] = Field(default_factory=list)
    invalid_ops: int
    #: commands written after a look-up group in one reply (free text only): not run
    ops_not_run: int = 0
    memory_chars: int
    memory_lines: int
    elapsed_s: float


class EpisodeHeader(BaseModel):
    """First line of every trace."""

    kind: Literal["header"] = "header"
    episode_id: str
    game: str
    task: str
    seed: int
    scaffold_hash: str
    memory_model: str
    action_model: str
    max_steps: int
    sampling: SamplingParams
    started_at: str
    #: how the scaffold's hooks ran: "os" (confined), "none" (the run chose to run them
    #: unconfined), None (the scaffold has no hooks)
    hooks_confinement: str | None = None
    #: where and how the models ran (`ModelConfig.identity`: endpoint or device, dtype, weights,
    #: and `batch_invariant`: "on", "off" or "unverified": whether a replay is exact)
    models: dict[str, str] = Field(default_factory=dict)


class EpisodeSummary(BaseModel):
    """Last line of a finished trace (absent when the episode was killed)."""

    kind: Literal["summary"] = "summary"
    episode_id: str
    game: str
    task: str
    seed: int
    scaffold_hash: str
    steps: int
    progression: float
    total_reward: float
    invalid_actions: int
    invalid_ops: int
    default_actions: int
    memory_chars: int
    prompt_tokens: int
    completion_tokens: int
    wall_s: float
    end_reason: str
    trace_path: str = ""
    memory_path: str = ""
    #: as in the header: "os", "none" (hooks ran unconfined by the run's choice) or None
    hooks_confinement: str | None = None


def messages_digest(messages: list[Message] | list[dict[str, Any]]) -> str:
    """Stable digest of a message list (role + content), used to tie calls to contexts."""
    payload = [m.model_dump() if isinstance(m, BaseModel) else dict(m) for m in messages]
    blob = json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
