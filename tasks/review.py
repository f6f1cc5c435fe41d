"""Scaffold-loop tasks: review (bundle -> reviewer -> validation), gate, promote."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from agent_core.gate import GateConfig, GateVerdict, confirm, gate
from agent_core.registry import promote
from agent_core.meta.loop import archive_ledgers, render_review_trace
from agent_core.review.bundle import build_bundle
from agent_core.meta.config import MetaLLMConfig
from agent_core.review.reviewers import make_reviewer
from agent_core.review.propose import Proposal, load_proposal, propose, review_key
from agent_core.scaffold import Scaffold
from agent_core.trace import read_summary
from tasks.episodes import retry_on_transient_error



@task(name="review_scaffold", retries=2, retry_delay_seconds=[30, 120], retry_condition_fn=retry_on_transient_error)
def review_scaffold(incumbent_dir: str, trace_paths: list[str], reviewer: MetaLLMConfig, workspace: str,
                    max_attempts: int, token_budget: int, feedback: list[str]) -> Proposal:
    """One review round, recorded under reviews/<key>/ and reused by a re-run. `feedback`:
    what became of earlier candidates for this incumbent."""
    incumbent = Scaffold.load(incumbent_dir)
    summaries = [read_summary(p) for p in trace_paths]
    ids = [s.episode_id for s in summaries]
    key = review_key(incumbent, ids, reviewer.identity(), max_attempts, token_budget, feedback)
    record = Path(workspace) / "reviews" / key
    done = load_proposal(record)
    if done is not None:
        return done
    bundle = build_bundle(incumbent, trace_paths, token_budget=token_budget)
    (record).mkdir(parents=True, exist_ok=True)
    (record / "bundle.md").write_text(bundle.render())
    reviewer_ = make_reviewer(reviewer, Path(workspace) / "archive", Path(workspace) / "scaffolds", record)
    proposal = propose(reviewer_, bundle, incumbent, Path(workspace) / "scaffolds", record, max_attempts, feedback)
    archive_ledgers(record, Path(workspace) / "archive", role="reviewer", mode=reviewer.resolved().mode,
                    game=summaries[0].game if summaries else incumbent.config.game, scaffold_hash=incumbent.hash,
                    candidates={a["attempt"]: a.get("candidate") for a in proposal.attempts})
    for trace in sorted(record.glob("agent-*.jsonl")):  # the agentic reviewer's calls and tool results
        create_markdown_artifact(render_review_trace(trace), key=f"agentic-review-{trace.stem}",
                                 description=f"review {key}: {trace.stem}")
    return proposal


@task(name="gate_candidate")
def gate_candidate(seeds: list[int], incumbent: list[float], candidate: list[float], config: GateConfig,
                   verdict_path: str) -> GateVerdict:
    verdict = gate(seeds, incumbent, candidate, config)
    Path(verdict_path).parent.mkdir(parents=True, exist_ok=True)
    Path(verdict_path).write_text(json.dumps(verdict.model_dump(), indent=2))
    return verdict


@task(name="confirm_candidate")
def confirm_candidate(verdict: GateVerdict, seeds: list[int], incumbent: list[float], candidate: list[float],
                      config: GateConfig, verdict_path: str) -> GateVerdict:
    """`verdict` (a winner on the evaluation seeds) judged again on the confirmation seeds."""
    final = confirm(verdict, gate(seeds, incumbent, candidate, config))
    Path(verdict_path).write_text(json.dumps(final.model_dump(), indent=2))
    return final


@task(name="promote")
def promote_incumbent(workspace: str, kind: str, game: str, path: str, verdict: GateVerdict) -> None:
    promote(Path(workspace), kind, game, path, reason=verdict.reason, delta=verdict.delta, p_value=verdict.p_value)
