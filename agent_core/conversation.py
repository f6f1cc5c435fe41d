"""One conversation shared by both roles, with a sliding window over past steps.

The message log is append-only. Each model call sees `log[:fixed] + log[window_start:]`
(the fixed prefix: system prompt and demonstration turns; then the last `history_window`
steps) and records only the messages added since the previous call, so the trace holds
every context exactly, once.
"""

from __future__ import annotations

import itertools
import time

from agent_core.grammar import Grammar
from agent_core.models.base import ChatModel
from agent_core.records import AgentRole, Message, ModelCall, Routine, SamplingParams, messages_digest


class Conversation:
    def __init__(self, system: str, history_window: int, call_prefix: str = "",
                 demonstrations: list[tuple[str, str]] = ()):
        self.log: list[Message] = [Message(role="system", content=system)]
        for user, assistant in demonstrations:  # few-shot turns: small models copy their form
            self.log += [Message(role="user", content=user), Message(role="assistant", content=assistant)]
        self.fixed = len(self.log)
        self.history_window = history_window
        self._step_starts: list[int] = []
        self._recorded = 0  # log messages already carried by an earlier call's new_messages
        self._ids = itertools.count()
        self._call_prefix = call_prefix

    def begin_step(self) -> None:
        self._step_starts.append(len(self.log))

    def add_user(self, content: str) -> None:
        # Consecutive user texts merge into one message: small chat models follow a strict
        # user/assistant alternation better, and prompts stay shorter.
        if self.log[-1].role == "user" and len(self.log) > self._recorded:
            self.log[-1] = Message(role="user", content=f"{self.log[-1].content}\n\n{content}")
        else:
            self.log.append(Message(role="user", content=content))

    def window_start(self) -> int:
        kept = self._step_starts[-(self.history_window + 1):]
        return kept[0] if kept else self.fixed

    def context(self) -> list[Message]:
        return [*self.log[:self.fixed], *self.log[self.window_start():]]

    def call(
        self, model: ChatModel, params: SamplingParams, routine: Routine, role: AgentRole,
        constraint: Grammar | None = None,
    ) -> ModelCall:
        """Send the current context to `model`, append its reply, return the call record."""
        ws, end = self.window_start(), len(self.log)
        context = [*self.log[:self.fixed], *self.log[ws:end]]
        started = time.perf_counter()
        completion = model.complete(context, params, constraint)
        latency = completion.latency_s or (time.perf_counter() - started)
        record = ModelCall(
            call_id=f"{self._call_prefix}{next(self._ids)}",
            routine=routine,
            role=role,
            model=model.model_id,
            messages_digest=messages_digest(context),
            fixed_prefix=self.fixed,
            window_start=ws,
            context_end=end,
            new_messages=self.log[self._recorded:end],
            reply=completion.text,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            latency_s=latency,
            finish_reason=completion.finish_reason,
            grammar=constraint.digest if constraint is not None else None,
        )
        self._recorded = end
        self.log.append(Message(role="assistant", content=completion.text))
        return record


def rebuild_contexts(calls: list[ModelCall]) -> list[list[Message]]:
    """The exact message list each call saw, rebuilt from the trace's call records."""
    log: list[Message] = []
    out = []
    for call in calls:
        log.extend(call.new_messages)
        out.append([*log[:call.fixed_prefix], *log[call.window_start:call.context_end]])
    return out
