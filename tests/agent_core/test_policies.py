"""The rule-based policies play the command protocol under the real agent, grammar and memory;
the scripted backend answers only what a constrained server could."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import pytest
import yaml

from agent_core.models.base import Roles
from agent_core.conversation import rebuild_contexts
from agent_core.episode import run_episode
from agent_core.grammar import act_grammar
from agent_core.models.base import ModelError
from agent_core.models.policies import tiny_explorer, tiny_recall
from agent_core.models.scripted import ScriptedModel
from agent_core.records import SamplingParams
from agent_core.commands import READ_OPS
from agent_core.scaffold import Scaffold
from agent_core.trace import read_trace
from environments import make_env

SEEDS = range(8)
TOLD = re.compile(r"The way out is the (\w+) door")


def variant(tmp_path: Path, name: str, top: dict | None = None, **log) -> Scaffold:
    """The v0 tiny scaffold with its LOG settings (and `top`-level ones) changed."""
    root = Scaffold.builtin("tiny").write_copy(tmp_path / name)
    cfg = yaml.safe_load((root / "scaffold.yaml").read_text())
    cfg["log"].update(log)
    cfg.update(top or {})
    (root / "scaffold.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return Scaffold(root)


def play(tmp_path: Path, policy, scaffold: Scaffold, seed: int, task: str, steps: int, constrain: bool = True):
    env = make_env("tiny", task)
    roles = Roles(memory=ScriptedModel(policy, model_id=policy.__name__), constrain=constrain)
    summary = run_episode(env, scaffold, roles, seed=seed, max_steps=steps,
                          out_dir=tmp_path / f"{scaffold.config.name}-{task}-{seed}-{constrain}")
    return summary, read_trace(summary.trace_path)


# -- the scripted backend under a grammar ----------------------------------------------------

def test_scripted_model_answers_only_what_the_grammar_allows():
    grammar = act_grammar(["look", "wait"])
    params = SamplingParams()
    bad = ScriptedModel(["<|ACTION|>dance<|END|>"], model_id="s")
    with pytest.raises(ModelError, match=rf"reply '<\|ACTION\|>dance<\|END\|>' does not match the call's grammar "
                                         rf"{grammar.digest}; a constrained server could not produce it"):
        bad.complete([], params, grammar)
    # without a constraint (constrain off), or with enforcement off, the reply goes through as given
    assert ScriptedModel(["<|ACTION|>dance<|END|>"]).complete([], params).text == "<|ACTION|>dance<|END|>"
    loose = ScriptedModel(["<|ACTION|>dance<|END|>"], enforce_grammar=False)
    assert loose.complete([], params, grammar).text == "<|ACTION|>dance<|END|>"
    # replies in order of preference: the first the grammar allows, as constrained decoding would
    ranked = ScriptedModel(lambda m: ["<|ACTION|>dance<|END|>", "<|ACTION|>wait<|END|>", "<|ACTION|>look<|END|>"])
    assert ranked.complete([], params, grammar).text == "<|ACTION|>wait<|END|>"
    assert ranked.complete([], params).text == "<|ACTION|>dance<|END|>"
    assert ranked.constraints == [grammar, None]
    with pytest.raises(ModelError, match="non-empty sequence of strings"):
        ScriptedModel(lambda m: []).complete([], params)


# -- tiny/recall: memory changes the outcome ---------------------------------------------------

def test_recall_finishes_with_memory_and_only_guesses_without(tmp_path):
    """v0 (history window 2, the fact 17-20 steps back): the policy writes the fact, looks it up at
    the doors and opens the right one on every seed. The same scaffold with LOG writes
    disallowed: the look-up finds nothing and the policy guesses."""
    v0 = Scaffold.builtin("tiny")
    no_writes = variant(tmp_path, "no-writes", allowed_ops=list(READ_OPS))
    with_memory = [play(tmp_path, tiny_recall, v0, s, "recall", 24) for s in SEEDS]
    without = [play(tmp_path, tiny_recall, no_writes, s, "recall", 24) for s in SEEDS]

    assert [s.progression for s, _ in with_memory] == [1.0] * len(SEEDS)
    guessed = [s.progression for s, _ in without]
    assert set(guessed) <= {0.5, 1.0} and 0.5 in guessed  # every episode reached the doors
    assert statistics.fmean(guessed) < statistics.fmean(s.progression for s, _ in with_memory)
    assert not any(op.op in ("upsert", "append") for _, t in without for st in t.steps for op in st.memory_ops)

    for summary, trace in with_memory:
        # it decided from what memory gave back, not from a window that still held the fact
        last = trace.steps[-1]
        calls = [c for st in trace.steps for c in st.calls]
        contexts = rebuild_contexts(calls)
        act = max(i for i, c in enumerate(calls) if c.role == "action")  # the choice at the doors
        seen = "\n".join(m.content for m in contexts[act] if m.role == "user")
        exit_colour = TOLD.search(trace.steps[0].calls[0].new_messages[-1].content)[1]
        assert last.action == f"open {exit_colour} door"
        assert not TOLD.search(seen) and re.search(rf"progress\.md:\d+: way out: {exit_colour} door", seen)
        [search] = [op for op in last.memory_ops if op.op == "search"]
        assert search.routine == "plan" and search.ok
        # the look-up ended its reply: the next call of the step came after its result
        plan_calls = [c for c in last.calls if c.routine == "plan" and c.role == "memory"]
        assert plan_calls[0].reply == "<|SEARCH|>way out<|END|>" and len(plan_calls) >= 2
        assert search.result in plan_calls[1].new_messages[-1].content


# -- tiny/key-door: the explorer trusts what it looked up ------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_explorer_takes_the_key_only_where_the_scaffold_makes_it_look_up(tmp_path, seed):
    v0 = Scaffold.builtin("tiny")
    consult = variant(tmp_path, "consult", consult_before_write=True)
    plain, _ = play(tmp_path, tiny_explorer, v0, seed, "key-door", 20)
    looked, trace = play(tmp_path, tiny_explorer, consult, seed, "key-door", 20)
    assert plain.progression == 0.0  # by choice it never looks anything up
    assert looked.progression > 0.0
    took = next(st for st in trace.steps if st.action == "take key")
    assert any(op.op == "search" and op.routine == "log" for op in took.memory_ops)
    # free text (constrain off): the agent refuses its writes, but the policy never reads a
    # refusal: nothing makes it look up, and it never takes the key
    free, free_trace = play(tmp_path, tiny_explorer, consult, seed, "key-door", 20, constrain=False)
    assert free.progression == 0.0
    assert any(not op.ok and "refused" in op.result for st in free_trace.steps for op in st.memory_ops)


def test_recall_without_memory_finishes_when_the_window_still_holds_the_fact(tmp_path):
    """The policy uses whatever the conversation shows: with writes disallowed but a history
    window longer than the corridor, the game's own words are still in view at the doors."""
    wide = variant(tmp_path, "no-writes-wide", top={"history_window": 24}, allowed_ops=list(READ_OPS))
    assert [play(tmp_path, tiny_recall, wide, s, "recall", 24)[0].progression for s in SEEDS] == [1.0] * len(SEEDS)
