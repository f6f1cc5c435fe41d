"""The curation program: the meta-LLM's single decision in the second outer loop.

One JSON object fixes, together, (a) which archived model calls are training candidates
(a read-only DuckDB SELECT over the archive), (b) how the training set is composed from
them, and (c) the LoRA training settings. A trial that fails (bad JSON, a schema error,
SQL that is refused, an empty selection) raises `ProgramError` whose `reason` is shown to
the meta-LLM in its next trial.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent_core.commands import CONSULT_OPS, WRITE_OPS
from agent_core.models.devices import DeviceSetting
from agent_core.models.config import VLLM_LORA_MODULES


class ProgramError(ValueError):
    """A curation program that cannot be used; `reason` is fed back to the next trial."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RoutineMix(_Strict):
    """Shares of the training examples per memory routine; they sum to 1."""

    log: float = Field(ge=0.0, le=1.0, description="Share of LOG-routine replies.")
    plan: float = Field(ge=0.0, le=1.0, description="Share of PLAN memory-consultation replies.")

    @model_validator(mode="after")
    def _sums_to_one(self) -> "RoutineMix":
        if not math.isclose(self.log + self.plan, 1.0, abs_tol=1e-6):
            raise ValueError(f"shares must sum to 1, got log {self.log} + plan {self.plan}")
        return self

    def shares(self) -> dict[str, float]:
        """Routine -> share, routines with share 0 left out."""
        return {r: s for r, s in (("log", self.log), ("plan", self.plan)) if s > 0}


class Composition(_Strict):
    """How the training set is drawn from the selected calls (see `dataset.compose`)."""

    routine_mix: RoutineMix = Field(description="Share of examples per routine (log, plan).")
    max_per_episode: int = Field(ge=1, le=100_000, description="At most this many examples from one episode.")
    min_examples: int = Field(ge=1, le=1_000_000, description="Fewer examples than this is a failed trial.")
    max_examples: int = Field(ge=1, le=1_000_000, description="At most this many examples in all.")
    top_episode_share: float = Field(
        gt=0.0, le=1.0, description="Fraction of each game's pool episodes (those with selected "
        "memory calls), best final progression first, that examples may come from (1: all).")
    seed: int = Field(0, ge=0, description="Seed of the deterministic sampling under the caps.")
    closed_replies: bool = Field(
        False, description="Also train on replies the local backend closed at its token budget "
        "(calls.closed_at_budget: tokens taken back, an argument completed, <|END|> added by the "
        "backend, not written by the model). Default: never a target.")

    @model_validator(mode="after")
    def _bounds(self) -> "Composition":
        if self.min_examples > self.max_examples:
            raise ValueError(f"min_examples ({self.min_examples}) exceeds max_examples ({self.max_examples})")
        return self


class TrainingBudget(_Strict):
    """What the training machine uses and can afford per trial (e.g. a 2-core CPU, a GPU):
    its device, and caps applied over whatever LoRA settings the curator chose. The capped
    settings are the ones recorded and hashed."""

    max_steps: int | None = Field(None, ge=1, description="Most optimizer steps per trial.")
    max_batch_size: int | None = Field(None, ge=1, description="Largest micro-batch.")
    max_seq_len: int | None = Field(None, ge=64, description="Longest example in tokens.")
    device: DeviceSetting = Field("auto", description="Training device: auto (CUDA when "
                        "torch sees a GPU, else CPU), cpu, cuda or cuda:N; bf16 weights on a GPU.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward "
                                         "pass: less GPU memory for long contexts, same loss.")

    def apply(self, lora: "LoraSettings") -> "LoraSettings":
        caps = {"max_steps": self.max_steps, "batch_size": self.max_batch_size, "max_seq_len": self.max_seq_len}
        update = {k: min(v, getattr(lora, k) or v) for k, v in caps.items() if v is not None}
        return lora.model_copy(update=update)


