"""The one protocol every model backend implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from agent_core.grammar import Grammar
from agent_core.records import Completion, Message, SamplingParams


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
