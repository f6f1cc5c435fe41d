"""Local model speed with and without prefix KV reuse, on the LOG/PLAN calling pattern.

A ~2,000-token conversation (scaffold prompt plus earlier steps) grows step by step: each
step appends an observation and asks LOG for memory operations, appends LOG's reply, then
asks PLAN for an action and appends PLAN's reply. Every call runs without and then with
reuse (greedy); the first call is a cold prefill in both modes, the later ones are where
reuse pays.

    python benchmarks/bench_local_model.py [--steps 4] [--max-tokens 24] [--dtype bfloat16]

Needs the prepared model (`make model`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from agent_core.models.local import LocalModel  # noqa: E402
from agent_core.records import Message, SamplingParams  # noqa: E402

SYSTEM = (
    "You are an agent playing Crafter. You keep a memory folder of markdown files. "
    "In LOG you write memory operations, one per line: WRITE path | text, APPEND path | text, "
    "DELETE path. In PLAN you read your memory and answer with exactly one action from: "
    "noop, move_left, move_right, move_up, move_down, do, sleep, place_stone, place_table, "
    "place_furnace, place_plant, make_wood_pickaxe, make_stone_pickaxe, make_iron_pickaxe, "
    "make_wood_sword, make_stone_sword, make_iron_sword."
)
THINGS = ["tree", "water", "stone", "grass", "cow", "zombie", "sand", "coal", "iron", "table"]
DIRS = ["north", "south", "east", "west"]


def observation(step: int) -> str:
    near = ", ".join(
        f"{THINGS[(step + i) % 10]} {1 + (step * 3 + i) % 5} steps {DIRS[(step + i) % 4]}"
        for i in range(4)
    )
    return (f"Step {step}. You see {near}. Health 9, food {9 - step % 5}, drink {8 - step % 4}, "
            f"energy 9. Inventory: wood {step % 6}, sapling {step % 2}.")


def history(model: LocalModel, context_tokens: int) -> list[Message]:
    """System prompt plus past steps until the prompt holds about `context_tokens` tokens."""
    conv = [Message(role="system", content=SYSTEM)]
    step = 0
    while len(model.encode(conv)) < context_tokens:
        conv += [
            Message(role="user", content=observation(step) + "\nLOG:"),
            Message(role="assistant", content=f"APPEND notes.md | step {step}: saw "
                    f"{THINGS[step % 10]} to the {DIRS[step % 4]}"),
            Message(role="user", content="PLAN: your action?"),
            Message(role="assistant", content=["move_up", "do", "move_left", "noop"][step % 4]),
        ]
        step += 1
    return conv


def run(model: LocalModel, conv: list[Message], steps: int, params: SamplingParams) -> list[dict]:
    """Play `steps` LOG+PLAN steps on a copy of `conv`, each call twice: without, then with reuse.

    Interleaving the two modes call by call keeps background load from favouring either.
    A call without reuse leaves the prefix caches alone, so the reuse mode sees exactly the
    history it would have alone. The conversation grows with the reuse mode's reply.
    """
    model.clear_prefix_cache()
    conv = list(conv)
    calls = []
    for step in range(steps):
        for routine, prompt in (
            ("log", observation(1000 + step) + "\nLOG: write memory operations."),
            ("plan", "PLAN: which action now? Answer with one action."),
        ):
            conv.append(Message(role="user", content=prompt))
            for reuse in (False, True):
                model.prefix_reuse = reuse
                g = model.generate(conv, params)
                c = g.completion
                calls.append({"mode": "prefix_reuse" if reuse else "no_reuse", "step": step,
                              "routine": routine, "prompt_tokens": c.prompt_tokens,
                              "completion_tokens": c.completion_tokens,
                              "reused_tokens": g.reused_tokens,
                              "latency_s": round(c.latency_s, 3), "text": c.text})
            conv.append(Message(role="assistant", content=c.text))
    return calls


def summarise(calls: list[dict]) -> dict:
    """Per-step latency (LOG + PLAN), its mean after the cold first step, tokens/s."""
    per_step: dict[int, float] = {}
    for c in calls:
        per_step[c["step"]] = per_step.get(c["step"], 0.0) + c["latency_s"]
    warm = [v for k, v in per_step.items() if k > 0] or list(per_step.values())
    return {
        "step_latency_s": [round(v, 2) for v in per_step.values()],
        "mean_step_s_after_first": round(statistics.mean(warm), 3),
        "mean_step_s_all": round(statistics.mean(per_step.values()), 3),
        "tokens_per_s": round(sum(c["completion_tokens"] for c in calls)
                              / sum(c["latency_s"] for c in calls), 2),
        "prompt_tokens_last": calls[-1]["prompt_tokens"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--context-tokens", type=int, default=2000)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default, one per core); on a busy "
                    "machine use fewer than the idle cores, as OpenMP threads spin-waiting "
                    "for a descheduled peer slow every step down many times")
    ap.add_argument("--json", type=Path, help="write the full results here")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model = LocalModel(dtype=args.dtype)
    import torch

    print(f"loaded {model.path} ({args.dtype}, {torch.get_num_threads()} threads) in "
          f"{time.perf_counter() - t0:.1f} s; load average {os.getloadavg()[0]:.2f}")
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    model.generate([Message(role="user", content="Hello")], params)  # one-time kernel warm-up
    conv = history(model, args.context_tokens)
    print(f"conversation: {len(conv)} messages, {len(model.encode(conv))} tokens; "
          f"{args.steps} steps x (LOG + PLAN), max_tokens {args.max_tokens}")

    calls = run(model, conv, args.steps, params)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    for label in ("no_reuse", "prefix_reuse"):
        mine = [c for c in calls if c["mode"] == label]
        s = summarise(mine)
        results[label] = {"calls": mine, "summary": s}
        print(f"{label:>12}: per-step {s['step_latency_s']} s; mean after first step "
              f"{s['mean_step_s_after_first']} s; completion tokens/s {s['tokens_per_s']}")
    a, b = results["no_reuse"], results["prefix_reuse"]
    same = sum(x["text"] == y["text"] for x, y in zip(a["calls"], b["calls"]))
    speedup = a["summary"]["mean_step_s_after_first"] / b["summary"]["mean_step_s_after_first"]
    print(f"speed-up per step (after the first): {speedup:.2f}x; "
          f"identical replies {same}/{len(a['calls'])}; "
          f"reused tokens per call {[c['reused_tokens'] for c in b['calls']]}; "
          f"load average {os.getloadavg()[0]:.2f}")
    if args.json:
        results["speedup_per_step"] = round(speedup, 3)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
