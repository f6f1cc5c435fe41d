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
- **A worker process** (`HookRunner`, one per episode, started on the first call): memory
  (RLIMIT_AS), CPU seconds per call (RLIMIT_CPU), a wall-clock timeout per call, output cut
  to `HookLimits.max_output_chars`, arguments and results as JSON values.
- **An OS sandbox that holds for root** (`confine_self`, applied by the worker to itself
  before any hook code runs): no capabilities, Landlock with no file access and no TCP, a
  seccomp filter refusing processes, sockets, file metadata changes and more. Where it
  cannot be set up, hooks are refused (`HookConfinementError`) unless the run chose
  `confinement="none"`.

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


class HookDisabled(HookError):
    """A hook that timed out `HookLimits.max_timeouts` times: not called again by its runner."""


class HookOutputCut(HookError):
    """A hook returned more than `HookLimits.max_output_chars`: `value` holds its output cut
    to that length (the caller may use it, and records the error)."""

    def __init__(self, message: str, value: str):
        super().__init__(message)
        self.value = value


# ----------------------------------------------------------------------------------------
# compile-time check


#: `ast.parse` in two threads at once can fail on CPython 3.11.7 ("AST constructor recursion
#: depth mismatch"); episodes check their hooks in threads
_AST_LOCK = threading.Lock()


def check_source(source: str, filename: str = "hooks.py") -> list[str]:
    """Refuse hook code that cannot run confined, with the reason (`HookCodeError`);
    return the hooks it defines. Rules: RestrictedPython compiles it; at top level only
    imports, constants (assignments) and functions; imports only from `ALLOWED_MODULES` and
    their listed names; every name it reads is defined in it or an available builtin; a
    hook has the parameters of `HOOK_SIGNATURES`; at least one hook is defined."""
    with _AST_LOCK:
        return _check_source(source, filename)


def _check_source(source: str, filename: str) -> list[str]:
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
# the OS layer: Landlock + seccomp + no capabilities, applied by the worker to itself
# before any hook code runs. It holds for root (as CI and most containers run): Landlock
# and seccomp restrict every user, and a process without capabilities cannot raise its
# hard limits, lift the restrictions or reach other users' files.

#: how hooks run: "os" (the OS layer below, the default; refused where it cannot be set up)
#: or "none" (an explicit choice of the run, recorded in every episode header and report)
CONFINEMENTS = ("os", "none")
#: environment variable naming the libseccomp library (default: the system's)
SECCOMP_LIBRARY_ENV = "AUTOMEM_LIBSECCOMP"
DEFAULT_SECCOMP_LIBRARY = "libseccomp.so.2"

_LANDLOCK_CREATE_RULESET, _LANDLOCK_RESTRICT_SELF = 444, 446  # the same on every architecture
_LANDLOCK_CREATE_RULESET_VERSION = 1
#: file-system rights Landlock handles, by the ABI that introduced them: 1: execute, write,
#: read, read dir, remove dir/file, make char/dir/reg/sock/fifo/block/sym; 2: refer;
#: 3: truncate; 5: ioctl on devices. All handled, none granted: no file access at all.
_LANDLOCK_FS_RIGHTS = {1: (1 << 13) - 1, 2: 1 << 13, 3: 1 << 14, 5: 1 << 15}
_LANDLOCK_NET_TCP = 0b11  # ABI 4: bind and connect (TCP)
_LANDLOCK_SCOPES = 0b11   # ABI 6: abstract unix sockets and signals outside the sandbox
_PR_SET_NO_NEW_PRIVS, _PR_CAPBSET_DROP, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 38, 24, 47, 4
_CAPABILITY_VERSION_3 = 0x20080522

