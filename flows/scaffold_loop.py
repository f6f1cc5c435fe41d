"""`scaffold_loop`: outer loop 1. Rollout incumbent (cached) -> archive -> bundle -> review
-> validate -> (optional screen on a few seeds) -> evaluate candidate on the same seeds ->
gate -> confirm a winner on held-out seeds -> promote; K iterations, or until M iterations
in a row bring no promotion."""

from __future__ import annotations

import difflib

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent_core.gate import GateConfig, GateVerdict
from agent_core.loop_records import IterationRecord
from agent_core.meta.config import MetaLLMConfig
from agent_core.scaffold import Scaffold
from flows.common import GameParams, Seeds, check_disjoint, run_episodes, sync
from tasks.archive import archive_traces
from tasks.review import confirm_candidate, gate_candidate, promote_incumbent, review_scaffold


class ScreenConfig(BaseModel):
    """Staged evaluation: a candidate first plays the first `seeds` evaluation seeds; only
    one whose mean progression there beats the incumbent's by at least `min_delta` plays
    the rest (then the paired gate, then the confirmation seeds). The screen's episodes are
    the gate's own (same seeds and steps, reused), so a passing candidate costs nothing more."""

    model_config = ConfigDict(extra="forbid")

    seeds: int = Field(2, ge=1, description="How many of the evaluation seeds (the first ones) the screen plays.")
    min_delta: float = Field(0.0, ge=-1.0, le=1.0, description="Mean progression, candidate minus incumbent, on "
                             "the screen seeds that passes (>=).")


class ScaffoldLoopParams(GameParams):
    """Outer loop 1. Validated before any episode starts."""

    seeds: Seeds = Field([0, 1, 2, 3], description="Fixed evaluation seeds (incumbent and candidate play the same).")
    confirm_seeds: Seeds = Field([10, 11, 12, 13], description="Held-out seeds a winner must win "
                                     "on again before promotion; the reviewer never sees them.")
    reviewer: MetaLLMConfig = Field(default_factory=MetaLLMConfig, description="Who writes candidates.")
    iterations: int = Field(2, ge=1, le=100, description="K: review iterations at most.")
    patience: int = Field(2, ge=1, le=100, description="M: stop after this many iterations in a row without promotion.")
    attempts: int = Field(3, ge=1, le=10, description="Reviewer attempts per iteration (rejections are fed back).")
    token_budget: int = Field(12_000, ge=1_000, le=1_000_000, description="Review bundle size in tokens.")
    gate: GateConfig = Field(default_factory=GateConfig, description="The promotion test.")
    screen: ScreenConfig | None = Field(None, description="Staged evaluation (None: every candidate plays "
                                        "all evaluation seeds).")
    max_meta_tokens: int | None = Field(None, ge=1, description="No further review once the reviews of this "
                                        "run have spent this many meta-LLM tokens (agentic reviewer's ledger).")
    max_meta_cost_usd: float | None = Field(None, gt=0.0, description="No further review once the reviews of "
                                            "this run have cost this many dollars (agentic reviewer's ledger).")

    @model_validator(mode="after")
    def _gate_can_promote(self) -> "ScaffoldLoopParams":
        check_disjoint(seeds=self.seeds, confirm_seeds=self.confirm_seeds)
        self.gate.check_seeds(len(self.seeds), "evaluation seeds")
        self.gate.check_seeds(len(self.confirm_seeds), "confirmation seeds")
        if self.screen and self.screen.seeds >= len(self.seeds):
            raise ValueError(f"screen.seeds ({self.screen.seeds}) must be fewer than the {len(self.seeds)} "
                             "evaluation seeds")
        return self


def meta_usage(attempts: list[dict], into: dict[str, float]) -> None:
    """Add review attempts' ledger totals (`usage`, agentic reviewer) into `into`."""
    for a in attempts:
        u = a.get("usage") or {}
        into["tokens"] += u.get("prompt_tokens", 0) + u.get("completion_tokens", 0)
        into["cost_usd"] += u.get("cost_usd", 0.0)
        into["calls"] += u.get("calls", 0)


def meta_budget_spent(params: ScaffoldLoopParams, spent: dict[str, float]) -> str | None:
    """Which loop-level meta-LLM cap this run has reached, if any."""
    if params.max_meta_tokens is not None and spent["tokens"] >= params.max_meta_tokens:
        return f"max_meta_tokens: the reviews spent {int(spent['tokens'])} tokens (cap {params.max_meta_tokens})"
    if params.max_meta_cost_usd is not None and spent["cost_usd"] >= params.max_meta_cost_usd:
        return f"max_meta_cost_usd: the reviews cost ${spent['cost_usd']:.4f} (cap ${params.max_meta_cost_usd:g})"
    return None


