"""The meta-LLM as an agent over the trace store: a system prompt, the tools of
`meta/tools.py`, and a budget; every call and tool result goes to a review trace (JSONL).
Both outer loops run it: the scaffold reviewer (`review/agentic.py`) and the training
curator (`training/agentic.py`), each with its own submission tool.

- The loop ends when a submission tool accepts a proposal, or at a budget: replies
  (`max_steps`), tokens in and out summed over calls (`max_review_tokens`), or dollars
  through a price table (`max_cost_usd`). The token and dollar caps are checked before
  each call against what that call could spend at most (its prompt, estimated, plus its
  reply limit), so a cap is never passed. The run says which one stopped it.
- Once the conversation passes `context_cap_tokens`, the oldest tool results are replaced
  by a short note (as SWE-agent does), the last `keep_recent` never: a review never
  overflows its context, and the model can call a tool again. The size is estimated in
  characters / 4, scaled by the ratio of the server's prompt-token count to that estimate
  at the last call (a small model's tokenizer counts trace text ~1.7x denser).
- A reply cut off at its token limit (or aborted, or filtered) is never used: its calls may
  be incomplete, so none is run and the model is told so. A submission inside it is never
  adopted.
- A reply without a tool call gets a reminder to call one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent_core.models.base import ModelError
from agent_core.models.tool_calls import ChatTurn, ToolChatModel, ToolCompletion
from agent_core.records import SamplingParams
from agent_core.meta.tools import Toolbox, ToolResult
from agent_core.trace import read_jsonl

CHARS_PER_TOKEN = 4  # the budget unit of `bundle.py`; servers report exact usage per call
StopReason = Literal["submitted", "max_steps", "max_review_tokens", "max_cost_usd"]
#: finish reasons of a reply that did not end by itself: its calls may be incomplete, never run
UNFINISHED = frozenset({"length", "abort", "content_filter"})


class Price(BaseModel):
    """Dollars per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float = Field(0.0, ge=0.0, description="Dollars per million prompt tokens.")
    output_per_mtok: float = Field(0.0, ge=0.0, description="Dollars per million completion tokens.")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


class AgentBudget(BaseModel):
    """What one agentic review (or curation) may spend, and how its context is kept small."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(30, ge=1, le=1000, description="Model replies at most.")
    max_review_tokens: int = Field(400_000, ge=1_000, description="Prompt plus completion tokens, summed over calls.")
    max_cost_usd: float | None = Field(None, gt=0.0, description="Dollars at most (through `prices`); None: no cap.")
    prices: dict[str, Price] = Field(default_factory=dict, description="Model id -> price; '*' for any other "
                                     "model. A model without a price costs 0.")
    context_cap_tokens: int = Field(24_000, ge=1_000, description="Above this (estimated) size, old tool "
                                    "results are elided.")
    keep_recent: int = Field(2, ge=0, description="The most recent tool results are never elided.")
    reply_max_tokens: int = Field(4096, ge=16, le=32768, description="Token limit of one reply.")
    temperature: float = Field(0.2, ge=0.0, le=2.0)
    tool_choice: Literal["auto", "required"] = Field(
        "required", description="required: every reply calls a tool (the loop ends only by a submission "
        "or the budget); auto: the model may answer in text, and is reminded to call one.")

    def price(self, model_id: str) -> Price:
        return self.prices.get(model_id) or self.prices.get("*") or Price()


class CallUsage(BaseModel):
    """One model call in the ledger."""

    call: int
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_s: float
    finish_reason: str
    tool_calls: list[str]


class Ledger(BaseModel):
    """Tokens and dollars per call, environment steps per candidate; sums are derived."""

    calls: list[CallUsage] = Field(default_factory=list)
    env_steps: dict[str, int] = Field(default_factory=dict)

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self.calls)

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.calls)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost_usd(self) -> float:
        return sum(c.cost_usd for c in self.calls)

    def add_env_steps(self, candidate: str, steps: int) -> None:
        self.env_steps[candidate] = self.env_steps.get(candidate, 0) + steps

    def totals(self) -> dict[str, Any]:
        return {"calls": len(self.calls), "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cost_usd": round(self.cost_usd, 6),
                "env_steps": sum(self.env_steps.values())}


class AgentRun(BaseModel):
    """How an agentic review ended."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    stop_reason: StopReason
    #: the submission tool's accepted value; None: "no revision"
    accepted: Any = None
    replies: int
    tool_calls: int
    elided: int
    ledger: Ledger
    trace_path: str

    @property
    def verdict(self) -> str:
        return "submitted" if self.accepted is not None else "no revision"

    def summary(self) -> str:
        t = self.ledger.totals()
        return (f"{self.verdict}: stopped by {self.stop_reason} after {self.replies} replies and {self.tool_calls} "
                f"tool calls; {t['prompt_tokens']} prompt + {t['completion_tokens']} completion tokens, "
                f"${t['cost_usd']:.4f}")


