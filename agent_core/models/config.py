"""Which models play the two roles: one config shared by the CLI, tasks and flows.

The config is small and serialisable (it travels as a flow parameter) and names the model
ids that go into every cache key.
"""

from __future__ import annotations

import hashlib
import threading
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent_core.grammar import Grammar
from agent_core.models.devices import DeviceSetting, INFERENCE_DTYPE, kind, resolve_device, short_dtype
from agent_core.models.base import ChatModel, Roles
from agent_core.models.batching import DEFAULT_MAX_BATCH
from agent_core.records import (Completion, Message, SamplingParams, check_temperature, check_top_p,
                                 override_sampling)


#: the ranks `vllm serve --max-lora-rank` accepts
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: module names vLLM serves LoRA on (linear layers; embeddings and lm_head need extra flags)
VLLM_LORA_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj", "up_proj",
                               "down_proj", "gate_up_proj"})


class RoutineScript(BaseModel):
    """Replies of the built-in scripted model, chosen by what the latest prompt asks for: a
    routine's first turn, its next turn (after a look-up group ended a reply), the action."""

    log: str = Field("<|APPEND|>action_log.md|saw: step done<|END|><|DONE|>", description="LOG reply.")
    plan: str = Field("<|SEARCH|>key<|END|>", description="PLAN consultation reply (a look-up ends "
                      "the reply; its results come back, and the next turn answers `plan_next`).")
    log_next: str = Field("<|DONE|>", description="LOG reply after a look-up's results.")
    plan_next: str = Field("<|DONE|>", description="PLAN reply after a look-up's results (the world "
                           "action, or <|DONE|> to leave it to the action role).")
    act: str = Field("<|ACTION|>look<|END|>", description="Action-role reply.")

    def reply(self, messages: list[Message]) -> str:
        """Answer by the routine the latest prompt asks for (the scaffold prompts and the
        agent's cues name it)."""
        last = messages[-1].content if messages else ""
        if "world action" in last or "No action found" in last:
            return self.act
        if "PLAN continues" in last:
            return self.plan_next
        if "PLAN routine" in last:
            return self.plan
        if "LOG continues" in last:
            return self.log_next
        if "LOG routine" in last:
            return self.log
        return "<|DONE|>"  # operation results: end the routine

    def model(self, model_id: str) -> ChatModel:
        from agent_core.models.scripted import ScriptedModel

        return ScriptedModel(self.reply, model_id=model_id)


