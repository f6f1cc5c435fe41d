"""The same (game, task, seed) and actions give the same episode in separate processes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from environments.crafter_env import ACTIONS

ROOT = Path(__file__).resolve().parents[2]

# Run in fresh interpreters (with different string-hash seeds): prints one digest of the
# whole episode text, rewards and done flags per case.
SCRIPT = r"""
import hashlib, json, sys
from environments import make_env
cases = json.loads(sys.argv[1])
out = {}
for name, (game, task, seed, actions) in cases.items():
    env = make_env(game, task)
    h = hashlib.sha256(env.reset(seed).text.encode())
    for a in actions:
        r = env.step(a)
        h.update(f"{r.observation.text}|{r.reward}|{r.done}|{sorted(r.info.items())}".encode())
        if r.done:
            break
    out[name] = h.hexdigest()
    env.close()
print(json.dumps(out))
"""

CASES = {
    "tiny": ["tiny", None, 11, ["go north", "go east", "take key", "go west", "open door", "go south"] * 2],
    # long enough for crafter to despawn creatures (which it did by memory address)
    "crafter": ["crafter", None, 0, [random.Random(0).choice(ACTIONS) for _ in range(400)]],
    "nethack-3": ["nethack", None, 3, ["far east", "far west", "search", "i", "esc", "far south", "far north"] * 6],
    "nethack-4": ["nethack", None, 4, ["far east", "far west", "search", "i", "esc", "far south", "far north"] * 6],
    "minihack-quest": ["minihack", "Quest-Easy", 3, ["east", "far east", "north", "south", "east"] * 5],
    "minihack-maze": ["minihack", "MazeWalk-15x15", 8, ["north", "east", "south", "west", "northeast"] * 8],
}


def test_same_seed_same_episode_across_processes() -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, json.dumps(CASES)],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for hash_seed in (1, 2)
    ]
    outputs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert outputs[0] == outputs[1]
    assert outputs[0]["nethack-3"] != outputs[0]["nethack-4"]  # and seeds matter
