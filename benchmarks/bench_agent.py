"""Agent overhead per step with the scripted model and a 5,000-line memory.

Prints, in one run: the raw tiny-game step (baseline) and a whole agent step (LOG with a
write and a search over the memory, PLAN with a search, the action role, the JSONL trace
line), so the difference is what the agent adds. Target: under 2 ms on top of the game step.

    .venv/bin/python benchmarks/bench_agent.py [STEPS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_core.models.base import Roles  # noqa: E402
from agent_core.episode import run_episode  # noqa: E402
from agent_core.models.config import RoutineScript  # noqa: E402
from agent_core.models.scripted import ScriptedModel  # noqa: E402
from agent_core.scaffold import Scaffold  # noqa: E402
from environments import make_env  # noqa: E402

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 500
LINES = 5_000

tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
scaffold_dir = Scaffold.builtin("tiny").write_copy(tmp / "scaffold")
cfg = yaml.safe_load((scaffold_dir / "scaffold.yaml").read_text())
cfg["memory_files"][0]["initial"] = "\n".join(
    f"({i % 97},{i // 97}) grass, tree to the north-west, step {i}" for i in range(LINES)) + "\n"
cfg["limits"].update(max_total_chars=2_000_000, max_file_chars=1_000_000)
(scaffold_dir / "scaffold.yaml").write_text(yaml.safe_dump(cfg))
scaffold = Scaffold(scaffold_dir)
script = RoutineScript(log="<|APPEND|>action_log.md|moved on<|END|><|SEARCH|>tree<|END|><|DONE|>",
                       plan="<|SEARCH|>step 4999<|END|><|DONE|>", act="<|ACTION|>look<|END|>")

# baseline: the raw game step
env = make_env("tiny", max_steps=STEPS + 1)
env.reset(0)
t0 = time.perf_counter()
for _ in range(STEPS):
    env.step("look")
raw_ms = 1000 * (time.perf_counter() - t0) / STEPS

# the whole agent step, as the episode runner measures it (elapsed_s per step record)
times: list[float] = []
summary = run_episode(make_env("tiny", max_steps=STEPS + 1), scaffold, Roles(memory=ScriptedModel(script.reply)),
                      seed=0, max_steps=STEPS, out_dir=tmp / "ep",
                      on_step=lambda r: times.append(r.elapsed_s))
step_ms = 1000 * statistics.median(times)
wall_ms = 1000 * summary.wall_s / STEPS
print(f"memory: {LINES} lines ({summary.memory_chars:,} chars); {STEPS} steps; scripted model")
print(f"{'raw tiny-game step (baseline)':38s} {raw_ms:7.3f} ms")
print(f"{'agent step incl. game step (median)':38s} {step_ms:7.3f} ms")
print(f"{'whole episode / steps (incl. trace I/O)':38s} {wall_ms:7.3f} ms")
print(f"agent overhead per step: {step_ms - raw_ms:.3f} ms median, {wall_ms - raw_ms:.3f} ms with trace "
      "writes and setup  (target < 2 ms)")
