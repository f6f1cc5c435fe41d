"""The one protocol every model backend implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from agent_core.grammar import Grammar
from agent_core.records import Completion, Message, SamplingParams, override_sampling


class ModelError(RuntimeError):
    """The model backend failed for good (after its retries): the episode stops clearly.
    A bad request, an unknown model or an overflowing context fail the same way every
    time: retrying the episode cannot help."""


class TransientModelError(ModelError):
    """A fault a later attempt may not meet (connection refused or reset, timeout, 429, 5xx),
    still there after the client's own retries: the episode task is retried later."""


@runtime_checkable
class ChatModel(Protocol):
    #: the identifier recorded in traces and cache keys (base name or adapter name)
    model_id: str

    def complete(self, messages: list[Message], params: SamplingParams,
                 constraint: Grammar | None = None) -> Completion:
        """Reply to `messages`. With a `constraint` the reply is a sentence of that grammar,
        unless cut off by `max_tokens` (`Completion.finish_reason == "length"`)."""
        ...


@dataclass
class Roles:
    """Which model plays which role. `action` defaults to the memory model."""

    memory: ChatModel
    action: ChatModel | None = None
    #: decode every reply under the command grammar (`agent_core.grammar`)
    constrain: bool = False
    #: where and how the models run (endpoint, dtype): part of the episode key
    identity: dict = field(default_factory=dict)
    #: sampling settings of the deployment over the scaffold's (temperature, top_p): part of
    #: the episode key through `sampling()`
    sampling: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.action = self.action or self.memory

    @property
    def shared(self) -> bool:
        """One model plays both roles: it may commit the action while consulting memory."""
        return self.action is self.memory

    def sampling_for(self, scaffold_params: SamplingParams) -> SamplingParams:
        """The sampling an episode uses: the scaffold's, with this deployment's overrides."""
        return override_sampling(scaffold_params, self.sampling)
