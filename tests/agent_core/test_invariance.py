"""Replay in the shipped dtype (issue 24, item 1): a sampled local episode is the same bit
for bit played alone, as one of 4 concurrent episodes, and after a prefix cache warmed by
other episodes; `automem serve` answers 4 concurrent requests (different grammars, one with
a LoRA adapter) exactly as it answers each alone.

The model is the CPU preset's: `INFERENCE_DTYPE` (bf16) with the default decoding path and
`max_batch` 4. Equality is exact: every reply's text and every action, and for the four
requests the raw logit of every sampled token. Both tests fail on the padded-batch path
(`LocalModel(invariant=False)`, bf16): an action and a greedy reply change."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from agent_core.grammar import TEXT_MAX_CHARS, Grammar, act_grammar
from agent_core.records import Message, SamplingParams

TEXT = rf"[^<|\n\r \t][^<|\n\r]{{0,{TEXT_MAX_CHARS - 1}}}"
SEED, STEPS, REPLY_TOKENS = 7, 5, 24
ADAPTER = "inv-mem"


@pytest.fixture(scope="module")
def shipped_model(local_model: Any, lora_dir: Path) -> Any:
    """The local model as the CPU preset builds it (its dtype, the default path), 4 rows."""
    from agent_core.models import LocalModel
    from agent_core.models.devices import INFERENCE_DTYPE

    model = LocalModel(local_model.path, dtype=INFERENCE_DTYPE, device="cpu", max_batch=4)
    model.load_adapter(ADAPTER, lora_dir)
    return model


def _play(model: Any, seed: int, out: Path) -> tuple[list[str], list[str | None]]:
    """One sampled Crafter episode (the preset's temperature and top_p, replies capped for
    speed); its replies and actions."""
    from agent_core.models.base import Roles
    from agent_core.episode import run_episode
    from agent_core.models.config import CappedModel
    from agent_core.scaffold import Scaffold
    from agent_core.trace import read_trace
    from environments import make_env

    roles = Roles(memory=CappedModel(model, REPLY_TOKENS, model.model_id), constrain=True,
                  sampling={"temperature": 1.0, "top_p": 0.95})
    summary = run_episode(make_env("crafter", max_steps=STEPS + 1), Scaffold.builtin("crafter"), roles,
                          seed=seed, max_steps=STEPS, out_dir=out)
    trace = read_trace(summary.trace_path)
    assert len(trace.steps) == STEPS
    return [c.reply for s in trace.steps for c in s.calls], [s.action for s in trace.steps]


@pytest.mark.slow
def test_a_sampled_episode_is_the_same_alone_batched_and_after_a_warm_cache(shipped_model: Any,
                                                                             tmp_path: Path) -> None:
    model = shipped_model
    model.clear_prefix_cache()
    alone = _play(model, SEED, tmp_path / "alone")
    model.clear_prefix_cache()
    rows, passes = model.batched_rows, model.batched_passes
    with ThreadPoolExecutor(max_workers=4) as pool:  # as the flows' runner plays them
        together = list(pool.map(lambda s: _play(model, s, tmp_path / f"batched-{s}"), [SEED, SEED + 1, SEED + 2,
                                                                                         SEED + 3]))
    assert (model.batched_rows - rows) > (model.batched_passes - passes)  # they did share passes
    # the cache now holds the other episodes' conversations (and this one's): replay on it
    warm = _play(model, SEED, tmp_path / "warm")
    assert together[0] == alone
    assert warm == alone
    assert len({tuple(r) for r, _ in together}) == 4  # the episodes differ: the batch-mates were not copies


#: a long shared system prompt, as the scaffolds send: the shared part is prefilled once and
#: copied by the other rows (a split prefill), where bf16 numbers used to move
SYSTEM = "You keep notes in files while you explore a world. " + " ".join(
    f"Rule {i}: the {c} door opens with the {c} key, found {i} steps north of the {c} tree."
    for i, c in enumerate(["red", "blue", "green", "amber", "violet", "silver", "golden", "black"] * 3))


def _requests() -> list[tuple[list[Message], str | None, Grammar | None, SamplingParams]]:
    def user(text: str) -> list[Message]:
        return [Message(role="system", content=SYSTEM), Message(role="user", content=text)]

    return [
        (user("Write down what you know about the doors."), ADAPTER,
         Grammar(rf"(<\|APPEND\|>notes\.md\|{TEXT}<\|END\|>){{1,3}}<\|DONE\|>"),
         SamplingParams(max_tokens=40, temperature=1.0, seed=3)),
        (user("Which way do you go?"), None, act_grammar(["go north", "go south", "wait"]),
         SamplingParams(max_tokens=16, temperature=1.0, seed=4)),
        (user("Search your notes for the key you need."), None,
         Grammar(rf"(<\|SEARCH\|>{TEXT}<\|END\|>)+|<\|DONE\|>"), SamplingParams(max_tokens=40, temperature=1.0, seed=5)),
        (user("Describe the silver tree."), None, None, SamplingParams(max_tokens=40, temperature=0.0)),
    ]


def _at_once(calls: list[Any]) -> list[Any]:
    """The callables run in threads at once; their results, in order."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


@pytest.mark.slow
def test_the_server_says_batch_invariant_only_in_bf16(shipped_model: Any, local_model: Any, serve: Any) -> None:
    """`automem serve --dtype float32` must not tell clients its replies replay exactly: fp32
    linear layers round a row differently alone and batched (`invariant.py`)."""
    import json
    import urllib.request

    said = []
    for model in (shipped_model, local_model):  # bf16, fp32 (the session's): both on the invariant path
        assert model.invariant
        with serve(model) as url, urllib.request.urlopen(url + "/v1/models") as reply:
            said.append(json.loads(reply.read())["data"][0]["batch_invariant"])
    assert said == [True, False]


@pytest.mark.slow
def test_served_replies_are_the_same_alone_and_four_at_once(shipped_model: Any, serve: Any) -> None:
    from agent_core.models.openai_client import OpenAIChatModel

    model = shipped_model
    requests = _requests()

    def direct(i: int) -> Any:
        messages, name, grammar, params = requests[i]
        return model.generate(messages, params, model=name, constraint=grammar)

    alone = []
    for i in range(len(requests)):
        model.clear_prefix_cache()  # each alone from nothing: one prefill of the whole prompt
        alone.append(direct(i))
    with serve(model) as url:
        def served(i: int) -> Any:
            messages, name, grammar, params = requests[i]
            return lambda: OpenAIChatModel(url + "/v1", name or model.model_id, timeout_s=300,
                                           max_retries=0).complete(messages, params, grammar).text

        model.clear_prefix_cache()
        rows, passes = model.batched_rows, model.batched_passes
        texts = _at_once([served(i) for i in range(len(requests))])
        assert (model.batched_rows - rows) > (model.batched_passes - passes)  # they shared passes
    assert texts == [a.completion.text for a in alone]
    assert len(set(texts)) == len(texts)
    # the numbers under the texts too: the raw logit of every sampled token, four at once
    model.clear_prefix_cache()
    together = _at_once([lambda i=i: direct(i) for i in range(len(requests))])
    assert [g.token_logits for g in together] == [a.token_logits for a in alone]
