"""One review round: ask the reviewer, validate, feed rejections back (bounded attempts).
Every attempt is kept on disk with its verdict."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydantic import BaseModel

from agent_core.review.bundle import ReviewBundle
from agent_core.review.candidate import CandidateError, parse_revision, validate_candidate
from agent_core.review.candidate import NoRevision
from agent_core.review.reviewers import Reviewer
from agent_core.scaffold import Scaffold

log = logging.getLogger(__name__)


class Proposal(BaseModel):
    candidate_dir: str | None
    analysis: str = ""
    changes: list[str] = []
    attempts: list[dict]
    reviewer: str


def propose(reviewer: Reviewer, bundle: ReviewBundle, incumbent: Scaffold, scaffolds_root: Path,
            record_dir: Path, max_attempts: int = 3, feedback: list[str] | None = None) -> Proposal:
    """Up to `max_attempts` reviews; each rejection's reason goes back to the reviewer, after
    `feedback` from earlier iterations (e.g. candidates the gate did not promote).
    Model errors propagate (the task retries); a bad reply never does."""
    record_dir.mkdir(parents=True, exist_ok=True)
    feedback = list(feedback or [])
    attempts: list[dict] = []
    found: dict = {}
    for n in range(max_attempts):
        try:
            reply = reviewer.review(bundle, incumbent, feedback)
        except NoRevision as exc:
            if exc.reply is not None:  # a cut-off reply is never used, but kept for the record
                (record_dir / f"attempt-{n}.reply.txt").write_text(exc.reply)
            attempts.append({"attempt": n, "verdict": "no revision", "reason": str(exc), **_usage(reviewer)})
            break
        (record_dir / f"attempt-{n}.reply.txt").write_text(reply)
        try:
            revision = parse_revision(reply)
            candidate = validate_candidate(revision, incumbent, scaffolds_root)
        except CandidateError as exc:
            reason = str(exc)
            log.info("candidate rejected (attempt %d): %s", n, reason)
            attempts.append({"attempt": n, "verdict": "rejected", "reason": reason, **_usage(reviewer)})
            feedback.append(reason)
            continue
        attempts.append({"attempt": n, "verdict": "valid", "candidate": candidate.hash, **_usage(reviewer)})
        found = dict(candidate_dir=str(candidate.root), analysis=revision.analysis, changes=revision.changes)
        break
    proposal = Proposal(**{"candidate_dir": None, **found}, attempts=attempts, reviewer=reviewer.name)
    (record_dir / "proposal.json").write_text(json.dumps(proposal.model_dump(), indent=2))
    return proposal


def _usage(reviewer: Reviewer) -> dict:
    """The attempt's ledger totals (tokens, dollars, calls), for reviewers that keep one
    (the agentic reviewer); {} for the others."""
    usage = getattr(reviewer, "last_usage", None)
    return {"usage": usage()} if callable(usage) and usage() else {}


def review_key(incumbent: Scaffold, episode_ids: list[str], reviewer_identity: str, max_attempts: int,
               token_budget: int, feedback: list[str] = (), prompt: str | None = None) -> str:
    """What determines a review round (its record directory is named by this). `prompt`: the
    reviewer prompt's template text (default: the shipped one): a new prompt is a new review."""
    import hashlib

    from agent_core.review.reviewers import PROMPT

    text = PROMPT.read_text() if prompt is None else prompt
    blob = json.dumps([incumbent.hash, sorted(episode_ids), reviewer_identity, max_attempts, token_budget,
                       list(feedback), hashlib.sha256(text.encode()).hexdigest()[:16]])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_proposal(record_dir: Path) -> Proposal | None:
    """A finished review round's proposal (a re-run does not ask the reviewer again)."""
    path = record_dir / "proposal.json"
    return Proposal.model_validate_json(path.read_text()) if path.is_file() else None
