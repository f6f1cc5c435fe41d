"""Scale-out: episodes on a real Dask cluster (`distributed.LocalCluster`, two worker
processes) reporting to a real `prefect server start` give the thread runner's results."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flows.runners import RunnerConfig  # first: `flows` sets Prefect's environment before prefect loads

from agent_core.models.config import ModelConfig  # noqa: E402
from agent_core.trace import read_trace  # noqa: E402
from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runner_settings_are_checked_with_what_is_valid():
    assert RunnerConfig().kind == "threads"
    with pytest.raises(ValueError, match="needs the address of an existing scheduler"):
        RunnerConfig(kind="dask")
    with pytest.raises(ValueError, match="tcp://host:port"):
        RunnerConfig(kind="dask", address="http://h")
    with pytest.raises(ValueError, match="threads runner takes none"):
        RunnerConfig(address="tcp://h:8786")
    with pytest.raises(ValueError, match="'threads' or 'dask'"):
        RunnerConfig(kind="ray")


def test_an_unreachable_scheduler_fails_at_once_with_its_address():
    address = f"tcp://127.0.0.1:{free_port()}"
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:1/api"}):
        started = time.monotonic()
        with pytest.raises(ConnectionError, match=f"Dask scheduler at {address} is unreachable"):
            RunnerConfig(kind="dask", address=address).check()
    assert time.monotonic() - started < 6


def test_the_ephemeral_api_is_refused_for_dask():
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(RuntimeError, match="needs a Prefect server .*PREFECT_API_URL"):
            RunnerConfig(kind="dask", address="tcp://127.0.0.1:8786").check()


def drain_prefect_clients() -> None:
    """Send the logs and events still queued for the server before it stops (as Prefect's
    own test harness does); otherwise the interpreter waits for them at exit."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        for result in (APILogWorker.instance().drain(), EventsWorker.drain_all()):
            if inspect.isawaitable(result):
                await result

    run_coro_as_sync(drain())


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """`prefect server start` on a free port with its own home, stopped afterwards."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port), "--no-scheduler"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("prefect server did not start:\n" + (home / "server.log").read_text()[-3000:])
        time.sleep(1)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.mark.slow
def test_a_rollout_on_a_dask_cluster_equals_the_thread_runner(prefect_server, tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    from flows.rollout import RolloutParams, rollout

    # the workers are new processes: they find the server and the results store in the environment
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    monkeypatch.setenv("PREFECT_LOCAL_STORAGE_PATH", str(tmp_path / "results"))
    common = dict(games=["tiny"], seeds=[0, 1, 2, 3], max_steps=8, concurrency=4,
                  models=ModelConfig(backend="scripted", policy="tiny-explorer"))
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}), \
            LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        threads = rollout(RolloutParams(**common, workspace=str(tmp_path / "threads")))
        assert sum(client.run(lambda dask_worker: dask_worker.state.executed_count).values()) == 0
        dask = rollout(RolloutParams(**common, workspace=str(tmp_path / "dask"),
                                     runner=RunnerConfig(kind="dask", address=cluster.scheduler_address)))
        ran = client.run(lambda dask_worker: dask_worker.state.executed_count)
        drain_prefect_clients()
    assert sum(ran.values()) == 4 and len(ran) == 2  # every episode ran on a worker process

    def played(result):
        rows = []
        for e in result["episodes"]:
            trace = read_trace(e["trace_path"])
            rows.append((e["game"], e["task"], e["seed"], e["episode_id"], e["progression"], e["steps"],
                         e["end_reason"], [s.action_text for s in trace.steps]))
        return rows

    assert played(dask) == played(threads)
    assert [e["trace_path"] for e in dask["episodes"]] != [e["trace_path"] for e in threads["episodes"]]
    assert all(str(tmp_path / "dask") in e["trace_path"] for e in dask["episodes"])
    assert len({tuple(row[7]) for row in played(threads)}) > 1  # the seeds play differently: a real comparison


def test_the_cli_checks_the_cluster_before_the_flow_starts(tmp_path):
    from typer.testing import CliRunner

    from automem_cli.main import app

    address = f"tcp://127.0.0.1:{free_port()}"
    args = ["rollout", "--env", "tiny", "--dask", address, "--workspace", str(tmp_path)]
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:1/api"}):
        out = CliRunner().invoke(app, args)
    assert out.exit_code == 2 and f"Dask scheduler at {address} is unreachable" in out.output
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        out = CliRunner().invoke(app, args)
    assert out.exit_code == 2 and "PREFECT_API_URL" in out.output
    assert not (tmp_path / "episodes").exists()
