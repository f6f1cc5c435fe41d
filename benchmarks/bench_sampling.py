"""Seeded sampling on the local model: what the temperature does to Crafter play, and that
an episode replays exactly in another process.

For each temperature (same seeds, scaffold and steps) it prints per episode: distinct
actions, the share of steps taking the most common action, distinct written texts, and
look-ups whose results reached a write or the action; and how many distinct action
sequences the seeds played. Then it plays the first seed at the chosen temperature again in a fresh
process and compares every reply byte for byte.

    python benchmarks/bench_sampling.py [--steps 8] [--seeds 0 1] [--temperatures 0 0.5 0.7 1.0]

Needs the prepared model (`make model`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from agent_core.models.weights import set_runtime_env  # noqa: E402

set_runtime_env()


def play(temperature: float, seed: int, steps: int, out: Path, model=None) -> list[tuple[str, str]]:
    """(action, every reply of the step joined) per step of one episode."""
    from agent_core.models.base import Roles
    from agent_core.episode import run_episode
    from agent_core.models.local import LocalModel
    from agent_core.scaffold import Scaffold
    from agent_core.trace import read_trace
    from environments import make_env

    model = model or LocalModel()
    env = make_env("crafter", max_steps=steps)
    try:
        roles = Roles(memory=model, constrain=True, sampling={"temperature": temperature, "top_p": 0.95})
        summary = run_episode(env, Scaffold.builtin("crafter"), roles, seed, steps, out)
    finally:
        env.close()
    return [(s.action_text, "\x1e".join(c.reply for c in s.calls)) for s in read_trace(summary.trace_path).steps]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 0.5, 0.7, 1.0])
    ap.add_argument("--replay", type=float, default=0.7, help="temperature of the cross-process replay check")
    ap.add_argument("--child", nargs=3, metavar=("TEMPERATURE", "SEED", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # the replay, in a fresh process
        t, seed, out = float(args.child[0]), int(args.child[1]), Path(args.child[2])
        print(json.dumps(play(t, seed, args.steps, out)))
        return

    from agent_core.diagnostics import memory_use
    from agent_core.models.local import LocalModel
    from agent_core.trace import read_trace

    model = LocalModel()
    rows, first = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for t in args.temperatures:
            eps, uses = [], []
            for seed in args.seeds:
                model.clear_prefix_cache()
                out = tmp / f"t{t}-s{seed}"
                eps.append(play(t, seed, args.steps, out, model))
                uses.append(memory_use(read_trace(out / "trace.jsonl").steps))
                if t == args.replay and first is None:
                    first = (seed, eps[-1])
            actions = [[a for a, _ in ep] for ep in eps]
            print(f"  temperature {t}: " + " | ".join(" ".join(a) for a in actions), file=sys.stderr)
            rows[t] = {
                "distinct actions/ep": statistics.fmean(len(set(a)) for a in actions),
                "top action share": statistics.fmean(Counter(a).most_common(1)[0][1] / len(a) for a in actions),
                "distinct texts/ep": statistics.fmean(u.distinct_written_texts for u in uses),
                "look-ups used/ep": statistics.fmean(u.lookups_used for u in uses),
                "distinct sequences": float(len({tuple(a) for a in actions})),
            }
            print(f"  played temperature {t}", file=sys.stderr)
        replayed = None
        if first is not None:
            seed, episode = first
            child = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child",
                                    str(args.replay), str(seed), str(tmp / "replay")],
                                   capture_output=True, text=True, check=True)
            replayed = [tuple(x) for x in json.loads(child.stdout.strip().splitlines()[-1])] == episode
    print(f"Crafter, seeds {args.seeds}, {args.steps} steps, local model, constrained, top_p 0.95\n")
    print(f"{'temperature':<22}" + "".join(f"{t:>10}" for t in rows))
    for metric in next(iter(rows.values())):
        print(f"{metric:<22}" + "".join(f"{rows[t][metric]:>10.2f}" for t in rows))
    if replayed is not None:
        print(f"\nseed {first[0]} at temperature {args.replay}, replayed in a fresh process: "
              f"{'identical replies and actions' if replayed else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
