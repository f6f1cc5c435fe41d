"""Runtime guards: what hook code runs against, inside the worker.

RestrictedPython alone is not a sandbox (`t = typing; t.sys.modules["os"]` compiles). The
guarded `__import__` hands hook code a proxy (`ModuleProxy`) that exposes only the listed
public names of an allowed module, never another module; the guarded `getattr` refuses to
return a module, frame, code object or traceback from any object, and the `str.format`
family; hook code changes in place only the lists, dicts and sets it holds. `load_hooks`
runs hook code against these globals; `check_result` checks what a hook returns (both in
the worker and, on the reply, in the parent). Standard library and RestrictedPython only.
"""

from __future__ import annotations

import collections
import operator
import sys
import types
from typing import Any, Callable

from RestrictedPython import PrintCollector, compile_restricted_exec, safe_builtins
from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence, raise_, safer_getattr
from RestrictedPython.transformer import INSPECT_ATTRIBUTES

from agent_core.hooks.policy import ALLOWED_MODULES, DROPPED_BUILTINS, EXTRA_BUILTINS, HOOK_NAMES, check_source

#: objects hook code may never hold, whichever attribute led to them
_FORBIDDEN_VALUES = (types.ModuleType, types.FrameType, types.CodeType, types.TracebackType)


class ModuleProxy:
    """An allowed module as hook code sees it: only its listed names; never a module."""

    __slots__ = ("_name", "_attrs")

    def __init__(self, name: str):
        module = sys.modules.get(name) or __import__(name, fromlist=["x"])
        attrs = {}
        for attr in ALLOWED_MODULES[name]:
            sub = f"{name}.{attr}"
            if sub in ALLOWED_MODULES:
                attrs[attr] = ModuleProxy(sub)
            elif hasattr(module, attr) and not isinstance(getattr(module, attr), types.ModuleType):
                attrs[attr] = getattr(module, attr)
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_attrs", attrs)

    def __getattr__(self, attr: str) -> Any:
        attrs = object.__getattribute__(self, "_attrs")
        if attr in attrs:
            return attrs[attr]
        name = object.__getattribute__(self, "_name")
        raise AttributeError(f"hooks may not use {name}.{attr}; allowed: {sorted(attrs)}")

    def __setattr__(self, attr: str, value: Any) -> None:
        raise TypeError("hooks may not change a module")

    __delattr__ = __setattr__  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<module {object.__getattribute__(self, '_name')!r} (hook view)>"


def _guarded_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (),
                    level: int = 0) -> ModuleProxy:
    if level or name not in ALLOWED_MODULES:
        raise ImportError(f"hooks may import only {sorted(ALLOWED_MODULES)}; not {name!r}")
    return ModuleProxy(name if fromlist else name.split(".")[0])


_MISSING = object()


def _guarded_getattr(obj: Any, name: str, default: Any = _MISSING) -> Any:
    """`a.b` and `getattr(a, b)` in hook code: RestrictedPython's rules (no `_` names, no
    inspection attributes, no str.format family), and never a module, frame or code object."""
    try:
        if isinstance(name, str) and name in INSPECT_ATTRIBUTES:
            raise AttributeError(f"hooks may not use the attribute {name!r}")
        value = safer_getattr(obj, name, raise_)
        if isinstance(value, _FORBIDDEN_VALUES):
            raise AttributeError(f"hooks may not reach {type(value).__name__} objects (attribute {name!r})")
        return value
    except (AttributeError, NotImplementedError) as exc:
        if default is not _MISSING:
            return default
        raise AttributeError(str(exc)) from None


def _guarded_hasattr(obj: Any, name: str) -> bool:
    return _guarded_getattr(obj, name, _MISSING_DEFAULT) is not _MISSING_DEFAULT


_MISSING_DEFAULT = object()

#: containers hook code may change in place (only data: none of them reaches code)
_MUTABLE = (dict, list, set, bytearray, collections.deque)


class _ReadOnly:
    __slots__ = ("ob",)

    def __init__(self, ob: Any):
        object.__setattr__(self, "ob", ob)

    def _refuse(self, *args: Any) -> None:
        raise TypeError("hooks may change only lists, dicts and sets they hold, not attributes")

    __setitem__ = __delitem__ = __setattr__ = __delattr__ = _refuse


def _write_guard(ob: Any) -> Any:
    return ob if isinstance(ob, _MUTABLE) else _ReadOnly(ob)


_INPLACE = {"+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
            "%=": operator.imod, "**=": operator.ipow, "<<=": operator.ilshift, ">>=": operator.irshift,
            "|=": operator.ior, "^=": operator.ixor, "&=": operator.iand, "//=": operator.ifloordiv,
            "@=": operator.imatmul}


def _inplacevar(op: str, x: Any, y: Any) -> Any:
    return _INPLACE[op](x, y)


def restricted_globals() -> dict[str, Any]:
    """The globals hook code runs with: guarded builtins, attribute access and imports."""
    builtins = {k: v for k, v in safe_builtins.items() if k not in DROPPED_BUILTINS}
    builtins.update(EXTRA_BUILTINS)
    builtins.update(__import__=_guarded_import, getattr=_guarded_getattr, hasattr=_guarded_hasattr)
    return {
        "__builtins__": builtins, "__name__": "hooks",
        "_getattr_": _guarded_getattr, "_getitem_": operator.getitem, "_getiter_": iter,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence, "_unpack_sequence_": guarded_unpack_sequence,
        "_write_": _write_guard, "_inplacevar_": _inplacevar, "_print_": PrintCollector,
        "_apply_": lambda f, *a, **kw: f(*a, **kw),
    }


def load_hooks(source: str, filename: str = "hooks.py") -> dict[str, Callable[..., Any]]:
    """Compile and run hook code under RestrictedPython; its hook functions by name.
    In-process: only the worker (and the benchmark's baseline) call this."""
    check_source(source, filename)
    result = compile_restricted_exec(source, filename)
    namespace = restricted_globals()
    exec(result.code, namespace)  # noqa: S102 - restricted code, confined process
    return {n: namespace[n] for n in HOOK_NAMES if callable(namespace.get(n))}


def check_result(name: str, value: Any) -> Any:
    """A hook's return value, or TypeError when it is not of the hook's type."""
    if name == "postprocess_observation" and not isinstance(value, str):
        raise TypeError(f"postprocess_observation must return a string, not {type(value).__name__}")
    if name == "validate_write" and value is not None and not isinstance(value, str):
        raise TypeError(f"validate_write must return None or a refusal string, not {type(value).__name__}")
    return value