class LoraSettings(_Strict):
    """LoRA fine-tuning of the memory specialist (peft on transformers)."""

    rank: int = Field(ge=1, le=256, description="LoRA rank r.")
    alpha: float = Field(gt=0.0, le=4096.0, description="LoRA alpha (the update is scaled by alpha / rank).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        min_length=1, description="Module names (suffixes) that get LoRA, e.g. q_proj, v_proj.")
    learning_rate: float = Field(gt=0.0, le=1e-2, description="Peak AdamW learning rate.")
    epochs: int = Field(1, ge=1, le=50, description="Passes over the training set.")
    batch_size: int = Field(8, ge=1, le=256, description="Examples per micro-batch.")
    grad_accum: int = Field(1, ge=1, le=256, description="Micro-batches per optimizer step.")
    max_seq_len: int = Field(
        ge=64, le=1_048_576, description="Tokens per example; the context is cut from the left to fit, "
        "the target is kept whole. Must not exceed the base model's max_position_embeddings.")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "cosine", description="Learning-rate schedule after warm-up.")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of optimizer steps spent warming up.")
    max_steps: int | None = Field(
        None, ge=1, le=1_000_000, description="Stop after this many optimizer steps (None: all epochs).")
    seed: int = Field(0, ge=0, description="Seed for LoRA initialisation, dropout and shuffling.")

    @model_validator(mode="after")
    def _modules(self) -> "LoraSettings":
        bad = [m for m in self.target_modules if not m.strip()]
        if bad or len(set(self.target_modules)) != len(self.target_modules):
            raise ValueError(f"target_modules must be distinct non-empty names, got {self.target_modules}")
        return self


class CurationProgram(_Strict):
    """The meta-LLM's single decision: data selection, data composition and LoRA settings."""

    selection_sql: str = Field(
        min_length=1, description="One read-only DuckDB SELECT over the archive tables (episodes, "
        "steps, calls, memory_ops, chains) returning a column call_id; only memory-role LOG/PLAN calls "
        "among the rows become examples.")
    composition: Composition = Field(description="How examples are drawn from the selected calls.")
    lora: LoraSettings = Field(description="LoRA training settings.")
    rationale: str = Field("", description="Why this program (for people; not part of any hash).")


# -- parsing -------------------------------------------------------------------------------

_FENCE_RE = re.compile(r"```(?:json|JSON)?[ \t]*\n(.*?)```", re.DOTALL)


