"""Where Boxoban's level files are (minihack would download them at run time; here they
must be on disk): the one place both the registry (an environment's options, part of
episode keys) and the MiniHack environment read it from, without importing minihack."""

from __future__ import annotations

import os

from .base import EnvError

BOXOBAN_ENV_VAR = "AUTOMEM_BOXOBAN_LEVELS"
#: task -> (level set, split) under the levels directory, as minihack's Boxoban classes
BOXOBAN_SPLITS = {"Boxoban-Medium": ("medium", "train"), "Boxoban-Hard": ("hard", "")}


def boxoban_dir(task: str, root: str | None) -> tuple[str, str]:
    """(level-set dir, split) for a Boxoban task; EnvError when the levels are absent."""
    level_set, split = BOXOBAN_SPLITS[task]
    root = root or os.environ.get(BOXOBAN_ENV_VAR) or None
    where = os.path.join(root, level_set, split) if root else None
    if where and os.path.isdir(where) and any(f.endswith(".txt") for f in os.listdir(where)):
        return os.path.abspath(os.path.join(root, level_set)), split  # type: ignore[arg-type]
    looked = f" Looked in {where!r}." if where else ""
    raise EnvError(
        f"MiniHack task {task!r} needs the Boxoban level files, which minihack would download "
        "at run time (not done here)."
        f"{looked} Put the files of https://github.com/deepmind/boxoban-levels in a directory "
        "DIR laid out as DIR/medium/train/*.txt and DIR/hard/*.txt (each level a '; N' line, "
        "the map, then a blank line), then pass boxoban_levels=DIR or set "
        f"{BOXOBAN_ENV_VAR}=DIR."
    )
