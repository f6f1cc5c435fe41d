"""Scaffold hooks, confined.

A scaffold's `hooks.py` is written by the meta-LLM, which reads game text: it is untrusted
input. It never runs in the episode's process:

- **Compiled with RestrictedPython** (`check_source`): no names or attributes starting with
  `_`, no frame/code/generator internals, no `exec`/`eval`/`open`, imports only from
  `ALLOWED_MODULES`. A revision that fails is refused at candidate validation with the reason.
- **Vetted module proxies**: RestrictedPython alone is not a sandbox (`t = typing;
  t.sys.modules["os"]` compiles). The guarded `__import__` hands hook code a proxy that
  exposes only the listed public names of an allowed module, never another module; the
  guarded `getattr` refuses to return a module, frame, code object or traceback from any
  object, and the `str.format` family.
- **A worker process** (`HookRunner`, one per scaffold, started on the first call): memory
  (RLIMIT_AS), CPU seconds per call (RLIMIT_CPU), no file may be written (RLIMIT_FSIZE=0,
  a read-only scratch working directory), no child processes (RLIMIT_NPROC=0), no network
  (`unshare --user --net` where the kernel allows unprivileged user namespaces; otherwise
  the worker runs without a network namespace and `network_isolated()` says so), a wall-clock
  timeout per call, arguments and results as JSON values.

A hook that raises, hangs, exceeds a limit or kills its worker raises `HookError` to the
caller (the agent records it and goes on); the next call starts a fresh worker.

This file is also the worker's program (`python -I agent_core/hooks.py`): its module-level
imports are the standard library and RestrictedPython only, so the worker never imports the
project (or torch).
"""

from __future__ import annotations

import ast
import builtins as py_builtins
import collections
import collections.abc
import functools
import itertools
import json
import logging
import math
import operator
import os
import re
import select
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import types
import typing
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from RestrictedPython import PrintCollector, compile_restricted_exec, safe_builtins
from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence, raise_, safer_getattr
from RestrictedPython.transformer import INSPECT_ATTRIBUTES

log = logging.getLogger(__name__)

#: the hooks a scaffold may define, with their positional parameters
HOOK_SIGNATURES: dict[str, tuple[str, ...]] = {
    "postprocess_observation": ("observation",),
    "validate_write": ("op", "args", "files"),
}
HOOK_NAMES = tuple(HOOK_SIGNATURES)
#: longest hooks.py accepted
MAX_SOURCE_CHARS = 64_000


def _public(module: types.ModuleType) -> frozenset[str]:
    """Every public name of a module of pure functions that is not itself a module."""
    return frozenset(n for n in dir(module)
                     if not n.startswith("_") and not isinstance(getattr(module, n), types.ModuleType))


#: modules hook code may import -> the names it may use from each. Listed, not "everything
#: public": `typing.get_type_hints` evaluates strings, `string.Formatter` and
#: `collections.namedtuple` reach attributes or compile code on the caller's behalf.
ALLOWED_MODULES: dict[str, frozenset[str]] = {
    "re": frozenset({"compile", "search", "match", "fullmatch", "findall", "finditer", "sub", "subn",
                     "split", "escape", "error", "Pattern", "Match", "IGNORECASE", "I", "MULTILINE", "M",
                     "DOTALL", "S", "VERBOSE", "X", "ASCII", "A"}),
    "json": frozenset({"loads", "dumps", "JSONDecodeError"}),
    "math": _public(math),
    "string": frozenset({"ascii_letters", "ascii_lowercase", "ascii_uppercase", "digits", "hexdigits",
                         "octdigits", "punctuation", "printable", "whitespace", "capwords"}),
    "collections": frozenset({"Counter", "defaultdict", "deque", "OrderedDict", "ChainMap", "abc"}),
    "collections.abc": frozenset({"Mapping", "MutableMapping", "Sequence", "MutableSequence", "Iterable",
                                  "Iterator", "Set", "Callable", "Container", "Sized", "Hashable"}),
    "itertools": _public(itertools),
    "functools": frozenset({"reduce", "partial", "lru_cache", "cache", "cmp_to_key"}),
    "typing": frozenset({"Any", "Optional", "Union", "List", "Dict", "Tuple", "Set", "FrozenSet",
                         "Iterable", "Iterator", "Sequence", "Mapping", "Callable", "Literal"}),
    "textwrap": frozenset({"wrap", "fill", "shorten", "dedent", "indent"}),
}
#: top-level modules (what the reviewer's prompt lists)
HOOK_IMPORTS = frozenset(m for m in ALLOWED_MODULES if "." not in m)

