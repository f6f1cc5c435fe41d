"""Every reply the grammar allows fits the reply budget: the real local model, given far
fewer tokens than its text would take, closes the reply itself (issue 16, item 5)."""

from __future__ import annotations

from typing import Any

import pytest

from agent_core.grammar import TEXT_MAX_CHARS, Grammar
from agent_core.records import Message, SamplingParams

TEXT = rf"[^<|\n\r \t][^<|\n\r]{{0,{TEXT_MAX_CHARS - 1}}}"
BUDGET = 40
STORY = [Message(role="user", content="Describe a forest in three long sentences.")]

CASES = {
    # the reply ends with the routine: the open text is closed with <|END|><|DONE|>
    "write then done": Grammar(rf"(<\|APPEND\|>notes\.md\|{TEXT}<\|END\|>){{1,3}}<\|DONE\|>"),
    # a look-up group ends the reply: <|END|> then end-of-turn
    "look-ups end the reply": Grammar(rf"(<\|SEARCH\|>{TEXT}<\|END\|>)+"),
    # the budget runs out inside a non-final argument: tokens are taken back and the
    # argument is completed before the closing
    "inside a key": Grammar(rf"<\|UPSERT\|>notes\.md\|[a-z ]{{20,160}}\|{TEXT}<\|END\|><\|DONE\|>"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_a_long_constrained_reply_is_closed_within_the_budget(local_model: Any, case: str) -> None:
    grammar = CASES[case]
    got = local_model.generate(STORY, SamplingParams(max_tokens=BUDGET, temperature=0.0), constraint=grammar)
    reply = got.completion
    assert grammar.matches(reply.text), reply.text
    assert got.finish_reason == reply.finish_reason == "stop"
    assert reply.completion_tokens <= BUDGET
    # the model was still writing when the budget ran low: without the closing it would be cut off
    assert reply.completion_tokens > BUDGET - local_model.close_reserve, reply.text
    # and the record says so, with what the model itself wrote (its reply did not end there)
    assert reply.closed_at_budget and reply.written is not None and reply.written != reply.text
    assert not grammar.matches(reply.written), reply.written


@pytest.mark.slow
def test_a_budget_too_small_for_any_sentence_still_ends_as_length(local_model: Any) -> None:
    # the shortest sentence is longer than the budget: nothing to close, the reply is cut off
    grammar = CASES["write then done"]
    got = local_model.generate(STORY, SamplingParams(max_tokens=12, temperature=0.0), constraint=grammar)
    assert got.finish_reason == "length" and got.completion.completion_tokens == 12
    assert not grammar.matches(got.completion.text)
    assert not got.completion.closed_at_budget and got.completion.written is None


@pytest.mark.slow
def test_a_reply_the_model_ends_itself_is_not_labelled_closed(local_model: Any) -> None:
    grammar = Grammar(r"<\|ACTION\|>(go north|go south|wait)<\|END\|>")
    got = local_model.generate(STORY, SamplingParams(max_tokens=BUDGET, temperature=0.0), constraint=grammar)
    assert grammar.matches(got.completion.text) and got.finish_reason == "stop"
    assert not got.completion.closed_at_budget and got.completion.written is None
