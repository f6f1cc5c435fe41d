"""Where runs live: one workspace (default `./automem-runs`), a local directory or any
fsspec URL (`s3://bucket/automem`, `gcs://...`, `memory://...`).

Everything is written locally first: episodes flush their trace line by line, which object
stores cannot do. For a URL workspace the local directory is a mirror
(`$AUTOMEM_MIRROR/<hash of the URL>`, default `./automem-mirror/...`); finished episodes,
archive files, reports and the registry are pushed to the URL, and finished episodes are
pulled from it, so workers on several machines share results through the URL.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

DEFAULT_WORKSPACE = "automem-runs"
DEFAULT_MIRROR = "automem-mirror"


def _setting(override: str | Path | None) -> str:
    return str(override or os.environ.get("AUTOMEM_WORKSPACE") or DEFAULT_WORKSPACE)


def is_url(value: str | Path | None) -> bool:
    text = str(value or "")
    return "://" in text and not text.startswith("file://")


def workspace_url(override: str | Path | None = None) -> str | None:
    """The workspace's fsspec URL, or None for a local workspace."""
    value = _setting(override)
    return value.rstrip("/") if is_url(value) else None


def workspace_root(override: str | Path | None = None) -> Path:
    """The local workspace directory: `override`, else `$AUTOMEM_WORKSPACE`, else
    `./automem-runs`; for a URL workspace, its local mirror."""
    value = _setting(override)
    if value.startswith("file://"):
        return Path(value.removeprefix("file://"))
    if is_url(value):
        digest = hashlib.sha256(value.rstrip("/").encode()).hexdigest()[:12]
        return Path(os.environ.get("AUTOMEM_MIRROR") or DEFAULT_MIRROR) / digest
    return Path(value)


class RemoteWorkspace:
    """File-by-file transfers between the local mirror and the workspace URL."""

    def __init__(self, url: str, local_root: Path):
        import fsspec

        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.local_root = Path(local_root).resolve()

    def _remote(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}" if rel else self.root

    def _rel(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.local_root).as_posix()

    def exists(self, path: Path) -> bool:
        """Whether the remote workspace holds `path` (a local path in the mirror)."""
        return self.fs.exists(self._remote(self._rel(path)))

    def push(self, path: Path) -> None:
        """Upload a file or a directory (its files) under the same relative path."""
        path = Path(path).resolve()
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            target = self._remote(self._rel(f))
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(f), target)

    def pull(self, path: Path) -> bool:
        """Download a remote file or directory to `path` in the mirror; False if absent."""
        rel = self._rel(path)
        remote = self._remote(rel)
        if not self.fs.exists(remote):
            return False
        files = [remote] if self.fs.isfile(remote) else self.fs.find(remote)
        for f in files:
            local = self.local_root / rel / f[len(remote):].lstrip("/") if f != remote else Path(path)
            local.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(f, str(local))
        return True


def push(workspace: str | Path | None, *paths: Path) -> None:
    """Upload `paths` (inside the local workspace) when the workspace is a URL."""
    url = workspace_url(workspace)
    if url:
        remote = RemoteWorkspace(url, workspace_root(workspace))
        for p in paths:
            remote.push(Path(p))


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