#: builtins beyond RestrictedPython's `safe_builtins`. RestrictedPython leaves out the ones
#: that iterate in C (bypassing `_getiter_`); our `_getiter_` checks nothing per item (the
#: confinement is what objects hook code can reach), so they are safe here.
_EXTRA_BUILTINS: dict[str, Any] = {
    name: getattr(py_builtins, name)
    for name in ("list", "dict", "tuple", "set", "frozenset", "sorted", "reversed", "zip", "enumerate",
                 "min", "max", "sum", "any", "all", "map", "filter", "iter", "next", "print")
}
#: safe_builtins entries we do not hand out (the guarded ones are replaced below)
_DROPPED_BUILTINS = ("__build_class__", "_getattr_", "setattr", "delattr", "id")
#: every builtin name hook code may use (for the compile-time "uses an unknown name" check)
AVAILABLE_BUILTINS = frozenset(
    (set(safe_builtins) - set(_DROPPED_BUILTINS)) | set(_EXTRA_BUILTINS) | {"getattr", "hasattr"})

#: objects hook code may never hold, whichever attribute led to them
_FORBIDDEN_VALUES = (types.ModuleType, types.FrameType, types.CodeType, types.TracebackType)


class HookCodeError(ValueError):
    """hooks.py that is refused before it runs, with the reason."""


class HookError(RuntimeError):
    """A hook call that failed: the hook raised, returned the wrong type, exceeded a limit,
    timed out, or its worker died. The caller records it and goes on without the hook."""


class HookTimeout(HookError):
    """A hook call that did not answer within its time limit (its worker was killed)."""


# ----------------------------------------------------------------------------------------
# compile-time check


def check_source(source: str, filename: str = "hooks.py") -> list[str]:
    """Refuse hook code that cannot run confined, with the reason (`HookCodeError`);
    return the hooks it defines. Rules: RestrictedPython compiles it; at top level only
    imports, constants (assignments) and functions; imports only from `ALLOWED_MODULES` and
    their listed names; every name it reads is defined in it or an available builtin; a
    hook has the parameters of `HOOK_SIGNATURES`; at least one hook is defined."""
    if not isinstance(source, str):
        raise HookCodeError(f"{filename} must be text")
    if len(source) > MAX_SOURCE_CHARS:
        raise HookCodeError(f"{filename} has {len(source)} characters; at most {MAX_SOURCE_CHARS}")
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as exc:
        raise HookCodeError(f"{filename} has a syntax error: {exc}") from exc
    result = compile_restricted_exec(source, filename)
    if result.errors:
        raise HookCodeError(f"{filename} is refused by RestrictedPython: " + "; ".join(result.errors[:5]))
    bound = set(AVAILABLE_BUILTINS)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            _check_import(node, filename)
            bound.update((a.asname or a.name.split(".")[0]) for a in node.names)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    unknown = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
                     - bound)
    if unknown:
        plain = sorted(n for n in AVAILABLE_BUILTINS if not n[0].isupper())
        raise HookCodeError(f"{filename} may not use {unknown[0]!r}: hooks have only the names they define, "
                            f"the builtins {', '.join(plain)}, the standard exceptions, and the modules "
                            f"{', '.join(sorted(HOOK_IMPORTS))}")
    hooks = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            if node.name in HOOK_SIGNATURES:
                _check_signature(node, filename)
                hooks.append(node.name)
        elif isinstance(node, ast.AsyncFunctionDef | ast.ClassDef):
            raise HookCodeError(f"{filename} may not define classes or async functions (line {node.lineno})")
        elif not isinstance(node, ast.Import | ast.ImportFrom | ast.Assign | ast.AnnAssign | ast.Expr):
            raise HookCodeError(f"{filename} may hold only imports, constants and functions at top level "
                                f"(line {node.lineno})")
    if not hooks:
        raise HookCodeError(f"{filename} defines none of the hooks {list(HOOK_NAMES)} "
                            "(other functions are helpers)")
    return hooks


