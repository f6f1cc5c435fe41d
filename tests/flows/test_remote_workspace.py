"""A workspace given as an fsspec URL: results persist there, and a worker with an empty
local mirror (another machine) reuses every finished episode instead of replaying it."""

from __future__ import annotations

import fsspec

from agent_core.models.config import ModelConfig
from agent_core.trace import read_trace
from flows.rollout import RolloutParams, rollout

URL = "memory://automem-test-ws"


def test_rollout_persists_to_url_and_another_mirror_reuses_it(tmp_path, monkeypatch):
    fs = fsspec.filesystem("memory")
    params = RolloutParams(games=["tiny"], seeds=[0, 1], max_steps=3, models=ModelConfig(backend="scripted"),
                           concurrency=2, workspace=URL)

    monkeypatch.setenv("AUTOMEM_MIRROR", str(tmp_path / "machine-a"))
    first = rollout(params)
    remote = "/automem-test-ws"
    traces = fs.glob(f"{remote}/episodes/tiny/*/trace.jsonl")
    assert len(traces) == 2
    assert len(fs.glob(f"{remote}/archive/steps/game=tiny/*/*.parquet")) == 2
    assert fs.glob(f"{remote}/reports/rollout-*.md")
    started = {e["episode_id"]: read_trace(e["trace_path"]).header.started_at for e in first["episodes"]}

    monkeypatch.setenv("AUTOMEM_MIRROR", str(tmp_path / "machine-b"))  # a fresh machine
    second = rollout(params)
    for e in second["episodes"]:
        assert str(tmp_path / "machine-b") in e["trace_path"]  # pulled into this machine's mirror
        assert read_trace(e["trace_path"]).header.started_at == started[e["episode_id"]]  # not replayed
