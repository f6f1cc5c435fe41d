"""Curators write the curation program of each training trial: a meta-LLM over any
OpenAI-compatible endpoint, or a rule-based baseline. Both see the earlier trials
(training loss, specialist evaluation, rejections) and revise the program."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import jinja2

from agent_core.meta.config import MetaLLMConfig
from agent_core.models.base import ChatModel
from agent_core.records import Message, SamplingParams
from agent_core.scaffold import Scaffold
from agent_core.training.trials import best_by_held_out, describe_trial, held_out_loss
from agent_core.training.program import (RULE_BASED_NOTE, RULE_BASED_SQL, CurationProgram, ProgramError,
                                         parse_program, rule_based_program)

PROMPT = Path(__file__).parent / "prompts" / "curator.jinja"

#: Looser selections the rule-based curator falls back to when a trial finds too little data.
#: Valid memory turns that did memory work (at least one operation, every op of the step ok, no
#: parse error in it), consult-before-write or not. A turn that only says DONE is left out: it
#: teaches nothing about memory, and such turns were 95-98% of this selection on a sampled 135M
#: model (283 of 298 examples on tiny/recall-short):
VALID_TURNS_SQL = """
SELECT c.call_id FROM calls c
JOIN steps s ON s.episode_id = c.episode_id AND s.step = c.step
WHERE c.role = 'memory' AND c.routine IN ('log', 'plan') AND s.invalid_ops = 0
  AND EXISTS (SELECT 1 FROM memory_ops o WHERE o.call_id = c.call_id)
ORDER BY c.call_id
""".strip()
#: Memory turns that ran at least one operation and none that failed, whatever else
#: happened in their step:
OK_TURNS_SQL = """
SELECT c.call_id FROM calls c
WHERE c.role = 'memory' AND c.routine IN ('log', 'plan')
  AND EXISTS (SELECT 1 FROM memory_ops o WHERE o.call_id = c.call_id)
  AND NOT EXISTS (SELECT 1 FROM memory_ops o WHERE o.call_id = c.call_id AND NOT o.ok)
ORDER BY c.call_id
""".strip()
RELAXATIONS = (RULE_BASED_SQL, VALID_TURNS_SQL, OK_TURNS_SQL)


class Curator(Protocol):
    name: str

    def program(self, scaffold: Scaffold, digest: dict, trials: list[dict]) -> CurationProgram:
        """The next trial's program; `ProgramError` when the reply is unusable."""
        ...


class MetaLLMCurator:
    def __init__(self, model: ChatModel, params: SamplingParams, base_path: Path | None = None):
        self.model, self.params, self.base_path = model, params, base_path
        self.name = f"meta-llm:{model.model_id}"

    def prompt(self, scaffold: Scaffold, digest: dict, trials: list[dict]) -> str:
        template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(PROMPT.read_text())
        return template.render(
            game=scaffold.config.game,
            scaffold_files={k: v.decode(errors="replace") for k, v in sorted(scaffold.files.items())},
            digest=json.dumps(digest, indent=1, default=str),
            trials=[{"trial": t["trial"], "outcome": describe_trial(t)} for t in trials],
            schema=json.dumps(CurationProgram.model_json_schema()),
            example_note=RULE_BASED_NOTE, example=rule_based_program(digest).model_dump_json(indent=1))

    def program(self, scaffold: Scaffold, digest: dict, trials: list[dict]) -> CurationProgram:
        reply = self.model.complete([Message(role="user", content=self.prompt(scaffold, digest, trials))],
                                    self.params)
        if reply.finish_reason != "stop":  # a cut-off (or aborted, filtered) program is never adopted
            raise ProgramError(f"the reply did not end by itself (finish reason {reply.finish_reason!r}; "
                               f"'length': cut off at its token limit of {self.params.max_tokens} tokens); "
                               "write a shorter program")
        return parse_program(reply.text, self.base_path)


class RuleBasedCurator:
    """Trial 0: the rule-based program, or its first looser selection when it selects no
    turn in the pool (no credited chain and no episode above its task's mean: a small model
    rarely looks anything up). Later trials revise it from what happened: too little data -> a looser
    selection; held-out loss (on unseen episodes; the training loss without one) still
    high -> one more epoch; held-out loss worse than an earlier trial's -> back to that
    trial's LoRA settings with one epoch fewer (the last change over-fitted); specialist no
    better than the base -> a lower learning rate and the top episodes only."""

    name = "rule-based"

    def program(self, scaffold: Scaffold, digest: dict, trials: list[dict]) -> CurationProgram:
        program = rule_based_program(digest)
        turns = digest.get("rule_based_turns")
        level = 0 if turns is None or any(turns.values()) else 1
        for t in trials:
            error = t.get("error", "")
            if any(m in error for m in ("no usable", "returned no calls", "fewer than min_examples")):
                level = min(level + 1, len(RELAXATIONS) - 1)
        program = program.model_copy(update={"selection_sql": RELAXATIONS[level]})
        done = [t for t in trials if not t.get("error")]
        if done:
            last = done[-1]
            lora = program.lora
            best = best_by_held_out(done)
            held = held_out_loss(last)
            if best is not None and best is not last and held is not None and held > held_out_loss(best):
                # compared on unseen episodes, the last trial generalised worse: retreat
                settings = (best.get("program") or {}).get("lora")
                lora = type(lora).model_validate(settings) if settings else lora
                lora = lora.model_copy(update={"epochs": max(1, lora.epochs - 1)})
            elif (held if held is not None else last.get("final_loss", 0.0)) > 1.0:
                lora = lora.model_copy(update={"epochs": min(lora.epochs + len(done), 50)})
            if "verdict" in last and not last["verdict"]["promote"]:
                lora = lora.model_copy(update={"learning_rate": lora.learning_rate / (2 ** len(done))})
                comp = program.composition.model_copy(update={"top_episode_share": 0.5})
                program = program.model_copy(update={"composition": comp})
            program = program.model_copy(update={"lora": lora})
        if level:
            program = program.model_copy(update={"composition": program.composition.model_copy(
                update={"min_examples": 1})})
        return program.model_copy(update={"rationale": f"rule-based, selection level {level}, "
                                                       f"after {len(trials)} trial(s)"})


def make_curator(config: MetaLLMConfig, base_path: Path | None = None, archive_root: Path | None = None,
                 record_dir: Path | None = None) -> Curator:
    """The meta-LLM curator when an endpoint is configured: single-call (one prompt holding the
    pool digest), or with `mode: agentic` the agent over the pool's archive at `archive_root`
    (`training/agentic.py`); else the rule-based one."""
    model = config.chat_model()
    if model is None:
        return RuleBasedCurator()
    if config.resolved().mode == "agentic":
        from agent_core.training.agentic import make_agentic_curator

        return make_agentic_curator(config, model, archive_root, record_dir, base_path)
    return MetaLLMCurator(model, config.params(), base_path)


__all__ = ["Curator", "MetaLLMCurator", "RuleBasedCurator", "make_curator", "ProgramError"]
