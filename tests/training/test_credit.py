"""Credit for memory in loop 2: the archive's `chains` table (from `diagnostics.memory_chains`),
the rule-based selection over it (no game words), the data card's chain per example, and
the refusal of a degenerate training set. The episodes are hand-built traces written through
the real records and trace writer, with contexts that rebuild exactly (`rebuild_contexts`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_core.archive import archive_trace, connect
from agent_core.records import EpisodeHeader, EpisodeSummary, MemoryOp, Message, ModelCall, SamplingParams, \
    StepRecord, messages_digest
from agent_core.trace import TRACE_NAME, TraceWriter
from agent_core.training.dataset import build_dataset, load_examples, refuse_degenerate
from agent_core.training.program import ProgramError, pool_digest, rule_based_program

NOTE = "note: the key is under the green mat"


class Play:
    """One hand-built episode. Every call's context is the episode's log from `window_start`
    on (after the system prompt); the first of its new messages holds the results of the
    previous call's operations (or the observation), as in a played episode."""

    def __init__(self, episode_id: str) -> None:
        self.id = episode_id
        self.log: list[Message] = []
        self.new: list[Message] = [Message(role="system", content="You keep notes in memory.")]
        self.calls: list[ModelCall] = []
        self.steps: list[StepRecord] = []
        self.ops: list[MemoryOp] = []
        self.step_calls: list[ModelCall] = []

    def call(self, routine: str, reply: str, user: str, role: str = "memory", window_start: int = 1,
             ops: tuple[tuple[str, dict, str, bool], ...] = ()) -> ModelCall:
        """A call; `ops`: (op, args, result, empty) of what its reply ran (all successful)."""
        if self.calls:
            self.log.append(Message(role="assistant", content=self.calls[-1].reply))
        self.new.append(Message(role="user", content=user))
        self.log += self.new
        end = len(self.log)
        call = ModelCall(call_id=f"{self.id}:{len(self.calls)}", routine=routine, role=role, model="m",
                         messages_digest=messages_digest([*self.log[:1], *self.log[window_start:end]]),
                         window_start=window_start, context_end=end, new_messages=self.new, reply=reply)
        self.new = []
        self.calls.append(call)
        self.step_calls.append(call)
        self.ops += [MemoryOp(call_id=call.call_id, routine=routine, op=name, args=args, ok=True, result=result,
                              empty=empty) for name, args, result, empty in ops]
        return call

    def end_step(self, progression: float, action: str = "east") -> None:
        self.steps.append(StepRecord(
            episode_id=self.id, step=len(self.steps), observation="o", action=action, action_text=action,
            action_source="model", reward=0.0, done=False, progression=progression, calls=self.step_calls,
            memory_ops=self.ops, invalid_ops=0, memory_chars=0, memory_lines=0, elapsed_s=0.0))
        self.step_calls, self.ops = [], []

    def act(self, action: str = "east", window_start: int = 1) -> ModelCall:
        return self.call("plan", f"<|ACTION|>{action}<|END|>", "Choose the action.", role="action",
                         window_start=window_start)

    def write(self, path: Path, seed: int) -> Path:
        trace = path / self.id / TRACE_NAME
        final = self.steps[-1].progression
        with TraceWriter(trace) as w:
            w.write(EpisodeHeader(episode_id=self.id, game="tiny", task="tiny", seed=seed, scaffold_hash="h",
                                  memory_model="m", action_model="m", max_steps=len(self.steps),
                                  sampling=SamplingParams(), started_at="2026-12-04T00:00:00"))
            for s in self.steps:
                w.write(s)
            w.write(EpisodeSummary(episode_id=self.id, game="tiny", task="tiny", seed=seed, scaffold_hash="h",
                                   steps=len(self.steps), progression=final, total_reward=0.0,
                                   invalid_actions=0, invalid_ops=0, default_actions=0, memory_chars=0,
                                   prompt_tokens=0, completion_tokens=0, wall_s=0.0, end_reason="max_steps"))
        return trace


def append(text: str) -> tuple[str, dict, str, bool]:
    return ("append", {"file": "progress.md", "text": text}, f"appended {len(text)} chars to progress.md", False)


def search(query: str, hits: list[str]) -> tuple[str, dict, str, bool]:
    if not hits:
        return ("search", {"query": query}, f"no hits for '{query}'", True)
    return ("search", {"query": query}, f"{len(hits)} hits for '{query}':\n" + "\n".join(
        f"progress.md:{i + 1}: {h}" for i, h in enumerate(hits)), False)


