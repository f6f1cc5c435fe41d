"""The training loop end to end: the local model plays (grammar-constrained), a scripted
meta-LLM curates, real LoRA training, the trained adapter plays the memory role on the local
model beside the base for actions, gate; a registered adapter is the next night's incumbent.

The adapter is registered by hand (`registry.promote`), not by the flow's gate: on CPU the
local model cannot make training change play. The adapter plays the memory role only; the
base 135M model plays every action, and it copies the prompt's examples. Measured on
tiny/recall (v0 scaffold, constrained, greedy as the scaffold sets it, seed 0): LOG wrote `<|CREATE|>name.md|text<|END|>` (the
command help's example), and the action was `go forward` (the action example) on every
step, at the doors as well, so the episode sits at 0.5 and never opens a door; no pool reply,
which is all the SFT data there is, writes or looks up the way out. Every seed ties and the
gate cannot promote. (Steps took 12-117 s each on the shared 2-core machine.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent_core.meta.config import MetaLLMConfig
from agent_core.models.config import ModelConfig, RoutineScript
from agent_core.trace import read_trace
from agent_core.training.program import LoraSettings, rule_based_program
from flows.training_loop import TrainingLoopParams, training_loop

# replies of the reply protocol: writes then a look-up that ends the reply (the next turn, after
# its result, is answered <|DONE|>); the scripted backend refuses what the grammar would not allow
AGENT = ModelConfig(backend="scripted", script=RoutineScript(
    log="<|UPSERT|>map.md|hall|exits north<|END|><|SEARCH|>hall<|END|>",
    plan="<|READ|>map.md<|END|>"))
SMALL_LORA = LoraSettings(rank=4, alpha=8, target_modules=["q_proj", "v_proj"], learning_rate=1e-3, epochs=1,
                          batch_size=2, max_seq_len=1024, max_steps=2, schedule="constant")


def program_json(log_only: bool = False) -> str:
    """The rule-based program's first relaxation (valid memory turns that did memory work): the
    local model rarely looks memory up before writing, which the strictest selection asks for.
    `log_only`: train on LOG turns only, for 2 epochs (the sampled local model's turns on tiny
    that made an operation are few: still 2 optimizer steps)."""
    from agent_core.training.curator import VALID_TURNS_SQL
    from agent_core.training.program import RoutineMix

    program = rule_based_program({"memory_calls": {"log": 1, "plan": 1}, "games": {}})
    program = program.model_copy(update={"lora": SMALL_LORA, "selection_sql": VALID_TURNS_SQL})
    if log_only:
        program = program.model_copy(update={
            "lora": SMALL_LORA.model_copy(update={"epochs": 2}),
            "composition": program.composition.model_copy(update={"routine_mix": RoutineMix(log=1.0, plan=0.0)})})
    return program.model_dump_json()


def params(ws: Path, **kw) -> TrainingLoopParams:
    # 3 evaluation seeds at alpha 0.25 allow a promotion after Holm over up to 2 trials
    base = dict(game="tiny", pool_seeds=[10, 11], eval_seeds=[0, 1, 2], confirm_seeds=[20, 21], max_steps=4,
                models=AGENT, meta=MetaLLMConfig(backend="scripted", replies=[program_json()]), trials=1,
                gate={"alpha": 0.25}, concurrency=2, workspace=str(ws))
    return TrainingLoopParams(**{**base, **kw})


@pytest.mark.slow
def test_the_trained_adapter_plays_on_the_local_model_and_becomes_the_next_incumbent(tmp_path, server_url):
    from agent_core.models.config import shared_local_model
    from agent_core.registry import promote

    ws = tmp_path / "ws"
    # sampled (greedy, its only turns with an operation copy the help's CREATE example: a
    # degenerate set, refused); each call's seed comes from the episode's, so it replays
    local = ModelConfig(backend="local", temperature=1.0, top_p=0.95)
    curator = MetaLLMConfig(backend="scripted", replies=[program_json(log_only=True)])
    result = training_loop(params(ws, models=local, meta=curator))
    [trial] = result["trials"]
    adapter = Path(trial["adapter"])
    assert {"adapter_config.json", "adapter_model.safetensors", "loss_curve.json"} <= {p.name for p in adapter.iterdir()}
    assert trial["examples"] > 0 and len(trial["loss_curve"]) == 2
    # the specialist played the memory role with the adapter loaded in the local model, the
    # base model the action role, in one conversation; replies under the grammar
    memory_id, action_id = local.model_copy(update={"specialist": str(adapter)}).ids()
    spec_traces = [read_trace(t) for t in ws.glob("episodes/tiny/*/trace.jsonl")
                   if read_trace(t).header.memory_model == memory_id]
    assert len(spec_traces) == 3 and all(t.header.action_model == action_id for t in spec_traces)
    roles = {(c.role, c.model) for t in spec_traces for s in t.steps for c in s.calls}
    assert roles == {("memory", memory_id), ("action", action_id)}
    assert memory_id.removesuffix("@grammar") in shared_local_model().adapters  # real LoRA weights played
    assert all(c.grammar for t in spec_traces for s in t.steps for c in s.calls)
    assert trial["verdict"]["seeds"] == [0, 1, 2] and trial["verdict"]["adjusted_p"] == trial["verdict"]["p_value"]
    assert set(trial["comparison"]) >= {"progression", "write_search_ratio", "growth_chars_per_step"}
    assert Path(result["report"]).read_text().count("| write_search_ratio |") == 1
    assert "Incumbent: base" in Path(result["report"]).read_text()

    # the trained adapter serves by model name through `automem serve` (vLLM's surface)
    from agent_core.models.openai_client import OpenAIChatModel, list_models, load_lora_adapter, unload_lora_adapter
    from agent_core.records import Message, SamplingParams

    load_lora_adapter(server_url, adapter.name, adapter)
    try:
        assert adapter.name in list_models(server_url)
        reply = OpenAIChatModel(server_url, adapter.name, max_retries=0).complete(
            [Message(role="user", content="LOG routine")], SamplingParams(max_tokens=4))
        assert reply.model == adapter.name and reply.completion_tokens > 0
    finally:
        unload_lora_adapter(server_url, adapter.name)

    # a registered adapter is the incumbent the next night's specialists must beat (registered
    # by hand: see the module docstring for why the gate cannot promote one on CPU)
    promote(ws, "adapters", "tiny", str(adapter), reason="test")
    stamp = (adapter / "train_result.json").stat().st_mtime_ns
    again = training_loop(params(ws, models=local, meta=curator))
    assert again["trials"][0]["adapter"] == trial["adapter"]  # unchanged program and data: not retrained
    assert (adapter / "train_result.json").stat().st_mtime_ns == stamp
    verdict = again["trials"][0]["verdict"]
    assert verdict["incumbent"] == verdict["candidate"] and not verdict["promote"]  # the same adapter
    assert f"Incumbent: specialist {adapter.name}" in Path(again["report"]).read_text()


def test_unusable_programs_train_nothing(tmp_path):
    ws = tmp_path / "ws"
    replies = ["not json", program_json().replace('"rank":4', '"rank":0')]
    result = training_loop(params(ws, meta=MetaLLMConfig(backend="scripted", replies=replies), trials=2))
    errors = [t["error"] for t in result["trials"]]
    assert "program rejected" in errors[0] and "rank" in errors[1]
    assert not (ws / "adapters").exists() and result["promoted"] is None


def test_a_program_training_refuses_is_a_failed_trial_not_a_failed_loop(tmp_path):
    """No example fits a 64-token max_seq_len (the system prompt alone is longer): the trial
    fails with the reason, the next trial still runs, and the loop ends cleanly."""
    ws = tmp_path / "ws"
    short = json.loads(program_json())
    short["lora"]["max_seq_len"] = 64
    result = training_loop(params(ws, meta=MetaLLMConfig(backend="scripted", replies=[json.dumps(short), "not json"]),
                                  trials=2))
    errors = [t["error"] for t in result["trials"]]
    assert "training refused the program" in errors[0] and "max_seq_len 64" in errors[0]
    assert "program rejected" in errors[1] and result["promoted"] is None


def test_seed_sets_must_be_disjoint_and_large_enough(tmp_path):
    with pytest.raises(ValidationError, match="pool_seeds and eval_seeds must be disjoint"):
        params(tmp_path, pool_seeds=[0, 5])
    with pytest.raises(ValidationError, match="eval_seeds and confirm_seeds must be disjoint"):
        params(tmp_path, confirm_seeds=[2, 21])
    # 3 seeds: 1/8 after Holm over 3 trials is 3/8 > 0.25
    with pytest.raises(ValidationError, match=r"Holm's correction over 3 trials; use at least 4 seeds"):
        params(tmp_path, trials=3)


def test_a_served_model_needs_its_own_base_to_train_on(tmp_path):
    served = ModelConfig(backend="openai", base_url="http://gpu:8000/v1", model="Qwen/Qwen2.5-32B-Instruct")
    with pytest.raises(ValidationError, match=r"Qwen2.5-32B-Instruct.*train_base is required"):
        params(tmp_path, models=served)


@pytest.mark.slow
def test_train_base_is_checked_against_what_the_server_serves(tmp_path, local_model, server_url):
    from flows.training_loop import check_served_base

    check_served_base(server_url, local_model.model_id, str(local_model.path))  # the same weights: fine
    config = json.loads((local_model.path / "config.json").read_text())
    renamed = tmp_path / "any-folder-name"  # the same configuration under another name: the same base
    renamed.mkdir()
    (renamed / "config.json").write_text(json.dumps(config))
    check_served_base(server_url, local_model.model_id, str(renamed))
    other = tmp_path / local_model.path.name  # the served folder's name, another model: refused
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 18}))
    with pytest.raises(ValueError, match=r"is not the base the server serves.*num_hidden_layers: served 30, train_base 18"):
        check_served_base(server_url, local_model.model_id, str(other))


@pytest.mark.slow
def test_an_adapter_the_server_cannot_load_fails_its_trial_with_the_servers_message(tmp_path, local_model, server_url):
    """Served path end to end on `automem serve`: the base checked, episodes on the server,
    a real adapter trained, then loaded at a path the server cannot see (a wrong
    `server_paths` mapping): the trial fails with the server's 400 message, the run goes on."""
    ws = tmp_path / "ws"
    served = ModelConfig(backend="openai", base_url=server_url, model=local_model.model_id, batch_invariant=False,
                         server_paths={str(ws.resolve() / "adapters"): "/not-mounted/adapters"})
    result = training_loop(params(ws, models=served, train_base=str(local_model.path), eval_seeds=[0, 1],
                                  max_steps=2))
    [trial] = result["trials"]
    assert trial["examples"] > 0 and Path(trial["adapter"]).is_dir()  # trained, then refused by the server
    assert trial["error"].startswith("adapter could not be served") and "/not-mounted/adapters/mem-" in trial["error"]
    assert "verdict" not in trial and result["promoted"] is None  # never played, never gated
    assert "/not-mounted/adapters/mem-" in Path(result["report"]).read_text()


