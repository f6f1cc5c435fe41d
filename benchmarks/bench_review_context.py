"""What the reviewer can see of a 2,000-step trace, and how big its context gets.

Prints, in one run, on a synthetic 2,000-step tiny-game trace (progress until step 300, a
storm of duplicate writes from step 1,400):
- the baseline, today's single-call bundle: its prompt size and which steps it shows;
- the agentic reviewer (scripted tool calls): it reads a 10-step window (paged at 6,000 characters) every 100 steps
  across the whole episode, the memory at the end and the defect's diff; the largest context
  any call was sent (old tool outputs elided past `context_cap_tokens`), and which steps it
  showed. Target: under 32k tokens while any step can be reached.

Token counts: characters / 4 (the project's budget unit) and, when the local model is
prepared, its tokenizer's exact count of the largest context.

    .venv/bin/python benchmarks/bench_review_context.py
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "agent_core"))

from agent_core.archive import archive_trace  # noqa: E402
from agent_core.models.tool_calls import ScriptedToolModel  # noqa: E402
from agent_core.meta.loop import AgentBudget, context_tokens  # noqa: E402
from agent_core.review.agentic import AgenticReviewer  # noqa: E402
from agent_core.review.bundle import build_bundle  # noqa: E402
from agent_core.review.candidate import HOOK_IMPORTS, HOOK_NAMES  # noqa: E402,F401
from agent_core.review.candidate import NoRevision  # noqa: E402
from agent_core.review.reviewers import MetaLLMReviewer  # noqa: E402
from agent_core.scaffold import Scaffold  # noqa: E402
from synthetic_trace import write_synthetic_trace  # noqa: E402

STEPS, DEFECT = 2000, 1400
tmp = Path(tempfile.mkdtemp(prefix="bench-review-"))
scaffold = Scaffold.builtin("tiny")
trace = write_synthetic_trace(tmp / "ep", scaffold, steps=STEPS, defect_at=DEFECT)
archive_trace(trace, tmp / "archive")

# -- baseline: the single-call bundle -------------------------------------------------------------
bundle = build_bundle(scaffold, [trace])


class _Echo:
    model_id = "echo"


prompt = MetaLLMReviewer(_Echo()).prompt(bundle, scaffold, [])  # type: ignore[arg-type]
shown = sorted({int(n) for n in re.findall(r"^### step (\d+):", prompt, re.M)})
print(f"single-call bundle: {len(prompt):,} characters ~ {len(prompt) // 4:,} tokens; "
      f"steps shown: {len(shown)} ({shown[0]}-{shown[-1]}); defect step {DEFECT} shown: {DEFECT in shown}")

# -- the agentic reviewer ------------------------------------------------------------------------
windows = [(s, s + 9) for s in range(0, STEPS, 100)] + [(DEFECT, DEFECT + 9)]
script = [("sql", {"query": "select step, count(*) filter (where duplicate) as dups from memory_ops "
                            "group by step having dups > 0 order by step limit 5"})]
script += [("trace", {"episode": "synthetic2000", "from_step": a, "to_step": b}) for a, b in windows]
script += [("memory_at", {"episode": "synthetic2000", "step": STEPS - 1}),
           ("memory_diff", {"episode": "synthetic2000", "step_a": DEFECT - 1, "step_b": DEFECT})]


class CountingModel(ScriptedToolModel):
    """The script, with each call's prompt tokens counted by the local model's tokenizer as
    `automem serve` renders the conversation (so the loop's elision sees real counts)."""

    def __init__(self, script, tokenizer) -> None:
        super().__init__(script)
        self.tokenizer = tokenizer
        self.real: list[int] = []

    def complete_tools(self, turns, params, tools, tool_choice="auto"):
        out = super().complete_tools(turns, params, tools, tool_choice)
        if self.tokenizer is not None:
            out.prompt_tokens = real_tokens(self.tokenizer, turns, tools)
            self.real.append(out.prompt_tokens)
        return out


def real_tokens(tok, turns, tools) -> int:
    from agent_core.models.tool_calls import render_messages, tool_functions, tools_prompt

    functions = tool_functions(tools)
    messages = render_messages([t.openai() for t in turns], tools_prompt(functions, list(functions)))
    text = tok.apply_chat_template([m.model_dump() for m in messages], tokenize=False, add_generation_prompt=True)
    return len(tok(text).input_ids)


try:
    from transformers import AutoTokenizer

    from agent_core.models.weights import local_model_path

    tokenizer = AutoTokenizer.from_pretrained(local_model_path())
except Exception as exc:  # the local model is optional here
    print(f"(no exact token counts: {type(exc).__name__}: {exc})")
    tokenizer = None
model = CountingModel(script, tokenizer)
budget = AgentBudget(max_steps=len(script), max_review_tokens=2_000_000, context_cap_tokens=24_000, keep_recent=2)
reviewer = AgenticReviewer(model, tmp / "archive", tmp / "scaffolds", tmp / "rec", budget)
try:
    reviewer.review(bundle, scaffold, [])
except NoRevision:
    pass  # the script only reads: it ends at its step budget
run = reviewer.runs[0]
sizes = [context_tokens(turns, model.tools_seen[0]) for turns in model.calls]
records = Path(run.trace_path).read_text()
seen = sorted({int(n) for n in re.findall(r"=== step (\d+):", records)})
biggest = max(range(len(model.calls)), key=lambda i: sizes[i])
print(f"agentic reviewer (stopped by {run.stop_reason}): {run.replies} calls, {run.tool_calls} tool calls, {run.elided} tool outputs elided; "
      f"largest context ~ {sizes[biggest]:,} tokens (chars/4), cap {budget.context_cap_tokens:,}; "
      f"steps shown: {len(seen)} ({seen[0]}-{seen[-1]}); defect step {DEFECT} shown: {DEFECT in seen}")

if tokenizer is not None:
    bundle_tokens = len(tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                                add_generation_prompt=True)).input_ids)
    print(f"SmolLM2 tokenizer (as `automem serve` renders each prompt): largest agentic context "
          f"{max(model.real):,} tokens over {len(model.real)} calls; single-call prompt {bundle_tokens:,} tokens")
    print(f"whole review (ledger): {run.ledger.prompt_tokens:,} prompt + {run.ledger.completion_tokens:,} completion "
          f"tokens over {len(run.ledger.calls)} calls, against one call of {bundle_tokens:,} prompt tokens")
