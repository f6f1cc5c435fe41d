"""LoRA adapters (peft format) loaded next to one copy of the local model's weights, by name.

The first adapter wraps the model in a peft `PeftModel` in place; later ones are loaded into
it. A reply selects its adapter by name, or runs the bare base model; rows with different
adapters share one forward pass through peft's mixed-adapter batches (`adapter_names=`,
`BASE_ADAPTER` for the base). An adapter is reloaded in place by staging the new weights
under an internal name and swapping them in under the lock.

peft is imported when an adapter is loaded, never at module import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from agent_core.models.base import ModelError

#: peft's name for "no adapter" in a mixed-adapter batch
BASE_ADAPTER = "__base__"


class AdapterSet:
    """The adapters of one model.

    Args:
        model: the transformers model (wrapped in place by peft with the first adapter).
        base_id: the base model's name (never an adapter's).
        lock: the model's lock: adapters change between forward passes, under it.
        dtype: the model's torch dtype; invariant: whether decoding is batch-invariant (then
            LoRA weights are kept in that dtype, `_adapter_dtype`).
        forget: called with an adapter's name when its weights change or go (its KV caches
            were made with the old weights).
    """

    def __init__(self, model: Any, base_id: str, lock: AbstractContextManager[Any], dtype: Any,
                 invariant: bool, forget: Callable[[str], None]) -> None:
        self._model = model
        self._base_id = base_id
        self._lock = lock
        self._dtype = dtype
        self._invariant = invariant
        self._forget = forget
        self._peft: Any = None  # PeftModel, created with the first adapter
        self._paths: dict[str, Path] = {}
        #: adapters loaded by `stage`, not served until `swap` (never in `names`)
        self._staged: frozenset[str] = frozenset()

    @property
    def served(self) -> dict[str, Path]:
        """Loaded adapters, name -> folder."""
        with self._lock:
            return {n: p for n, p in self._paths.items() if n not in self._staged}

    @property
    def names(self) -> list[str]:
        """Every model name these weights answer to: the base first, then the adapters."""
        with self._lock:
            return [self._base_id, *(n for n in self._paths if n not in self._staged)]

    def check(self, name: str) -> None:
        """`ModelError` unless `name` is the base or a loaded adapter."""
        if name != self._base_id and name not in self._paths:
            raise ModelError(f"unknown model {name!r}; loaded: {self.names}")

    def tag(self, name: str) -> Any:
        """The identity of adapter `name`'s weights now: None for the base, False when not
        loaded (a row compares it before each step: its adapter must not change under it)."""
        if name == self._base_id:
            return None
        if name not in self._paths:
            return False
        return self._peft.peft_config.get(name)

    def load(self, name: str, path: str | Path) -> None:
        """Load a peft LoRA adapter from `path` under `name`; `ModelError` if the name is taken."""
        from peft import PeftModel

        path = Path(path)
        with self._lock:
            if name == self._base_id or name in self._paths:
                raise ModelError(f"adapter name {name!r} is already in use")
            if not (path / "adapter_config.json").is_file():
                raise ModelError(f"no peft adapter at {path} (adapter_config.json missing)")
            try:
                if self._peft is None:
                    # wraps in place: the model keeps its identity, now with LoRA layers
                    self._peft = PeftModel.from_pretrained(
                        self._model, path, adapter_name=name, is_trainable=False
                    )
                else:
                    self._peft.load_adapter(path, adapter_name=name, is_trainable=False)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise ModelError(f"cannot load adapter {name!r} from {path}: {exc}") from exc
            self._peft.eval()
            self._paths[name] = path
            self._forget(name)
            self._adapter_dtype()

    def stage(self, path: str | Path) -> str:
        """Load a peft adapter under a fresh internal name that is not served (not in
        `names`), for `swap`; `ModelError` when it cannot be loaded (nothing is left
        behind: the adapters served are untouched)."""
        from uuid import uuid4

        staged = f"automem-staged-{uuid4().hex[:12]}"  # peft forbids "." in adapter names
        with self._lock:
            try:
                self.load(staged, path)
            except Exception as exc:  # a half-made adapter is dropped
                if self._peft is not None and staged in self._peft.peft_config:
                    self._peft.delete_adapter(staged)
                self._paths.pop(staged, None)
                if isinstance(exc, ModelError):
                    raise
                raise ModelError(f"cannot load adapter from {path}: {type(exc).__name__}: {exc}") from exc
            self._staged = self._staged | {staged}
        return staged

    def swap(self, name: str, staged: str) -> None:
        """Serve the staged adapter's weights as `name`, replacing the adapter loaded under
        `name` (if any), in one step under the lock: no call finds `name` missing, and each
        forward pass runs with the old or the new weights. The staged name is gone after. On
        failure the old adapter is restored and `ModelError` raised."""
        import copy

        from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

        with self._lock:
            if staged not in self._staged:
                raise ModelError(f"no staged adapter {staged!r}")
            try:
                old = None
                if name in self._paths:  # kept until the new one is in, to restore it on failure
                    old = (self._peft.peft_config[name], get_peft_model_state_dict(self._peft, adapter_name=name),
                           self._paths[name])
                    self._peft.delete_adapter(name)
                    del self._paths[name]
                try:  # peft has no rename: the staged configuration and weights under `name`
                    self._peft.add_adapter(name, copy.deepcopy(self._peft.peft_config[staged]))
                    set_peft_model_state_dict(self._peft, get_peft_model_state_dict(self._peft, adapter_name=staged),
                                              adapter_name=name)
                    self._paths[name] = self._paths[staged]
                except Exception as exc:
                    if name in self._peft.peft_config:
                        self._peft.delete_adapter(name)
                    if old is not None:
                        self._peft.add_adapter(name, old[0])
                        set_peft_model_state_dict(self._peft, old[1], adapter_name=name)
                        self._paths[name] = old[2]
                    raise ModelError(f"cannot swap in adapter {name!r}: {type(exc).__name__}: {exc}") from exc
                finally:
                    self._forget(name)  # KV caches made with the old weights
                    self._peft.eval()
                    self._adapter_dtype()
            finally:
                self._peft.delete_adapter(staged)
                self._paths.pop(staged, None)
                self._forget(staged)
                self._staged = self._staged - {staged}

    def _adapter_dtype(self) -> None:
        """Invariant decoding: LoRA weights in the model's dtype (peft upcasts them to fp32,
        whose matmuls on a CPU change with the number of rows; bf16's do not), computed in
        pieces of rows like the base layers."""
        if not self._invariant or self._peft is None:
            return
        from agent_core.models.invariant import piecewise_linears

        for pname, param in self._peft.named_parameters():
            if "lora_" in pname and param.dtype != self._dtype:
                param.data = param.data.to(self._dtype)
        piecewise_linears(self._peft)

    def unload(self, name: str) -> None:
        """Drop an adapter and its KV caches; `ModelError` if it is not loaded."""
        with self._lock:
            if name not in self._paths:
                raise ModelError(f"adapter {name!r} is not loaded")
            self._peft.delete_adapter(name)
            del self._paths[name]
            self._forget(name)

    @contextmanager
    def select(self, name: str) -> Iterator[None]:
        """Make `name` the active adapter, or switch adapters off for the base."""
        if name == self._base_id:
            if not self._paths:  # no LoRA layer has an adapter left: they are inert
                yield
                return
            if self._peft.active_adapter not in self._paths:
                # peft keeps a deleted adapter as active, and disable_adapter() looks it up
                self._peft.set_adapter(next(iter(self._paths)))
            with self._peft.disable_adapter():
                yield
            return
        if name not in self._paths:
            raise ModelError(f"unknown model {name!r}; loaded: {self.names}")
        self._peft.set_adapter(name)
        yield

    def batch_module(self, names: list[str]) -> tuple[Any, dict[str, Any]]:
        """The module to call for rows with adapters `names` and its keyword arguments: the
        plain model, or peft's mixed-adapter batch (`adapter_names=`, "__base__" for the base)."""
        if not self._paths:  # no LoRA layer holds an adapter: the plain model
            return self._model, {}
        if self._peft.active_adapter not in self._paths:
            # peft keeps a deleted adapter as the active one, and its mixed-batch hooks look it up
            self._peft.set_adapter(next(iter(self._paths)))
        return self._peft, {"adapter_names": [BASE_ADAPTER if n == self._base_id else n for n in names]}
