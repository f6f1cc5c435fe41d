"""Build the memory specialist's training set from the archive, as a curation program says.

Every example is verbatim: the exact context a memory-role call saw (rebuilt from the
calls table with `agent_core.conversation.rebuild_contexts`) and that call's reply. The one
edit ever made is cutting world-action commands out of PLAN replies, so the specialist
never learns to pick actions (the base model commits them).

Datasets are content-addressed: `out_root/<digest>/` where the digest covers the program's
selection and composition and the examples themselves; a directory that exists is reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from agent_core.archive import QueryError, connect, run_query
from agent_core.commands import MEMORY_OPS, TAG_RE, parse_reply, split_at_look_ups
from agent_core.conversation import rebuild_contexts
from agent_core.diagnostics import MemoryChain
from agent_core.records import Message, ModelCall, messages_digest
from agent_core.training.data_card import data_card, data_card_markdown
from agent_core.training.program import CurationProgram, ProgramError

TRAIN_FILE = "train.jsonl"
CARD_JSON = "data_card.json"
CARD_MD = "data_card.md"
ROUTINES = ("log", "plan")

#: any ACTION tag, in the parser's forgiving spelling (any case, spaces inside the tag)
_ACTION_TAG_RE = re.compile(r"<\|[ \t]{0,8}/?[ \t]{0,8}action[ \t]{0,8}\|>", re.IGNORECASE)


class DatasetInfo(BaseModel):
    """A built (or reused) dataset directory and what it holds."""

    path: Path = Field(description="The dataset directory (train.jsonl, data_card.md/.json).")
    digest: str = Field(description="Content hash naming the directory.")
    examples: int = Field(description="Number of training examples.")
    per_routine: dict[str, int] = Field(description="Examples per routine (log, plan).")
    per_game: dict[str, int] = Field(description="Examples per game.")
    reused: bool = Field(description="True when the directory already existed and was kept.")


def strip_actions(reply: str) -> str | None:
    """`reply` with every ACTION command cut out verbatim (the rest unchanged), or None when
    an ACTION tag cannot be cut cleanly (e.g. a malformed one the parser did not accept)."""
    out, cursor = [], 0
    for cmd in parse_reply(reply).commands:
        # commands come in reply order and `raw` is their exact text: find each in turn
        pos = reply.find(cmd.raw, cursor)
        if pos < 0:  # cannot happen for parser output; refuse rather than guess
            return None
        if cmd.op == "action":
            out.append(reply[cursor:pos])
            cursor = pos + len(cmd.raw)
    out.append(reply[cursor:])
    text = "".join(out)
    return None if _ACTION_TAG_RE.search(text) else text


def select_calls(archive_root: Path, program: CurationProgram, timeout_s: float) -> list[str]:
    """The call ids the program's SQL selects (sandboxed, time-limited, read-only)."""
    try:
        table = run_query(archive_root, program.selection_sql, timeout_s=timeout_s)
    except QueryError as exc:
        raise ProgramError(f"selection_sql refused: {exc}") from None
    if "call_id" not in table.column_names:
        raise ProgramError(f"selection_sql must return a column named call_id; got {table.column_names}")
    ids = sorted({str(v) for v in table.column("call_id").to_pylist() if v is not None})
    if not ids:
        raise ProgramError("selection returned no calls")
    return ids


