"""The training curator as an agent over the pool's archive (`mode: agentic`): the
meta-LLM's agent loop (`meta/loop.py`) with the trace-store tools (`meta/tools.py`) and this
loop's submission tool, `submit_program` (validated, and its selection run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from agent_core.meta.loop import AgentBudget, AgentRun, recorded_run
from agent_core.meta.prompts import archive_tables, render
from agent_core.meta.tool_specs import ToolArgs, ToolCaps, ToolResult
from agent_core.meta.tools import Toolbox
from agent_core.models.tool_calls import ToolChatModel
from agent_core.scaffold import Scaffold
from agent_core.training.trials import describe_trial
from agent_core.training.program import RULE_BASED_NOTE, CurationProgram, ProgramError, parse_program, \
    rule_based_program

PROMPTS = Path(__file__).parent / "prompts"


class SubmitProgramArgs(ToolArgs):
    program: dict[str, Any] = Field(description="The curation program: a JSON object with the "
                                    "CurationProgram schema (see the system prompt).")
    hypothesis: str = Field("", description="What the program should improve over earlier trials, and why.")


class CuratorToolbox(Toolbox):
    """The curator's tools: the trace-store tools over the pool's archive and
    `submit_program` (checked by `parse_program`, with the LoRA settings against the base)."""

    SUBMISSION = ("submit_program", SubmitProgramArgs, "Submit the curation program (JSON object).")

    def __init__(self, archive_root: Path | str, scaffold: Scaffold, base_path: Path | None = None,
                 caps: ToolCaps | None = None) -> None:
        super().__init__(archive_root, scaffold, None, caps)
        self.base_path = base_path

    def submit_program(self, args: SubmitProgramArgs) -> ToolResult:
        from agent_core.training.dataset import select_calls  # the dataset builder's own selection check

        try:
            program = parse_program(json.dumps(args.program), self.base_path)
            selected = select_calls(self.archive_root, program, self.caps.sql_timeout_s)
        except ProgramError as exc:
            return ToolResult(name="submit_program", ok=False,
                              content=f"rejected: {exc.reason}. Fix it and call submit_program again.")
        return ToolResult(name="submit_program", ok=True, content=f"accepted: the selection holds {len(selected)} calls",
                          accepted={"program": program, "hypothesis": args.hypothesis})


class AgenticCurator:
    """The training curator as an agent over the pool's archive (a `Curator`): it inspects
    the pool with the same tools, then submits the program (validated, selection run). Its
    review trace and ledger go to `record_dir` (`curator-<n>.jsonl`, `curator-<n>.ledger.json`)."""

    def __init__(self, model: ToolChatModel, archive_root: Path | str, record_dir: Path | str,
                 base_path: Path | None = None, budget: AgentBudget | None = None, caps: Any = None) -> None:
        self.model = model
        self.archive_root, self.record_dir, self.base_path = Path(archive_root), Path(record_dir), base_path
        self.budget = budget or AgentBudget()
        self.caps = caps
        self.runs: list[AgentRun] = []
        self.name = f"agentic:{model.model_id}"

    def program(self, scaffold: Any, digest: dict, trials: list[dict]) -> Any:
        system = render(PROMPTS / "agentic_curator.jinja", game=scaffold.config.game, tables=archive_tables(),
                         max_steps=self.budget.max_steps, schema=json.dumps(CurationProgram.model_json_schema()),
                         example_note=RULE_BASED_NOTE, example=rule_based_program(digest).model_dump_json(indent=1))
        task = render(PROMPTS / "agentic_curator_task.jinja", digest=json.dumps(digest, indent=1, default=str),
                       trials=[{"trial": t["trial"], "outcome": describe_trial(t),
                                "hypothesis": (t.get("program") or {}).get("rationale", "")} for t in trials])
        toolbox = CuratorToolbox(self.archive_root, scaffold, self.base_path, self.caps)
        run = recorded_run(self.model, toolbox, system, task, self.budget, self.record_dir, "curator",
                            "submit_program", self.runs)
        if run.accepted is None:
            raise ProgramError(f"no program: {run.summary()}")
        program = run.accepted["program"]
        hypothesis = run.accepted.get("hypothesis")
        return program.model_copy(update={"rationale": hypothesis}) if hypothesis else program


def make_agentic_curator(config: Any, model: Any, archive_root: Path | str | None, record_dir: Path | str | None,
                         base_path: Path | None = None) -> AgenticCurator:
    """The agentic curator of a meta-LLM config (`mode: agentic`) over the pool's archive."""
    if archive_root is None or record_dir is None:
        raise ValueError("the agentic curator needs the pool's archive and a record folder")
    return AgenticCurator(config.tool_model(model), archive_root, record_dir, base_path, config.agent)
