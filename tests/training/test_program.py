"""The curation program: parsing, validation against the model, the digest and the baseline."""

from __future__ import annotations

import json

import pytest

from agent_core.training.program import (
    RULE_BASED_SQL,
    CurationProgram,
    LoraSettings,
    ProgramError,
    check_lora,
    parse_program,
    pool_digest,
    rule_based_program,
)

PROGRAM = {
    "selection_sql": "select call_id from calls where role = 'memory'",
    "composition": {"routine_mix": {"log": 0.5, "plan": 0.5}, "max_per_episode": 8,
                    "min_examples": 1, "max_examples": 100, "top_episode_share": 1.0},
    "lora": {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "learning_rate": 1e-3,
             "max_seq_len": 128},
}


def with_(path: str, value) -> str:
    """PROGRAM as JSON with one field (dotted path) set."""
    data = json.loads(json.dumps(PROGRAM))
    *parents, leaf = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    node[leaf] = value
    return json.dumps(data)


def test_parse_accepts_bare_fenced_and_wrapped_json():
    bare = json.dumps(PROGRAM)
    fenced = f"Here is my program:\n```json\n{json.dumps(PROGRAM, indent=2)}\n```\nGood luck."
    wrapped = f"My program: {bare} -- done"
    programs = [parse_program(t) for t in (bare, fenced, wrapped)]
    assert programs[0] == programs[1] == programs[2]
    assert programs[0].lora.schedule == "cosine" and programs[0].lora.epochs == 1
    assert parse_program(programs[0].model_dump_json()) == programs[0]


@pytest.mark.parametrize("text, reason", [
    ("", "empty reply"),
    ("I think we should train on everything.", "not valid JSON"),
    ("```json\n{\"selection_sql\": \n```", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (with_("lora.rank", 0), "lora.rank: Input should be greater than or equal to 1"),
    (with_("lora.learning_rate", -1e-4), "lora.learning_rate: Input should be greater than 0"),
    (with_("lora.learning_rate", 0.5), "lora.learning_rate: Input should be less than or equal to 0.01"),
    (with_("lora.target_modules", []), "lora.target_modules"),
    (with_("lora.max_seq_len", 8), "lora.max_seq_len"),
    (with_("lora.schedule", "exponential"), "lora.schedule"),
    (with_("composition.routine_mix", {"log": 0.7, "plan": 0.7}), "shares must sum to 1"),
    (with_("composition.top_episode_share", 0), "composition.top_episode_share"),
    (with_("composition.min_examples", 500), "exceeds max_examples"),
    (with_("lora.optimizer", "sgd"), "lora.optimizer: Extra inputs are not permitted"),
    (json.dumps({k: v for k, v in PROGRAM.items() if k != "lora"}), "lora: Field required"),
])
def test_invalid_programs_are_rejected_with_a_reason(text, reason):
    with pytest.raises(ProgramError) as info:
        parse_program(text)
    assert reason in info.value.reason
    assert "\n" not in info.value.reason  # one line, fed back to the next trial


def test_settings_are_checked_against_the_base_model(base_path):
    parse_program(json.dumps(PROGRAM), base_path=base_path)  # fits SmolLM2
    with pytest.raises(ProgramError, match="max_seq_len 9000 exceeds the base model's max_position_embeddings 8192"):
        parse_program(with_("lora.max_seq_len", 9000), base_path=base_path)
    with pytest.raises(ProgramError, match=r"target_modules \['qkv_proj'\] do not exist"):
        parse_program(with_("lora.target_modules", ["q_proj", "qkv_proj"]), base_path=base_path)
    # full and suffix names both match, as in peft; the tied lm_head exists without a weight
    lora = LoraSettings(rank=2, alpha=4, target_modules=["model.layers.0.self_attn.o_proj", "down_proj",
                                                         "lm_head"], learning_rate=1e-4, max_seq_len=64)
    check_lora(lora, base_path)


def test_pool_digest_and_rule_based_program(archive):
    digest = pool_digest(archive.root)
    assert digest["episodes"] == 6 and set(digest["tables"]) == {"episodes", "steps", "calls", "memory_ops", "chains",
                                                                 "meta_calls"}
    tiny = digest["games"]["tiny"]
    assert tiny["steps"] == 24 and tiny["progression"]["max"] == pytest.approx(1 / 3)
    assert tiny["progression"]["min"] == 0.0
    # consult: 16 steps x (LOG look-up, LOG write, PLAN look-up, PLAN DONE); PLAN-acts: 8 steps x
    # (LOG write, PLAN look-up, PLAN action)
    assert digest["memory_calls"] == {"log": 40, "plan": 48}
    assert tiny["calls"]["plan/action"]["calls"] == 16  # the 2 PLAN-acts episodes need no action call
    ops = tiny["memory_ops"]
    assert ops["writes"] == 24 and ops["searches"] == 16 + 24 and ops["write_to_search"] == pytest.approx(0.6)
    json.dumps(digest)  # goes into a prompt

    # each consulting episode's LOG reads back its step-0 note at steps 1-3 and writes after it; the
    # three that took the key (in step 1) credit that chain
    assert tiny["chains"] == {"chains": 12, "credited": 3}

    program = rule_based_program(digest)
    assert program.selection_sql == RULE_BASED_SQL
    # the outcome filter is in the SQL (episodes above their task's mean): every episode's chains count
    assert program.composition.top_episode_share == 1.0
    # credit: the 3 credited chains' write and look-up (6 LOG turns); outcome: of the 3 better
    # episodes' 4 steps x (LOG look-up, LOG write, PLAN look-up) (their PLAN turns that only said
    # DONE did no memory work), at most as many as the credited turns: 6 more
    # (which 6: a fixed draw by the digest of the call ids, which change with the sources)
    turns = digest["rule_based_turns"]
    assert turns["log"] + turns["plan"] == 12 and turns["log"] >= 6
    assert program.composition.routine_mix.log == round(turns["log"] / 12, 2)
    assert (program.lora.rank, program.lora.alpha, program.lora.target_modules) == (8, 16, ["q_proj", "v_proj"])
    assert program.lora.learning_rate == 2e-4
    assert parse_program(program.model_dump_json()) == program
    assert CurationProgram.model_json_schema()["additionalProperties"] is False


def test_empty_archive_digest(tmp_path):
    digest = pool_digest(tmp_path)
    assert digest["episodes"] == 0 and digest["games"] == {}
    assert rule_based_program(digest).composition.top_episode_share == 1.0
