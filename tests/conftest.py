"""Shared fixtures: the real local model (loaded once) and `automem serve` over it."""

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

# Never reach a model hub or the internet from tests; let torch threads sleep when idle
# (busy-waiting OpenMP threads slow everything down 5-20x on a shared 2-core machine).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from agent_core.models.weights import local_model_path, prepare_local_model  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def local_model() -> Any:
    """The prepared SmolLM2, loaded once; prepared from the wheel when missing."""
    from agent_core.models import LocalModel

    try:
        path = local_model_path()
    except FileNotFoundError:
        # wheel from $AUTOMEM_WHEEL_DIR or <models dir>/wheels (see `make model`)
        path = prepare_local_model()
    # float32: prefilling a prompt in one piece or in two then agrees to ~1e-5, so greedy
    # outputs with and without prefix reuse are identical on any CPU (bf16 differs by ~0.4)
    return LocalModel(path, dtype="float32")


@pytest.fixture(scope="session")
def lora_dir(local_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised LoRA adapter (r=4 on q_proj, v_proj) in peft format."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(local_model.path, local_files_only=True)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("lora") / "mem"
    get_peft_model(base, config).save_pretrained(out)
    return out


@pytest.fixture()
def server_url(local_model: Any) -> Iterator[str]:
    """`automem serve`'s app over the session's model on a free port, in a background thread."""
    with serving(local_model) as url:
        yield url


@pytest.fixture()
def serve() -> Any:
    """`serving`: `with serve(model) as url:` serves another model the same way."""
    return serving


@contextmanager
def serving(model: Any) -> Iterator[str]:
    """`automem serve`'s app over `model` on a free port, in a background thread."""
    import uvicorn

    from agent_core.models import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(model), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