#: system calls refused (EPERM) by the worker's seccomp filter, beyond what Landlock refuses:
#: processes and programs, sockets of every family, other processes' memory and signals,
#: file metadata and names, namespaces, mounts, keys, kernel modules, BPF and io_uring.
#: `prlimit64` is refused only for other processes (the worker renews its own CPU limit).
SECCOMP_DENIED = (
    "fork", "vfork", "clone", "clone3", "execve", "execveat",
    "socket", "socketpair", "ptrace", "process_vm_readv", "process_vm_writev",
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    "pidfd_open", "pidfd_getfd", "pidfd_send_signal",
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
    "link", "linkat", "symlink", "symlinkat", "unlink", "unlinkat", "rename", "renameat", "renameat2",
    "mkdir", "mkdirat", "rmdir", "mknod", "mknodat", "truncate", "utime", "utimes", "utimensat",
    "futimesat", "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_by_handle_at",
    "name_to_handle_at", "fanotify_init", "inotify_init", "inotify_init1",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "sethostname", "setdomainname", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "acct", "quotactl", "syslog", "uselib", "vhangup", "personality",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
    "setfsuid", "setfsgid", "capset", "memfd_create",
)


class HookConfinementError(RuntimeError):
    """Hooks cannot run confined on this machine: they are refused (fail closed), with what
    is missing and how to get it, or how to choose to run them unconfined."""


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when the kernel has none or it is disabled."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return 0
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(ctypes.c_long(_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0),
                       ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION))
    return max(0, int(abi))


def seccomp_library() -> str:
    """The libseccomp shared library the worker loads ($AUTOMEM_LIBSECCOMP or the system's)."""
    return os.environ.get(SECCOMP_LIBRARY_ENV) or DEFAULT_SECCOMP_LIBRARY


def confinement_problem(library: str | None = None) -> str | None:
    """Why the OS layer cannot be set up on this machine (None when it can): what is
    missing and how to get it. Checked in the calling process, before any worker starts;
    the worker checks again as it confines itself, and refuses to run hooks if it cannot."""
    import ctypes

    how_to_skip = ("or run hooks unconfined by an explicit choice of the run (`hooks: {confinement: "
                   "none}` in the flow's parameters, `--hooks-confinement none` on the command line), "
                   "which every episode header and report then shows")
    if not sys.platform.startswith("linux"):
        return f"hook confinement needs Linux (Landlock and seccomp), not {sys.platform}; {how_to_skip}"
    if landlock_abi() < 1:
        return ("this kernel has no Landlock, or it is disabled (needs Linux 5.13+ with landlock in the "
                f"kernel's `lsm=` list); {how_to_skip}")
    library = library or seccomp_library()
    try:
        ctypes.CDLL(library)
    except OSError:
        return (f"libseccomp could not be loaded ({library!r}): install it (Debian/Ubuntu: `apt-get "
                f"install libseccomp2`) or set {SECCOMP_LIBRARY_ENV} to its path; {how_to_skip}")
    return None


def require_confinement(filename: str = "hooks.py") -> None:
    """`HookConfinementError` (fail closed) unless the OS layer can be set up here."""
    problem = confinement_problem()
    if problem:
        raise HookConfinementError(f"{filename} is refused: hooks run only confined, and {problem}")