def _candidates(con: Any, ids: list[str], stats: Counter, closed_replies: bool = False) -> list[dict[str, Any]]:
    """Selected memory-role LOG/PLAN calls with their training target; the rest is counted.
    A reply the backend closed at its token budget is a target only with `closed_replies`."""
    import pyarrow as pa

    con.register("selected_ids", pa.table({"call_id": ids}))
    rows = con.execute(
        "SELECT c.call_id, c.episode_id, c.game, c.task, c.seed, c.step, c.call_index, c.routine, c.role, c.reply, "
        "c.finish_reason, coalesce(c.closed_at_budget, false), (SELECT count(*) FROM memory_ops o WHERE o.call_id = c.call_id) "
        "FROM calls c JOIN selected_ids s ON s.call_id = c.call_id "
        "ORDER BY c.game, c.episode_id, c.call_index").fetchall()
    stats["selected_ids"] = len(ids)
    stats["unknown_ids"] = len(ids) - len(rows)
    out = []
    for call_id, episode_id, game, task, seed, step, call_index, routine, role, reply, finish, closed, ran in rows:
        if role != "memory" or routine not in ROUTINES:
            stats["dropped_not_memory_role"] += 1
            continue
        if finish != "stop":  # cut off by the token limit, or ended otherwise (abort, filter): never a target
            stats["dropped_truncated"] += 1
            continue
        if closed and not closed_replies:  # its ending is the backend's, not the model's
            stats["dropped_closed_at_budget"] += 1
            continue
        commands = parse_reply(reply).commands
        # beyond max_ops, or written after a look-up group ended the reply: not all ran (a world
        # action after it is cut from targets anyway)
        if sum(c.op in MEMORY_OPS for c in commands) > ran or \
                any(c.op != "action" for c in split_at_look_ups(commands)[1]):
            stats["dropped_ops_not_run"] += 1
            continue
        target = reply
        if _ACTION_TAG_RE.search(reply):
            if routine == "log":  # an ACTION in LOG is a mistake: never reinforce it
                stats["dropped_log_with_action"] += 1
                continue
            target = strip_actions(reply)
            if target is None:
                stats["dropped_unremovable_action"] += 1
                continue
            if not target.strip():
                stats["dropped_action_only"] += 1
                continue
            stats["actions_removed"] += 1
        out.append(dict(call_id=call_id, episode_id=episode_id, game=game, task=task, seed=seed, step=step,
                        call_index=call_index, routine=routine, target=target))
    return out


def _rng(seed: int, *key: str) -> random.Random:
    # a string seed is hashed with SHA-512 by `random`: stable across runs and platforms
    return random.Random(":".join([str(seed), *key]))


def compose(candidates: list[dict[str, Any]], progression: dict[str, float],
            program: CurationProgram, stats: Counter) -> list[dict[str, Any]]:
    """Apply the composition, deterministically:

    1. top_episode_share: per game, rank the episodes that have candidates by final
       progression (ties by episode id) and keep the first ceil(share * n);
    2. max_per_episode: a seeded sample of each episode's candidates;
    3. routine_mix and max_examples: the largest total N <= max_examples that every routine
       with a positive share can supply (N * share <= available), split by largest remainder,
       each routine a seeded sample; a routine with share 0 contributes nothing;
    4. min_examples: fewer examples is a failed trial (`ProgramError`).

    The result is ordered by game, episode and call index."""
    comp = program.composition
    by_game: dict[str, list[str]] = {}
    for c in candidates:
        eps = by_game.setdefault(c["game"], [])
        if c["episode_id"] not in eps:
            eps.append(c["episode_id"])
    keep: set[str] = set()
    for game, eps in by_game.items():
        ranked = sorted(eps, key=lambda e: (-progression.get(e, 0.0), e))
        keep.update(ranked[: max(1, math.ceil(comp.top_episode_share * len(ranked) - 1e-9))])
    stats["pool_episodes"] = sum(len(e) for e in by_game.values())
    stats["kept_episodes"] = len(keep)
    pool = [c for c in candidates if c["episode_id"] in keep]

    per_episode: dict[str, list[dict[str, Any]]] = {}
    for c in pool:
        per_episode.setdefault(c["episode_id"], []).append(c)
    capped = []
    for episode_id in sorted(per_episode):
        items = per_episode[episode_id]
        if len(items) > comp.max_per_episode:
            items = _rng(comp.seed, "episode", episode_id).sample(items, comp.max_per_episode)
        capped.extend(items)

    by_routine = {r: [c for c in capped if c["routine"] == r] for r in ROUTINES}
    shares = comp.routine_mix.shares()
    available = {r: len(by_routine[r]) for r in ROUTINES}
    n = min([comp.max_examples] + [math.floor(available[r] / s + 1e-9) for r, s in shares.items()])
    counts = {r: math.floor(n * s + 1e-9) for r, s in shares.items()}
    for r in sorted(shares, key=lambda r: (-(n * shares[r] - counts[r]), r)):
        if sum(counts.values()) >= n:
            break
        if counts[r] < available[r]:
            counts[r] += 1
    chosen = []
    for r, k in counts.items():
        items = by_routine[r]
        chosen.extend(items if k >= len(items) else _rng(comp.seed, "routine", r).sample(items, k))
    total = len(chosen)
    if total < comp.min_examples:
        raise ProgramError(
            f"composition leaves {total} examples, fewer than min_examples {comp.min_examples}: "
            f"after the top {comp.top_episode_share:g} of {stats['pool_episodes']} episodes and "
            f"max_per_episode {comp.max_per_episode}, available log {available['log']}, "
            f"plan {available['plan']}; routine_mix {shares}")
    return sorted(chosen, key=lambda c: (c["game"], c["episode_id"], c["call_index"]))