class LedgerRecord(BaseModel):
    """A finished run's ledger as recorded beside its review trace (`agent-<n>.ledger.json`,
    `curator-<n>.ledger.json`): how it ended, its totals, every call."""

    stop_reason: StopReason
    verdict: str
    totals: dict[str, Any]
    calls: list[CallUsage]
    env_steps: dict[str, int] = Field(default_factory=dict)

    @classmethod
    def of(cls, run: AgentRun) -> "LedgerRecord":
        return cls(stop_reason=run.stop_reason, verdict=run.verdict, totals=run.ledger.totals(),
                   **run.ledger.model_dump())


def write_ledger(run: AgentRun, path: Path) -> None:
    path.write_text(LedgerRecord.of(run).model_dump_json(indent=1))


def read_ledgers(record_dir: Path | str, prefix: str) -> list[tuple[str, LedgerRecord]]:
    """The ledgers in `record_dir` whose file names start with `prefix` ("agent" for the
    reviewer, "curator"), by run index: (file stem without `.ledger`, record)."""
    found = []
    for path in Path(record_dir).glob(f"{prefix}-*.ledger.json"):
        stem = path.name[: -len(".ledger.json")]
        index = stem.rsplit("-", 1)[-1]
        if index.isdigit():
            found.append((int(index), stem, LedgerRecord.model_validate_json(path.read_text())))
    return [(stem, record) for _, stem, record in sorted(found, key=lambda x: x[0])]


def archive_ledgers(record_dir: Path | str, archive_root: Path | str, *, role: Literal["reviewer", "curator"],
                    mode: str, game: str, scaffold_hash: str, candidates: dict[int, str | None] | None = None,
                    trial: int | None = None) -> list[Path]:
    """Put the ledgers of the finished runs in `record_dir` (the reviewer's `agent-<n>`, or the
    curator's `curator-<n>`) into the archive's `meta_calls` table, one file per run, one row
    per call. `candidates`: run index (the review attempt) -> the candidate it produced;
    `trial`: the training trial a curation belongs to. A run is named by its record folder,
    its file and a digest of its ledger, so archiving again rewrites the same files, and a
    later run recorded in the same folder (another night) gets its own."""
    import hashlib

    from agent_core.archive import archive_meta_calls

    record_dir = Path(record_dir)
    written = []
    for stem, record in read_ledgers(record_dir, "agent" if role == "reviewer" else "curator"):
        if not record.calls:
            continue
        digest = hashlib.sha256(record.model_dump_json().encode()).hexdigest()[:8]
        run_id = f"{record_dir.name}/{stem}@{digest}"
        candidate = (candidates or {}).get(int(stem.rsplit("-", 1)[-1]))
        env = record.env_steps.get(candidate) if candidate else None
        rows = [{**c.model_dump(exclude={"call"}), "call_index": c.call, "run_id": run_id, "role": role,
                 "mode": mode, "stop_reason": record.stop_reason, "verdict": record.verdict,
                 "candidate": candidate, "trial": trial, "env_steps": env} for c in record.calls]
        written.append(archive_meta_calls(archive_root, game, scaffold_hash,
                                          f"{role}-{record_dir.name}-{stem}-{digest}", rows))
    return written


def context_tokens(turns: list[ChatTurn], tools: list[dict[str, Any]]) -> int:
    """The conversation's size in (estimated) tokens, tool specs included."""
    chars = sum(len(t.content) + sum(len(c.arguments) + len(c.name) for c in t.tool_calls) for t in turns)
    return (chars + len(json.dumps(tools))) // CHARS_PER_TOKEN


ELIDED = "[tool output elided to keep the context small ({chars} characters); call the tool again to see it]"


def elide(turns: list[ChatTurn], tools: list[dict[str, Any]], cap_tokens: int, keep_recent: int) -> list[int]:
    """Replace the oldest tool results by a note until the context fits `cap_tokens` (or
    only the `keep_recent` newest are left). Returns the indexes of the turns elided."""
    results = [i for i, t in enumerate(turns) if t.role == "tool" and not t.content.startswith("[tool output elided")]
    candidates = results[: max(len(results) - keep_recent, 0)]
    done = []
    for i in candidates:
        if context_tokens(turns, tools) <= cap_tokens:
            break
        turns[i] = turns[i].model_copy(update={"content": ELIDED.format(chars=len(turns[i].content))})
        done.append(i)
    return done