def confine_self(library: str) -> None:  # pragma: no cover - runs in the worker process
    """Confine this process for good: no new privileges, no capabilities, Landlock with no
    file access and no TCP (and, from ABI 6, no signals or abstract sockets outside), a
    seccomp filter refusing `SECCOMP_DENIED`. Raises OSError naming the step that failed."""
    import ctypes

    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    try:
        seccomp = ctypes.CDLL(library, use_errno=True)
    except OSError as exc:
        raise OSError(2, f"libseccomp could not be loaded ({library!r}): {exc}") from None

    def check(ok: bool, what: str) -> None:
        if not ok:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, "prctl(NO_NEW_PRIVS)")
    # capabilities: the bounding set (so none come back), the ambient set, then our own sets
    for cap in range(64):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() == 22:  # EINVAL: past the last capability
                break
            check(os.geteuid() != 0, f"prctl(CAPBSET_DROP, {cap})")  # EPERM is expected unless root
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)

    class CapHeader(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class CapData(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    check(libc.capset(ctypes.byref(CapHeader(_CAPABILITY_VERSION_3, 0)), (CapData * 2)()) == 0, "capset")
    # Landlock
    abi = int(libc.syscall(ctypes.c_long(_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0),
                           ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION)))
    check(abi >= 1, "Landlock")
    fs = sum(bits for since, bits in _LANDLOCK_FS_RIGHTS.items() if abi >= since)
    attr = (ctypes.c_uint64 * 3)(fs, _LANDLOCK_NET_TCP if abi >= 4 else 0, _LANDLOCK_SCOPES if abi >= 6 else 0)
    size = 8 * (3 if abi >= 6 else 2 if abi >= 4 else 1)
    fd = int(libc.syscall(ctypes.c_long(_LANDLOCK_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(size),
                          ctypes.c_uint32(0)))
    check(fd >= 0, "landlock_create_ruleset")
    try:
        check(libc.syscall(ctypes.c_long(_LANDLOCK_RESTRICT_SELF), ctypes.c_int(fd), ctypes.c_uint32(0)) == 0,
              "landlock_restrict_self")
    finally:
        os.close(fd)
    # seccomp, through libseccomp (loaded above: Landlock now refuses reading it)
    class ArgCmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                    ("datum_b", ctypes.c_uint64)]

    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.c_void_p]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    seccomp.seccomp_release.argtypes = [ctypes.c_void_p]
    allow, eperm = 0x7FFF0000, 0x00050000 | 1  # SCMP_ACT_ALLOW, SCMP_ACT_ERRNO(EPERM)
    ctx = seccomp.seccomp_init(allow)
    check(bool(ctx), "seccomp_init")
    try:
        for name in SECCOMP_DENIED:
            nr = seccomp.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue  # not a system call of this architecture (or unknown to this libseccomp)
            rc = seccomp.seccomp_rule_add_array(ctx, eperm, nr, 0, None)
            if rc < 0:
                raise OSError(-rc, f"seccomp_rule_add({name}): {os.strerror(-rc)}")
        nr = seccomp.seccomp_syscall_resolve_name(b"prlimit64")
        if nr >= 0:  # only for this process (pid 0)
            other = ArgCmp(0, 1, 0, 0)  # SCMP_A0(SCMP_CMP_NE, 0)
            rc = seccomp.seccomp_rule_add_array(ctx, eperm, nr, 1, ctypes.byref(other))
            if rc < 0:
                raise OSError(-rc, f"seccomp_rule_add(prlimit64): {os.strerror(-rc)}")
        rc = seccomp.seccomp_load(ctx)
        if rc < 0:
            raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")
    finally:
        seccomp.seccomp_release(ctx)


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
    max_chars = int(setup["max_output_chars"])
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

    for name in setup.get("preload", []):  # test-only: modules the OS-layer tests reach for
        __import__(name)
    if setup["confinement"] == "os":
        try:
            confine_self(setup["seccomp_library"])
        except BaseException as exc:  # noqa: BLE001 - fail closed: no hook code runs
            send({"ok": False, "confinement_failed": True, "error": _describe(exc)})
            return
    try:
        cpu_budget()
        if setup.get("python_guard", True):
            hooks = load_hooks(setup["source"], setup.get("filename", "hooks.py"))
        else:  # test-only: plain Python, so that the OS layer is tested on its own
            namespace: dict[str, Any] = {"__name__": "hooks"}
            exec(compile(setup["source"], setup.get("filename", "hooks.py"), "exec"), namespace)  # noqa: S102
            hooks = {n: namespace[n] for n in HOOK_NAMES if callable(namespace.get(n))}
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
            if isinstance(value, str) and len(value) > max_chars:  # cut here: never sent whole
                reply = {"ok": True, "value": value[:max_chars], "cut_from": len(value)}
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
    #: longest text a hook may return (postprocess_observation's observation, validate_write's
    #: refusal): it goes into the prompt. Longer output is cut to this and the call reports it.
    max_output_chars: int = 16_000
    #: a hook that times out this many times is disabled for the rest of the runner's life
    #: (one episode), with a recorded error on every call it misses
    max_timeouts: int = 3
    #: longest reply line accepted from the worker (the output cap plus JSON escaping)
    max_reply_bytes: int = 1_000_000


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
    next call, and a hook that timed out `limits.max_timeouts` times is disabled
    (`HookDisabled`). One runner serves one episode: the worker's module state (a hook's
    globals) never crosses episodes. `close()` stops the worker (also done when the runner
    is garbage-collected and at interpreter exit).

    `confinement`: "os" (default) runs the worker under the OS layer (`confine_self`) and
    raises `HookConfinementError` here, before any process, where that cannot be set up;
    "none" is the run's explicit choice to run hooks without it. `python_guard=False` is for
    tests only: the source runs as plain Python, so that the OS layer is tested on its own;
    `preload` (tests only) names modules the worker imports before it confines itself."""

    def __init__(self, source: str, limits: HookLimits | None = None, filename: str = "hooks.py", *,
                 confinement: str = "os", python_guard: bool = True, preload: tuple[str, ...] = ()):
        if confinement not in CONFINEMENTS:
            raise ValueError(f"hook confinement must be one of {list(CONFINEMENTS)}, not {confinement!r}")
        self.source = source
        self.filename = filename
        self.limits = limits or HookLimits()
        self.confinement = confinement
        self.python_guard = python_guard
        self.preload = tuple(preload)
        if python_guard:
            self.hooks = tuple(check_source(source, filename))  # HookCodeError before any process
        else:
            self.hooks = tuple(n for n in HOOK_NAMES if f"def {n}(" in source)
        if confinement == "os":
            require_confinement(filename)
        self._lock = threading.Lock()
        self._worker = _Worker()
        self._timeouts: dict[str, int] = {}
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
        """Run hook `name` on JSON-able `args` in the worker; its result, or `HookError`
        (`HookOutputCut` carries the output cut to `limits.max_output_chars`)."""
        if name not in self.hooks:
            raise HookError(f"{self.filename} defines no {name!r}")
        if self._timeouts.get(name, 0) >= self.limits.max_timeouts:
            raise HookDisabled(f"{name} is disabled for the rest of the episode: it timed out "
                               f"{self.limits.max_timeouts} times")
        try:
            request = json.dumps({"name": name, "args": list(args)}).encode() + b"\n"
        except (TypeError, ValueError) as exc:
            raise HookError(f"hook arguments must be plain values (JSON): {exc}") from None
        with self._lock:
            self._ensure_started()
            try:
                reply = self._exchange(request, self.limits.call_timeout_s, f"{name} call")
            except HookTimeout:
                self._timeouts[name] = self._timeouts.get(name, 0) + 1
                raise
        if not reply.get("ok"):
            raise HookError(reply.get("error", "the hook failed"))
        value = check_result(name, reply.get("value"))
        if "cut_from" in reply:
            raise HookOutputCut(f"{name} returned {reply['cut_from']} characters; at most "
                                f"{self.limits.max_output_chars} are used (the output was cut)", value)
        return value

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
        cmd = [sys.executable, "-I", str(Path(__file__).resolve())]
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
                 "cpu_s": lim.cpu_s, "cpu_total_s": lim.cpu_total_s, "idle_s": lim.idle_s,
                 "max_output_chars": lim.max_output_chars, "confinement": self.confinement,
                 "seccomp_library": seccomp_library(), "python_guard": self.python_guard,
                 "preload": list(self.preload)}
        reply = self._exchange(json.dumps(setup).encode() + b"\n", lim.start_timeout_s, "start")
        if not reply.get("ok"):
            w.stop()
            if reply.get("confinement_failed"):
                raise HookConfinementError(f"{self.filename} is refused: the hook worker could not confine "
                                           f"itself ({reply.get('error')})")
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
