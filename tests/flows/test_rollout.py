"""The rollout flow on a real (temporary) Prefect API, with the tiny game and scripted model."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agent_core.episode import EpisodeSpec
from agent_core.models.config import ModelConfig
from agent_core.scaffold import Scaffold
from agent_core.trace import read_trace
from flows.common import EpisodesFailed, RunParams, run_episodes
from flows.rollout import RolloutParams, rollout

SCRIPTED = ModelConfig(backend="scripted")


def params(ws: Path, seeds=(0, 1, 2), **kw) -> RolloutParams:
    return RolloutParams(games=["tiny"], seeds=list(seeds), max_steps=4, models=SCRIPTED,
                         concurrency=2, workspace=str(ws), **kw)


def executions(ws: Path) -> dict[str, int]:
    """Episode executions, read off the disk: every play writes a header with its start
    time; a replay would set the earlier attempt aside under attempts/."""
    out = {}
    for trace in (ws / "episodes").glob("*/*/trace.jsonl"):
        attempts = len(list((trace.parent / "attempts").glob("*"))) if (trace.parent / "attempts").exists() else 0
        out[trace.parent.name] = attempts + 1
    return out


def started(ws: Path) -> dict[str, str]:
    return {t.parent.name: read_trace(t).header.started_at for t in (ws / "episodes").glob("*/*/trace.jsonl")}


def test_rollout_archives_reports_and_caches(tmp_path):
    ws = tmp_path / "ws"
    result = rollout(params(ws))
    assert len(result["episodes"]) == 3 and Path(result["report"]).is_file()
    assert executions(ws) == {e["episode_id"]: 1 for e in result["episodes"]}
    assert len(list((ws / "archive" / "steps" / "game=tiny").rglob("*.parquet"))) == 3
    first = started(ws)

    # unchanged inputs: nothing is replayed
    rollout(params(ws))
    assert started(ws) == first and set(executions(ws).values()) == {1}

    # one seed changed: exactly one new episode, the others reused
    rollout(params(ws, seeds=(0, 1, 7)))
    now = started(ws)
    assert len(now) == 4 and {k: now[k] for k in first} == first


def test_rollout_artifacts_and_core_logs_in_the_run(tmp_path):
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from prefect.logging.handlers import APILogHandler

    state = rollout(params(tmp_path / "ws", seeds=(3,)), return_state=True)
    run_id = state.state_details.flow_run_id
    APILogHandler().flush()  # run logs are sent in batches: send what is queued

    async def read():
        async with get_client() as client:
            artifacts = await client.read_artifacts()
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            return artifacts, logs

    artifacts, logs = asyncio.run(read())
    kinds = {(a.type, a.key) for a in artifacts}
    assert ("table", "rollout-episodes") in kinds and ("markdown", "rollout-summary") in kinds
    assert any(t == "progress" for t, _ in kinds)
    # agent_core's own log lines (no Prefect in the core) reach the flow run's logs
    assert any(log.name == "agent_core.episode" and "progression" in log.message for log in logs), sorted({(l.name) for l in logs})


@pytest.mark.parametrize("bad, message", [
    (dict(games=["chess"]), "valid games"),
    (dict(games=["minihack/Nope"]), "valid tasks"),
    (dict(seeds=[-1]), "non-negative"),
    (dict(seeds=[]), "at least 1"),
    (dict(max_steps=0), "greater than or equal to 1"),
    (dict(concurrency=0), "greater than or equal to 1"),
])
def test_invalid_parameters_fail_before_any_episode(tmp_path, bad, message):
    with pytest.raises(ValidationError, match=message):
        RolloutParams(**{"workspace": str(tmp_path), "models": SCRIPTED, **bad})


def test_unreachable_model_server_fails_fast(tmp_path):
    models = ModelConfig(backend="openai", base_url="http://127.0.0.1:9/v1", model="m")
    p = RolloutParams(games=["tiny"], seeds=[0], models=models, workspace=str(tmp_path))
    with pytest.raises(Exception, match="127.0.0.1:9"):
        rollout(p)
    assert not (tmp_path / "episodes").exists()


def test_a_failing_episode_keeps_the_others(tmp_path):
    from prefect import flow

    broken = Scaffold.builtin("tiny").write_copy(tmp_path / "broken")
    (broken / "prompts" / "log.jinja").write_text("{{ no_such_variable }}")  # fails when rendered
    good = str(Scaffold.builtin("tiny").root)
    specs = [EpisodeSpec(game="tiny", task="key-door", seed=s, max_steps=3, scaffold_dir=d,
                         models=SCRIPTED, workspace=str(tmp_path / "ws"))
             for s, d in [(0, good), (1, str(broken)), (2, good)]]

    @flow
    def batch():
        return run_episodes(specs, RunParams(concurrency=3))

    with pytest.raises(EpisodesFailed, match="1 of 3 episodes failed"):
        batch()
    finished = [read_trace(t) for t in (tmp_path / "ws" / "episodes").glob("*/*/trace.jsonl")]
    assert sorted(t.header.seed for t in finished if t.complete) == [0, 2]


def test_unconfined_hooks_are_the_runs_choice_and_the_report_says_so(tmp_path):
    scaffold = tmp_path / "hooked"
    Scaffold.builtin("tiny").write_copy(scaffold)
    (scaffold / "hooks.py").write_text("def postprocess_observation(observation):\n    return observation\n")
    confined = rollout(params(tmp_path / "ws", seeds=(0,), scaffold=str(scaffold)))
    assert [e["hooks_confinement"] for e in confined["episodes"]] == ["os"]
    assert "unconfined" not in Path(confined["report"]).read_text()
    chosen = rollout(params(tmp_path / "ws2", seeds=(0,), scaffold=str(scaffold), hooks={"confinement": "none"}))
    assert [e["hooks_confinement"] for e in chosen["episodes"]] == ["none"]
    assert "**Hooks ran unconfined** in 1 of 1 episodes" in Path(chosen["report"]).read_text()
    with pytest.raises(ValidationError, match="'os' or 'none'"):
        params(tmp_path / "ws3", hooks={"confinement": "off"})
