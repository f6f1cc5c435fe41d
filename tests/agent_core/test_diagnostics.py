"""The diagnostics on hand-built traces: the paper's two diagnostics as defined (successful
ops only, seeded files excluded from growth, pooled over episodes) and what memory did
(a look-up reaches a write or the action only through a later call of the same step)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_core.diagnostics import (MemoryChain, aggregate, diagnose, kept_passage, kept_writes, memory_chains,
                                     memory_use)
from agent_core.records import EpisodeHeader, MemoryOp, Message, ModelCall, SamplingParams, StepRecord
from agent_core.trace import Trace


class Log:
    """Builds calls with the log indices a real conversation would give them: each call's
    reply lands at its `context_end`, the results of its operations right after."""

    def __init__(self) -> None:
        self.size = 2  # system prompt + the step's observation
        self.n = 0

    def call(self, reply: str, routine: str = "log", role: str = "memory", results: bool = True) -> ModelCall:
        c = ModelCall(call_id=f"e:{self.n}", routine=routine, role=role, model="m", messages_digest="d",
                      window_start=1, context_end=self.size, new_messages=[Message(role="user", content="obs")],
                      reply=reply)
        self.n += 1
        self.size += 2 if results else 1  # the reply, then (if any) the user message with the results
        return c


def op(call: ModelCall, name: str, ok: bool = True, delta: int = 0, empty: bool = False, result: str = "r",
       duplicate: bool = False, **args: str) -> MemoryOp:
    return MemoryOp(call_id=call.call_id, routine=call.routine, op=name, args=args, ok=ok, result=result,
                    delta_chars=delta, empty=empty, duplicate=duplicate)


def step(n: int, calls: list[ModelCall], ops: list[MemoryOp], action: str = "east", source: str = "model",
         chars: int = 0, progression: float = 0.0) -> StepRecord:
    return StepRecord(episode_id="e", step=n, observation="o", action=action, action_text=action,
                      action_source=source, reward=0.0, done=False, progression=progression, calls=calls,
                      memory_ops=ops, invalid_ops=sum(not o.ok for o in ops), memory_chars=chars,
                      memory_lines=1, elapsed_s=0.0)


def test_a_look_up_reaches_a_write_only_through_a_later_call():
    # the new protocol: SEARCH ends the turn, its result is in the context of the call that writes
    log = Log()
    search = log.call("<|SEARCH|>key<|END|>")
    write = log.call("<|UPSERT|>map.md|key|hall<|END|><|DONE|>")
    act = log.call("<|ACTION|>east<|END|>", routine="plan", role="action", results=False)
    turns = step(0, [search, write, act], [op(search, "search", query="key"),
                                          op(write, "upsert", file="map.md", key="key", value="hall")])
    assert memory_use([turns]).model_dump() == {"lookups": 1, "lookups_used": 1, "writes_after_lookup": 1,
                                                 "distinct_actions": 1, "distinct_written_texts": 1,
                                                 "kept_passages": 0}
    # the old protocol: SEARCH and UPSERT in one reply, the result came back after the write
    log = Log()
    both = log.call("<|SEARCH|>key<|END|><|UPSERT|>map.md|key|hall<|END|><|DONE|>")
    act = log.call("<|ACTION|>east<|END|>", routine="plan", role="action", results=False)
    one_reply = [op(both, "search", query="key"), op(both, "upsert", file="map.md", key="key", value="hall")]
    used = memory_use([step(0, [both, act], one_reply)])
    assert used.writes_after_lookup == 0  # the write did not see it...
    assert used.lookups_used == 1  # ...the action call did
    # no action committed by the model (the default was taken): nothing after it decided anything
    unused = memory_use([step(0, [both, act], one_reply, source="default")])
    assert unused.lookups_used == 0 and unused.writes_after_lookup == 0


def test_failed_look_ups_and_look_ups_followed_by_look_ups_only_do_not_count():
    log = Log()
    read = log.call("<|READ|>missing.md<|END|>")
    listing = log.call("<|LIST|><|END|>")
    done = log.call("<|DONE|>", results=False)
    ops = [op(read, "read", ok=False, file="missing.md"), op(listing, "list"),
           # a refused write sees the LIST result but writes nothing
           op(done, "append", ok=False, file="a.md", text="x")]
    use = memory_use([step(0, [read, listing, done], ops, source="default")])
    assert use.lookups == 1 and use.lookups_used == 0 and use.writes_after_lookup == 0
    assert use.distinct_written_texts == 0


def test_a_result_outside_the_later_call_window_did_not_reach_it():
    log = Log()
    search = log.call("<|SEARCH|>key<|END|>")
    write = log.call("<|APPEND|>a.md|x<|END|>")
    # a window that starts after the result message (index 3): it never reached the write
    write = write.model_copy(update={"window_start": search.context_end + 2})
    use = memory_use([step(0, [search, write], [op(search, "search"), op(write, "append", file="a.md", text="x")],
                           source="default")])
    assert use.lookups_used == 0 and use.writes_after_lookup == 0


@pytest.mark.parametrize("name, args", [("search", {"query": "key"}), ("read", {"file": "map.md"}),
                                        ("tail", {"file": "map.md"}), ("list", {})])
def test_a_look_up_that_returned_nothing_is_never_used(name, args):
    for empty in (False, True):
        # seen by a call that writes
        log = Log()
        look = log.call("<|LOOKUP|>")
        write = log.call("<|APPEND|>a.md|x<|END|><|DONE|>")
        use = memory_use([step(0, [look, write], [op(look, name, empty=empty, **args),
                                                  op(write, "append", file="a.md", text="x")], source="default")])
        assert (use.lookups, use.lookups_used, use.writes_after_lookup) == (1, int(not empty), int(not empty))
        # seen by the call that commits the action
        log = Log()
        look = log.call("<|LOOKUP|>", routine="plan")
        act = log.call("<|ACTION|>east<|END|>", routine="plan", role="action", results=False)
        use = memory_use([step(0, [look, act], [op(look, name, empty=empty, **args)])])
        assert (use.lookups, use.lookups_used) == (1, int(not empty))


def test_one_used_look_up_among_empty_ones():
    log = Log()
    miss = log.call("<|SEARCH|>door<|END|>")
    hit = log.call("<|SEARCH|>key<|END|>")
    write = log.call("<|UPSERT|>map.md|key|hall<|END|><|DONE|>")
    ops = [op(miss, "search", empty=True, query="door"), op(hit, "search", query="key"),
           op(write, "upsert", file="map.md", key="key", value="hall")]
    use = memory_use([step(0, [miss, hit, write], ops, source="default")])
    assert (use.lookups, use.lookups_used, use.writes_after_lookup) == (2, 1, 1)


def test_distinct_actions_and_written_texts():
    log = Log()
    calls = [log.call("<|APPEND|>a.md|x<|END|>") for _ in range(3)]
    steps = [step(0, [calls[0]], [op(calls[0], "append", file="a.md", text="seen tree")], action="east"),
             step(1, [calls[1]], [op(calls[1], "upsert", file="m.md", key="door", value="red")], action="west"),
             step(2, [calls[2]], [op(calls[2], "append", file="a.md", text="seen tree"),
                                  op(calls[2], "replace", file="a.md", old="tree", new="bush")], action="east")]
    use = memory_use(steps)
    assert use.distinct_actions == 2 and use.distinct_written_texts == 3  # "seen tree" twice, "door: red", "bush"


NOTE = "note: the key is under the green mat"
HIT = f"1 hits for 'key':\nprogress.md:1: {NOTE}"


def told(log: Log) -> StepRecord:
    """Step 0: LOG writes the note down."""
    write = log.call(f"<|APPEND|>progress.md|{NOTE}<|END|><|DONE|>")
    act = log.call("<|ACTION|>east<|END|>", routine="plan", role="action", results=False)
    return step(0, [write, act], [op(write, "append", file="progress.md", text=NOTE)])


def looked(log: Log, n: int, progression: float, empty: bool = False, seen: bool = True,
           result: str = HIT, query: str = "key") -> StepRecord:
    """Step `n`: PLAN searches memory, then the action call (which sees the result, or not) acts."""
    look = log.call(f"<|SEARCH|>{query}<|END|>", routine="plan")
    act = log.call("<|ACTION|>lift mat<|END|>", routine="plan", role="action", results=False)
    if not seen:  # a window that starts after the result message
        act = act.model_copy(update={"window_start": look.context_end + 2})
    return step(n, [look, act], [op(look, "search", empty=empty, result=result, query=query)],
                progression=progression)


def test_a_write_read_back_and_acted_on_with_progression_is_a_credited_chain():
    log = Log()
    steps = [told(log), step(1, [log.call("<|DONE|>", results=False)], [], source="default", progression=0.25),
             looked(log, 2, progression=0.75)]
    assert memory_chains(steps) == [MemoryChain(
        write_step=0, write_call_id="e:0", write_op_index=0, lookup_step=2, lookup_call_id="e:3",
        lookup_op_index=0, decision_call_id="e:4", gain=0.5)]
    assert memory_chains(steps)[0].credited
    # acted on, but the step did not progress: a chain, not credited
    log = Log()
    flat = memory_chains([told(log), looked(log, 1, progression=0.0)])
    assert [c.credited for c in flat] == [False]


def test_a_write_never_read_back_is_in_no_chain():
    log = Log()
    other = "saw: a bare wall"  # the look-up returns the note, never this line
    write = log.call(f"<|APPEND|>progress.md|{other}<|END|><|DONE|>")
    steps = [step(0, [write], [op(write, "append", file="progress.md", text=other)], source="default"),
             looked(log, 1, progression=1.0, result="no such line here")]
    assert memory_chains(steps) == []
    # a duplicate write added nothing to memory: the line is credited to the write that put it there
    log = Log()
    first, again = told(log), told(log)
    again = again.model_copy(update={"step": 1, "memory_ops": [again.memory_ops[0].model_copy(
        update={"duplicate": True})]})
    chains = memory_chains([first, again, looked(log, 2, progression=1.0)])
    assert [(c.write_step, c.write_call_id) for c in chains] == [(0, "e:0")]


def test_a_look_up_that_returned_nothing_is_in_no_chain():
    # the note was rewritten away since: a search for its text echoes the query, not memory
    log = Log()
    miss = looked(log, 1, progression=1.0, empty=True, query=NOTE, result=f"no hits for '{NOTE}'")
    assert memory_chains([told(log), miss]) == []


def test_a_look_up_whose_result_the_decision_did_not_see_is_in_no_chain():
    log = Log()
    assert memory_chains([told(log), looked(log, 1, progression=1.0, seen=False)]) == []
    # nothing decided after it: the default action was taken
    log = Log()
    default = looked(log, 1, progression=1.0).model_copy(update={"action_source": "default"})
    assert memory_chains([told(log), default]) == []
    # a write read back within its own step is no memory at work (it was in the context anyway)
    log = Log()
    write = log.call(f"<|APPEND|>progress.md|{NOTE}<|END|><|DONE|>")
    same = looked(log, 0, progression=1.0)
    same.calls.insert(0, write)
    same.memory_ops.insert(0, op(write, "append", file="progress.md", text=NOTE))
    assert memory_chains([same]) == []


def _trace(steps: list[StepRecord]) -> Trace:
    header = EpisodeHeader(episode_id="e", game="tiny", task="t", seed=0, scaffold_hash="h", memory_model="m",
                           action_model="m", max_steps=9, sampling=SamplingParams(), started_at="2026-12-02T00:00:00")
    return Trace(path=Path("trace.jsonl"), header=header, steps=steps)


def test_the_two_paper_diagnostics_count_successful_ops_and_exclude_seeded_files():
    log = Log()
    c0, c1, c2 = (log.call("x") for _ in range(3))
    # the scaffold seeded 10 characters; step 0 writes 5 and fails one write; step 1 writes 10
    s0 = step(0, [c0, c1], [op(c0, "search"), op(c0, "read", ok=False), op(c0, "list"),
                            op(c1, "append", delta=5, file="a.md", text="hello"),
                            op(c1, "append", ok=False, file="a.md", text="refused")], chars=15)
    s1 = step(1, [c2], [op(c2, "rewrite", delta=10, file="b.md", text="0123456789")], chars=25)
    d = diagnose(_trace([s0, s1]))
    assert d.initial_memory_chars == 10 and d.memory_growth_chars == 15
    assert d.growth_chars_per_step == pytest.approx(7.5)  # (25 - 10) / 2, not 25 / 2
    assert d.writes == 2 and d.consults == 1 and d.write_search_ratio == 2.0  # LIST and the failed READ: no

    # pooled over episodes: total writes / total consults, total growth / total steps
    e = diagnose(_trace([step(0, [c0], [op(c0, "search"), op(c0, "search"), op(c0, "search")], chars=0)]))
    group = aggregate([d, e])
    assert group.write_search_ratio == pytest.approx(2 / 4)  # not the mean of 2.0 and 0.0
    assert group.growth_chars_per_step == pytest.approx(15 / 3)
    assert aggregate([e]).growth_chars_per_step == 0 and aggregate([]).write_search_ratio is None


def test_a_write_kept_a_passage_only_when_it_copies_what_later_left_the_view():
    seen = 'You are in a hall. A sign on the wall reads: "The key is under the third stone."'
    later = ["You are in a corridor.", "You stand before three stones."]
    assert kept_passage("the key is under the third stone", seen, later)
    assert kept_passage("note: The key is under the THIRD stone!\nhall", seen, later)  # one line is enough
    assert not kept_passage("the key is under the third stone", seen, later + [seen])  # shown again later
    assert not kept_passage("the key is under the blue rock", seen, later)  # 5 of 8 words copied: made up
    assert not kept_passage("third stone", seen, later)  # too short to be a passage
    # an episode: the step-0 write kept it; the same text written again later (the sign is gone
    # from view by then) is a duplicate, and a write that copies what stays in view is not kept
    log = Log()
    w0 = log.call("<|APPEND|>notes.md|the key is under the third stone<|END|><|DONE|>")
    w1 = log.call("<|APPEND|>notes.md|you are in a corridor<|END|><|DONE|>")
    s0 = step(0, [w0], [op(w0, "append", file="notes.md", text="the key is under the third stone")])
    s1 = step(1, [w1], [op(w1, "append", file="notes.md", text="you are in a long corridor now")])
    s0.observation, s1.observation = seen, "You are in a long corridor now."
    s2 = step(2, [], [])
    s2.observation = "You are in a long corridor now."
    assert kept_writes([s0, s1, s2]) == {(0, 0)}
    assert memory_use([s0, s1, s2]).kept_passages == 1