def test_rounds_of_expert_iteration_play_each_pool_with_the_last_rounds_specialist(tmp_path):
    ws = tmp_path / "ws"
    result = training_loop(params(ws, rounds=2, meta=MetaLLMConfig(backend="scripted",
                                                                    replies=[program_json(), program_json()])))
    first, second = result["trials"]
    assert (first["round"], first["pool_model"]) == (0, "base")
    assert second["round"] == 1 and second["pool_model"].startswith("round 0 trial 0 (")
    assert Path(first["adapter"]).name in second["pool_model"]
    # round 1's pool was played with round 0's specialist in the memory role: a pool of its own
    pools = sorted((ws / "pools").iterdir())
    assert len(pools) == 2
    memory_models = {read_trace(t).header.memory_model for t in ws.glob("episodes/tiny/*/trace.jsonl")}
    specialist_id = AGENT.model_copy(update={"specialist": first["specialist"]}).ids()[0]
    assert specialist_id in memory_models
    report = Path(result["report"]).read_text()
    assert "## Learning curve (expert iteration)" in report and "| 1 | round 0 trial 0 (" in report
    with pytest.raises(ValidationError, match="rounds"):
        params(tmp_path, rounds=0)


def test_samples_per_seed_need_sampling_and_have_a_pool_of_their_own(tmp_path):
    from flows.training_loop import pool_key, sample_models

    with pytest.raises(ValidationError, match=r"samples_per_seed 2 needs a sampling temperature above 0, but "
                                              r"models.temperature is 0.*set models.temperature above 0"):
        params(tmp_path, samples_per_seed=2, models=AGENT.model_copy(update={"temperature": 0.0}))
    with pytest.raises(ValidationError, match="samples_per_seed"):
        params(tmp_path, samples_per_seed=0)
    sampled = AGENT.model_copy(update={"temperature": 0.7})
    one, two = params(tmp_path, models=sampled), params(tmp_path, models=sampled, samples_per_seed=2)
    assert pool_key(one, "h") != pool_key(two, "h")
    # the deployment's own sampling seed is part of the pool (the archive only grows)
    assert pool_key(one, "h") != pool_key(one, "h", sampled.model_copy(update={"seed": 5}))
    # sample 0 plays with the deployment's seed, sample k with that seed + k (k when it sets none)
    assert [sample_models(sampled, k).seed for k in range(3)] == [None, 1, 2]
    seeded = sampled.model_copy(update={"seed": 5})
    assert [sample_models(seeded, k).seed for k in range(3)] == [5, 6, 7]
    # the nightly iteration passes it on, validated the same way
    from flows.iteration import IterationParams

    night = dict(game="tiny", models=sampled, workspace=str(tmp_path), samples_per_seed=3)
    assert IterationParams(**night).training().samples_per_seed == 3
    with pytest.raises(ValidationError, match="samples_per_seed 3 needs a sampling temperature above 0"):
        IterationParams(**{**night, "models": AGENT.model_copy(update={"temperature": 0.0})})


