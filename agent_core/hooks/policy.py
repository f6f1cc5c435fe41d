"""Compile-time policy: what hook code may define, import and name.

`check_source` refuses, with the reason, hook code that cannot run confined: RestrictedPython
must compile it (no names or attributes starting with `_`, no frame/code/generator
internals, no `exec`/`eval`/`open`); at top level only imports, constants and functions;
imports only from `ALLOWED_MODULES` and their listed names; every name it reads defined in
it or one of `AVAILABLE_BUILTINS`; the hooks of `HOOK_SIGNATURES` with their parameters.
A revision that fails is refused at candidate validation. Standard library and
RestrictedPython only (the worker imports this module too).
"""

from __future__ import annotations

import ast
import builtins as py_builtins
import importlib
import itertools
import math
import threading
import types
from typing import Any

from RestrictedPython import compile_restricted_exec, safe_builtins

from agent_core.hooks.errors import HookCodeError

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
EXTRA_BUILTINS: dict[str, Any] = {
    name: getattr(py_builtins, name)
    for name in ("list", "dict", "tuple", "set", "frozenset", "sorted", "reversed", "zip", "enumerate",
                 "min", "max", "sum", "any", "all", "map", "filter", "iter", "next", "print")
}
#: safe_builtins entries we do not hand out (the guarded ones are replaced in
#: `guards.restricted_globals`)
DROPPED_BUILTINS = ("__build_class__", "_getattr_", "setattr", "delattr", "id")
#: every builtin name hook code may use (for the compile-time "uses an unknown name" check)
AVAILABLE_BUILTINS = frozenset(
    (set(safe_builtins) - set(DROPPED_BUILTINS)) | set(EXTRA_BUILTINS) | {"getattr", "hasattr"})

#: the allowed modules, imported with this module: the worker imports it before it confines
#: itself, and Landlock then refuses reading any module file (`ModuleProxy` finds them loaded)
PRELOADED = tuple(importlib.import_module(name) for name in ALLOWED_MODULES)

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
