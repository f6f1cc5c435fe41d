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
    for shot in ("run.png", "artifact.png"):
        assert (ws / "screenshots" / shot).stat().st_size > 10_000
    # the deployment really ran the flow: its traces and archive are in the workspace
    assert len(list((ws / "episodes" / "tiny").glob("*/trace.jsonl"))) == 2
    assert list((ws / "archive" / "steps").rglob("*.parquet"))