def _explain(exc: ValidationError) -> str:
    """One line per schema error: field path, message, the offending value (short)."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(program)"
        got = "" if err["type"] == "missing" else f" (got {json.dumps(err.get('input'), default=str)[:80]})"
        lines.append(f"{loc}: {err['msg']}{got}")
    return "; ".join(lines)


def parse_program(text: str, base_path: str | Path | None = None) -> CurationProgram:
    """Parse the meta-LLM's reply: a JSON object, bare or in a ```json fence.

    With `base_path`, the LoRA settings are also checked against that base model
    (`check_lora`). Raises `ProgramError` with a one-line reason."""
    if not isinstance(text, str) or not text.strip():
        raise ProgramError("empty reply: expected a JSON object describing the curation program")
    fence = _FENCE_RE.search(text)
    body = fence.group(1) if fence else text.strip()
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        # a sentence around an unfenced object is common in LLM replies: try the outer braces
        start, end = body.find("{"), body.rfind("}")
        try:
            data = json.loads(body[start:end + 1]) if 0 <= start < end else None
        except json.JSONDecodeError:
            data = None
        if data is None:
            raise ProgramError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise ProgramError(f"expected a JSON object, got {type(data).__name__}")
    try:
        program = CurationProgram.model_validate(data)
    except ValidationError as exc:
        raise ProgramError(f"invalid program: {_explain(exc)}") from None
    if base_path is not None:
        check_lora(program.lora, base_path)
    return program


# -- checks against the base model ---------------------------------------------------------


def _checkpoint_modules(path: Path) -> set[str]:
    """Names of the modules that own a weight, read from the safetensors headers (no torch)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = set(json.loads(index.read_text())["weight_map"])
    else:
        names = set()
        for file in sorted(path.glob("*.safetensors")):
            with open(file, "rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                names |= set(json.loads(fh.read(size))) - {"__metadata__"}
    return {n.rsplit(".", 1)[0] for n in names if n.endswith((".weight", ".bias"))}


def check_served_lora(lora: LoraSettings, max_lora_rank: int) -> None:
    """LoRA settings a vLLM server started with `--max-lora-rank max_lora_rank` can load;
    `ProgramError` naming the limit otherwise."""
    if lora.rank > max_lora_rank:
        raise ProgramError(f"lora.rank {lora.rank} exceeds the server's max_lora_rank {max_lora_rank} "
                           f"(vllm serve --max-lora-rank): use a rank of at most {max_lora_rank}")
    unsupported = [t for t in lora.target_modules if t.rsplit(".", 1)[-1] not in VLLM_LORA_MODULES]
    if unsupported:
        raise ProgramError(f"lora.target_modules {unsupported} cannot be served by vLLM; use among "
                           f"{sorted(VLLM_LORA_MODULES)}")


def check_lora(lora: LoraSettings, base_path: str | Path | None = None,
               module_names: set[str] | None = None) -> None:
    """Check LoRA settings against the base model; `ProgramError` naming what does not fit.

    `module_names` are the model's module names (as from `named_modules()`); by default
    they are read from the checkpoint's weight names, so this needs neither torch nor a
    loaded model."""
    from agent_core.models.weights import local_model_path

    path = Path(base_path) if base_path is not None else local_model_path()
    config = json.loads((path / "config.json").read_text())
    limit = config.get("max_position_embeddings")
    if limit is not None and lora.max_seq_len > int(limit):
        raise ProgramError(f"lora.max_seq_len {lora.max_seq_len} exceeds the base model's "
                           f"max_position_embeddings {limit}")
    if module_names is None:
        module_names = _checkpoint_modules(path)
        if config.get("tie_word_embeddings"):
            module_names.add("lm_head")  # tied: a module of the model without its own weight
    # peft matches a listed name against the full module name or its last dotted parts
    missing = [t for t in lora.target_modules
               if not any(n == t or n.endswith("." + t) for n in module_names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in module_names if n})
        raise ProgramError(f"lora.target_modules {missing} do not exist in the base model; "
                           f"module names include {leaves[:40]}")


# -- the pool digest and the rule-based baseline --------------------------------------------

_WRITES = ", ".join(f"'{o}'" for o in WRITE_OPS)
_CONSULTS = ", ".join(f"'{o}'" for o in CONSULT_OPS)


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)

    def q(p: float) -> float:  # linear interpolation, as numpy's default
        x = p * (len(v) - 1)
        lo = math.floor(x)
        return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (x - lo)

    return {"min": v[0], "p25": q(0.25), "p50": q(0.5), "p75": q(0.75), "max": v[-1],
            "mean": sum(v) / len(v)}