def screen_candidate(params: ScaffoldLoopParams, candidate: Scaffold, incumbent_runs: list,
                     env_steps: dict[str, int]) -> str | None:
    """None when the candidate passes the screen (or there is none); else why it failed,
    with the environment steps it saved. The screen's steps are added to `env_steps`."""
    if params.screen is None:
        return None
    n = params.screen.seeds
    screen = run_episodes(params.specs(str(candidate.root), params.seeds[:n]), params, label="candidate, screen")
    sync(params.workspace, candidate.root, *archive_traces([s.trace_path for s in screen], str(params.root() / "archive")))
    env_steps[candidate.hash] = env_steps.get(candidate.hash, 0) + sum(s.steps for s in screen)
    inc = sum(s.progression for s in incumbent_runs[:n]) / n
    cand = sum(s.progression for s in screen) / n
    if cand - inc >= params.screen.min_delta:
        return None
    skipped = len(params.seeds) - n
    return (f"failed the screen on seeds {params.seeds[:n]}: mean progression {cand:.3f} vs incumbent {inc:.3f} "
            f"(needs a difference of at least {params.screen.min_delta:g}); the screen played "
            f"{sum(s.steps for s in screen)} environment steps; {skipped} candidate episodes not played, up to "
            f"{skipped * params.max_steps} environment steps saved")


def scaffold_diff(old: Scaffold, new: Scaffold) -> str:
    lines = [f"# Candidate {new.hash} vs incumbent {old.hash}", ""]
    for name in sorted(set(old.files) | set(new.files)):
        a = old.files.get(name, b"").decode(errors="replace").splitlines()
        b = new.files.get(name, b"").decode(errors="replace").splitlines()
        if a != b:
            diff = difflib.unified_diff(a, b, f"incumbent/{name}", f"candidate/{name}", lineterm="")
            lines += ["```diff", *diff, "```", ""]
    return "\n".join(lines)


def artifact_key(text: str) -> str:
    """`text` as a Prefect artifact key (lowercase letters, digits and dashes)."""
    return "".join(c if c.isalnum() else "-" for c in text.lower())


