"""Reviewers: a meta-LLM over any OpenAI-compatible endpoint, and a rule-based baseline
for machines without one. Both answer in the same revision format (`candidate.py`), so
both go through the same strict parser and validation."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Protocol

import jinja2
import yaml

from agent_core.meta.config import MetaLLMConfig
from agent_core.models.base import ChatModel
from agent_core.records import Message, SamplingParams
from agent_core.review.bundle import ReviewBundle
from agent_core.commands import format_command
from agent_core.review.candidate import HOOK_IMPORTS, HOOK_NAMES, NoRevision, Revision, format_revision
from agent_core.scaffold import Scaffold

PROMPT = Path(__file__).parent / "prompts" / "reviewer.jinja"


class Reviewer(Protocol):
    name: str

    def review(self, bundle: ReviewBundle, incumbent: Scaffold, feedback: list[str]) -> str:
        """A reply in the revision format, or text saying no revision applies."""
        ...


class MetaLLMReviewer:
    """A strong model reads the bundle and writes the complete new scaffold."""

    def __init__(self, model: ChatModel, params: SamplingParams | None = None):
        self.model = model
        self.params = params or SamplingParams(max_tokens=8192, temperature=0.2)
        self.name = f"meta-llm:{model.model_id}"

    def prompt(self, bundle: ReviewBundle, incumbent: Scaffold, feedback: list[str]) -> str:
        template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(PROMPT.read_text())
        return template.render(game=incumbent.config.game, bundle=bundle.render(), feedback=feedback,
                               hook_names=HOOK_NAMES, hook_imports=sorted(HOOK_IMPORTS))

    def review(self, bundle: ReviewBundle, incumbent: Scaffold, feedback: list[str]) -> str:
        messages = [Message(role="user", content=self.prompt(bundle, incumbent, feedback))]
        reply = self.model.complete(messages, self.params)
        if reply.finish_reason != "stop":  # a cut-off (or aborted, filtered) scaffold is never a candidate
            raise NoRevision(f"the reply did not end by itself (finish reason {reply.finish_reason!r}; "
                             f"'length': cut off at its token limit of {self.params.max_tokens} tokens) and "
                             "is not used; for 'length', raise the meta-LLM's max_tokens", reply=reply.text)
        return reply.text


def make_reviewer(config: MetaLLMConfig, archive_root: Path | None = None, scaffolds_root: Path | None = None,
                  record_dir: Path | None = None) -> Reviewer:
    """The meta-LLM reviewer when an endpoint is configured: single-call (one prompt holding
    the bundle), or with `mode: agentic` the agent over the trace store at `archive_root`
    (`agentic.py`); else the rule-based one."""
    model = config.chat_model()
    if model is None:
        return RuleBasedReviewer()
    if config.resolved().mode == "agentic":
        from agent_core.review.agentic import make_agentic_reviewer

        return make_agentic_reviewer(config, model, archive_root, scaffolds_root, record_dir)
    return MetaLLMReviewer(model, config.params())


class RuleBasedReviewer:
    """Applies known structural remedies to what the diagnostics show, explaining each.

    Thresholds are per step and averaged over the incumbent's episodes."""

    name = "rule-based"

    def __init__(self, growth_chars_per_step: float = 20.0, duplicate_share: float = 0.3,
                 write_search_ratio: float = 2.0, invalid_op_rate: float = 0.3, file_cap: int = 4000):
        self.growth = growth_chars_per_step
        self.duplicates = duplicate_share
        self.write_search = write_search_ratio
        self.invalid = invalid_op_rate
        self.file_cap = file_cap

    def review(self, bundle: ReviewBundle, incumbent: Scaffold, feedback: list[str]) -> str:
        if feedback:  # our remedies are deterministic: a rejected one will not pass on retry
            raise NoRevision(f"previous rule-based revision was rejected: {feedback[-1]}")
        config = yaml.safe_load(incumbent.files["scaffold.yaml"].decode())
        findings: list[str] = []
        changes: list[str] = []
        self._key_growing_files(bundle, config, findings, changes)
        self._consult_before_write(bundle, config, findings, changes)
        self._drop_unread_files(bundle, config, findings, changes)
        self._tighten_limits(bundle, config, findings, changes)
        self._keep_what_leaves_view(bundle, config, findings, changes)  # last: its example obeys the rest
        if not changes:
            raise NoRevision("no diagnostic crosses a remedy threshold")
        config["description"] = "Rule-based revision: " + "; ".join(changes)
        config["parent"] = incumbent.hash
        files = {k: v.decode() for k, v in incumbent.files.items()}
        files["scaffold.yaml"] = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
        return format_revision(Revision(analysis="\n".join(findings), changes=changes, files=files))

    # -- remedies ---------------------------------------------------------
    def _per_file(self, bundle: ReviewBundle) -> dict[str, dict[str, float]]:
        stats: dict[str, dict[str, float]] = {}
        for e in bundle.episodes:
            for f in e.files:
                s = stats.setdefault(f.name, {"chars": 0.0, "steps": 0.0, "writes": 0.0, "dups": 0.0, "reads": 0.0})
                s["chars"] += f.chars_written
                s["steps"] += max(e.steps, 1)
                s["writes"] += f.writes
                s["dups"] += f.duplicate_writes
                s["reads"] += f.reads + f.search_hits
        return stats

    def _key_growing_files(self, bundle, config, findings, changes) -> None:
        stats = self._per_file(bundle)
        for spec in config["memory_files"]:
            s = stats.get(spec["name"])
            if not s or spec["kind"] != "append-log":
                continue
            growth = s["chars"] / s["steps"]
            dup_share = s["dups"] / s["writes"] if s["writes"] else 0.0
            if growth > self.growth or dup_share > self.duplicates:
                findings.append(f"{spec['name']} grows {growth:.1f} chars/step and {dup_share:.0%} of its "
                                "writes repeat text already there: an append-only log without bound.")
                spec["kind"] = "keyed-table"
                spec["purpose"] = (spec["purpose"].rstrip(".") + ". One line per key (e.g. a place or "
                                   "item); UPSERT replaces the line instead of adding a new one.")
                changes.append(f"{spec['name']}: append-log -> keyed-table (UPSERT by key)")
        keyed_all = all(f["kind"] != "append-log" for f in config["memory_files"])
        log_ops = config["log"]["allowed_ops"]
        if changes and keyed_all and "append" in log_ops:
            log_ops.remove("append")
            changes.append("LOG: APPEND removed (no append-log file is left)")
        if changes and "upsert" not in log_ops:
            log_ops.append("upsert")
            changes.append("LOG: UPSERT allowed")
        if changes:
            limits = config.setdefault("limits", {})
            cap = min(int(limits.get("max_file_chars", 20_000)), self.file_cap)
            if cap != limits.get("max_file_chars"):
                limits["max_file_chars"] = cap
                changes.append(f"per-file cap lowered to {cap} characters")

    def _consult_before_write(self, bundle, config, findings, changes) -> None:
        ratios = [e.diagnostics.write_search_ratio for e in bundle.episodes]
        writes = sum(e.diagnostics.writes for e in bundle.episodes)
        consults = sum(e.diagnostics.consults for e in bundle.episodes)
        ratio = writes / consults if consults else (float("inf") if writes else 0.0)
        if ratio > self.write_search and not config["log"].get("consult_before_write"):
            findings.append(f"write/search ratio {ratio:.2f} over {len(ratios)} episodes: the agent writes "
                            "without looking at what it already has.")
            config["log"]["consult_before_write"] = True
            if "search" not in config["log"]["allowed_ops"]:
                config["log"]["allowed_ops"].append("search")
            changes.append("LOG: consult_before_write (SEARCH or READ before any write)")

    def _drop_unread_files(self, bundle, config, findings, changes) -> None:
        stats = self._per_file(bundle)
        unread = [f["name"] for f in config["memory_files"]
                  if f["name"] in stats and stats[f["name"]]["reads"] == 0]
        keep = [f for f in config["memory_files"] if f["name"] not in unread]
        if unread and keep:
            findings.append(f"never read or found by a search in any episode: {unread}.")
            config["memory_files"] = keep
            changes.append(f"dropped unread files {unread}")

    def _tighten_limits(self, bundle, config, findings, changes) -> None:
        invalid = statistics.fmean(e.diagnostics.invalid_op_rate for e in bundle.episodes)
        if invalid > self.invalid and config["log"].get("max_ops", 4) > 1:
            findings.append(f"{invalid:.0%} of memory operations were invalid: fewer, simpler operations.")
            config["log"]["max_ops"] = config["log"].get("max_ops", 4) - 1
            changes.append(f"LOG: max_ops -> {config['log']['max_ops']}")

    def _keep_what_leaves_view(self, bundle, config, findings, changes) -> None:
        """No write in any episode kept a passage that later left the view
        (`diagnostics.kept_passage`): the agent does not write down what it will not see
        again. Remedy: a file for such facts, and one worked step (a generic one, in no
        game's words) that writes a passage seen once and looks it up later, as
        demonstrations: small models copy the form of earlier replies far better than they
        follow rules. Only for a scaffold with no demonstrations yet."""
        episodes = [e for e in bundle.episodes if e.steps > 1]
        if not episodes or config.get("demonstrations") or config.get("agent") == "context-window" \
                or sum(e.diagnostics.kept_passages for e in episodes) > 0:
            return
        findings.append(f"no write in {len(episodes)} episodes kept a passage of what the agent saw that no "
                        "later observation showed again: what is said once is lost.")
        if not any(f["name"] == NOTES_FILE for f in config["memory_files"]):
            config["memory_files"].append({"name": NOTES_FILE, "kind": "append-log", "purpose": NOTES_PURPOSE})
            changes.append(f"{NOTES_FILE}: a file for what is seen once")
        for routine, op in (("log", "append"), ("plan", "read")):
            if op not in config[routine]["allowed_ops"]:
                config[routine]["allowed_ops"].append(op)
                changes.append(f"{routine.upper()}: {op.upper()} allowed")
        config["demonstrations"] = worked_step(bool(config["log"].get("consult_before_write")))
        changes.append("a worked step (demonstrations): a passage seen once is appended to "
                       f"{NOTES_FILE} word for word, and read back when it matters")


