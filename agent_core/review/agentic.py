"""The scaffold reviewer as an agent over the trace store (`mode: agentic`): the meta-LLM's
agent loop (`meta/loop.py`) with the trace-store tools (`meta/tools.py`) and this loop's
submission tool, `submit_revision`. Its accepted revision goes through `propose` as the
single-call reviewer's does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from agent_core.meta.loop import AgentBudget, AgentRun, recorded_run
from agent_core.meta.prompts import archive_tables, render
from agent_core.meta.tool_specs import Hypothesis, ToolArgs, ToolCaps, ToolResult
from agent_core.meta.tools import Toolbox
from agent_core.models.tool_calls import ToolChatModel
from agent_core.scaffold import Scaffold

PROMPTS = Path(__file__).parent / "prompts"


class SubmitRevisionArgs(ToolArgs):
    hypothesis: Hypothesis
    analysis: str = Field(description="What went wrong and why, citing episodes and steps.")
    changes: list[str] = Field(min_length=1, description="One line per change.")
    files: dict[str, str] = Field(description="Path -> complete new text of every file you change "
                                  "(scaffold.yaml, prompts/<name>.jinja, hooks.py); files you leave out "
                                  "stay as the incumbent's.")


class ReviewerToolbox(Toolbox):
    """The reviewer's tools: the trace-store tools and `submit_revision`.

    A submission is turned into today's revision reply (`candidate.format_revision`), parsed
    by the same strict parser and validated (`validate_candidate`: constraints, schema,
    templates, hooks in a sandbox, a smoke episode). Accepted: the tool result names the
    stored candidate and `accepted` holds (Revision, Scaffold, hypothesis)."""

    SUBMISSION = ("submit_revision", SubmitRevisionArgs, "Submit the revised scaffold with its hypothesis.")

    def __init__(self, archive_root: Path | str, incumbent: Scaffold, scaffolds_root: Path | str,
                 caps: ToolCaps | None = None) -> None:
        super().__init__(archive_root, incumbent, scaffolds_root, caps)
        self.submissions: list[dict[str, Any]] = []

    def submit_revision(self, args: SubmitRevisionArgs) -> ToolResult:
        from agent_core.review.candidate import CandidateError, Revision, format_revision, parse_revision, \
            validate_candidate

        h = args.hypothesis
        files = {k: v.decode(errors="replace") for k, v in self.incumbent.files.items()}
        files.update(args.files)
        analysis = (f"Hypothesis: {h.failure} (episode {h.episode}, step {h.step}). Why the change should fix "
                    f"it: {h.why}\n\n{args.analysis}")
        try:
            revision = parse_revision(format_revision(Revision(analysis=analysis, changes=args.changes, files=files)))
            candidate = validate_candidate(revision, self.incumbent, self.scaffolds_root)  # type: ignore[arg-type]
        except CandidateError as exc:
            self.submissions.append({"verdict": "rejected", "reason": str(exc)})
            return ToolResult(name="submit_revision", ok=False,
                              content=f"rejected: {exc}. Fix it and call submit_revision again.")
        self.submissions.append({"verdict": "valid", "candidate": candidate.hash})
        return ToolResult(name="submit_revision", ok=True, content=f"accepted: candidate {candidate.hash}",
                          accepted={"revision": revision, "candidate": candidate, "hypothesis": h})


def review_history(workspace: Path | str, incumbent: Any, max_diff_chars: int = 1_500) -> list[str]:
    """What became of earlier candidates for `incumbent` in this workspace, one entry each:
    the hypothesis (the proposal's analysis opens with it), the changes, the diff against the
    incumbent (cut), and the per-seed outcome of the gate (from `verdicts/`)."""
    import difflib

    from agent_core.scaffold import Scaffold

    workspace = Path(workspace)
    proposals: dict[str, dict[str, Any]] = {}
    for path in sorted((workspace / "reviews").glob("*/proposal.json")):
        data = json.loads(path.read_text())
        if data.get("candidate_dir"):
            proposals[Path(data["candidate_dir"]).name] = data
    out = []
    for path in sorted((workspace / "verdicts").glob(f"{incumbent.hash}-vs-*.json")):
        candidate = path.stem.split("-vs-", 1)[1]
        verdict = json.loads(path.read_text())
        proposal = proposals.get(candidate, {})
        hypothesis = (proposal.get("analysis") or "(no analysis recorded)").strip().splitlines()[0][:400]
        diff: list[str] = []
        if (workspace / "scaffolds" / candidate).is_dir():
            new = Scaffold.load(workspace / "scaffolds" / candidate)
            for name in sorted(set(incumbent.files) | set(new.files)):
                a = incumbent.files.get(name, b"").decode(errors="replace").splitlines()
                b = new.files.get(name, b"").decode(errors="replace").splitlines()
                diff += difflib.unified_diff(a, b, f"incumbent/{name}", f"candidate/{name}", lineterm="", n=1)
        diff_text = "\n".join(diff)
        if len(diff_text) > max_diff_chars:
            diff_text = diff_text[:max_diff_chars] + f"\n...[{len(diff_text) - max_diff_chars} more characters]"
        seeds = ", ".join(f"seed {s}: {i:.3f} -> {c:.3f}" for s, i, c in
                          zip(verdict["seeds"], verdict["incumbent"], verdict["candidate"]))
        outcome = "promoted" if verdict.get("promote") else "not promoted"
        out.append(f"candidate {candidate}: {hypothesis}\n  changes: {'; '.join(proposal.get('changes', []))}\n"
                   f"  outcome: {outcome} ({verdict.get('reason', '')}); {seeds}\n  diff:\n{diff_text}")
    return out


class AgenticReviewer:
    """The scaffold reviewer as an agent over the trace store (a `Reviewer`).

    Each `review` runs the agent with the reviewer's tools over `archive_root`; its review
    trace and ledger go to `record_dir` (`agent-<n>.jsonl`, `agent-<n>.ledger.json`). An
    accepted submission comes back in the revision format (so `propose` parses and records
    it as it does the single-call reviewer's); none raises `NoRevision` saying which budget
    ended the review. The task prompt carries the history of earlier candidates for the
    same incumbent (`review_history` over `workspace`, default the scaffold store's parent)."""

    def __init__(self, model: ToolChatModel, archive_root: Path | str, scaffolds_root: Path | str,
                 record_dir: Path | str, budget: AgentBudget | None = None, caps: Any = None,
                 workspace: Path | str | None = None) -> None:
        self.model = model
        self.archive_root, self.scaffolds_root = Path(archive_root), Path(scaffolds_root)
        self.record_dir = Path(record_dir)
        self.budget = budget or AgentBudget()
        self.caps = caps
        self.workspace = Path(workspace) if workspace else self.scaffolds_root.parent
        self.runs: list[AgentRun] = []
        self.name = f"agentic:{model.model_id}"

    def last_usage(self) -> dict[str, Any]:
        """The last review's ledger totals and what stopped it ({} before any review)."""
        if not self.runs:
            return {}
        return {**self.runs[-1].ledger.totals(), "stop_reason": self.runs[-1].stop_reason}

    def system_prompt(self, incumbent: Any) -> str:
        from agent_core.review.candidate import HOOK_IMPORTS, HOOK_NAMES

        return render(PROMPTS / "agentic_reviewer.jinja", game=incumbent.config.game, tables=archive_tables(),
                       max_steps=self.budget.max_steps, max_tokens=self.budget.max_review_tokens,
                       hook_names=HOOK_NAMES, hook_imports=sorted(HOOK_IMPORTS))

    def task_prompt(self, bundle: Any, incumbent: Any, feedback: list[str]) -> str:
        return render(PROMPTS / "agentic_review_task.jinja", scaffold_hash=incumbent.hash, episodes=bundle.episodes,
                       history=review_history(self.workspace, incumbent), feedback=feedback)

    def review(self, bundle: Any, incumbent: Any, feedback: list[str]) -> str:
        from agent_core.review.candidate import format_revision
        from agent_core.review.candidate import NoRevision

        toolbox = ReviewerToolbox(self.archive_root, incumbent, self.scaffolds_root, self.caps)
        run = recorded_run(self.model, toolbox, self.system_prompt(incumbent),
                            self.task_prompt(bundle, incumbent, feedback), self.budget, self.record_dir,
                            "agent", "submit_revision", self.runs)
        if run.accepted is None:
            raise NoRevision(f"no revision: {run.summary()}")
        return format_revision(run.accepted["revision"])


def make_agentic_reviewer(config: Any, model: Any, archive_root: Path | str | None,
                          scaffolds_root: Path | str | None, record_dir: Path | str | None) -> AgenticReviewer:
    """The agentic reviewer of a meta-LLM config (`mode: agentic`) over the archive. With
    the scripted backend, `replies` are JSON tool calls replayed in order (the last repeats)."""
    if archive_root is None or scaffolds_root is None or record_dir is None:
        raise ValueError("the agentic reviewer needs the archive, the scaffold store and a record folder")
    return AgenticReviewer(config.tool_model(model), archive_root, scaffolds_root, record_dir, config.agent)
