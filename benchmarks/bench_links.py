"""Where does the memory chain break? Samples each link of the recall game's chain on its own,
with the real local model, from a prepared state, so that a link the model rarely reaches in
whole episodes is still measured (`bench_learning.py` measures whole episodes):

- **write**: step 0 of `tiny/recall-short` (the way out is told): the share of LOG routines
  that write a line naming the door it was told;
- **look-up**: at the doors, the fact already in memory (a line planted in a memory file, as
  the write would have left it): the share of steps whose look-up returned it, and the share
  that then opened the right door;
- **choice**: at the doors, the fact in front of the model (one line under the observation):
  the share that opens the right door (chance among the doors: 1 in 4), any door, or plays on.

Each sample is one agent step (LOG, PLAN, action) on its own game seed, sampled at the
deployment's temperature (1.0, top_p 0.95 by default) with the scaffold's prompts, memory
files and routines. The planted line and the added line read the game's words: this is
measurement, never a selection rule or training data.

Run by hand: `.venv/bin/python benchmarks/bench_links.py [--scaffold DIR ...] [--specialist DIR]
[--samples N]`; `--scaffold` defaults to the built-in tiny v0 scaffold.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from bench_learning import names  # noqa: E402 - the same measure as whole episodes

PLANTED = "note: the way out is the {colour} door"
IN_FRONT = "From your memory: the way out is the {colour} door."


def _agent(scaffold, roles, env, seed: int, folder: Path, plant: str | None = None):  # noqa: ANN001
    from agent_core.agent import MemoryAgent
    from agent_core.memory import MemoryDir

    memory = MemoryDir(folder, scaffold.config.limits)
    memory.seed_files({f.name: f.initial for f in scaffold.config.memory_files})
    if plant is not None:
        files = [f.name for f in scaffold.config.memory_files]
        name = next((n for n in ("notes.md", "progress.md") if n in files), files[0])  # where a write would go
        memory.apply("append", {"file": name, "text": plant})
    return MemoryAgent(scaffold, roles, memory, env.actions, env.instructions, env.game, f"probe-{seed}", seed,
                       hooks_confinement="os")


def probe(link: str, scaffold, roles, seed: int) -> dict:  # noqa: ANN001
    """One sample of `link` on game seed `seed`: what the step did (see the module docstring)."""
    from agent_core.commands import CONSULT_OPS, WRITE_OPS
    from environments.tiny import RecallEnv

    env = RecallEnv("recall-short", max_steps=30)
    obs = env.reset(seed)
    colour = env._exit  # noqa: SLF001 - measurement reads the game's answer
    with tempfile.TemporaryDirectory() as tmp:
        if link == "write":
            agent = _agent(scaffold, roles, env, seed, Path(tmp))
            decision = agent.step(0, obs.text, None, 0.0)
        else:
            path = env.solution()[:-1]
            for action in path:
                result = env.step(action)
            text = result.observation.text
            if link == "choice":
                text += "\n" + IN_FRONT.format(colour=colour)
            agent = _agent(scaffold, roles, env, seed, Path(tmp), PLANTED.format(colour=colour) if link == "lookup"
                           else None)
            decision = agent.step(len(path), text, path[-1], result.reward)
        agent.close()
    ops = decision.memory_ops
    return {
        "seed": seed, "colour": colour, "action": decision.action_text,
        "written": any(o.ok and o.op in WRITE_OPS and names(colour, json.dumps(o.args)) for o in ops),
        "held": any(o.ok and o.op in CONSULT_OPS and names(colour, o.result) for o in ops),
        "looked_up": any(o.op in CONSULT_OPS for o in ops),
        "right": decision.action_text == f"open {colour} door",
        "door": decision.action_text.startswith("open "),
        "log": next((c.reply for c in decision.calls if c.routine == "log"), ""),
    }


def summary(link: str, rows: list[dict]) -> str:
    n = len(rows)

    def share(key: str, of: list[dict] | None = None) -> str:
        of = rows if of is None else of
        return f"{sum(r[key] for r in of)}/{len(of)}" if of else "-"

    if link == "write":
        return f"fact written {share('written')}; LOG replies naming the colour " \
               f"{sum(names(r['colour'], r['log']) for r in rows)}/{n}"
    if link == "lookup":
        held = [r for r in rows if r["held"]]
        return (f"looked up {share('looked_up')}; look-up returned the fact {share('held')}; right door "
                f"{share('right')} (with the fact returned: {share('right', held)}); any door {share('door')}")
    return f"right door {share('right')}; any door {share('door')} (chance among doors: 1 in 4)"


def actions(rows: list[dict]) -> str:
    return ", ".join(f"{a} {n}" for a, n in Counter(r["action"] for r in rows).most_common(4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scaffold", type=Path, action="append", help="scaffold folder (repeatable); "
                        "default: the built-in tiny v0")
    parser.add_argument("--specialist", type=Path, help="a LoRA adapter folder for the memory role")
    parser.add_argument("--samples", type=int, default=32, help="samples per link (one game seed each)")
    parser.add_argument("--first-seed", type=int, default=1000, help="game seeds first-seed.. (held out "
                        "from the presets' pool, evaluation and confirmation seeds)")
    parser.add_argument("--links", default="write,lookup,choice")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--show", type=int, default=3, help="LOG replies shown per write probe")
    a = parser.parse_args()

    from agent_core.models.config import ModelConfig
    from agent_core.scaffold import Scaffold

    models = ModelConfig(backend="local", temperature=a.temperature, top_p=a.top_p,
                         specialist=str(a.specialist) if a.specialist else None)
    roles = models.build()
    scaffolds = [Scaffold.load(p) for p in a.scaffold] if a.scaffold else [Scaffold.builtin("tiny")]
    seeds = list(range(a.first_seed, a.first_seed + a.samples))
    print(f"bench_links: tiny/recall-short, memory model {models.ids()[0]}, temperature {a.temperature}, "
          f"top_p {a.top_p}, {a.samples} samples per link (seeds {seeds[0]}-{seeds[-1]})")
    for scaffold in scaffolds:
        for link in a.links.split(","):
            started = time.perf_counter()
            with ThreadPoolExecutor(a.concurrency) as pool:
                rows = list(pool.map(lambda s: probe(link, scaffold, roles, s), seeds))
            print(f"{scaffold.config.name} ({scaffold.hash[:8]}) {link:7s} {summary(link, rows)}  "
                  f"[{time.perf_counter() - started:.0f} s]\n    actions: {actions(rows)}")
            if link == "write":
                for r in [r for r in rows if r["written"]][:a.show] + [r for r in rows if not r["written"]][:1]:
                    print(f"    seed {r['seed']} ({r['colour']}): {r['log'][:160]!r}")


if __name__ == "__main__":
    main()
