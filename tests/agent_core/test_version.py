"""Episode keys carry everything that decides an episode, code and weights included."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent_core.episode import episode_key
from agent_core.models.config import ModelConfig
from agent_core.version import code_digest, episode_digest, episode_sources, module_closure, sources_digest

ROOT = Path(__file__).resolve().parents[2]


def test_the_sources_are_found_from_the_code():
    sources = set(episode_sources())
    # the files the old hand list missed, found through imports (lazy ones included) and strings
    for path in ("agent_core/records.py", "agent_core/trace.py", "agent_core/models/base.py",
                 "agent_core/hooks/worker.py", "environments/registry.py", "environments/nethack_env.py",
                 "environments/minihack_env.py", "environments/crafter_env.py", "environments/tiny.py",
                 "environments/data/balrog_nethack_progression.json"):
        assert path in sources, path
    assert not any(p.startswith(("tasks/", "flows/", "automem_cli/")) for p in sources)  # no orchestration


@pytest.fixture()
def tree_copy(tmp_path: Path) -> Path:
    for package in ("agent_core", "environments"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _key_played_by(root: Path) -> str:
    """The episode key a fresh process running the code under `root` gives one fixed episode."""
    code = ("from agent_core.episode import episode_key; "
            "print(episode_key('scaffold', 'm', 'm', 'tiny', 'key-door', 0, 10, {'max_tokens': 8}))")
    run = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(root), "PATH": ""})
    return run.stdout.strip()


def test_a_changed_source_or_data_file_changes_every_key(tree_copy):
    assert episode_digest() == sources_digest()  # this checkout's code is in this process's keys
    before = _key_played_by(tree_copy)
    assert _key_played_by(tree_copy) == before  # the same code gives the same key
    game = tree_copy / "environments" / "tiny.py"
    original = game.read_bytes()
    game.write_bytes(original.replace(b"=", b"= ", 1))  # one byte more, in the game's code
    changed_code = _key_played_by(tree_copy)
    assert changed_code != before
    game.write_bytes(original)
    assert _key_played_by(tree_copy) == before
    table = tree_copy / "environments" / "data" / "balrog_nethack_progression.json"
    table.write_text(table.read_text().replace("0.", "0.0", 1))
    assert _key_played_by(tree_copy) not in (before, changed_code)


def test_a_module_reached_only_by_a_lazy_import_counts(tree_copy):
    before = sources_digest(tree_copy)
    tiny = tree_copy / "environments" / "tiny.py"  # reached through the registry's module-name strings
    tiny.write_text(tiny.read_text() + "\n# changed\n")
    assert sources_digest(tree_copy) != before
    outside = tree_copy / "agent_core" / "plots.py"  # not imported by the episode runner
    if "agent_core/plots.py" not in episode_sources(tree_copy):
        after = sources_digest(tree_copy)
        outside.write_text(outside.read_text() + "\n# changed\n")
        assert sources_digest(tree_copy) == after


def test_adapter_names_carry_the_training_code(tmp_path):
    from agent_core.training.dataset import DatasetInfo
    from agent_core.training.program import Composition, CurationProgram, LoraSettings, RoutineMix
    from tasks.training import TRAINING_CODE, adapter_name

    closure = module_closure(TRAINING_CODE)
    assert "agent_core/training/lora.py" in closure and "agent_core/training/dataset.py" in closure
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (base / "model.safetensors").write_bytes(b"w")
    data = DatasetInfo(path=tmp_path, digest="d", examples=1, per_routine={}, per_game={}, reused=False)
    prog = CurationProgram(
        selection_sql="select call_id from calls", lora=LoraSettings(rank=4, alpha=8, target_modules=["q_proj", "v_proj"], learning_rate=1e-3, max_seq_len=64),
        composition=Composition(routine_mix=RoutineMix(log=0.5, plan=0.5), max_per_episode=100, min_examples=1,
                                max_examples=1000, top_episode_share=1.0))
    name = adapter_name(data, prog, base, "cpu")
    assert name == adapter_name(data, prog, base, "cpu", code_digest(TRAINING_CODE))  # the default
    assert name != adapter_name(data, prog, base, "cpu", "other training code")


def test_keys_change_with_the_endpoint_the_device_the_dtype_and_environment_options():
    args = ("scaffold", "m", "m", "minihack", "Boxoban-Hard", 0, 10, {"max_tokens": 8})
    a = ModelConfig(backend="openai", base_url="http://gpu-a:8000/v1", model="m").identity()
    b = ModelConfig(backend="openai", base_url="http://gpu-b:8000", model="m").identity()
    assert a == {"endpoint": "http://gpu-a:8000/v1", "batch_invariant": "off"} and a != b
    assert episode_key(*args, a) != episode_key(*args, b)
    on = ModelConfig(backend="openai", base_url="http://gpu-a:8000/v1", model="m", batch_invariant=True).identity()
    assert on["batch_invariant"] == "on" and episode_key(*args, a) != episode_key(*args, on)
    assert episode_key(*args, a, {"boxoban_levels": "/levels/one"}) != episode_key(*args, a, {"boxoban_levels": "/levels/two"})
    assert episode_key(*args, a) == episode_key(*args, a, {})  # deterministic


def test_the_local_models_key_includes_its_weights(tmp_path, monkeypatch):
    model = tmp_path / "smollm2-135m-instruct"
    model.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (model / name).write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights one")
    monkeypatch.setenv("AUTOMEM_MODELS_DIR", str(tmp_path))
    one = ModelConfig(backend="local", device="cpu").identity()
    assert one["device"] == "cpu" and one["dtype"] == "bfloat16" and len(one["weights"]) == 12
    (model / "model.safetensors").write_bytes(b"other weights")  # another size: the digest cache sees it
    two = ModelConfig(backend="local", device="cpu").identity()
    assert two["weights"] != one["weights"]
    args = ("scaffold", "m", "m", "tiny", "key-door", 0, 10, {"max_tokens": 8})
    assert episode_key(*args, one) != episode_key(*args, two)
