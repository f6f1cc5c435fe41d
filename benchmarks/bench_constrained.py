"""Crafter on the local model: free decoding vs the reply grammars, with and without
jump-forward, side by side in one run (same model, seed and scaffold).

Per step it prints seconds, generated tokens, forward passes, the invalid-operation rate and
the default-action rate, with the targets beside them:
- constrained is no slower per step than unconstrained;
- jump-forward cuts forward passes per step by at least 30% against plain constrained decoding.

    python benchmarks/bench_constrained.py [--steps 4] [--seed 1] [--max-tokens N]

Needs the prepared model (`make model`). The scaffold's own max_tokens applies unless
--max-tokens caps it: unconstrained replies of a small model often run to that limit.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from agent_core.models.weights import set_runtime_env  # noqa: E402

set_runtime_env()

from agent_core.models.base import Roles  # noqa: E402
from agent_core.diagnostics import diagnose  # noqa: E402
from agent_core.episode import run_episode  # noqa: E402
from agent_core.models.config import CappedModel  # noqa: E402
from agent_core.models.local import LocalModel  # noqa: E402
from agent_core.scaffold import Scaffold  # noqa: E402
from agent_core.trace import read_trace  # noqa: E402
from environments import make_env  # noqa: E402

MODES = {  # name: (constrain, jump_forward)
    "unconstrained": (False, False),
    "constrained, no jump-forward": (True, False),
    "constrained + jump-forward": (True, True),
}


def play(model: LocalModel, constrain: bool, jump: bool, steps: int, seed: int, max_tokens: int | None,
         out: Path) -> dict[str, float]:
    model.jump_forward = jump
    model.clear_prefix_cache()
    passes, tokens = model.forward_passes, model.generated_tokens
    env = make_env("crafter", max_steps=steps)
    started = time.perf_counter()
    try:
        roles = Roles(memory=CappedModel(model, max_tokens, model.model_id), constrain=constrain)
        summary = run_episode(env, Scaffold.builtin("crafter"), roles, seed, steps, out)
    finally:
        env.close()
    wall = time.perf_counter() - started
    trace = read_trace(summary.trace_path)
    n = summary.steps
    calls = [c for s in trace.steps for c in s.calls]
    return {
        "s/step": wall / n,
        "tokens/step": (model.generated_tokens - tokens) / n,
        "passes/step": (model.forward_passes - passes) / n,
        "invalid-op rate": diagnose(trace).invalid_op_rate,
        "default-action rate": summary.default_actions / n,
        "cut-off replies": sum(c.finish_reason == "length" for c in calls) / len(calls),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=None, help="cap over the scaffold's max_tokens")
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args()

    model = LocalModel(dtype=args.dtype)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (constrain, jump)) in enumerate(MODES.items()):
            results[name] = play(model, constrain, jump, args.steps, args.seed, args.max_tokens, Path(tmp) / str(i))
            print(f"  played {name}", file=sys.stderr)
    cap = args.max_tokens or Scaffold.builtin("crafter").config.model.max_tokens
    print(f"Crafter, seed {args.seed}, {args.steps} steps, local model ({args.dtype}), max_tokens {cap}\n")
    metrics = list(next(iter(results.values())))
    print(f"{'per step':<22}" + "".join(f"{m:>30}" for m in MODES))
    for metric in metrics:
        print(f"{metric:<22}" + "".join(f"{results[m][metric]:>30.3f}" for m in MODES))
    free, plain, jump = (results[m] for m in MODES)
    cut = 1 - jump["passes/step"] / plain["passes/step"]
    print(f"\nconstrained vs unconstrained, s/step: {jump['s/step']:.2f} vs {free['s/step']:.2f} "
          f"(target: no slower) -> {'met' if jump['s/step'] <= free['s/step'] else 'NOT met'}")
    print(f"jump-forward cuts forward passes/step by {cut:.0%} (target: >= 30%) -> "
          f"{'met' if cut >= 0.30 else 'NOT met'}")


if __name__ == "__main__":
    main()