def pool_digest(archive_root: str | Path) -> dict[str, Any]:
    """A compact summary of the archive for the meta-LLM prompt: tables and columns, and
    per game the episodes, progression quantiles, calls per routine/role, memory-op
    statistics (writes, consulting reads, write-to-search ratio, failures, duplicates), and
    write -> look-up -> decision chains (all, credited)."""
    from agent_core.archive import SCHEMAS, connect
    from agent_core.diagnostics import group_from_row, sql_aggregate

    con = connect(archive_root)
    try:
        def rows(sql: str) -> list[tuple]:
            return con.execute(sql).fetchall()

        games: dict[str, dict[str, Any]] = {}
        for game, n, complete in rows("SELECT game, count(*), count(*) FILTER (WHERE complete) "
                                      "FROM episodes GROUP BY game ORDER BY game"):
            prog = [p for (p,) in con.execute("SELECT progression FROM episodes WHERE game = ?",
                                              [game]).fetchall()]
            games[game] = {"episodes": n, "complete_episodes": complete, "progression": _quantiles(prog),
                           "steps": 0, "calls": {}, "memory_ops": {}}
        for game, n, invalid in rows("SELECT game, count(*), sum(invalid_ops) FROM steps GROUP BY game"):
            g = games.setdefault(game, {"calls": {}, "memory_ops": {}})
            g["steps"], g["invalid_ops_per_step"] = n, round((invalid or 0) / max(n, 1), 4)
        for game, routine, role, n, chars in rows(
                "SELECT game, routine, role, count(*), avg(length(reply)) FROM calls "
                "GROUP BY ALL ORDER BY ALL"):
            games.setdefault(game, {"calls": {}, "memory_ops": {}})["calls"][f"{routine}/{role}"] = {
                "calls": n, "mean_reply_chars": round(chars or 0.0, 1)}
        for game, searches, failed, dup in rows(
                "SELECT game, count(*) FILTER (WHERE op = 'search'), count(*) FILTER (WHERE NOT ok), "
                "count(*) FILTER (WHERE duplicate) FROM memory_ops GROUP BY game"):
            games.setdefault(game, {"calls": {}, "memory_ops": {}})["memory_ops"] = {
                "searches": searches, "failed": failed, "duplicate_writes": dup}
        # the paper's diagnostics by their one definition (`agent_core.diagnostics`), pooled
        for game, *row in rows(f"SELECT e.game, {sql_aggregate('e')} FROM episodes e GROUP BY e.game"):
            d = group_from_row(tuple(row))
            games.setdefault(game, {"calls": {}, "memory_ops": {}})["memory_ops"].update(
                writes=d.writes, consults=d.consults,
                write_to_search=None if d.write_search_ratio is None else round(d.write_search_ratio, 3),
                growth_chars_per_step=None if d.growth_chars_per_step is None else round(d.growth_chars_per_step, 2))
        for game, n, credited in rows("SELECT game, count(*), count(*) FILTER (WHERE credited) FROM chains "
                                      "GROUP BY game"):
            games.setdefault(game, {"calls": {}, "memory_ops": {}})["chains"] = {"chains": n, "credited": credited}
        memory_calls = dict(rows("SELECT routine, count(*) FROM calls WHERE role = 'memory' "
                                 "AND routine IN ('log', 'plan') GROUP BY routine"))
        selectable = dict(rows(f"SELECT c.routine, count(*) FROM calls c JOIN ({RULE_BASED_SQL}) s "
                               "ON s.call_id = c.call_id GROUP BY c.routine"))
    finally:
        con.close()
    return {
        "tables": {t: list(s.names) + ["game", "scaffold_hash"] for t, s in SCHEMAS.items()},
        "episodes": sum(g.get("episodes", 0) for g in games.values()),
        "memory_calls": {"log": memory_calls.get("log", 0), "plan": memory_calls.get("plan", 0)},
        # memory turns the rule-based selection (credited chains; better episodes' valid turns) keeps
        "rule_based_turns": {"log": selectable.get("log", 0), "plan": selectable.get("plan", 0)},
        "games": games,
    }


#: The rule-based selection: memory turns (role 'memory', routine LOG or PLAN) whose memory
#: operations all succeeded, kept for any of three signals:
#:  1. credit: the turn is a link of a credited chain (`chains`, `diagnostics.memory_chains`):
#:     the LOG turn that wrote a line, or the turn whose look-up returned that line in a later
#:     step, when the look-up's result stood in front of a decision and the step progressed;
#:  2. credit in hindsight: the turn made a write that kept a passage (`memory_ops.kept`,
#:     `diagnostics.kept_passage`): it copied what it saw, and no later observation showed it
#:     again. This is where chains start: a model that never looks anything up makes none;
#:  3. outcome: the turn is from an episode whose final progression is above the mean of its
#:     game and task (nothing, when every episode ends alike), it did memory work (at least
#:     one operation: a bare DONE teaches nothing about memory, and such turns made up 95-98%
#:     of a sampled small model's selection before), and it is valid and consulted before
#:     writing: its step has invalid_ops = 0 (that count includes parse errors of every reply
#:     in the step, refused or failed memory ops, misplaced ACTIONs and action-role replies
#:     without an action), and for LOG, the call wrote nothing or its first write (by op_index
#:     within the step) comes after a successful SEARCH, READ or TAIL earlier in the same step
#:     (LIST does not count: it shows names, not contents).
#: Where the pool holds credited turns (1 or 2), the outcome turns are at most as many (a
#: fixed pseudo-random draw, by the digest of their call ids): the outcome signal credits
#: every turn of a luckier episode alike and would otherwise drown the few turns that earned
#: credit (measured on tiny/recall: 2 kept writes beside ~100 outcome turns).
#: No signal reads the game's words.
RULE_BASED_SQL = f"""
WITH per_call AS (
    SELECT call_id, bool_and(ok) AS all_ok,
           min(op_index) FILTER (WHERE op IN ({_WRITES})) AS first_write
    FROM memory_ops GROUP BY call_id
), first_consult AS (
    SELECT episode_id, step, min(op_index) AS op_index
    FROM memory_ops WHERE ok AND op IN ({_CONSULTS}) GROUP BY episode_id, step
), credited AS (
    SELECT write_call_id AS call_id FROM chains WHERE credited
    UNION SELECT lookup_call_id FROM chains WHERE credited
    UNION SELECT call_id FROM memory_ops WHERE kept
), better AS (
    SELECT e.episode_id FROM episodes e
    WHERE e.progression > (SELECT avg(a.progression) FROM episodes a WHERE a.game = e.game AND a.task = e.task)
), chosen AS (
    SELECT c.call_id, c.call_id IN (SELECT call_id FROM credited) AS by_credit
    FROM calls c
    JOIN steps s ON s.episode_id = c.episode_id AND s.step = c.step
    LEFT JOIN per_call o ON o.call_id = c.call_id
    LEFT JOIN first_consult r ON r.episode_id = c.episode_id AND r.step = c.step
    WHERE c.role = 'memory' AND c.routine IN ('log', 'plan')
      AND coalesce(o.all_ok, true)
      AND (c.call_id IN (SELECT call_id FROM credited)
           OR (c.episode_id IN (SELECT episode_id FROM better)
               AND s.invalid_ops = 0 AND o.call_id IS NOT NULL
               AND (c.routine = 'plan' OR o.first_write IS NULL OR r.op_index < o.first_write)))
), ranked AS (
    SELECT call_id, by_credit, row_number() OVER (PARTITION BY by_credit ORDER BY md5(call_id)) AS n
    FROM chosen
)
SELECT call_id FROM ranked
WHERE by_credit
   OR n <= coalesce(nullif((SELECT count(*) FROM chosen WHERE by_credit), 0), n)
ORDER BY call_id
""".strip()


