"""What look-ups that end the turn cost, and what they buy: Crafter on the local model.

Side by side in one run (same model, seeds, sampling):
- "no look-up rounds": the v0 scaffold with one turn per routine, so no look-up can reach
  a decision (the last turn of a routine allows only its endings) and PLAN consults nothing;
- "look-up rounds" (the v0 default): two turns per routine, so a look-up's results are in
  the context of the turn that writes or acts;
- the same without prefix-KV reuse, to show what reuse saves across the extra turns.

Per step: seconds, model calls, prompt tokens, prompt tokens prefilled (not reused from
the prefix cache), forward passes; per episode: look-ups whose results reached a write or the action, distinct actions and
distinct written texts (`agent_core.diagnostics.memory_use`).

    python benchmarks/bench_memory_turns.py [--steps 6] [--seeds 0 1] [--temperature 1.0]

Needs the prepared model (`make model`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from agent_core.models.weights import set_runtime_env  # noqa: E402

set_runtime_env()

from agent_core.models.base import Roles  # noqa: E402
from agent_core.episode import run_episode  # noqa: E402
from agent_core.models.local import LocalModel  # noqa: E402
from agent_core.records import Completion  # noqa: E402
from agent_core.scaffold import Scaffold  # noqa: E402
from agent_core.trace import read_trace  # noqa: E402
from environments import make_env  # noqa: E402


class _Counting:
    """The local base model as a ChatModel that counts prompt tokens reused from the prefix cache."""

    def __init__(self, model: LocalModel):
        self.model, self.model_id = model, model.model_id
        self.prompt_tokens = self.reused = 0

    def complete(self, messages, params, constraint=None) -> Completion:
        gen = self.model.generate(messages, params, constraint=constraint)
        self.prompt_tokens += gen.completion.prompt_tokens
        self.reused += gen.reused_tokens
        return gen.completion


def one_turn_scaffold(dest: Path) -> Scaffold:
    """v0 with a single turn per routine: nothing looked up can reach a decision."""
    root = Scaffold.builtin("crafter").write_copy(dest)
    cfg = yaml.safe_load((root / "scaffold.yaml").read_text())
    cfg["log"]["max_turns"] = 1
    cfg["plan"].update(max_turns=1, allowed_ops=[])
    (root / "scaffold.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return Scaffold(root)


def play(model: LocalModel, scaffold: Scaffold, reuse: bool, seeds: list[int], steps: int,
         temperature: float, out: Path) -> dict[str, float]:
    from agent_core.diagnostics import memory_use

    model.prefix_reuse = reuse
    model.clear_prefix_cache()
    counting = _Counting(model)
    passes = model.forward_passes
    wall, n, calls, informed, actions, texts = 0.0, 0, 0, [], [], []
    for seed in seeds:
        env = make_env("crafter", max_steps=steps)
        started = time.perf_counter()
        try:
            roles = Roles(memory=counting, constrain=True, sampling={"temperature": temperature})
            summary = run_episode(env, scaffold, roles, seed, steps, out / str(seed))
        finally:
            env.close()
        wall += time.perf_counter() - started
        trace = read_trace(summary.trace_path)
        use = memory_use(trace.steps)
        n += summary.steps
        calls += sum(len(s.calls) for s in trace.steps)
        informed.append(use.lookups_used)
        actions.append(use.distinct_actions)
        texts.append(use.distinct_written_texts)
    return {
        "s/step": wall / n,
        "calls/step": calls / n,
        "prompt tokens/step": counting.prompt_tokens / n,
        "prefilled tokens/step": (counting.prompt_tokens - counting.reused) / n,
        "forward passes/step": (model.forward_passes - passes) / n,
        "look-ups used/ep": statistics.fmean(informed),
        "distinct actions/ep": statistics.fmean(actions),
        "distinct texts/ep": statistics.fmean(texts),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--temperature", type=float, default=1.0, help="the CPU preset's")
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args()

    model = LocalModel(dtype=args.dtype)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        modes = {
            "no look-up rounds": (one_turn_scaffold(tmp / "one-turn"), True),
            "look-up rounds": (Scaffold.builtin("crafter"), True),
            "look-up rounds, no reuse": (Scaffold.builtin("crafter"), False),
        }
        for i, (name, (scaffold, reuse)) in enumerate(modes.items()):
            results[name] = play(model, scaffold, reuse, args.seeds, args.steps, args.temperature, tmp / str(i))
            print(f"  played {name}", file=sys.stderr)
    print(f"Crafter, seeds {args.seeds}, {args.steps} steps, local model ({args.dtype}), constrained, "
          f"temperature {args.temperature}\n")
    print(f"{'':<24}" + "".join(f"{m:>28}" for m in results))
    for metric in next(iter(results.values())):
        print(f"{metric:<24}" + "".join(f"{results[m][metric]:>28.2f}" for m in results))
    base, rounds, plain = results.values()
    print(f"\nlook-up rounds cost {rounds['s/step'] / base['s/step']:.2f}x the seconds per step of one turn; "
          f"prefix reuse prefills {rounds['prefilled tokens/step']:.0f} of {rounds['prompt tokens/step']:.0f} "
          f"prompt tokens per step ({plain['s/step'] / rounds['s/step']:.2f}x faster than without reuse)")


if __name__ == "__main__":
    main()