#: the "keep what leaves the view" remedy's file and its worked step (no game's words in it)
NOTES_FILE = "notes.md"
NOTES_PURPOSE = ("What you are told or read only once and will not see again, one line each, in the "
                 "words you saw.")
_PASSAGE = "the key is under the third stone"


def worked_step(consult_first: bool) -> list[dict[str, str]]:
    """The demonstrations of the remedy: a LOG turn that writes a passage seen once into
    `NOTES_FILE` (after a look-up that finds nothing when the scaffold asks to consult
    before writing), then a later step's PLAN turn that reads it back."""
    done = format_command("done")
    write = format_command("append", file=NOTES_FILE, text=_PASSAGE)
    log_prompt = (f'Step 0.\nObservation:\nYou are in a hall. A sign on the wall reads: "{_PASSAGE.capitalize()}."'
                  f"\n\nLOG routine: record what matters; then {done}.")
    turns = [{"user": log_prompt, "assistant": f"{write}{done}"}]
    if consult_first:
        turns = [{"user": log_prompt, "assistant": format_command("search", query="key")},
                 {"user": "SEARCH: no hits for 'key'", "assistant": f"{write}{done}"}]
    return turns + [
        {"user": f"Step 5.\nObservation:\nYou stand before three stones.\n\nPLAN routine: consult memory "
                 f"if useful; then {done}.", "assistant": format_command("read", file=NOTES_FILE)},
        {"user": f"READ: {NOTES_FILE} lines 1-1 of 1:\n1: {_PASSAGE}", "assistant": done}]
