"""The parent side: `HookRunner` runs one hooks.py in a worker process (`worker.worker_main`)
and talks to it over a pipe, one JSON line per request and reply, within `HookLimits`.

The worker starts on the first call, in an empty read-only scratch directory, with no
environment but `LC_ALL` and in its own session; a worker that timed out or died is
stopped (its whole process group killed) and replaced on the next call.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from agent_core.hooks.confine import CONFINEMENTS, require_confinement, seccomp_library
from agent_core.hooks.errors import HookConfinementError, HookDisabled, HookError, HookOutputCut, HookTimeout
from agent_core.hooks.guards import check_result
from agent_core.hooks.policy import HOOK_NAMES, check_source

log = logging.getLogger(__package__)

#: the module whose `worker_main` is the worker's program (named, not imported: only the
#: worker imports it)
WORKER_MODULE = "agent_core.hooks.worker"
#: what the worker runs (`python -I -c WORKER_BOOTSTRAP <project root>`): isolated mode
#: ignores PYTHON* variables and leaves the user's site-packages and the working directory
#: off sys.path, so the root of the project this package is in goes first on it (the worker
#: runs this code, whichever copy of the project is installed)
WORKER_BOOTSTRAP = (f"import sys; sys.path.insert(0, sys.argv[1]); from {WORKER_MODULE} import worker_main; "
                    "worker_main()")


@dataclass(frozen=True)
class HookLimits:
    """Limits of a hook worker (defaults suit per-step hooks on a small machine)."""

    #: wall-clock seconds one call may take (the worker is killed after)
    call_timeout_s: float = 2.0
    #: wall-clock seconds to start the worker and run hooks.py's top level
    start_timeout_s: float = 15.0
    #: CPU seconds one call may use (RLIMIT_CPU, renewed per call)
    cpu_s: int = 2
    #: CPU seconds over the worker's life (then it is restarted)
    cpu_total_s: int = 600
    #: address space of the worker (RLIMIT_AS)
    memory_mb: int = 512
    #: a worker idle this long exits; the next call starts a fresh one
    idle_s: float = 120.0
    #: longest text a hook may return (postprocess_observation's observation, validate_write's
    #: refusal): it goes into the prompt. Longer output is cut to this and the call reports it.
    max_output_chars: int = 16_000
    #: a hook that times out this many times is disabled for the rest of the runner's life
    #: (one episode), with a recorded error on every call it misses
    max_timeouts: int = 3
    #: longest reply line accepted from the worker (the output cap plus JSON escaping)
    max_reply_bytes: int = 1_000_000


class _Worker:
    """One worker process and its scratch directory (kept apart from HookRunner so that a
    finalizer can stop it without holding the runner)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.scratch: str | None = None
        self.last_used = 0.0

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
                log.error("hook worker %d did not exit after SIGKILL", proc.pid)
            for stream in (proc.stdin, proc.stdout):
                if stream:
                    try:
                        stream.close()
                    except OSError:
                        pass
            _LIVE_PIDS.discard(proc.pid)
        scratch, self.scratch = self.scratch, None
        if scratch:
            os.chmod(scratch, 0o700)
            shutil.rmtree(scratch, ignore_errors=True)


#: pids of running hook workers (tests check that none leak)
_LIVE_PIDS: set[int] = set()


def live_workers() -> set[int]:
    """Process ids of the hook workers running now, in this process."""
    return set(_LIVE_PIDS)