def credited_episode() -> tuple[Play, dict[str, str]]:
    """The note is written (step 0), a wall is written and never read (step 1), a look-up
    returns the note but nothing progresses (step 1), one returns nothing (step 2), and one
    returns the note in front of the action that progresses (step 3)."""
    p = Play("credit")
    wrote = p.call("log", f"<|APPEND|>progress.md|{NOTE}<|END|><|DONE|>", "A note on the wall.", ops=(append(NOTE),))
    p.act()
    p.end_step(0.0)
    wall = p.call("log", "<|APPEND|>progress.md|saw: a bare wall<|END|><|DONE|>", "A bare wall.",
                  ops=(append("saw: a bare wall"),))
    idle = p.call("plan", "<|SEARCH|>green<|END|>", "Plan.", ops=(search("green", [NOTE]),))
    p.act()
    p.end_step(0.0)
    empty = p.call("plan", "<|SEARCH|>door<|END|>", "Plan.", ops=(search("door", []),))
    p.act()
    p.end_step(0.25)
    looked = p.call("plan", "<|SEARCH|>key<|END|>", "A mat.", ops=(search("key", [NOTE]),))
    decided = p.act("lift mat")
    p.end_step(0.75, "lift mat")
    return p, {"wrote": wrote.call_id, "wall": wall.call_id, "idle": idle.call_id, "empty": empty.call_id,
               "looked": looked.call_id, "decided": decided.call_id}


def unseen_episode() -> Play:
    """As the credited one, but the action's window starts after the look-up's result: the
    decision never saw it (same final progression, so not a better episode either)."""
    p = Play("unseen")
    p.call("log", f"<|APPEND|>progress.md|{NOTE}<|END|><|DONE|>", "A note on the wall.", ops=(append(NOTE),))
    p.act()
    p.end_step(0.0)
    look = p.call("plan", "<|SEARCH|>key<|END|>", "A mat.", ops=(search("key", [NOTE]),))
    p.act("lift mat", window_start=look.context_end + 2)
    p.end_step(0.75, "lift mat")
    return p


def better_episode() -> tuple[Play, dict[str, str]]:
    """No chain, but the best final progression (the outcome signal): its LOG turns that
    consulted memory before writing are kept, the one that wrote without consulting is not."""
    p = Play("better")
    blind = p.call("log", "<|APPEND|>progress.md|saw: a hall<|END|><|DONE|>", "A hall.",
                   ops=(append("saw: a hall"),))
    p.act()
    p.end_step(0.5)
    consult = p.call("log", "<|SEARCH|>stairs<|END|>", "Stairs.", ops=(search("stairs", []),))
    wrote = p.call("log", "<|APPEND|>progress.md|saw: stairs going up<|END|><|DONE|>", "no hits",
                   ops=(append("saw: stairs going up"),))
    p.act("go up")
    p.end_step(1.0, "go up")
    return p, {"blind": blind.call_id, "consult": consult.call_id, "wrote": wrote.call_id}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    work = tmp_path_factory.mktemp("credit")
    credit, ids = credited_episode()
    better, better_ids = better_episode()
    for i, play in enumerate([credit, unseen_episode(), better]):
        archive_trace(play.write(work / "traces", i), work / "archive")
    return work / "archive", ids, better_ids


def test_the_archive_holds_the_credited_chain_only_where_memory_was_read_and_acted_on(pool):
    root, ids, _ = pool
    con = connect(root)
    try:
        rows = con.execute("SELECT episode_id, write_call_id, lookup_call_id, decision_call_id, gain, credited "
                           "FROM chains ORDER BY lookup_step").fetchall()
    finally:
        con.close()
    # the idle look-up makes a chain without credit; the wall is never read; the empty look-up and
    # the unseen episode's look-up make none
    assert rows == [("credit", ids["wrote"], ids["idle"], f"credit:{int(ids['idle'].split(':')[1]) + 1}", 0.0, False),
                    ("credit", ids["wrote"], ids["looked"], ids["decided"], 0.5, True)]


