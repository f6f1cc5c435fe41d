"""Curators: the rule-based revisions across trials, and the meta-LLM's prompt and parsing."""

import json

import pytest

from agent_core.models.scripted import ScriptedModel
from agent_core.records import SamplingParams
from agent_core.scaffold import Scaffold
from agent_core.training.curator import OK_TURNS_SQL, VALID_TURNS_SQL, MetaLLMCurator, RuleBasedCurator
from agent_core.training.trials import describe_trial
from agent_core.training.program import RULE_BASED_NOTE, RULE_BASED_SQL, ProgramError, rule_based_program

DIGEST = {"memory_calls": {"log": 30, "plan": 10}, "games": {"tiny": {"progression": {"min": 0, "max": 0.3}}}}
SCAFFOLD = Scaffold.builtin("tiny")
VERDICT = {"promote": False, "reason": "no improvement", "mean_candidate": 0.1, "mean_incumbent": 0.1}


def test_rule_based_first_trial_is_the_baseline():
    program = RuleBasedCurator().program(SCAFFOLD, DIGEST, [])
    assert program.selection_sql == RULE_BASED_SQL
    assert program.lora == rule_based_program(DIGEST).lora


def test_rule_based_starts_looser_only_when_its_selection_keeps_nothing():
    # credited chains are LOG writes and their look-ups: a selection without PLAN turns is still used
    only_log = {**DIGEST, "rule_based_turns": {"log": 3, "plan": 0}}
    program = RuleBasedCurator().program(SCAFFOLD, only_log, [])
    assert program.selection_sql == RULE_BASED_SQL and program.composition.routine_mix.log == 1.0
    nothing = {**DIGEST, "rule_based_turns": {"log": 0, "plan": 0}}
    assert RuleBasedCurator().program(SCAFFOLD, nothing, []).selection_sql == VALID_TURNS_SQL


def test_rule_based_relaxes_selection_when_data_is_scarce():
    curator = RuleBasedCurator()
    t0 = {"trial": 0, "error": "selection returned no calls"}
    assert curator.program(SCAFFOLD, DIGEST, [t0]).selection_sql == VALID_TURNS_SQL
    t1 = {"trial": 1, "error": "composition leaves 2 examples, fewer than min_examples 5: ..."}
    relaxed = curator.program(SCAFFOLD, DIGEST, [t0, t1])
    assert relaxed.selection_sql == OK_TURNS_SQL and relaxed.composition.min_examples == 1


def test_rule_based_revises_training_from_loss_and_evaluation():
    base = rule_based_program(DIGEST).lora
    trial = {"trial": 0, "examples": 40, "final_loss": 2.5, "verdict": VERDICT}
    revised = RuleBasedCurator().program(SCAFFOLD, DIGEST, [trial])
    assert revised.lora.epochs == base.epochs + 1
    assert revised.lora.learning_rate == pytest.approx(base.learning_rate / 2)
    assert revised.composition.top_episode_share == 0.5


def test_meta_llm_curator_sees_pool_and_trials_and_is_parsed_strictly():
    program = rule_based_program(DIGEST).model_copy(update={"rationale": "from the meta-LLM"})
    model = ScriptedModel(["```json\n" + program.model_dump_json() + "\n```", "{\"selection_sql\": 1}"])
    curator = MetaLLMCurator(model, SamplingParams(max_tokens=2000))
    trials = [{"trial": 0, "examples": 12, "final_loss": 0.7, "verdict": VERDICT}]
    got = curator.program(SCAFFOLD, DIGEST, trials)
    assert got.rationale == "from the meta-LLM"
    prompt = model.calls[0][0].content
    assert json.dumps(DIGEST["memory_calls"]).replace(" ", "") in prompt.replace(" ", "").replace("\n", "")
    assert describe_trial(trials[0]) in prompt and "selection_sql" in prompt
    assert RULE_BASED_NOTE in prompt and "FROM chains WHERE credited" in prompt  # the documented example
    with pytest.raises(ProgramError):
        curator.program(SCAFFOLD, DIGEST, trials)


def test_trials_are_compared_by_held_out_loss_not_training_loss():
    base = rule_based_program(DIGEST)
    good = {"trial": 0, "examples": 40, "final_loss": 0.9, "eval_loss": 0.6, "eval_examples": 5,
            "program": base.model_dump(mode="json")}
    # trial 1 trained longer: lower training loss, higher held-out loss (it memorised the pool)
    longer = base.lora.model_copy(update={"epochs": 6})
    worse = {"trial": 1, "examples": 40, "final_loss": 0.2, "eval_loss": 0.95, "eval_examples": 5,
             "program": base.model_copy(update={"lora": longer}).model_dump(mode="json")}
    revised = RuleBasedCurator().program(SCAFFOLD, DIGEST, [good, worse])
    assert revised.lora.epochs == base.lora.epochs - 1  # back to trial 0's settings, one epoch fewer
    # a high held-out loss asks for more training even when the training loss looks done
    high = {"trial": 0, "examples": 40, "final_loss": 0.3, "eval_loss": 1.8, "eval_examples": 5}
    assert RuleBasedCurator().program(SCAFFOLD, DIGEST, [high]).lora.epochs == base.lora.epochs + 1
    low = {"trial": 0, "examples": 40, "final_loss": 1.5, "eval_loss": 0.4, "eval_examples": 5}
    assert RuleBasedCurator().program(SCAFFOLD, DIGEST, [low]).lora.epochs == base.lora.epochs


def test_the_meta_llm_reads_each_trial_held_out_loss():
    program = rule_based_program(DIGEST)
    model = ScriptedModel([program.model_dump_json()])
    trials = [{"trial": 0, "examples": 12, "final_loss": 0.2, "eval_loss": 0.95, "eval_examples": 4},
              {"trial": 1, "examples": 12, "final_loss": 0.5}]
    MetaLLMCurator(model, SamplingParams(max_tokens=2000)).program(SCAFFOLD, DIGEST, trials)
    prompt = model.calls[0][0].content
    assert "held-out loss 0.950 on 4 examples of unseen episodes" in prompt
    assert "no held-out loss (a single pool episode)" in prompt and "compare them by held-out loss" in prompt
