"""A deterministic `ChatModel` that replays given replies: for tests and dry runs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal

from agent_core.grammar import Grammar
from agent_core.models.base import ModelError
from agent_core.records import Completion, Message, SamplingParams

WhenExhausted = Literal["error", "repeat_last", "cycle"]


class ScriptedModel:
    """Answers with `replies` in order, or with `replies(messages)` when it is a function.

    Args:
        replies: the replies, or a function from the messages to a reply.
        model_id: the name recorded in traces.
        when_exhausted: after the last reply: "error" (`ModelError`), "repeat_last" or "cycle".

    Every call's messages are recorded in `.calls` (a copy of the list).
    """

    def __init__(
        self,
        replies: list[str] | Callable[[list[Message]], str],
        model_id: str = "scripted",
        when_exhausted: WhenExhausted = "error",
    ) -> None:
        if when_exhausted not in ("error", "repeat_last", "cycle"):
            raise ValueError(f"when_exhausted: error, repeat_last or cycle, not {when_exhausted!r}")
        if not callable(replies) and not replies and when_exhausted != "error":
            raise ValueError("an empty reply list can only be used with when_exhausted='error'")
        self.model_id = model_id
        self.when_exhausted = when_exhausted
        self._replies = replies if callable(replies) else list(replies)
        self.calls: list[list[Message]] = []
        self._lock = threading.Lock()  # episodes may share one model across threads

    def _next_reply(self, messages: list[Message]) -> str:
        if callable(self._replies):
            return self._replies(messages)
        n, i = len(self._replies), len(self.calls) - 1
        if i < n:
            return self._replies[i]
        if self.when_exhausted == "repeat_last":
            return self._replies[-1]
        if self.when_exhausted == "cycle":
            return self._replies[i % n]
        raise ModelError(f"scripted model {self.model_id!r} has no reply left after {n}")

    def complete(self, messages: list[Message], params: SamplingParams,
                 constraint: Grammar | None = None) -> Completion:
        """The next reply as scripted: a constraint is not applied (scripts test bad replies too)."""
        with self._lock:
            self.calls.append(list(messages))
            text = self._next_reply(messages)
        return Completion(
            text=text,
            prompt_tokens=sum(len(m.content.split()) for m in messages),
            completion_tokens=len(text.split()),
            model=self.model_id,
        )