def refuse_degenerate(targets: list[str]) -> None:
    """`ProgramError` when a training set cannot teach anything: every target is one text
    (e.g. 34 copies of `<|DONE|>`), or no target has free text outside the protocol's tags."""
    if not targets:
        return
    if len(targets) > 1 and len(set(targets)) == 1:
        raise ProgramError(f"degenerate training set: all {len(targets)} targets are the same text "
                           f"{targets[0][:80]!r}; there is nothing to learn: select other replies")
    if not any(TAG_RE.sub("", t).strip() for t in targets):
        shown = ", ".join(repr(t[:40]) for t in sorted(set(targets))[:3])
        raise ProgramError(f"degenerate training set: none of the {len(targets)} targets has free text "
                           f"outside the tags (e.g. {shown}); there is nothing to learn: select other replies")


def _chains(con: Any, examples: list[dict[str, Any]]) -> list[list[MemoryChain]]:
    """Per example, the credited chains (`diagnostics.memory_chains`) its call is a link of
    (the write's call or the look-up's call), in look-up order."""
    ids = [e["meta"]["call_id"] for e in examples]
    names = list(MemoryChain.model_fields)
    by_call: dict[str, list[MemoryChain]] = {}
    for row in con.execute(
            f"SELECT {', '.join(names)} FROM chains WHERE credited AND (list_contains(?, write_call_id) "
            "OR list_contains(?, lookup_call_id)) ORDER BY lookup_step, lookup_op_index, write_step",
            [ids, ids]).fetchall():
        chain = MemoryChain(**dict(zip(names, row)))
        for call_id in {chain.write_call_id, chain.lookup_call_id}:
            by_call.setdefault(call_id, []).append(chain)
    return [by_call.get(i, []) for i in ids]


def _episode_calls(con: Any, episode_id: str) -> list[ModelCall]:
    rows = con.execute(
        "SELECT call_index, call_id, routine, role, model, messages_digest, fixed_prefix, window_start, "
        "context_end, new_messages, reply FROM calls WHERE episode_id = ? ORDER BY call_index",
        [episode_id]).fetchall()
    if [r[0] for r in rows] != list(range(len(rows))):
        raise ValueError(f"episode {episode_id}: archived calls are not contiguous; contexts cannot be rebuilt")
    return [ModelCall(call_id=cid, routine=routine, role=role, model=model, messages_digest=digest,
                      fixed_prefix=fixed, window_start=ws, context_end=end, reply=reply,
                      new_messages=[Message(**m) for m in new_messages])
            for _, cid, routine, role, model, digest, fixed, ws, end, new_messages, reply in rows]