class ModelConfig(BaseModel):
    """The model backend and, optionally, a memory specialist for the memory role."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "openai", "scripted"] = Field(
        "local", description="local: in-process transformers model; openai: an OpenAI-compatible "
        "server (vLLM, `automem serve`); scripted: deterministic replies for tests.")
    base_url: str | None = Field(None, description="Server URL for the openai backend, e.g. http://host:8000/v1.")
    model: str | None = Field(None, description="Served base model name (openai backend).")
    specialist: str | None = Field(
        None, description="Memory specialist: a served adapter name (openai) or a peft adapter "
        "directory (local). None: the base model plays both roles.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    max_tokens: int | None = Field(
        None, ge=1, le=32768, description="Cap on tokens per reply for this deployment (e.g. a small "
        "CPU model), applied over the scaffold's max_tokens; part of the model id, so cached "
        "episodes are never mixed. None: the scaffold decides.")
    temperature: float | None = Field(
        None, description="Sampling temperature for this deployment over the scaffold's (0: greedy; at "
        "most 2). Part of the episode key. None: the scaffold decides.")
    top_p: float | None = Field(
        None, description="Nucleus-sampling mass for this deployment over the scaffold's, in (0, 1]. "
        "Part of the episode key. None: the scaffold decides.")
    seed: int | None = Field(
        None, ge=0, description="Sampling seed of this deployment over the scaffold's (`model.seed`): mixed "
        "into every call's seed (`conversation.call_seed`), so the same game seed plays another sample. "
        "Part of the episode key. None: the scaffold decides.")
    constrain: Literal["on", "off"] = Field(
        "on", description="on: every reply is decoded under the command grammar (valid by "
        "construction; vLLM's structured outputs, llguidance locally); off: free text, parsed "
        "forgivingly. Part of the model id, so the two never share cached episodes.")
    max_lora_rank: int | None = Field(
        None, description="The server's `--max-lora-rank` (openai backend): curation programs with a "
        "larger LoRA rank, or modules vLLM cannot serve, are refused when parsed.")
    server_paths: dict[str, str] = Field(
        default_factory=dict, description="Path prefixes as this machine sees them -> as the model server "
        "sees them (e.g. a shared workspace mounted elsewhere), applied to adapter folders sent to it.")
    script: RoutineScript = Field(default_factory=RoutineScript, description="Scripted backend replies.")
    device: DeviceSetting = Field(
        "auto", description="Local backend: the torch device, auto (CUDA when "
        "torch sees a GPU, else CPU), cpu, cuda or cuda:N. Its kind and the dtype are part of the "
        "model id (e.g. @cuda-bf16).")
    max_batch: int = Field(
        DEFAULT_MAX_BATCH, ge=1, le=256, description="Local backend: replies decoded together by the "
        "continuous-batching scheduler (episodes in threads share each forward pass); 1: one reply "
        "at a time. Not part of the model id: a reply is the same bit for bit batched or alone, "
        "after any prefix cache (batch-invariant decoding; see docs/architecture.md).")
    batch_invariant: bool = Field(
        False, description="openai backend: the server decodes in a batch-invariant mode (vLLM's "
        "VLLM_BATCH_INVARIANT=1, which deployments/vllm/serve.sh turns on where the GPU has compute "
        "capability 9.0+, and prints), so a reply does not depend on the requests beside it. Part of "
        "the episode key (identity). False: replays on that server are not exact, and reports say so.")
    policy: Literal["routine-script", "tiny-explorer", "tiny-recall"] = Field(
        "routine-script", description="Scripted backend: replay `script` by routine, or a rule-based "
        "agent whose play depends on its memory (`agent_core.models.policies`): tiny-explorer plays "
        "tiny/key-door, tiny-recall plays tiny/recall.")

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float | None) -> float | None:
        return v if v is None else check_temperature(v)

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, v: float | None) -> float | None:
        return v if v is None else check_top_p(v)

    def sampling_overrides(self) -> dict[str, float | int]:
        """The sampling settings this deployment sets over the scaffold's."""
        return {k: v for k, v in (("temperature", self.temperature), ("top_p", self.top_p), ("seed", self.seed))
                if v is not None}

    def sampling_for(self, scaffold_params: SamplingParams) -> SamplingParams:
        """The sampling an episode uses with these models (what its key and header record)."""
        return override_sampling(scaffold_params, self.sampling_overrides())

    @model_validator(mode="after")
    def _complete(self) -> "ModelConfig":
        if self.backend == "openai" and not (self.base_url and self.model):
            raise ValueError("the openai backend needs base_url and model")
        if self.max_lora_rank is not None and self.max_lora_rank not in VLLM_LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of vLLM's {list(VLLM_LORA_RANKS)}, got {self.max_lora_rank}")
        return self

    def server_path(self, path: str | Path) -> str:
        """`path` as the model server sees it (`server_paths`, longest matching prefix)."""
        text = str(path)
        for prefix in sorted(self.server_paths, key=len, reverse=True):
            if text == prefix or text.startswith(prefix.rstrip("/") + "/"):
                return self.server_paths[prefix].rstrip("/") + text[len(prefix.rstrip("/")):]
        return text

    def ids(self) -> tuple[str, str]:
        """(memory model id, action model id) as recorded in traces and cache keys."""
        memory_id, action_id = self._base_ids()
        suffix = ("" if self.max_tokens is None else f"@max{self.max_tokens}") + \
            ("@grammar" if self.constrain == "on" else "")
        return f"{memory_id}{suffix}", f"{action_id}{suffix}"

    def _base_ids(self) -> tuple[str, str]:
        if self.backend == "scripted":
            digest = hashlib.sha256(self.script.model_dump_json().encode()).hexdigest()[:8]
            base = f"scripted-{digest}" if self.policy == "routine-script" else self.policy
            return (f"{base}+{Path(self.specialist).name}" if self.specialist else base, base)
        if self.backend == "openai":
            return (self.specialist or self.model, self.model)  # type: ignore[return-value]
        from agent_core.models.local import DEFAULT_MODEL_ID

        where = self.identity()
        base = f"{DEFAULT_MODEL_ID}@{where['device']}-{short_dtype(where['dtype'])}"
        if self.specialist:
            return (f"{base}+{_dir_digest(Path(self.specialist))}", base)
        return (base, base)

    def _policy_model(self, model_id: str) -> ChatModel:
        from agent_core.models.policies import tiny_explorer, tiny_recall
        from agent_core.models.scripted import ScriptedModel

        return ScriptedModel(tiny_recall if self.policy == "tiny-recall" else tiny_explorer, model_id=model_id)

    def check(self) -> None:
        """Fail fast (before any episode) when the backend cannot work."""
        if self.backend == "openai":
            from agent_core.models.openai_client import check_reachable, served_card

            check_reachable(self.base_url)  # type: ignore[arg-type]
            said = (served_card(self.base_url, self.model) or {}).get("batch_invariant")  # type: ignore[arg-type]
            if said is not None and bool(said) != self.batch_invariant:  # `automem serve` says; vLLM does not
                raise ValueError(f"batch_invariant is {self.batch_invariant} in the model config, but the server at "
                                 f"{self.base_url} says {bool(said)}: set it to what the server does")
        elif self.backend == "local":
            from agent_core.models.weights import local_model_path

            local_model_path()
            resolve_device(self.device)
            if self.specialist and not (Path(self.specialist) / "adapter_config.json").is_file():
                raise ValueError(f"specialist {self.specialist!r} is not a peft adapter directory")

    def build(self) -> Roles:
        """The two roles' models, named by `ids()` (what traces and cache keys record)."""
        roles = self._build()
        memory_id, action_id = self.ids()
        constrain, identity = self.constrain == "on", self.identity()
        memory = CappedModel(roles.memory, self.max_tokens, memory_id)
        sampling = self.sampling_overrides()
        if roles.shared:
            return Roles(memory=memory, constrain=constrain, identity=identity, sampling=sampling)
        return Roles(memory=memory, action=CappedModel(roles.action, self.max_tokens, action_id),
                     constrain=constrain, identity=identity, sampling=sampling)

    def identity(self) -> dict[str, str]:
        """Where and how the models run: the server for the openai backend; for the local one
        the device kind, the weights' dtype (both also in its model ids) and a digest of the
        prepared weights (`weights.weights_digest`: other weights, another key). Part of every
        episode key. ValueError when the local device is not on this machine,
        FileNotFoundError when the local model is not prepared."""
        if self.backend == "openai":
            from agent_core.models.openai_client import api_url

            return {"endpoint": api_url(self.base_url),  # type: ignore[arg-type]
                    "batch_invariant": "on" if self.batch_invariant else "off"}
        if self.backend == "local":
            from agent_core.models.weights import local_model_path, weights_digest

            device = kind(resolve_device(self.device))
            return {"device": device, "dtype": INFERENCE_DTYPE, "weights": weights_digest(local_model_path()),
                    "batch_invariant": LOCAL_INVARIANCE[device]}
        return {}

    def replay_note(self) -> str | None:
        """A sentence for reports when replays with these models are not exact, else None."""
        invariant = self.identity().get("batch_invariant", "on")  # scripted: deterministic
        if invariant == "on":
            return None
        return (f"Replays are not exact: batch invariance is {invariant} for these models "
                f"({self.ids()[1]}), so a reply may change with the requests decoded beside it and with "
                "the server's prefix cache; compare seeds played in one batch with care.")

    def _build(self) -> Roles:
        if self.backend == "scripted":
            memory_id, action_id = self._base_ids()
            make = self.script.model if self.policy == "routine-script" else self._policy_model
            if memory_id == action_id:
                return Roles(memory=make(memory_id))
            # two handles playing the two roles over one conversation, as with a specialist
            return Roles(memory=make(memory_id), action=make(action_id))
        if self.backend == "openai":
            from agent_core.models.openai_client import OpenAIChatModel

            key = os.environ.get(self.api_key_env)
            base = OpenAIChatModel(base_url=self.base_url, model=self.model, api_key=key)
            if not self.specialist:
                return Roles(memory=base)
            return Roles(memory=OpenAIChatModel(base_url=self.base_url, model=self.specialist, api_key=key),
                         action=base)
        local = shared_local_model(self.device, self.max_batch)
        if not self.specialist:
            return Roles(memory=local)
        name = self._base_ids()[0]
        with _LOCAL_LOCK:  # episodes in threads share the model: load each adapter once
            if name not in local.adapters:
                local.load_adapter(name, Path(self.specialist))
        return Roles(memory=local.handle(name), action=local.handle(local.model_id))