class ReviewTrace:
    """The review trace: one JSON line per record (start, call, tool, note, elided, end)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("w", encoding="utf-8")

    def write(self, kind: str, **data: Any) -> None:
        self._fh.write(json.dumps({"kind": kind, "t": round(time.time(), 3), **data}, default=str) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def run_agent(model: ToolChatModel, toolbox: Toolbox, system: str, task: str, budget: AgentBudget,
              trace_path: Path, submit_tool: str) -> AgentRun:
    """Run the meta-LLM agent until `submit_tool` accepts a proposal or a budget ends it.
    Model errors propagate (after being recorded); tool failures never do."""
    if not isinstance(model, ToolChatModel):
        raise TypeError(f"the agentic reviewer needs a model with tool calls (complete_tools); "
                        f"{type(model).__name__} has none: use the single-call reviewer")
    tools = toolbox.specs()
    turns = [ChatTurn(role="system", content=system), ChatTurn(role="user", content=task)]
    ledger = Ledger()
    trace = ReviewTrace(trace_path)
    trace.write("start", model=model.model_id, tools=[t["function"]["name"] for t in tools],
                budget=budget.model_dump(), system=system, task=task)
    price = budget.price(model.model_id)
    replies = calls_run = elided = 0
    accepted: Any = None
    stop: StopReason | None = None
    last: tuple[int, int] | None = None  # (prompt tokens the server counted, our estimate then)
    try:
        while stop is None:
            if replies >= budget.max_steps:
                stop = "max_steps"
                break
            # the server's tokenizer may count more tokens per character than our unit (trace
            # text is dense in digits and punctuation): scale the cap by the last call's ratio
            scale = last[0] / last[1] if last and last[1] > 0 and last[0] > last[1] else 1.0
            gone = elide(turns, tools, int(budget.context_cap_tokens / scale), budget.keep_recent)
            if gone:
                elided += len(gone)
                trace.write("elided", turns=gone, context_tokens=context_tokens(turns, tools))
            size = context_tokens(turns, tools)
            # the server's count of the last prompt, plus what was added since, when it is larger
            prompt = max(size, last[0] + size - last[1]) if last else size
            reply_limit = min(budget.reply_max_tokens, budget.max_review_tokens - ledger.tokens - prompt)
            if reply_limit < 16:
                stop = "max_review_tokens"
                break
            if budget.max_cost_usd is not None and \
                    ledger.cost_usd + price.cost(prompt, reply_limit) > budget.max_cost_usd:
                stop = "max_cost_usd"
                break
            params = SamplingParams(max_tokens=reply_limit, temperature=budget.temperature)
            try:
                reply = model.complete_tools(turns, params, tools, budget.tool_choice)
            except Exception as exc:
                trace.write("error", message=f"{type(exc).__name__}: {exc}")
                raise
            replies += 1
            last = (reply.prompt_tokens, size)
            usage = _usage(replies - 1, reply, price)
            ledger.calls.append(usage)
            trace.write("call", **usage.model_dump(), text=reply.text,
                        calls=[c.model_dump() for c in reply.tool_calls])
            if reply.finish_reason in UNFINISHED:
                note = (f"Your last reply did not end by itself (finish reason {reply.finish_reason!r}; 'length': "
                        f"cut off at its token limit of {params.max_tokens} tokens) and was discarded: nothing in "
                        "it was run. Reply shorter (for a revision, send only the files you change).")
                turns.append(ChatTurn(role="user", content=note))
                trace.write("note", text=note)
                continue
            if not reply.tool_calls and budget.tool_choice == "required":
                # a server that honours tool_choice "required" never answers without a call
                message = (f"the meta-LLM endpoint answered without a tool call under tool_choice 'required' "
                           f"({reply.text[:80]!r}): it does not serve tool calls; use the single-call mode "
                           "(meta-LLM `mode: single-call`) or a server with tool calling")
                trace.write("error", message=message)
                raise ModelError(message)
            if not reply.tool_calls:
                turns.append(ChatTurn(role="assistant", content=reply.text))
                note = f"Call a tool. Finish by calling {submit_tool}."
                turns.append(ChatTurn(role="user", content=note))
                trace.write("note", text=note)
                continue
            turns.append(ChatTurn(role="assistant", content=reply.text, tool_calls=reply.tool_calls))
            for call in reply.tool_calls:
                if accepted is not None:  # after an accepted submission nothing else runs
                    result = ToolResult(name=call.name, ok=False, content="not run: the submission was accepted")
                else:
                    result = toolbox.call(call.name, call.arguments)
                    calls_run += 1
                turns.append(ChatTurn(role="tool", content=result.content, tool_call_id=call.id, name=call.name))
                trace.write("tool", call=replies - 1, id=call.id, name=call.name, arguments=call.arguments,
                            ok=result.ok, content=result.content)
                if call.name == submit_tool and result.accepted is not None and accepted is None:
                    accepted = result.accepted
            if accepted is not None:
                stop = "submitted"
        run = AgentRun(stop_reason=stop, accepted=accepted, replies=replies, tool_calls=calls_run, elided=elided,
                       ledger=ledger, trace_path=str(trace_path))
        trace.write("end", stop_reason=stop, verdict=run.verdict, totals=ledger.totals(),
                    ledger=ledger.model_dump())
        return run
    finally:
        trace.close()


def _usage(index: int, reply: ToolCompletion, price: Price) -> CallUsage:
    return CallUsage(call=index, model=reply.model, prompt_tokens=reply.prompt_tokens,
                     completion_tokens=reply.completion_tokens,
                     cost_usd=price.cost(reply.prompt_tokens, reply.completion_tokens),
                     latency_s=reply.latency_s, finish_reason=reply.finish_reason,
                     tool_calls=[c.name for c in reply.tool_calls])


def render_review_trace(path: Path | str, max_chars: int = 1_500) -> str:
    """A review trace as markdown (for a Prefect artifact or the terminal): every call with
    its usage and tool calls, every tool result cut to `max_chars`, and how it ended."""
    lines = [f"# Agentic review `{Path(path).name}`", ""]
    for n, r in enumerate(read_jsonl(path)):
        kind = r.get("kind")
        if n == 0 and kind != "start":
            raise ValueError(f"its first record is {kind!r}, not the review's start")
        if kind == "start":
            lines += [f"Model `{r['model']}`; tools {', '.join(r['tools'])}; budget: {r['budget']['max_steps']} "
                      f"replies, {r['budget']['max_review_tokens']:,} tokens", "", "## Task", "", r["task"], ""]
        elif kind == "call":
            calls = "; ".join(f"`{c['name']}({c['arguments'][:300]})`" for c in r["calls"]) or "(no tool call)"
            lines += [f"### Call {r['call']}: {r['prompt_tokens']:,} + {r['completion_tokens']:,} tokens, "
                      f"${r['cost_usd']:.4f}, finish {r['finish_reason']}", "", calls, ""]
            if r.get("text"):
                lines += [f"> {r['text'][:max_chars]}", ""]
        elif kind == "tool":
            body = r["content"] if len(r["content"]) <= max_chars else \
                r["content"][:max_chars] + f"\n...[{len(r['content']) - max_chars} more characters]"
            lines += [f"**{r['name']}** {'ok' if r['ok'] else 'error'}:", "", "```", body, "```", ""]
        elif kind in ("note", "error"):
            lines += [f"*{kind}: {r.get('text') or r.get('message')}*", ""]
        elif kind == "elided":
            lines += [f"*{len(r['turns'])} old tool output(s) elided; context ~{r['context_tokens']:,} tokens*", ""]
        elif kind == "end":
            t = r["totals"]
            lines += [f"## End: {r['verdict']} (stopped by {r['stop_reason']})", "",
                      f"{t['calls']} calls, {t['prompt_tokens']:,} prompt + {t['completion_tokens']:,} completion "
                      f"tokens, ${t['cost_usd']:.4f}"]
    return "\n".join(lines)


def recorded_run(model: Any, toolbox: Any, system: str, task: str, budget: Any, record_dir: Path, stem: str,
                  submit_tool: str, runs: list) -> "AgentRun":
    """One agent run of a reviewer or curator: its trace to `<stem>-<n>.jsonl` and its ledger to
    `<stem>-<n>.ledger.json` in `record_dir` (n: the runs so far), appended to `runs`; the
    toolbox is closed whatever happens."""
    n = len(runs)
    try:
        run = run_agent(model, toolbox, system, task, budget, record_dir / f"{stem}-{n}.jsonl", submit_tool)
    finally:
        toolbox.close()
    runs.append(run)
    write_ledger(run, record_dir / f"{stem}-{n}.ledger.json")
    return run
