"""One conversation shared by both roles, with a sliding window over past steps.

The message log is append-only. Each model call sees `log[:fixed] + log[window_start:]`
(the fixed prefix: system prompt and demonstration turns; then the past steps kept: the last
`history_window`, and with a `history_stride` s > 1 up to s - 1 more, because the window
then drops s steps at once: a model's KV prefix cache holds for the s - 1 steps in between,
where a window that slides every step changes the context's start at every step) and
records only the messages added since the previous call's reply, and its own
reply, so the trace holds every context exactly, and every text once. A reply longer than
`max_reply_chars` is cut, with a marker saying how much, both in the log and in the trace
(and counts as cut off, like one that hit the token limit).

Sampling is seeded per call from the episode's seed, the step and the call's number in the
step (`call_seed`), so an episode replays the same in any process and differs across seeds.
"""

from __future__ import annotations

import hashlib
import itertools
import time

from agent_core.grammar import Grammar
from agent_core.models.base import ChatModel
from agent_core.records import AgentRole, Message, ModelCall, Routine, SamplingParams, messages_digest


class Conversation:
    def __init__(self, system: str, history_window: int, call_prefix: str = "",
                 demonstrations: list[tuple[str, str]] = (), max_reply_chars: int = 16_000,
                 seed: int = 0, history_stride: int = 1):
        if history_window < 0 or history_stride < 1:
            raise ValueError(f"history_window must be >= 0 and history_stride >= 1; got "
                             f"{history_window} and {history_stride}")
        self.log: list[Message] = [Message(role="system", content=system)]
        for user, assistant in demonstrations:  # few-shot turns: small models copy their form
            self.log += [Message(role="user", content=user), Message(role="assistant", content=assistant)]
        self.fixed = len(self.log)
        self.history_window = history_window
        self.history_stride = history_stride
        self._step_starts: list[int] = []
        self._recorded = 0  # log messages already carried by an earlier call's new_messages
        self._ids = itertools.count()
        self._call_prefix = call_prefix
        self.max_reply_chars = max_reply_chars
        self.seed = seed
        self._step = 0
        self._calls_in_step = 0

    def begin_step(self, step: int | None = None) -> None:
        self._step_starts.append(len(self.log))
        self._step = len(self._step_starts) - 1 if step is None else step
        self._calls_in_step = 0

    def add_user(self, content: str) -> None:
        # Consecutive user texts of one step merge into one message: small chat models follow
        # a strict user/assistant alternation better, and prompts stay shorter. Never across
        # steps: a step's observation must stay inside its own step's window.
        this_step = not self._step_starts or len(self.log) - 1 >= self._step_starts[-1]
        if self.log[-1].role == "user" and len(self.log) > self._recorded and this_step:
            self.log[-1] = Message(role="user", content=f"{self.log[-1].content}\n\n{content}")
        else:
            self.log.append(Message(role="user", content=content))

    def window_start(self) -> int:
        if not self._step_starts:
            return self.fixed
        past = len(self._step_starts) - 1  # steps before the current one
        over = max(0, past - self.history_window)
        dropped = over - over % self.history_stride  # whole strides: history_window .. +stride-1 kept
        return self._step_starts[dropped]

    def context(self) -> list[Message]:
        return [*self.log[:self.fixed], *self.log[self.window_start():]]

    def call(
        self, model: ChatModel, params: SamplingParams, routine: Routine, role: AgentRole,
        constraint: Grammar | None = None,
    ) -> ModelCall:
        """Send the current context to `model`, append its reply, return the call record."""
        ws, end = self.window_start(), len(self.log)
        context = [*self.log[:self.fixed], *self.log[ws:end]]
        params = params.model_copy(update={"seed": call_seed(self.seed, self._step, self._calls_in_step,
                                                             params.seed)})
        self._calls_in_step += 1
        started = time.perf_counter()
        completion = model.complete(context, params, constraint)
        latency = completion.latency_s or (time.perf_counter() - started)
        reply, finish = completion.text, completion.finish_reason
        if len(reply) > self.max_reply_chars:
            cut = len(reply) - self.max_reply_chars
            reply, finish = reply[:self.max_reply_chars] + f"\n[... {cut:,} characters cut]", "length"
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
            reply=reply,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            latency_s=latency,
            finish_reason=finish,
            closed_at_budget=completion.closed_at_budget,
            written=completion.written,
            grammar=constraint.digest if constraint is not None else None,
        )
        self.log.append(Message(role="assistant", content=reply))
        self._recorded = len(self.log)  # the reply is in the record as `reply`, not again
        return record


def call_seed(episode_seed: int, step: int, call: int, scaffold_seed: int | None = None) -> int:
    """The sampling seed of one model call: a digest of the episode's seed, the step, the
    call's number in the step (and the scaffold's own seed, if it sets one), as a 31-bit
    integer every backend accepts (vLLM, OpenAI, torch)."""
    blob = f"{episode_seed}:{step}:{call}:{'' if scaffold_seed is None else scaffold_seed}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") >> 1


def rebuild_contexts(calls: list[ModelCall]) -> list[list[Message]]:
    """The exact message list each call saw, rebuilt from the trace's call records.
    (Traces written before replies were stored once repeat the previous reply as the first
    of `new_messages`: after the fixed prefix, only replies are assistant messages.)"""
    log: list[Message] = []
    out = []
    for i, call in enumerate(calls):
        repeated = bool(call.new_messages) and call.new_messages[0].role == "assistant"
        if i and not repeated:
            log.append(Message(role="assistant", content=calls[i - 1].reply))
        log.extend(call.new_messages)
        out.append([*log[:call.fixed_prefix], *log[call.window_start:call.context_end]])
    return out
