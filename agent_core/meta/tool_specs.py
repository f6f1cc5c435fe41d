"""What the meta-LLM's tools are, as the model sees them: each tool a JSON-schema'd function
whose arguments are a pydantic model (one definition: the schema the model sees and the
check its call gets), the caps on what a result may hold, and the result itself. What the
tools do is `meta/tools.py`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ToolCaps(BaseModel):
    """How much one tool result may hold."""

    model_config = ConfigDict(extra="forbid")

    max_chars: int = Field(6_000, ge=200, le=200_000, description="Characters per tool result.")
    max_rows: int = Field(50, ge=1, le=10_000, description="Rows per sql result.")
    max_hits: int = Field(30, ge=1, le=1_000, description="Most grep hits per call.")
    max_window: int = Field(50, ge=1, le=2_000, description="Most steps one trace call renders.")
    sql_timeout_s: float = Field(10.0, gt=0, le=600, description="Time limit of one sql query.")
    sql_memory_mb: int = Field(128, ge=32, le=65_536, description="DuckDB memory limit of one sql query (MB).")


class ToolResult(BaseModel):
    """What a tool call gave back: its text for the model, and whether it was an error."""

    name: str
    ok: bool
    content: str
    #: set by a submission tool that accepted the proposal (the loop ends)
    accepted: Any = None


class ToolError(ValueError):
    """A tool refused its arguments; the message goes back to the model."""


# -- argument models: the tools' JSON schemas ----------------------------------------------


class ToolArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SqlArgs(ToolArgs):
    query: str = Field(max_length=4000, description="One read-only DuckDB SELECT over the tables episodes, steps, calls, "
                       "memory_ops, chains (write -> look-up -> decision credit), meta_calls (the meta-LLM's own earlier calls: tokens, dollars, stop reason; "
                       "see the system prompt for their columns).")


class TraceArgs(ToolArgs):
    episode: str = Field(max_length=64, description="Episode id (a unique prefix is enough).")
    from_step: int = Field(0, ge=0, description="First step shown.")
    to_step: int | None = Field(None, ge=0, description="Last step shown (default: from_step + 4).")
    offset: int = Field(0, ge=0, description="Character offset into the rendered window (paging).")


GrepField = Literal["observation", "action", "reply", "prompt", "op_result", "op_args"]


class GrepArgs(ToolArgs):
    pattern: str = Field(max_length=500, description="Regular expression (RE2 syntax), matched case-sensitively; "
                         "prefix (?i) for case-insensitive.")
    fields: list[GrepField] = Field(
        default_factory=lambda: ["observation", "action", "reply", "op_result", "op_args"],
        description="Where to look: observation, action, reply (model replies), prompt (messages "
        "sent to the model), op_result, op_args.")
    episode: str | None = Field(None, description="Only this episode (id or unique prefix).")
    from_step: int = Field(0, ge=0, description="Only steps at or after this one.")
    max_hits: int = Field(20, ge=1, le=1000, description="At most this many hits (capped).")


class MemoryAtArgs(ToolArgs):
    episode: str = Field(max_length=64, description="Episode id (a unique prefix is enough).")
    step: int = Field(ge=-1, description="The memory as it stood after this step (-1: before the first).")
    file: str | None = Field(None, max_length=64, description="One file's full text (default: every file, cut).")
    offset: int = Field(0, ge=0, description="Character offset into the file (paging).")


class MemoryDiffArgs(ToolArgs):
    episode: str = Field(max_length=64, description="Episode id (a unique prefix is enough).")
    step_a: int = Field(ge=-1, description="The earlier state: after this step (-1: the initial files).")
    step_b: int = Field(ge=-1, description="The later state: after this step.")


class ReadFileArgs(ToolArgs):
    path: str = Field(max_length=300, description="A scaffold file (scaffold.yaml, prompts/<name>.jinja, hooks.py) or a "
                      "path of the agent's code under agent_core/ (a folder lists its files; the games' code is not shown).")
    offset: int = Field(0, ge=0, description="Character offset (paging).")


class Hypothesis(ToolArgs):
    failure: str = Field(description="What failed.")
    episode: str = Field(description="The episode where it shows (id or unique prefix).")
    step: int = Field(ge=0, description="The step where it starts.")
    why: str = Field(description="Why the change should fix it.")


# -- tool specs ------------------------------------------------------------------------------


class Tool(BaseModel):
    """One tool: its name, what it does, and its argument model."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    description: str
    args: type[ToolArgs]
    run: Callable[[Any], ToolResult | str]

    def schema_(self) -> dict[str, Any]:
        return _plain_schema(self.args.model_json_schema())

    def spec(self) -> dict[str, Any]:
        """The OpenAI `tools` entry."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.schema_()}}


def _plain_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The pydantic schema with `$defs` inlined (some servers and engines do not follow
    references) and titles dropped (noise in the model's prompt)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(dict(defs[node["$ref"].rsplit("/", 1)[-1]]))
            return {k: walk(v) for k, v in node.items() if k != "title"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)
