"""A deterministic `ChatModel` that replays given replies: for tests and dry runs.

Under a constraint it behaves as a constrained server would: it never answers with a reply
the call's grammar does not allow. A scripted reply may be one string or several in order
of preference (a rule-based policy's first choice, then what it would do instead); the
first the grammar allows is the answer, as constrained decoding picks a legal continuation.
When none is allowed the call fails with a `ModelError` that names the reply and the
grammar's digest: a script that a constrained server could not have produced is a bug in
the test, not a reply to play. Tests that feed bad replies on purpose play with
`constrain` off (no constraint reaches the model) or pass `enforce_grammar=False`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Literal, Union

from agent_core.grammar import Grammar
from agent_core.models.base import ModelError
from agent_core.records import Completion, Message, SamplingParams

WhenExhausted = Literal["error", "repeat_last", "cycle"]
#: one reply, or several in order of preference (the first the call's grammar allows is used)
Reply = Union[str, Sequence[str]]


class ScriptedModel:
    """Answers with `replies` in order, or with `replies(messages)` when it is a function.

    Args:
        replies: the replies, or a function from the messages to a reply. A reply is a
            string or a sequence of strings in order of preference.
        model_id: the name recorded in traces.
        when_exhausted: after the last reply: "error" (`ModelError`), "repeat_last" or "cycle".
        enforce_grammar: under a constraint, answer only with a reply the grammar allows
            (`ModelError` when none is); False: the first reply whatever the constraint.

    Every call's messages are recorded in `.calls` (a copy of the list), its constraint in
    `.constraints`.
    """

    def __init__(
        self,
        replies: list[Reply] | Callable[[list[Message]], Reply],
        model_id: str = "scripted",
        when_exhausted: WhenExhausted = "error",
        enforce_grammar: bool = True,
    ) -> None:
        if when_exhausted not in ("error", "repeat_last", "cycle"):
            raise ValueError(f"when_exhausted: error, repeat_last or cycle, not {when_exhausted!r}")
        if not callable(replies) and not replies and when_exhausted != "error":
            raise ValueError("an empty reply list can only be used with when_exhausted='error'")
        self.model_id = model_id
        self.when_exhausted = when_exhausted
        self.enforce_grammar = enforce_grammar
        self._replies = replies if callable(replies) else list(replies)
        self.calls: list[list[Message]] = []
        self.constraints: list[Grammar | None] = []
        self._lock = threading.Lock()  # episodes may share one model across threads

    def _next_reply(self, messages: list[Message]) -> Reply:
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

    def _choose(self, reply: Reply, constraint: Grammar | None) -> str:
        """The reply to give: the first candidate the constraint allows (see the module)."""
        candidates = [reply] if isinstance(reply, str) else list(reply)
        if not candidates or not all(isinstance(c, str) for c in candidates):
            raise ModelError(f"scripted model {self.model_id!r}: a reply is a string or a non-empty "
                             f"sequence of strings, got {reply!r}")
        if constraint is None or not self.enforce_grammar:
            return candidates[0]
        if constraint.kind != "regex":
            raise ModelError(f"scripted model {self.model_id!r} can check regex grammars only, got a "
                             f"{constraint.kind} grammar ({constraint.digest}); pass enforce_grammar=False")
        for text in candidates:
            if constraint.matches(text):
                return text
        shown = candidates[0] if len(candidates) == 1 else candidates
        raise ModelError(f"scripted model {self.model_id!r}: reply {shown!r} does not match the call's "
                         f"grammar {constraint.digest}; a constrained server could not produce it "
                         "(play with constrain off, or enforce_grammar=False, to feed bad replies)")

    def complete(self, messages: list[Message], params: SamplingParams,
                 constraint: Grammar | None = None) -> Completion:
        """The next scripted reply; under `constraint`, one the grammar allows (see the module)."""
        with self._lock:
            self.calls.append(list(messages))
            self.constraints.append(constraint)
            reply = self._next_reply(messages)
        text = self._choose(reply, constraint)
        return Completion(
            text=text,
            prompt_tokens=sum(len(m.content.split()) for m in messages),
            completion_tokens=len(text.split()),
            model=self.model_id,
        )