#: whether the local backend's decoding is batch- and cache-invariant on a device kind (an
#: episode key part): measured on CPUs in the shipped dtype (tests/agent_core/test_invariance.py);
#: CUDA kernels were not checked (no GPU where it was built)
LOCAL_INVARIANCE = {"cpu": "on", "cuda": "unverified"}


class CappedModel:
    """A model under the configured id whose replies are at most `max_tokens` long (None: as
    the scaffold asks)."""

    def __init__(self, inner: ChatModel, max_tokens: int | None, model_id: str):
        self.inner, self.max_tokens, self.model_id = inner, max_tokens, model_id

    def complete(self, messages: list[Message], params: SamplingParams,
                 constraint: Grammar | None = None) -> Completion:
        if self.max_tokens is not None:
            params = params.model_copy(update={"max_tokens": min(params.max_tokens, self.max_tokens)})
        return self.inner.complete(messages, params, constraint)


_LOCAL_LOCK = threading.Lock()


@lru_cache(maxsize=2)
def _local_model(device: str):
    from agent_core.models.local import LocalModel

    return LocalModel(dtype=INFERENCE_DTYPE, device=device)


def shared_local_model(device: str = "auto", max_batch: int = DEFAULT_MAX_BATCH):
    """One in-process model per process and device: episodes running in threads share its
    weights and, with `max_batch` > 1, its forward passes (the last caller's `max_batch`
    applies). The lock makes the first load happen once: concurrent first calls would each
    load a model, racing in transformers' lazy imports and torch's default dtype."""
    with _LOCAL_LOCK:
        model = _local_model(resolve_device(device))
        model.max_batch = max_batch
        return model


def _dir_digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(path).as_posix().encode() + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:12]
