"""Model backends behind the one `ChatModel` protocol.

Light names are imported here; the heavy ones (torch/transformers via `LocalModel`, the
openai client, FastAPI) load on first access, so importing this package stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from agent_core.models.base import ChatModel, ModelError
from agent_core.models.scripted import ScriptedModel

if TYPE_CHECKING:
    from agent_core.models.local import DEFAULT_MODEL_ID, Generation, LocalHandle, LocalModel
    from agent_core.models.openai_client import (
        OpenAIChatModel,
        check_reachable,
        list_models,
        load_lora_adapter,
        unload_lora_adapter,
    )
    from agent_core.models.server import create_app, serve
    from agent_core.models.weights import local_model_path, models_dir, prepare_local_model

_LAZY = {
    "DEFAULT_MODEL_ID": "local",
    "LocalModel": "local",
    "LocalHandle": "local",
    "Generation": "local",
    "OpenAIChatModel": "openai_client",
    "check_reachable": "openai_client",
    "list_models": "openai_client",
    "load_lora_adapter": "openai_client",
    "unload_lora_adapter": "openai_client",
    "create_app": "server",
    "serve": "server",
    # lazy too, so `python -m agent_core.models.weights` does not find it pre-imported
    "local_model_path": "weights",
    "models_dir": "weights",
    "prepare_local_model": "weights",
}

__all__ = [
    "ChatModel",
    "ModelError",
    "ScriptedModel",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