def _examples(con: Any, chosen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat-format examples: the exact context (rebuilt from the episode's calls) + target."""
    contexts: dict[str, list[Message]] = {}
    fixed: dict[str, int] = {}  # messages at the front that inference never cuts
    for episode_id in sorted({c["episode_id"] for c in chosen}):
        calls = _episode_calls(con, episode_id)
        for call, context in zip(calls, rebuild_contexts(calls)):
            if messages_digest(context) != call.messages_digest:
                raise ValueError(f"call {call.call_id}: the rebuilt context does not match its "
                                 "recorded digest; the archive is inconsistent")
            contexts[call.call_id] = context
            fixed[call.call_id] = call.fixed_prefix
    return [{"messages": [m.model_dump() for m in contexts[c["call_id"]]], "target": c["target"],
             "fixed": fixed[c["call_id"]],
             "meta": {k: c[k] for k in ("call_id", "episode_id", "game", "task", "seed", "step", "routine")}}
            for c in chosen]


def add_grammars(con: Any, examples: list[dict[str, Any]]) -> None:
    """Give each example the text of the grammar its reply was decoded under (`grammar`;
    None: unconstrained), from the calls' digests and the steps' `grammars`, so training can
    tell the tokens the grammar forced from those the model chose (`lora.forced_mask`)."""
    ids = [e["meta"]["call_id"] for e in examples]
    digests = dict(con.execute("SELECT call_id, grammar FROM calls WHERE list_contains(?, call_id)",
                               [ids]).fetchall())
    texts: dict[str, str] = {}
    for (grammars,) in con.execute(
            "SELECT grammars FROM steps WHERE list_contains(?, episode_id) AND grammars IS NOT NULL",
            [sorted({e["meta"]["episode_id"] for e in examples})]).fetchall():
        texts.update(grammars)
    for e in examples:
        digest = digests.get(e["meta"]["call_id"])
        if digest is not None and digest not in texts:
            raise ValueError(f"call {e['meta']['call_id']}: its grammar {digest} is not in the archive")
        e["grammar"] = texts.get(digest) if digest is not None else None


def _info(path: Path, card: dict[str, Any], reused: bool) -> DatasetInfo:
    return DatasetInfo(path=path, digest=card["digest"], examples=card["examples"],
                       per_routine=card["per_routine"], per_game=card["per_game"], reused=reused)


def build_dataset(archive_root: str | Path, program: CurationProgram, out_root: str | Path,
                  tokenizer: Any | None = None, timeout_s: float = 30.0) -> DatasetInfo:
    """Run the program's selection (sandboxed, `timeout_s`), compose, and write the dataset
    to `out_root/<digest>/` atomically (or reuse it when it exists).

    `tokenizer` (optional, a transformers tokenizer) adds token-length stats to the card.
    Raises `ProgramError` for refused SQL, an empty selection, too few examples, or a
    degenerate set (`refuse_degenerate`)."""
    archive_root, out_root = Path(archive_root), Path(out_root)
    stats: Counter = Counter()
    ids = select_calls(archive_root, program, timeout_s)
    con = connect(archive_root)
    try:
        candidates = _candidates(con, ids, stats, program.composition.closed_replies)
        if not candidates:
            raise ProgramError(f"selection has no usable memory-role LOG/PLAN calls "
                               f"({dict(sorted(stats.items()))})")
        episodes = sorted({c["episode_id"] for c in candidates})
        progression = dict(con.execute(
            "SELECT episode_id, progression FROM episodes WHERE list_contains(?, episode_id)",
            [episodes]).fetchall())
        chosen = compose(candidates, progression, program, stats)
        refuse_degenerate([c["target"] for c in chosen])
        examples = _examples(con, chosen)
        chains = _chains(con, examples)
        add_grammars(con, examples)
    finally:
        con.close()

    blob = json.dumps({"selection_sql": program.selection_sql,
                       "composition": program.composition.model_dump(mode="json"),
                       "examples": examples}, sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    final = out_root / digest
    if (final / CARD_JSON).is_file():
        return _info(final, json.loads((final / CARD_JSON).read_text()), reused=True)
    card = data_card(program, examples, chains, stats, digest, tokenizer, ROUTINES,
                     held_out_episodes(examples))
    out_root.mkdir(parents=True, exist_ok=True)
    remove_stale(out_root, ".tmp-*")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{digest}-", dir=out_root))
    try:
        with open(tmp / TRAIN_FILE, "w", encoding="utf-8") as fh:
            for e in examples:
                fh.write(json.dumps(e, ensure_ascii=False) + "\n")
        (tmp / CARD_JSON).write_text(json.dumps(card, indent=2, ensure_ascii=False))
        (tmp / CARD_MD).write_text(data_card_markdown(card))
        try:
            os.rename(tmp, final)
        except OSError:
            # a concurrent build of the same content won: its copy is identical
            if not (final / CARD_JSON).is_file():
                raise
            return _info(final, json.loads((final / CARD_JSON).read_text()), reused=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _info(final, card, reused=False)


def remove_stale(folder: Path, pattern: str, age_s: float = 3600.0) -> None:
    """Remove temp folders matching `pattern` older than `age_s`: leftovers of runs that were
    killed (SIGKILL skips `finally`); recent ones may belong to a live run."""
    now = time.time()
    for tmp in folder.glob(pattern) if folder.is_dir() else []:
        try:
            if now - tmp.stat().st_mtime > age_s:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


#: about this share of a dataset's episodes is held out for the held-out loss
HELD_OUT_SHARE = 0.1
#: stop adding held-out episodes once they hold this many examples (evaluation time)
HELD_OUT_MAX_EXAMPLES = 32


def _episode_of(example: dict[str, Any]) -> str:
    """The game seed an example was played on (several samples of one seed start alike, so
    they are held out together), else the episode it came from, else its content digest
    (then it stands alone)."""
    meta = example.get("meta", {})
    if meta.get("seed") is not None and meta.get("game"):
        return f"{meta['game']}/{meta.get('task')}/seed {meta['seed']}"
    episode = meta.get("episode_id")
    if episode:
        return str(episode)
    blob = json.dumps([example["messages"], example["target"]], sort_keys=True, ensure_ascii=False)
    return "example:" + hashlib.sha256(blob.encode()).hexdigest()


def split_held_out(examples: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """Indices (train, held out) of `examples`, split by game seed (`_episode_of`): the
    examples of one episode share most of their context (each call sees the steps before
    it), and the samples of one seed (`samples_per_seed`) start from the same observation, so
    a finer split would score the adapter on near-copies of what it trained on. About one
    seed in ten is held out (at least one once there are two; further seeds only while the
    held-out examples number fewer than HELD_OUT_MAX_EXAMPLES), chosen by a hash of the
    seed's name, so the split is the same whatever the order. With a single seed nothing is
    held out: there is no honest held-out loss to give."""
    by_episode: dict[str, list[int]] = {}
    for i, x in enumerate(examples):
        by_episode.setdefault(_episode_of(x), []).append(i)
    if len(by_episode) < 2:
        return list(range(len(examples))), []
    ranked = sorted(by_episode, key=lambda e: hashlib.sha256(e.encode()).hexdigest())
    want = max(1, min(len(ranked) - 1, round(HELD_OUT_SHARE * len(ranked))))
    held: list[int] = []
    for episode in ranked[:want]:
        if held and len(held) >= HELD_OUT_MAX_EXAMPLES:
            break
        held += by_episode[episode]
    held_set = set(held)
    return [i for i in range(len(examples)) if i not in held_set], sorted(held)


def held_out_episodes(examples: list[dict[str, Any]]) -> list[str]:
    """The episodes `split_held_out` holds out (for the data card)."""
    _, held = split_held_out(examples)
    return sorted({examples[i].get("meta", {}).get("episode_id") or _episode_of(examples[i]) for i in held})


def load_examples(dataset_dir: str | Path) -> list[dict[str, Any]]:
    """The examples of a dataset directory, in file order."""
    with open(Path(dataset_dir) / TRAIN_FILE, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