def _check_import(node: ast.Import | ast.ImportFrom, filename: str) -> None:
    if isinstance(node, ast.ImportFrom):
        module = node.module or ""
        if node.level or module not in ALLOWED_MODULES:
            raise HookCodeError(f"{filename} may import only {sorted(ALLOWED_MODULES)}; got {module!r}")
        for alias in node.names:
            if alias.name not in ALLOWED_MODULES[module]:
                raise HookCodeError(f"{filename} may not import {module}.{alias.name}: hooks may use "
                                    f"{sorted(ALLOWED_MODULES[module])} from {module}")
        return
    for alias in node.names:
        if alias.name not in ALLOWED_MODULES:
            raise HookCodeError(f"{filename} may import only {sorted(ALLOWED_MODULES)}; got {alias.name!r}")


def _check_signature(node: ast.FunctionDef, filename: str) -> None:
    want = HOOK_SIGNATURES[node.name]
    a = node.args
    positional = len(a.posonlyargs) + len(a.args)
    required = positional - len(a.defaults)
    kw_required = any(d is None for d in a.kw_defaults)
    if required > len(want) or (positional < len(want) and not a.vararg) or kw_required:
        raise HookCodeError(f"{filename}: {node.name} must take ({', '.join(want)}) (line {node.lineno})")


# ----------------------------------------------------------------------------------------
# what hook code runs against (inside the worker)


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
    builtins = {k: v for k, v in safe_builtins.items() if k not in _DROPPED_BUILTINS}
    builtins.update(_EXTRA_BUILTINS)
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


# ----------------------------------------------------------------------------------------
# the worker (this file run as a program)


def _worker_main() -> None:  # pragma: no cover - runs in the worker process
    import resource

    out = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)  # stray output can never corrupt the protocol
    stdin = sys.stdin.buffer

    def send(obj: dict) -> None:
        out.write(json.dumps(obj).encode() + b"\n")

    setup = json.loads(stdin.readline())
    cpu_s, idle_s = int(setup["cpu_s"]), float(setup["idle_s"])
    limit = int(setup["memory_mb"]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))
    cpu_cap = int(setup["cpu_total_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_cap, cpu_cap))

    def cpu_budget() -> None:  # this call's CPU seconds, on top of what the worker used so far
        used = resource.getrusage(resource.RUSAGE_SELF)
        soft = min(cpu_cap, math.ceil(used.ru_utime + used.ru_stime) + cpu_s)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_cap))

    try:
        cpu_budget()
        hooks = load_hooks(setup["source"], setup.get("filename", "hooks.py"))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit
        send({"ok": False, "error": _describe(exc)})
        return
    send({"ok": True, "hooks": sorted(hooks)})
    while True:
        ready, _, _ = select.select([stdin], [], [], idle_s)
        if not ready:
            return  # idle: the parent starts a fresh worker when it needs one
        line = stdin.readline()
        if not line:
            return  # the parent has gone
        try:
            req = json.loads(line)
            fn = hooks.get(req["name"])
            if fn is None:
                raise LookupError(f"hooks.py defines no {req['name']!r}")
            cpu_budget()
            value = check_result(req["name"], fn(*req["args"]))
            reply = {"ok": True, "value": value}
        except BaseException as exc:  # noqa: BLE001 - a hook bug is data for the caller
            reply = {"ok": False, "error": _describe(exc)}
        try:
            send(reply)
        except MemoryError:
            send({"ok": False, "error": "MemoryError: the reply did not fit in memory"})


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text[:1000]


# ----------------------------------------------------------------------------------------
# the parent side