@flow(name="scaffold_loop")
def scaffold_loop(params: ScaffoldLoopParams = ScaffoldLoopParams()) -> dict:
    logger = get_run_logger()
    params.models.check()
    params.reviewer.check()
    root, game = params.root(), params.game_name
    incumbent = params.incumbent()
    history: list[IterationRecord] = []
    feedback: list[str] = []  # what became of earlier candidates for the current incumbent
    misses = 0
    spent = {"tokens": 0, "cost_usd": 0.0, "calls": 0}  # the meta-LLM's ledger over this run
    env_steps: dict[str, int] = {}  # environment steps played to evaluate each candidate (screen episodes once)
    stopped = None
    for iteration in range(params.iterations):
        stopped = meta_budget_spent(params, spent)
        if stopped:
            logger.info("stopping before iteration %d: %s", iteration, stopped)
            break
        runs = run_episodes(params.specs(str(incumbent.root), params.seeds), params, label="incumbent")
        traces = [s.trace_path for s in runs]
        sync(params.workspace, *archive_traces(traces, str(root / "archive")))
        proposal = review_scaffold(str(incumbent.root), traces, params.reviewer, str(root),
                                   params.attempts, params.token_budget, feedback)
        entry = dict(iteration=iteration, incumbent=incumbent.hash, reviewer=proposal.reviewer,
                     attempts=proposal.attempts)
        meta_usage(proposal.attempts, spent)
        candidate = Scaffold.load(proposal.candidate_dir) if proposal.candidate_dir else None
        screened_out = screen_candidate(params, candidate, runs, env_steps) if candidate else None
        if candidate is None:
            reasons = "; ".join(a.get("reason", "") for a in proposal.attempts)
            logger.info("iteration %d: no valid candidate (%s)", iteration, reasons)
            history.append(IterationRecord(**entry, verdict="no valid candidate", reason=reasons))
        elif screened_out:  # the full seeds, the gate and the confirmation seeds are not played
            logger.info("iteration %d: %s", iteration, screened_out)
            history.append(IterationRecord(**entry, candidate=candidate.hash, verdict="kept incumbent",
                                           reason=screened_out))
            feedback.append(f"candidate {candidate.hash} ({'; '.join(proposal.changes)}) {screened_out}")
        else:
            cand_runs = run_episodes(params.specs(str(candidate.root), params.seeds), params,
                                     label="candidate")
            sync(params.workspace, candidate.root, *archive_traces([s.trace_path for s in cand_runs], str(root / "archive")))
            played = cand_runs[params.screen.seeds if params.screen else 0:]  # the screen's are counted
            env_steps[candidate.hash] = env_steps.get(candidate.hash, 0) + sum(s.steps for s in played)
            verdict_path = str(root / "verdicts" / f"{incumbent.hash}-vs-{candidate.hash}.json")
            verdict = gate_candidate(params.seeds, [s.progression for s in runs],
                                     [s.progression for s in cand_runs], params.gate, verdict_path)
            seen_reason = verdict.reason  # what the reviewer may learn: the evaluation seeds only
            if verdict.promote:  # a winner plays the held-out seeds before it is believed
                inc_confirm = run_episodes(params.specs(str(incumbent.root), params.confirm_seeds),
                                           params, label="incumbent, confirmation seeds")
                cand_confirm = run_episodes(params.specs(str(candidate.root), params.confirm_seeds),
                                            params, label="candidate, confirmation seeds")
                verdict = confirm_candidate(verdict, params.confirm_seeds, [s.progression for s in inc_confirm],
                                            [s.progression for s in cand_confirm], params.gate, verdict_path)
                env_steps[candidate.hash] = env_steps.get(candidate.hash, 0) + sum(
                    s.steps for s in inc_confirm + cand_confirm)
            _publish(params, iteration, incumbent, candidate, proposal, verdict, env_steps.get(candidate.hash, 0))
            history.append(IterationRecord(**entry, candidate=candidate.hash, reason=verdict.reason,
                                           verdict=verdict.outcome))
            logger.info("iteration %d: %s - %s", iteration, history[-1].verdict, verdict.reason)
            sync(params.workspace, root / "verdicts")
            if verdict.promote:
                promote_incumbent(str(root), "scaffolds", game, str(candidate.root), verdict)
                sync(params.workspace, root / "registry.json")
                incumbent, misses, feedback = candidate, 0, []
                continue
            feedback.append(f"candidate {candidate.hash} ({'; '.join(proposal.changes)}) played the same "
                            f"seeds and was not promoted: {seen_reason}" + (
                                "; it did not hold up on held-out seeds" if verdict.confirmation else ""))
        misses += 1
        if misses >= params.patience:
            logger.info("stopping: %d iterations in a row without promotion", misses)
            break
    return {"game": params.game, "incumbent": str(incumbent.root), "history": [h.data() for h in history],
            "meta_usage": spent, "env_steps": env_steps, "stopped": stopped}


def _publish(params: ScaffoldLoopParams, iteration: int, incumbent: Scaffold, candidate: Scaffold,
             proposal, verdict: GateVerdict, env_steps: int = 0) -> None:
    prefix = f"scaffold-loop-{artifact_key(params.game)}"
    create_markdown_artifact(scaffold_diff(incumbent, candidate), key=f"{prefix}-diff",
                             description=f"iteration {iteration}: candidate vs incumbent")
    usage = [a["usage"] for a in proposal.attempts if a.get("usage")]
    ledger = [f"**Ledger:** {env_steps} environment steps for this candidate"] + (
        [f"; meta-LLM {sum(u['calls'] for u in usage)} calls, {sum(u['prompt_tokens'] for u in usage)} prompt + "
         f"{sum(u['completion_tokens'] for u in usage)} completion tokens, ${sum(u['cost_usd'] for u in usage):.4f}"]
        if usage else [])
    analysis = "\n".join([f"# Reviewer analysis ({proposal.reviewer})", "", proposal.analysis, "",
                          "## Changes", *[f"- {c}" for c in proposal.changes], "",
                          f"**Gate ({verdict.outcome}):** {verdict.reason}", "", "".join(ledger)])
    create_markdown_artifact(analysis, key=f"{prefix}-analysis", description=f"iteration {iteration}: analysis")
    rows = [{"seed": s, "incumbent": i, "candidate": c, "delta": round(c - i, 4)}
            for s, i, c in zip(verdict.seeds, verdict.incumbent, verdict.candidate)]
    create_table_artifact(rows, key=f"{prefix}-seeds", description=f"iteration {iteration}: per-seed progression")