def test_a_pool_of_two_samples_per_seed_holds_two_episodes_per_seed(tmp_path):
    """Both samples of every pool seed are played and archived into one pool (curation then
    fails here: nothing is trained); a greedy scaffold, with no temperature set over it, is
    refused before any episode."""
    from agent_core.archive import connect

    ws = tmp_path / "ws"
    sampled = AGENT.model_copy(update={"temperature": 0.7})
    result = training_loop(params(ws, models=sampled, samples_per_seed=2,
                                  meta=MetaLLMConfig(backend="scripted", replies=["not json"])))
    assert "program rejected" in result["trials"][0]["error"]
    [pool] = (ws / "pools").iterdir()
    con = connect(pool / "archive")
    try:
        rows = con.execute("SELECT seed, count(*), count(DISTINCT episode_id) FROM episodes GROUP BY seed "
                           "ORDER BY seed").fetchall()
    finally:
        con.close()
    assert rows == [(10, 2, 2), (11, 2, 2)]  # 2 x len(pool_seeds) episodes
    with pytest.raises(ValueError, match=r"samples_per_seed 2 needs .* the temperature of scaffold \w+ is 0"):
        training_loop(params(tmp_path / "greedy", samples_per_seed=2))  # the tiny scaffold decodes greedily
    assert not (tmp_path / "greedy" / "episodes").exists()
