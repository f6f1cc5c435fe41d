"""Does a real model learn memory through the loops? Runs the nightly iteration with a preset
(default `deployments/presets/recall-local.yaml`: tiny/recall-short, the local model sampled,
loop 1 then loop 2 in rounds of expert iteration) and prints, per arm on the held-out
evaluation seeds and per round's pool, the memory-skill measures of the recall game:

- **fact written**: a successful write at step 0 (the step the way out is told) whose text
  names the door it was told;
- **look-up held it**: at the doors, a look-up whose result named that door;
- **door choice with the fact in front**: of those episodes, the share that opened it;
- **right door**, **reached the doors**, **progression** (mean);

then the gate's verdict and p-value of each round's specialist against the incumbent, and
the LoRA losses (the split between model-chosen and grammar-forced target tokens where the
training recorded it). These measures read the game's words: they are measurement only,
never a selection rule (the curation never sees them).

Run by hand: `.venv/bin/python benchmarks/bench_learning.py [--preset P] [--workspace W]`.
A re-run on the same workspace reuses every finished episode, dataset and adapter.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

TOLD = re.compile(r"The way out is the (\w+) door")
AT_DOORS = "You are at the end of the corridor"


def names(colour: str, text: str) -> bool:
    """`text` names `colour` as a word ("discovered" does not name red)."""
    return re.search(rf"\b{colour}\b", text, re.IGNORECASE) is not None


def recall_measures(trace) -> dict[str, bool | float]:  # noqa: ANN001 - agent_core.trace.Trace
    """The memory-skill measures of one recall episode (see the module docstring)."""
    from agent_core.commands import CONSULT_OPS, WRITE_OPS

    first = trace.steps[0]
    told = TOLD.search(first.observation)
    colour = told.group(1) if told else "?"
    written = any(op.ok and op.op in WRITE_OPS and names(colour, json.dumps(op.args)) for op in first.memory_ops)
    doors = [s for s in trace.steps if AT_DOORS in s.observation]
    held = any(op.ok and op.op in CONSULT_OPS and names(colour, op.result) for s in doors for op in s.memory_ops)
    progression = trace.summary.progression if trace.summary else trace.steps[-1].progression
    return {"fact_written": written, "lookup_held": held, "reached": progression >= 0.5,
            "right_door": progression >= 1.0, "progression": progression}


def loss_split(curve: Path) -> str:
    """The loss over the target tokens the model chose and over those the grammar forced, first
    step -> last (`lora.py` trains on the chosen ones)."""
    if not curve.is_file():
        return "-"
    rows = json.loads(curve.read_text())

    def ends(key: str) -> str:
        values = [r[key] for r in rows if r.get(key) is not None]
        return f"{values[0]:.3f} -> {values[-1]:.3f}" if values else "-"

    return f"chosen {ends('chosen_loss')}; forced {ends('forced_loss')}"


def training_set(dataset: Path) -> str:
    """What the trial trained on: its examples that write memory, that look it up, and that
    only say DONE (`train.jsonl`)."""
    from agent_core.commands import CONSULT_OPS, WRITE_OPS, parse_reply
    from agent_core.training.dataset import load_examples

    if not dataset.is_dir():
        return "-"
    ops = [{c.op for c in parse_reply(e["target"]).commands} for e in load_examples(dataset)]
    return (f"{sum(bool(o & set(WRITE_OPS)) for o in ops)} write, {sum(bool(o & set(CONSULT_OPS)) for o in ops)} "
            f"look up, {sum(o <= {'done'} for o in ops)} only DONE")


def table(rows: list[tuple[str, list[dict]]]) -> str:
    head = ("| arm | episodes | fact written at step 0 | look-up at the doors held it | right door with the fact "
            "in front | reached the doors | right door | mean progression |\n|---|---|---|---|---|---|---|---|")
    out = [head]
    for label, ms in rows:
        n = len(ms)
        held = [m for m in ms if m["lookup_held"]]
        choice = f"{sum(m['right_door'] for m in held)}/{len(held)}" if held else "-"
        out.append(f"| {label} | {n} | {sum(m['fact_written'] for m in ms)}/{n} | {len(held)}/{n} | {choice} | "
                   f"{sum(m['reached'] for m in ms)}/{n} | {sum(m['right_door'] for m in ms)}/{n} | "
                   f"{statistics.fmean(m['progression'] for m in ms):.3f} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", type=Path, default=Path(__file__).resolve().parents[1] / "deployments" /
                        "presets" / "recall-local.yaml")
    parser.add_argument("--workspace", type=Path, default=Path("automem-runs-learning"))
    parser.add_argument("--loop2-scaffold", choices=("incumbent", "candidate"), default="incumbent",
                        help="the scaffold loop 2 learns under: loop 1's incumbent (the nightly order), or "
                        "loop 1's last candidate when the gate did not keep it (an experiment: whether a "
                        "scaffold that makes the behaviour reachable lets loop 2 amplify it)")
    a = parser.parse_args()

    import yaml

    from agent_core.workspace import configure_prefect_env

    configure_prefect_env(a.workspace)
    from agent_core.scaffold import Scaffold
    from agent_core.trace import read_trace
    from flows.iteration import IterationParams
    from flows.scaffold_loop import scaffold_loop
    from flows.training_loop import training_loop

    raw = yaml.safe_load(a.preset.read_text())["params"]
    params = IterationParams(**{**raw, "workspace": str(a.workspace)})
    started = time.perf_counter()
    params.training().preflight()
    loop1 = scaffold_loop(params.scaffold_loop())  # the nightly iteration's order: loop 1, then loop 2
    loop2_scaffold = loop1["incumbent"]
    tried = [h["candidate"] for h in loop1["history"] if h.get("candidate")]
    if a.loop2_scaffold == "candidate" and tried and tried[-1] != Path(loop2_scaffold).name:
        loop2_scaffold = str(params.root() / "scaffolds" / tried[-1])
    loop2 = training_loop(params.training(loop2_scaffold))
    result = {"scaffold_loop": loop1, "training_loop": loop2, "report": loop2["report"]}
    wall = time.perf_counter() - started
    game, task = params.game.split("/", 1)
    v0 = Scaffold.builtin(game).hash
    best = Path(loop1["incumbent"]).name
    under = Path(loop2_scaffold).name
    trials = result["training_loop"]["trials"]
    base_id = params.models.ids()[0]
    labels = {base_id: "base"}
    for t in trials:
        if t.get("specialist"):
            labels[params.models.model_copy(update={"specialist": t["specialist"]}).ids()[0]] = \
                f"round {t['round']} specialist (trial {t['trial']})"
    eval_arms: dict[str, list[dict]] = defaultdict(list)
    pools: dict[str, list[dict]] = defaultdict(list)
    for path in sorted((a.workspace / "episodes" / game).glob("*/trace.jsonl")):
        trace = read_trace(path)
        h = trace.header
        if h.task != task or h.max_steps != params.max_steps or h.memory_model not in labels:
            continue
        scaffold = "v0" if h.scaffold_hash == v0 else ("best" if h.scaffold_hash == best else
                                                       f"candidate {h.scaffold_hash[:8]}")
        arm = f"{scaffold} scaffold + {labels[h.memory_model]}"
        if h.seed in params.eval_seeds:
            eval_arms[arm].append(recall_measures(trace))
        elif h.seed in params.pool_seeds:
            pools[f"pool played by {labels[h.memory_model]} ({scaffold} scaffold)"].append(recall_measures(trace))

    print(f"bench_learning: {params.game}, preset {a.preset.name}, {params.rounds} round(s), "
          f"{len(params.eval_seeds)} held-out evaluation seeds, {len(params.pool_seeds)} pool seeds; "
          f"wall {wall / 60:.1f} min (cached work reused)")
    print(f"scaffold loop: v0 {v0}, incumbent after loop 1 {best} "
          f"({'changed' if best != v0 else 'unchanged'}); loop 2 learned under {under}"
          + (" (loop 1's last candidate, not kept by the gate)" if under != best else ""))
    for h in result["scaffold_loop"]["history"]:
        print(f"  iteration {h['iteration']}: candidate {h.get('candidate')}: {h['verdict']} - "
              f"{h.get('reason', '')[:200]}")
    print("\nHeld-out evaluation seeds:\n" + table(sorted(eval_arms.items())))
    print("\nPools (training data, sampled):\n" + table(sorted(pools.items())))
    print("\nLoop 2, per trial:")
    print("| round | trial | pool played by | examples | trained on | final loss | held-out loss | loss split | "
          "incumbent | specialist | p (Holm) | verdict / error |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t in trials:
        v = t.get("verdict") or {}
        split = loss_split(Path(t["adapter"]) / "loss_curve.json") if t.get("adapter") else "-"
        p = v.get("adjusted_p") if v.get("adjusted_p") is not None else v.get("p_value")
        trained = training_set(Path(t["dataset"])) if t.get("dataset") else "-"
        print(f"| {t['round']} | {t['trial']} | {t['pool_model']} | {t.get('examples')} | {trained} | "
              f"{t.get('final_loss')} | "
              f"{t.get('eval_loss')} | {split} | {v.get('mean_incumbent')} | {v.get('mean_candidate')} | "
              f"{p} | {v.get('reason') or t.get('error')} |")
    print(f"\nreport: {result['report']}")


if __name__ == "__main__":
    main()
