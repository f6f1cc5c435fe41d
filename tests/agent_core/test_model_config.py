"""ModelConfig: which model plays which role, and the ids that key cached episodes."""

import pytest
from pydantic import ValidationError

from agent_core.models.config import ModelConfig, RoutineScript
from agent_core.records import Message, SamplingParams


def test_scripted_single_and_two_roles():
    one = ModelConfig(backend="scripted").build()
    assert one.shared
    two = ModelConfig(backend="scripted", specialist="adapters/mem-1").build()
    assert not two.shared and two.memory.model_id == "scripted-" + two.memory.model_id.split("-")[1].split("+")[0] + "+mem-1@grammar"
    assert two.action.model_id == ModelConfig(backend="scripted").ids()[1]


def test_ids_change_with_everything_that_changes_replies():
    base = ModelConfig(backend="scripted")
    assert base.ids() != ModelConfig(backend="scripted", script=RoutineScript(act="<|ACTION|>wait<|END|>")).ids()
    assert base.ids() != ModelConfig(backend="scripted", max_tokens=8).ids()
    assert ModelConfig(backend="openai", base_url="http://h/v1", model="m", specialist="s").ids() == ("s@grammar", "m@grammar")
    assert ModelConfig(backend="openai", base_url="http://h/v1", model="m", specialist="s",
                       constrain="off").ids() == ("s", "m")


def test_constrained_and_unconstrained_episodes_never_share_a_key(tmp_path):
    from agent_core.episode import EpisodeSpec
    from agent_core.scaffold import BUILTIN_DIR

    def spec(**models):
        return EpisodeSpec(game="tiny", task="key-door", seed=0, max_steps=3, scaffold_dir=str(BUILTIN_DIR / "tiny"),
                           models=ModelConfig(backend="scripted", **models), workspace=str(tmp_path))

    on, off = spec(), spec(constrain="off")
    assert on.models.constrain == "on"  # the default, for every backend
    assert on.key() != off.key() and on.out_dir() != off.out_dir()
    assert ModelConfig(backend="scripted").build().constrain and not ModelConfig(backend="scripted", constrain="off").build().constrain


def test_constrain_takes_on_or_off_only():
    with pytest.raises(ValidationError, match="'on' or 'off'"):
        ModelConfig(backend="scripted", constrain="yes")


def test_reply_cap_applies_over_the_scaffold():
    seen = []

    class Echo:
        model_id = "echo"

        def complete(self, messages, params, constraint=None):
            seen.append(params.max_tokens)
            from agent_core.records import Completion
            return Completion(text="<|DONE|>")

    from agent_core.models.config import CappedModel

    capped = CappedModel(Echo(), 16, "echo@max16")
    capped.complete([Message(role="user", content="x")], SamplingParams(max_tokens=128))
    capped.complete([Message(role="user", content="x")], SamplingParams(max_tokens=4))
    assert seen == [16, 4]
    roles = ModelConfig(backend="scripted", max_tokens=16).build()
    assert roles.memory.model_id.endswith("@max16@grammar") and roles.shared


def test_openai_backend_needs_url_and_model():
    with pytest.raises(ValidationError, match="base_url and model"):
        ModelConfig(backend="openai")


