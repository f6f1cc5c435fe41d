"""The real stack once per test run: prefect server, work pool, `prefect deploy` from
deployments/prefect.yaml, a worker, a deployment run watched to Completed, and the Prefect
UI in headless Chromium showing the run and its table artifact."""

import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_deployment_runs_and_shows_in_ui(tmp_path):
    ws = tmp_path / "ws"
    proc = subprocess.run([str(ROOT / "deployments" / "e2e.sh"), str(ws), str(free_port())],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "shown in the UI" in proc.stdout
    for shot in ("run.png", "artifact.png", "evaluate.png"):
        assert (ws / "screenshots" / shot).stat().st_size > 10_000
    import json

    measured = json.loads((ws / "screenshots" / "evaluate.json").read_text())
    plots = [i for i in measured["images"] if i["width"] > 0 and i["height"] > 0]
    assert len(plots) == 3 and all(i["natural"][0] > 100 for i in plots)  # progression, memory, curve
    # the deployments really ran the flows: traces (rollout 2, evaluate 2 more for the
    # baseline; its v0 episodes are the rollout's, reused from the cache) and archive
    assert len(list((ws / "episodes" / "tiny").glob("*/trace.jsonl"))) == 4
    assert list((ws / "archive" / "steps").rglob("*.parquet"))
