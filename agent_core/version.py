"""The code that decides episodes: its digest is part of every episode key.

An episode's cache key names everything that determines it (scaffold, models, game, seed,
budget, sampling). Code is part of that too: after a change to how the agent, the command
protocol, decoding or a game behaves, an episode cached under the old code must not be
reused or gated against one played with the new code. So the digest of the files that decide
episodes (`episode_digest`) goes into every key: any change to them changes every key.

Which files decide an episode is found from the code, not listed by hand
(`episode_sources`): the import closure of the episode runner (`agent_core.episode`) within
the project's packages (`agent_core`, `environments`) - every `import` anywhere in a module,
lazy ones inside functions included, plus project module names written as strings (the
game registry's modules) - and the environments' data files (e.g. the NetHack progression
table).
"""

from __future__ import annotations

import ast
import hashlib
import threading
from functools import lru_cache
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
#: packages whose modules can decide an episode (third-party code is pinned in pyproject.toml)
PACKAGES = ("agent_core", "environments")
#: the module that plays an episode: its import closure decides episodes
EPISODE_RUNNER = "agent_core.episode"
#: folders of data files read by the environments
DATA_DIRS = ("environments/data",)


def _module_file(root: Path, name: str) -> Path | None:
    base = root / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Module names this module may import: import statements at any depth (relative ones
    resolved), `from a import b` as both `a` and `a.b`, and string constants that look like
    dotted module names (importlib calls, registries)."""
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.count(".") >= 1 \
                and node.value.split(".")[0] in PACKAGES and " " not in node.value:
            names.add(node.value)
    return names


def module_closure(module: str, root: Path | None = None) -> list[str]:
    """Files (relative to the repository) of `module` and every project module it may import,
    directly or not, with the `__init__.py` of every package on the way."""
    root = Path(root) if root is not None else _ROOT
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name.split(".")[0] not in PACKAGES:
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            path = _module_file(root, ".".join(parts[:i]))
            if path is None or path in seen:
                continue
            seen.add(path)
            mod = _module_name(root, path)
            tree = ast.parse(path.read_bytes(), str(path))
            todo.extend(_imported_names(tree, mod, path.name == "__init__.py"))
    return sorted(p.relative_to(root).as_posix() for p in seen)


def episode_sources(root: Path | None = None) -> list[str]:
    """The files that decide an episode (relative paths): the episode runner's import
    closure within `PACKAGES` and the files under `DATA_DIRS`."""
    root = Path(root) if root is not None else _ROOT
    files = set(module_closure(EPISODE_RUNNER, root))
    for folder in DATA_DIRS:
        files.update(p.relative_to(root).as_posix() for p in (root / folder).rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts)
    return sorted(files)


def files_digest(files: list[str], root: Path | None = None) -> str:
    """Digest of files (relative paths) as they are on disk, line endings normalised."""
    root = Path(root) if root is not None else _ROOT
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + (root / rel).read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return h.hexdigest()[:16]


def sources_digest(root: Path | None = None) -> str:
    """Digest of `episode_sources()`, read from disk now."""
    return files_digest(episode_sources(root), root)


_DIGEST_LOCK = threading.Lock()


@lru_cache(maxsize=None)
def _episode_digest() -> str:
    return sources_digest()


def episode_digest() -> str:
    """`sources_digest()` of the code this process runs, computed once: the code part of every
    episode key. Under a lock: episodes start in threads, and CPython 3.11's `ast.parse` run in
    two threads at once can fail ("AST constructor recursion depth mismatch", seen on a Dask
    worker with two threads)."""
    with _DIGEST_LOCK:
        return _episode_digest()


def code_digest(module: str) -> str:
    """`_code_digest` under the lock `episode_digest` takes (ast.parse in one thread at a time)."""
    with _DIGEST_LOCK:
        return _code_digest(module)


@lru_cache(maxsize=None)
def _code_digest(module: str) -> str:
    """Digest of a module's import closure within the project (e.g. the training code, for
    adapter names: an adapter trained by other code is another adapter)."""
    return files_digest(module_closure(module))