@dataclass(frozen=True)
class HookLimits:
    """Limits of a hook worker (defaults suit per-step hooks on a small machine)."""

    #: wall-clock seconds one call may take (the worker is killed after)
    call_timeout_s: float = 2.0
    #: wall-clock seconds to start the worker and run hooks.py's top level
    start_timeout_s: float = 15.0
    #: CPU seconds one call may use (RLIMIT_CPU, renewed per call)
    cpu_s: int = 2
    #: CPU seconds over the worker's life (then it is restarted)
    cpu_total_s: int = 600
    #: address space of the worker (RLIMIT_AS)
    memory_mb: int = 512
    #: a worker idle this long exits; the next call starts a fresh one
    idle_s: float = 120.0
    #: longest reply accepted from the worker
    max_reply_bytes: int = 8_000_000


_UNSHARE: list[str] | None = None
_UNSHARE_LOCK = threading.Lock()


def network_isolated() -> bool:
    """Whether hook workers run in their own (empty) network namespace on this machine."""
    return bool(_unshare_prefix())


def _unshare_prefix() -> list[str]:
    """`unshare --user --net --` when unprivileged user namespaces work here, else []."""
    global _UNSHARE
    with _UNSHARE_LOCK:
        if _UNSHARE is None:
            exe = shutil.which("unshare")
            prefix = [exe, "--user", "--net", "--"] if exe else []
            # what the worker needs, as the namespace's unmapped user: the interpreter,
            # RestrictedPython and this file readable
            probe = f"import RestrictedPython; open({str(Path(__file__).resolve())!r}).close()"
            try:
                ok = bool(exe) and subprocess.run([*prefix, sys.executable, "-I", "-c", probe],
                                                  capture_output=True, timeout=20).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
            if not ok:
                log.warning("hook workers run without a network namespace: `unshare --user --net` "
                            "is not available on this machine (or the worker cannot read the "
                            "interpreter or this checkout as the namespace's user)")
            _UNSHARE = prefix if ok else []
        return _UNSHARE


