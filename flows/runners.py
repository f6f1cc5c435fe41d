"""Where a flow run's episodes run: its own threads, or an existing Dask cluster.

Chosen per flow run (`RunParams.runner`), so one deployment can run on one machine's threads
tonight and on a cluster tomorrow. Dask goes through `prefect-dask` (the `[scale]` extra):
each episode is a Prefect task run on a Dask worker, visible in the UI like a threaded one.

Process-based runners need a real Prefect server: every worker reports its task runs to
`PREFECT_API_URL`. With Prefect's ephemeral API each worker would start its own server on
the same SQLite file and the run hangs, so that case is refused before any episode. The
workers also need the project installed, the same `PREFECT_API_URL`, and the workspace at
the same path (a shared mount) or as a shared fsspec URL.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: seconds to wait for a Dask scheduler to accept a connection before giving up
CONNECT_TIMEOUT_S = 5.0


class RunnerConfig(BaseModel):
    """The task runner of a flow run's episodes."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["threads", "dask"] = Field(
        "threads", description="threads: this process's thread pool (one machine); dask: an existing Dask "
        "cluster through prefect-dask (`pip install automem-prefect[scale]`).")
    address: str | None = Field(None, description="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (kind dask).")

    @model_validator(mode="after")
    def _address(self) -> "RunnerConfig":
        if self.kind == "threads" and self.address is not None:
            raise ValueError("runner address is for kind dask; the threads runner takes none")
        if self.kind == "dask":
            if not self.address:
                raise ValueError("the dask runner needs the address of an existing scheduler, e.g. tcp://host:8786")
            self.endpoint()
        return self

    def endpoint(self) -> tuple[str, int]:
        """(host, port) of the Dask scheduler; ValueError when the address is not tcp://host:port."""
        text = self.address or ""
        parts = urlsplit(text if "://" in text else f"tcp://{text}")
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("tcp", "tls") or not parts.hostname or port is None:
            raise ValueError(f"Dask scheduler address must look like tcp://host:port, got {self.address!r}")
        return parts.hostname, port

    def check(self) -> None:
        """Fail before any episode when the runner cannot work: prefect-dask missing, no Prefect
        server, or the scheduler unreachable (within `CONNECT_TIMEOUT_S`, naming the address)."""
        if self.kind == "threads":
            return
        try:
            import prefect_dask  # noqa: F401
        except ImportError:
            raise RuntimeError("the dask runner needs prefect-dask: pip install 'automem-prefect[scale]'") from None
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            raise RuntimeError("the dask runner needs a Prefect server its workers can reach (set PREFECT_API_URL, "
                               "e.g. http://host:4200/api): with the ephemeral API each worker would start its "
                               "own server and the run would hang")
        try:
            socket.create_connection(self.endpoint(), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            raise ConnectionError(f"Dask scheduler at {self.address} is unreachable: {exc}") from None


@contextmanager
def episode_submitter(runner: RunnerConfig, task: Any) -> Iterator[Callable[..., Any]]:
    """A function submitting `task(spec)` to the runner and returning its Prefect future, for
    the duration of the block. Inside a flow run: the task runs are that run's, in the UI."""
    if runner.kind == "threads":
        yield task.submit
        return
    runner.check()
    from prefect_dask import DaskTaskRunner

    with DaskTaskRunner(address=runner.address) as dask:
        yield lambda spec: dask.submit(task, parameters={"spec": spec})
