"""The meta-LLM's prompts. Each loop keeps its own templates beside its code
(`review/prompts/`, `training/prompts/`); what both show the meta-LLM the same way — the
archive's tables — is one template here (`meta/prompts/archive_tables.jinja`), which theirs
include by name. Rendering is strict: a variable the template names and the caller did
not give is an error, never an empty string."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

SHARED = Path(__file__).parent / "prompts"


def render(template: Path, **variables: Any) -> str:
    """`template` (a jinja file) rendered with `variables`; it may include the shared templates."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader([template.parent, SHARED]),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template(template.name).render(**variables)


def archive_tables() -> dict[str, list[str]]:
    """Table -> columns, as the SQL sees them (partition columns last)."""
    from agent_core.archive import PARTITIONS, SCHEMAS

    return {t: [*s.names, *PARTITIONS] for t, s in SCHEMAS.items()}
