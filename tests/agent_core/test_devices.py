"""Device selection for the local model and LoRA training (what a CPU machine can check)."""

import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from agent_core.models.config import ModelConfig
from agent_core.models.devices import check_device, kind, resolve_device, short_dtype, training_dtype
from agent_core.training.program import TrainingBudget

#: what "auto" must pick on the machine running the tests
HERE = "cuda" if torch.cuda.is_available() else "cpu"
#: a CUDA device no test machine has
MISSING = f"cuda:{torch.cuda.device_count() + 1}"


def test_settings_are_checked_with_what_is_valid():
    for ok in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"):
        assert check_device(ok) == ok
    for bad in ("gpu", "CUDA", "cuda:", "cuda:x", "mps", ""):
        with pytest.raises(ValueError, match="device must be auto .*, cpu, cuda or cuda:N; got"):
            check_device(bad)


def test_auto_picks_cuda_only_when_torch_sees_it_and_a_missing_gpu_is_refused():
    assert resolve_device("auto") == HERE and resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match=rf"device '{MISSING}' is not available: this machine has .*use device auto or cpu"):
        resolve_device(MISSING)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    assert kind("cuda:3") == "cuda" and kind("cpu") == "cpu"


def test_training_keeps_fp32_on_cpu_and_bf16_on_gpu():
    assert training_dtype("cpu") == "float32"
    assert training_dtype("cuda") == training_dtype("cuda:1") == "bfloat16"
    assert short_dtype("bfloat16") == "bf16" and short_dtype("float32") == "fp32"


def test_local_model_ids_and_episode_keys_record_device_and_dtype():
    config = ModelConfig(device="cpu")
    assert config.ids() == ("smollm2-135m-instruct@cpu-bf16@grammar",) * 2
    identity = config.identity()
    assert {k: identity[k] for k in ("device", "dtype")} == {"device": "cpu", "dtype": "bfloat16"}
    assert set(identity) == {"device", "dtype", "weights", "batch_invariant"}  # weights: test_version.py
    assert ModelConfig().ids()[0] == f"smollm2-135m-instruct@{HERE}-bf16@grammar"
    # other backends do not depend on the local device
    assert ModelConfig(backend="scripted", device="cuda:5").ids() == ModelConfig(backend="scripted").ids()


def test_bad_or_missing_devices_fail_before_anything_runs():
    with pytest.raises(ValidationError, match="device"):
        ModelConfig(device="gpu")
    with pytest.raises(ValidationError, match="device"):
        TrainingBudget(device="tpu")
    with pytest.raises(ValueError, match="not available"):
        ModelConfig(device=MISSING).check()


def test_training_on_a_missing_device_fails_before_loading_anything(tmp_path):
    from agent_core.training.lora import train_lora
    from agent_core.training.program import LoraSettings

    lora = LoraSettings(rank=4, alpha=8, target_modules=["q_proj"], learning_rate=1e-3, max_seq_len=256)
    with pytest.raises(ValueError, match=f"device '{MISSING}' is not available"):
        train_lora(tmp_path / "no-dataset", lora, tmp_path / "out", device=MISSING)
    assert list(tmp_path.iterdir()) == []


def test_training_flows_refuse_a_missing_device_before_any_episode(tmp_path):
    from flows.training_loop import TrainingLoopParams

    params = TrainingLoopParams(game="tiny", models=ModelConfig(backend="scripted"), workspace=str(tmp_path),
                                train_budget=TrainingBudget(device=MISSING))
    with pytest.raises(ValueError, match="not available"):
        params.preflight()
    assert not (tmp_path / "episodes").exists()


def test_cli_device_option_is_checked():
    from automem_cli.main import app

    runner = CliRunner()
    out = runner.invoke(app, ["rollout", "--env", "tiny", "--device", "gpu"])
    assert out.exit_code == 2 and "device must be auto" in out.output and "cuda:N; got 'gpu'" in out.output
    served = runner.invoke(app, ["serve", "--device", MISSING])
    assert served.exit_code == 2 and "not available" in served.output


@pytest.mark.slow
def test_the_local_model_loads_on_the_device_it_resolves(local_model):
    from agent_core.models.local import LocalModel

    assert local_model.device == HERE  # the session's model, built with device "auto"
    assert {p.device.type for p in local_model._model.parameters()} == {HERE}
    with pytest.raises(ValueError, match=f"device '{MISSING}' is not available"):
        LocalModel(local_model.path, device=MISSING)  # refused before any weight is read