class _Worker:
    """One worker process and its scratch directory (kept apart from HookRunner so that a
    finalizer can stop it without holding the runner)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.scratch: str | None = None
        self.last_used = 0.0

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
                log.error("hook worker %d did not exit after SIGKILL", proc.pid)
            for stream in (proc.stdin, proc.stdout):
                if stream:
                    try:
                        stream.close()
                    except OSError:
                        pass
            _LIVE_PIDS.discard(proc.pid)
        scratch, self.scratch = self.scratch, None
        if scratch:
            os.chmod(scratch, 0o700)
            shutil.rmtree(scratch, ignore_errors=True)


#: pids of running hook workers (tests check that none leak)
_LIVE_PIDS: set[int] = set()


def live_workers() -> set[int]:
    """Process ids of the hook workers running now, in this process."""
    return set(_LIVE_PIDS)


class HookRunner:
    """Runs one hooks.py in a confined worker process, started on the first call.

    `call(name, *args)` returns the hook's value or raises `HookError`. Calls are serialised
    (one worker, one call at a time); a worker that timed out or died is replaced on the
    next call. `close()` stops the worker (also done when the runner is garbage-collected
    and at interpreter exit)."""

    def __init__(self, source: str, limits: HookLimits | None = None, filename: str = "hooks.py"):
        self.source = source
        self.filename = filename
        self.limits = limits or HookLimits()
        self.hooks = tuple(check_source(source, filename))  # HookCodeError before any process
        self._lock = threading.Lock()
        self._worker = _Worker()
        self._finalizer = weakref.finalize(self, self._worker.stop)

    # -- public -----------------------------------------------------------------------
    def function(self, name: str) -> Callable[..., Any] | None:
        """The hook `name` as a plain function with its documented signature (None when
        hooks.py does not define it)."""
        if name not in self.hooks:
            return None
        if name == "postprocess_observation":
            def postprocess_observation(observation: str) -> str:
                """The scaffold's observation post-processing, run confined."""
                return self.call("postprocess_observation", observation)
            return postprocess_observation
        if name == "validate_write":
            def validate_write(op: str, args: dict, files: dict) -> str | None:
                """The scaffold's write check (a refusal string or None), run confined."""
                return self.call("validate_write", op, args, files)
            return validate_write
        raise KeyError(f"unknown hook {name!r}; hooks are {list(HOOK_NAMES)}")  # pragma: no cover

    def call(self, name: str, *args: Any) -> Any:
        """Run hook `name` on JSON-able `args` in the worker; its result, or `HookError`."""
        if name not in self.hooks:
            raise HookError(f"{self.filename} defines no {name!r}")
        try:
            request = json.dumps({"name": name, "args": list(args)}).encode() + b"\n"
        except (TypeError, ValueError) as exc:
            raise HookError(f"hook arguments must be plain values (JSON): {exc}") from None
        with self._lock:
            self._ensure_started()
            reply = self._exchange(request, self.limits.call_timeout_s, f"{name} call")
        if not reply.get("ok"):
            raise HookError(reply.get("error", "the hook failed"))
        return check_result(name, reply.get("value"))

    @property
    def pid(self) -> int | None:
        """The worker's process id (None when none runs)."""
        return self._worker.proc.pid if self._worker.proc else None

    def close(self) -> None:
        """Stop the worker now (a later call starts a fresh one)."""
        with self._lock:
            self._worker.stop()

    def __enter__(self) -> "HookRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------
    def _ensure_started(self) -> None:
        w = self._worker
        if w.proc is not None and (w.proc.poll() is not None
                                   or time.monotonic() - w.last_used > self.limits.idle_s * 0.8):
            w.stop()  # died, or about to exit for idleness: start afresh rather than race it
        if w.proc is not None:
            return
        w.scratch = tempfile.mkdtemp(prefix="automem-hook-")
        os.chmod(w.scratch, 0o500)  # nothing may be created in the working directory
        cmd = [*_unshare_prefix(), sys.executable, "-I", str(Path(__file__).resolve())]
        try:
            w.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, cwd=w.scratch, env={"LC_ALL": "C.UTF-8"},
                                      bufsize=0, start_new_session=True, close_fds=True)
        except OSError as exc:
            w.stop()
            raise HookError(f"the hook worker could not start: {exc}") from exc
        _LIVE_PIDS.add(w.proc.pid)
        lim = self.limits
        setup = {"source": self.source, "filename": self.filename, "memory_mb": lim.memory_mb,
                 "cpu_s": lim.cpu_s, "cpu_total_s": lim.cpu_total_s, "idle_s": lim.idle_s}
        reply = self._exchange(json.dumps(setup).encode() + b"\n", lim.start_timeout_s, "start")
        if not reply.get("ok"):
            w.stop()
            raise HookError(f"{self.filename} did not load: {reply.get('error')}")

    def _exchange(self, request: bytes, timeout_s: float, what: str) -> dict:
        """Send one request line, read one reply line within `timeout_s`; on any failure
        the worker is stopped and `HookError` raised."""
        w = self._worker
        assert w.proc is not None and w.proc.stdin is not None and w.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        try:
            w.proc.stdin.write(request)
            fd = w.proc.stdout.fileno()
            buf = bytearray()
            while not buf.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0:
                    w.stop()
                    raise HookTimeout(f"hook {what} did not finish within {timeout_s:g} s; the worker "
                                      "was stopped")
                ready, _, _ = select.select([fd], [], [], left)
                if not ready:
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise HookError(f"hook worker died during the {what} ({self._exit_reason()})")
                buf += chunk
                if len(buf) > self.limits.max_reply_bytes:
                    raise HookError(f"hook {what} replied more than {self.limits.max_reply_bytes} bytes")
            w.last_used = time.monotonic()
            return json.loads(buf)
        except HookTimeout:
            raise
        except HookError:
            w.stop()
            raise
        except (OSError, ValueError) as exc:
            reason = self._exit_reason()
            w.stop()
            raise HookError(f"hook worker failed during the {what}: {type(exc).__name__}: {exc} "
                            f"({reason})") from None

    def _exit_reason(self) -> str:
        proc = self._worker.proc
        if proc is None:
            return "no worker"
        try:
            code = proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "still running"
        if code < 0:
            sig = signal.Signals(-code).name
            why = {"SIGXCPU": "CPU limit", "SIGKILL": "killed", "SIGSEGV": "crashed"}.get(sig, "signal")
            return f"{sig}: {why}"
        return f"exit code {code}"


if __name__ == "__main__":  # pragma: no cover - the worker
    _worker_main()
