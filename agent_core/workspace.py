"""Where runs live: one workspace directory (default `./automem-runs`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

DEFAULT_WORKSPACE = "automem-runs"


def workspace_root(override: str | Path | None = None) -> Path:
    """`override`, else `$AUTOMEM_WORKSPACE`, else `./automem-runs`."""
    return Path(override or os.environ.get("AUTOMEM_WORKSPACE") or DEFAULT_WORKSPACE)


def episode_dir(root: Path, game: str, episode_id: str) -> Path:
    return root / "episodes" / game / episode_id


def configure_prefect_env(workspace: str | Path | None = None) -> None:
    """Prefect defaults for this project, set before `prefect` is imported: no telemetry or
    other calls to the internet, Prefect's home inside the workspace (not scattered over
    the home directory), our loggers in the run logs. Values already set win."""
    root = workspace_root(workspace).resolve()
    defaults = {
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "agent_core,environments",
        # agent_core also runs outside flows (CLI, tests): its logs then stay local, quietly
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
        # a brand-new home creates its database on the first run; the default timeout is short
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_LOCAL_STORAGE_PATH": str(root / "prefect-results"),
        "HF_HUB_OFFLINE": "1",
        # idle torch threads sleep instead of spinning (matters on small shared machines)
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    # Prefect attaches its run-log handler to these loggers but leaves their level unset,
    # so INFO records would stop at the root logger's WARNING.
    for name in os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"].split(","):
        if name.strip():
            logging.getLogger(name.strip()).setLevel(logging.INFO)