#: What the curators' prompts say about the `chains` table and the rule-based example
RULE_BASED_NOTE = (
    "The chains table says where credit for memory flows, one row per write -> look-up -> decision "
    "chain: a successful write (write_call_id, write_step) whose text a look-up of a later step "
    "returned (SEARCH/READ/TAIL; lookup_call_id, lookup_step), the first later call of that step that "
    "saw the result and wrote memory or committed the world action (decision_call_id), and the "
    "progression gained over that step (gain; credited = gain > 0). The example program (the "
    "rule-based baseline) keeps the memory turns that are links of credited chains (the write's call "
    "and the look-up's call); turns whose write kept a passage (memory_ops.kept: the written line copies "
    "at least 4 consecutive words of its step's observation, 75% of the line, and no later observation "
    "shows them again: credit in hindsight, where chains start); and, as a third signal, valid turns "
    "that did memory work (at least one operation) and consulted before writing, from episodes whose "
    "progression is above their task's mean.")


def rule_based_program(digest: dict[str, Any]) -> CurationProgram:
    """A hand-written baseline program (and the meta-LLM's first example): memory turns that
    are links of credited chains, writes that kept a passage, and valid consult-before-write
    turns that did memory work in the better episodes (`RULE_BASED_SQL`: the outcome filter
    is in the SQL, so every episode's chains count), mixed by routine as the selection holds them; LoRA r=8, alpha=16 on q_proj,v_proj."""
    counts = digest.get("rule_based_turns", {})
    log_n, plan_n = counts.get("log", 0), counts.get("plan", 0)
    log_share = round(log_n / (log_n + plan_n), 2) if log_n + plan_n else 0.5
    return CurationProgram(
        selection_sql=RULE_BASED_SQL,
        composition=Composition(
            routine_mix=RoutineMix(log=log_share, plan=round(1.0 - log_share, 2)),
            max_per_episode=64,
            min_examples=max(1, min(16, (log_n + plan_n) // 8)),
            max_examples=2000,
            top_episode_share=1.0,
        ),
        lora=LoraSettings(rank=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"],
                          learning_rate=2e-4, epochs=2, batch_size=8, grad_accum=1, max_seq_len=2048,
                          schedule="cosine", warmup_ratio=0.05, seed=0),
        rationale="rule-based baseline: links of credited write -> look-up -> decision chains, writes "
                  "that kept a passage seen once, and valid consult-before-write turns that did memory "
                  "work in episodes above their task's mean progression",
    )