def test_the_rule_based_program_selects_the_links_of_credited_chains_and_the_better_episode(pool, tmp_path):
    root, ids, better = pool
    digest = pool_digest(root)
    assert digest["games"]["tiny"]["chains"] == {"chains": 2, "credited": 1}
    program = rule_based_program(digest)
    assert "door" not in program.selection_sql.lower() and "key" not in program.selection_sql.lower()
    info = build_dataset(root, program, tmp_path)
    examples = load_examples(info.path)
    chosen = {e["meta"]["call_id"] for e in examples}
    # credit: the write and the look-up that returned it in front of the progressing decision;
    # outcome: the better episode's turns that consulted before writing
    assert chosen == {ids["wrote"], ids["looked"], better["consult"], better["wrote"]}
    assert digest["rule_based_turns"] == {"log": 3, "plan": 1}
    assert info.per_routine == {"log": 3, "plan": 1}

    card = json.loads((info.path / "data_card.json").read_text())
    chains = dict(zip([row[2] for row in card["provenance"]], card["chains"]))
    for link in ("wrote", "looked"):
        (chain,) = chains[ids[link]]
        assert (chain["write_call_id"], chain["write_step"], chain["lookup_call_id"], chain["lookup_step"],
                chain["decision_call_id"], chain["gain"], chain["credited"]) == (
            ids["wrote"], 0, ids["looked"], 3, ids["decided"], 0.5, True)
    assert chains[better["consult"]] == chains[better["wrote"]] == []
    md = (info.path / "data_card.md").read_text()
    assert f"| credit | 0 | {ids['wrote']} | log | write step 0 -> look-up step 3 -> {ids['decided']} -> +0.5 |" in md
    assert f"| better | 1 | {better['consult']} | log | - |" in md


def test_a_degenerate_training_set_is_refused(archive, tmp_path):
    from agent_core.training.program import Composition, CurationProgram, LoraSettings, RoutineMix

    def program(sql: str) -> CurationProgram:
        return CurationProgram(selection_sql=sql, composition=Composition(
            routine_mix=RoutineMix(log=0.0, plan=1.0), max_per_episode=100, min_examples=1, max_examples=1000,
            top_episode_share=1.0), lora=LoraSettings(rank=4, alpha=8, target_modules=["q_proj"],
                                                      learning_rate=1e-3, max_seq_len=64))

    # every PLAN turn of the consulting episodes ends with the same bare tag
    with pytest.raises(ProgramError, match=r"degenerate training set: all 16 targets are the same text '<\|DONE\|>'"):
        build_dataset(archive.root, program("select call_id from calls where reply = '<|DONE|>'"), tmp_path)
    assert list(tmp_path.iterdir()) == []
    # two texts, but tags only
    with pytest.raises(ProgramError, match="none of the 2 targets has free text outside the tags"):
        refuse_degenerate(["<|DONE|>", "<|LIST|><|END|>"])
    refuse_degenerate(["<|DONE|>", "<|APPEND|>progress.md|saw: a hall<|END|><|DONE|>"])  # one with free text
    # with a second text the same selection trains
    mixed = "select call_id from calls where reply in ('<|DONE|>', '<|SEARCH|>key<|END|>')"
    assert build_dataset(archive.root, program(mixed), tmp_path).examples > 16


def test_on_the_recall_game_credit_goes_to_the_told_fact_and_the_look_up_at_the_doors(tmp_path):
    """Played, not hand-built: the rule-based `tiny-recall` policy (not a model) writes the way
    out down when it is told (step 0) and looks it up at the doors; every episode ends alike, so
    only the chains select, and they select exactly those two turns per episode."""
    from agent_core.episode import run_episode
    from agent_core.models.config import ModelConfig
    from agent_core.scaffold import Scaffold
    from environments import make_env

    episodes = []
    for seed in (0, 1):
        s = run_episode(make_env("tiny", "recall-short"), Scaffold.builtin("tiny"),
                        ModelConfig(backend="scripted", policy="tiny-recall").build(), seed, 12, tmp_path / str(seed))
        archive_trace(s.trace_path, tmp_path / "archive")
        episodes.append(s)
    assert [s.progression for s in episodes] == [1.0, 1.0]
    info = build_dataset(tmp_path / "archive", rule_based_program(pool_digest(tmp_path / "archive")), tmp_path / "sft")
    examples = load_examples(info.path)
    card = json.loads((info.path / "data_card.json").read_text())
    assert info.per_routine == {"log": 2, "plan": 2}
    for episode in episodes:
        log, plan = [(e, chains) for e, chains in zip(examples, card["chains"])
                     if e["meta"]["episode_id"] == episode.episode_id]
        assert (log[0]["meta"]["routine"], log[0]["meta"]["step"], plan[0]["meta"]["routine"]) == ("log", 0, "plan")
        assert log[1] == plan[1] and len(log[1]) == 1  # one chain, both its links
        chain = log[1][0]
        assert (chain["write_call_id"], chain["write_step"]) == (log[0]["meta"]["call_id"], 0)
        assert (chain["lookup_call_id"], chain["lookup_step"]) == (plan[0]["meta"]["call_id"], plan[0]["meta"]["step"])
        assert chain["gain"] > 0 and plan[0]["meta"]["step"] > 0