@pytest.mark.slow
def test_episode_threads_share_one_local_model():
    """Concurrent first builds (episodes starting in threads) load the model once."""
    import threading

    built = []
    threads = [threading.Thread(target=lambda: built.append(ModelConfig().build().memory)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 4 and len({id(m.inner) for m in built}) == 1


def test_served_lora_limits_are_checked_when_a_program_is_parsed():
    from agent_core.training.program import LoraSettings, ProgramError, check_served_lora

    with pytest.raises(ValidationError, match=r"max_lora_rank must be one of vLLM's \[1, 8, 16"):
        ModelConfig(backend="openai", base_url="http://h/v1", model="m", max_lora_rank=24)
    lora = LoraSettings(rank=32, alpha=64, target_modules=["q_proj", "v_proj"], learning_rate=1e-4, max_seq_len=512)
    with pytest.raises(ProgramError, match="lora.rank 32 exceeds the server's max_lora_rank 16"):
        check_served_lora(lora, 16)
    check_served_lora(lora, 32)
    with pytest.raises(ProgramError, match=r"\['lm_head'\] cannot be served by vLLM"):
        check_served_lora(lora.model_copy(update={"target_modules": ["q_proj", "lm_head"]}), 64)


def test_server_paths_map_workspace_folders_to_the_servers_view():
    models = ModelConfig(backend="openai", base_url="http://h/v1", model="m",
                         server_paths={"/work/runs": "/mnt/shared/runs", "/work/runs/adapters": "/adapters"})
    assert models.server_path("/work/runs/adapters/mem-1") == "/adapters/mem-1"  # longest prefix wins
    assert models.server_path("/work/runs/sft/x") == "/mnt/shared/runs/sft/x"
    assert models.server_path("/work/runsX/a") == "/work/runsX/a"  # a prefix is a whole folder
    assert models.server_path("/elsewhere/a") == "/elsewhere/a"


def test_sampling_overrides_are_validated_with_their_range_and_are_in_the_episode_key(tmp_path):
    from agent_core.episode import EpisodeSpec
    from agent_core.scaffold import BUILTIN_DIR

    for bad, message in (({"temperature": 2.5}, "between 0 and 2"), ({"temperature": -0.1}, "between 0 and 2"),
                         ({"top_p": 0.0}, "greater than 0 and at most 1"), ({"top_p": 1.5}, "at most 1")):
        with pytest.raises(ValidationError, match=message):
            ModelConfig(backend="scripted", **bad)
    with pytest.raises(ValidationError, match="between 0 and 2"):
        from agent_core.records import SamplingParams

        SamplingParams(temperature=3)

    def spec(**models):
        return EpisodeSpec(game="tiny", task="key-door", seed=0, max_steps=3, scaffold_dir=str(BUILTIN_DIR / "tiny"),
                           models=ModelConfig(backend="scripted", **models), workspace=str(tmp_path))

    keys = {spec().key(), spec(temperature=0.7).key(), spec(temperature=0.7, top_p=0.9).key()}
    assert len(keys) == 3
    assert ModelConfig(backend="scripted", temperature=0.7).build().sampling == {"temperature": 0.7}


def test_a_sampling_seed_reaches_every_call_and_plays_another_episode(tmp_path):
    """`ModelConfig.seed` goes over the scaffold's `model.seed`: through `Roles.sampling` and
    the agent's sampling into every call's seed (`call_seed`), the header and the episode key,
    so two samples of one game seed never share a cached episode. Not part of the model ids."""
    from dataclasses import replace

    from agent_core.conversation import call_seed
    from agent_core.episode import EpisodeSpec, run_episode
    from agent_core.scaffold import BUILTIN_DIR, Scaffold
    from agent_core.trace import read_trace
    from environments import make_env

    assert ModelConfig(backend="scripted", seed=3).sampling_overrides() == {"seed": 3}
    assert ModelConfig(backend="scripted", temperature=0.7, seed=0).build().sampling == {"temperature": 0.7, "seed": 0}
    assert ModelConfig(backend="scripted", seed=3).ids() == ModelConfig(backend="scripted").ids()
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        ModelConfig(backend="scripted", seed=-1)

    def spec(**models):
        return EpisodeSpec(game="tiny", task="key-door", seed=0, max_steps=2, scaffold_dir=str(BUILTIN_DIR / "tiny"),
                           models=ModelConfig(backend="scripted", **models), workspace=str(tmp_path))

    assert len({spec().key(), spec(seed=1).key(), spec(seed=2).key()}) == 3

    class Recorder:
        def __init__(self, inner):
            self.inner, self.model_id, self.seeds = inner, inner.model_id, []

        def complete(self, messages, params, constraint=None):
            self.seeds.append(params.seed)
            return self.inner.complete(messages, params, constraint)

    def play(seed):
        roles = ModelConfig(backend="scripted", seed=seed).build()
        recorder = Recorder(roles.memory)
        summary = run_episode(make_env("tiny"), Scaffold.builtin("tiny"), replace(roles, memory=recorder, action=recorder),
                              0, 2, tmp_path / f"ep-{seed}")
        assert summary.episode_id == spec(seed=seed).key()  # what the cache looks up is what was played
        return recorder.seeds, read_trace(summary.trace_path).header.sampling.seed

    plain, (sampled, header_seed) = play(None), play(3)
    assert plain[0][0] == call_seed(0, 0, 0) and sampled[0] == call_seed(0, 0, 0, 3) and header_seed == 3
    assert set(plain[0]).isdisjoint(sampled)