class HookRunner:
    """Runs one hooks.py in a confined worker process, started on the first call.

    `call(name, *args)` returns the hook's value or raises `HookError`. Calls are serialised
    (one worker, one call at a time); a worker that timed out or died is replaced on the
    next call, and a hook that timed out `limits.max_timeouts` times is disabled
    (`HookDisabled`). One runner serves one episode: the worker's module state (a hook's
    globals) never crosses episodes. `close()` stops the worker (also done when the runner
    is garbage-collected and at interpreter exit).

    `confinement`: "os" (default) runs the worker under the OS layer (`confine_self`) and
    raises `HookConfinementError` here, before any process, where that cannot be set up;
    "none" is the run's explicit choice to run hooks without it. `python_guard=False` is for
    tests only: the source runs as plain Python, so that the OS layer is tested on its own;
    `preload` (tests only) names modules the worker imports before it confines itself."""

    def __init__(self, source: str, limits: HookLimits | None = None, filename: str = "hooks.py", *,
                 confinement: str = "os", python_guard: bool = True, preload: tuple[str, ...] = ()):
        if confinement not in CONFINEMENTS:
            raise ValueError(f"hook confinement must be one of {list(CONFINEMENTS)}, not {confinement!r}")
        self.source = source
        self.filename = filename
        self.limits = limits or HookLimits()
        self.confinement = confinement
        self.python_guard = python_guard
        self.preload = tuple(preload)
        if python_guard:
            self.hooks = tuple(check_source(source, filename))  # HookCodeError before any process
        else:
            self.hooks = tuple(n for n in HOOK_NAMES if f"def {n}(" in source)
        if confinement == "os":
            require_confinement(filename)
        self._lock = threading.Lock()
        self._worker = _Worker()
        self._timeouts: dict[str, int] = {}
        self._finalizer = weakref.finalize(self, self._worker.stop)

    # -- public -----------------------------------------------------------------------
    def function(self, name: str) -> Callable[..., Any] | None:
        """The hook `name` as a plain function with its documented signature (None when
        hooks.py does not define it)."""
        if name not in self.hooks:
            return None
        if name == "postprocess_observation":
            def postprocess_observation(observation: str) -> str:
                """The scaffold's observation post-processing, run confined."""
                return self.call("postprocess_observation", observation)
            return postprocess_observation
        if name == "validate_write":
            def validate_write(op: str, args: dict, files: dict) -> str | None:
                """The scaffold's write check (a refusal string or None), run confined."""
                return self.call("validate_write", op, args, files)
            return validate_write
        raise KeyError(f"unknown hook {name!r}; hooks are {list(HOOK_NAMES)}")  # pragma: no cover

    def call(self, name: str, *args: Any) -> Any:
        """Run hook `name` on JSON-able `args` in the worker; its result, or `HookError`
        (`HookOutputCut` carries the output cut to `limits.max_output_chars`)."""
        if name not in self.hooks:
            raise HookError(f"{self.filename} defines no {name!r}")
        if self._timeouts.get(name, 0) >= self.limits.max_timeouts:
            raise HookDisabled(f"{name} is disabled for the rest of the episode: it timed out "
                               f"{self.limits.max_timeouts} times")
        try:
            request = json.dumps({"name": name, "args": list(args)}).encode() + b"\n"
        except (TypeError, ValueError) as exc:
            raise HookError(f"hook arguments must be plain values (JSON): {exc}") from None
        with self._lock:
            self._ensure_started()
            try:
                reply = self._exchange(request, self.limits.call_timeout_s, f"{name} call")
            except HookTimeout:
                self._timeouts[name] = self._timeouts.get(name, 0) + 1
                raise
        if not reply.get("ok"):
            raise HookError(reply.get("error", "the hook failed"))
        value = check_result(name, reply.get("value"))
        if "cut_from" in reply:
            raise HookOutputCut(f"{name} returned {reply['cut_from']} characters; at most "
                                f"{self.limits.max_output_chars} are used (the output was cut)", value)
        return value

    @property
    def pid(self) -> int | None:
        """The worker's process id (None when none runs)."""
        return self._worker.proc.pid if self._worker.proc else None

    def close(self) -> None:
        """Stop the worker now (a later call starts a fresh one)."""
        with self._lock:
            self._worker.stop()

    def __enter__(self) -> "HookRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------
    def _ensure_started(self) -> None:
        w = self._worker
        if w.proc is not None and (w.proc.poll() is not None
                                   or time.monotonic() - w.last_used > self.limits.idle_s * 0.8):
            w.stop()  # died, or about to exit for idleness: start afresh rather than race it
        if w.proc is not None:
            return
        w.scratch = tempfile.mkdtemp(prefix="automem-hook-")
        os.chmod(w.scratch, 0o500)  # nothing may be created in the working directory
        cmd = [sys.executable, "-I", "-c", WORKER_BOOTSTRAP, str(Path(__file__).resolve().parents[2])]
        try:
            w.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, cwd=w.scratch, env={"LC_ALL": "C.UTF-8"},
                                      bufsize=0, start_new_session=True, close_fds=True)
        except OSError as exc:
            w.stop()
            raise HookError(f"the hook worker could not start: {exc}") from exc
        _LIVE_PIDS.add(w.proc.pid)
        lim = self.limits
        setup = {"source": self.source, "filename": self.filename, "memory_mb": lim.memory_mb,
                 "cpu_s": lim.cpu_s, "cpu_total_s": lim.cpu_total_s, "idle_s": lim.idle_s,
                 "max_output_chars": lim.max_output_chars, "confinement": self.confinement,
                 "seccomp_library": seccomp_library(), "python_guard": self.python_guard,
                 "preload": list(self.preload)}
        reply = self._exchange(json.dumps(setup).encode() + b"\n", lim.start_timeout_s, "start")
        if not reply.get("ok"):
            w.stop()
            if reply.get("confinement_failed"):
                raise HookConfinementError(f"{self.filename} is refused: the hook worker could not confine "
                                           f"itself ({reply.get('error')})")
            raise HookError(f"{self.filename} did not load: {reply.get('error')}")

    def _exchange(self, request: bytes, timeout_s: float, what: str) -> dict:
        """Send one request line, read one reply line within `timeout_s`; on any failure
        the worker is stopped and `HookError` raised."""
        w = self._worker
        assert w.proc is not None and w.proc.stdin is not None and w.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        try:
            w.proc.stdin.write(request)
            fd = w.proc.stdout.fileno()
            buf = bytearray()
            while not buf.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0:
                    w.stop()
                    raise HookTimeout(f"hook {what} did not finish within {timeout_s:g} s; the worker "
                                      "was stopped")
                ready, _, _ = select.select([fd], [], [], left)
                if not ready:
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise HookError(f"hook worker died during the {what} ({self._exit_reason()})")
                buf += chunk
                if len(buf) > self.limits.max_reply_bytes:
                    raise HookError(f"hook {what} replied more than {self.limits.max_reply_bytes} bytes")
            w.last_used = time.monotonic()
            return json.loads(buf)
        except HookTimeout:
            raise
        except HookError:
            w.stop()
            raise
        except (OSError, ValueError) as exc:
            reason = self._exit_reason()
            w.stop()
            raise HookError(f"hook worker failed during the {what}: {type(exc).__name__}: {exc} "
                            f"({reason})") from None

    def _exit_reason(self) -> str:
        proc = self._worker.proc
        if proc is None:
            return "no worker"
        try:
            code = proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "still running"
        if code < 0:
            sig = signal.Signals(-code).name
            why = {"SIGXCPU": "CPU limit", "SIGKILL": "killed", "SIGSEGV": "crashed"}.get(sig, "signal")
            return f"{sig}: {why}"
        return f"exit code {code}"
