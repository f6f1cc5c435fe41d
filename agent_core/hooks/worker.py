"""The worker program: one process per `HookRunner`, started as `python -I -c
runner.WORKER_BOOTSTRAP <project root>`, which calls `worker_main`.

It reads one setup line (the source and limits) on stdin, sets its resource limits, confines
itself (`confine.confine_self`) unless the run chose `confinement="none"`, loads the hooks
under RestrictedPython (`guards.load_hooks`), then answers one JSON line per request line
until its parent goes or it has been idle `idle_s` seconds. Everything it imports is the
standard library, RestrictedPython and this package, imported before it confines itself
(Landlock then refuses reading any file); it never imports the rest of the project (or
torch): `agent_core/__init__.py` is empty.
"""

from __future__ import annotations

import json
import math
import os
import select
import sys
from typing import Any

from agent_core.hooks.confine import confine_self
from agent_core.hooks.guards import check_result, load_hooks
from agent_core.hooks.policy import HOOK_NAMES


def worker_main() -> None:  # pragma: no cover - runs in the worker process
    import resource

    out = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)  # stray output can never corrupt the protocol
    stdin = sys.stdin.buffer

    def send(obj: dict) -> None:
        out.write(json.dumps(obj).encode() + b"\n")

    setup = json.loads(stdin.readline())
    cpu_s, idle_s = int(setup["cpu_s"]), float(setup["idle_s"])
    max_chars = int(setup["max_output_chars"])
    limit = int(setup["memory_mb"]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))
    cpu_cap = int(setup["cpu_total_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_cap, cpu_cap))

    def cpu_budget() -> None:  # this call's CPU seconds, on top of what the worker used so far
        used = resource.getrusage(resource.RUSAGE_SELF)
        soft = min(cpu_cap, math.ceil(used.ru_utime + used.ru_stime) + cpu_s)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_cap))

    for name in setup.get("preload", []):  # test-only: modules the OS-layer tests reach for
        __import__(name)
    if setup["confinement"] == "os":
        try:
            confine_self(setup["seccomp_library"])
        except BaseException as exc:  # noqa: BLE001 - fail closed: no hook code runs
            send({"ok": False, "confinement_failed": True, "error": _describe(exc)})
            return
    try:
        cpu_budget()
        if setup.get("python_guard", True):
            hooks = load_hooks(setup["source"], setup.get("filename", "hooks.py"))
        else:  # test-only: plain Python, so that the OS layer is tested on its own
            namespace: dict[str, Any] = {"__name__": "hooks"}
            exec(compile(setup["source"], setup.get("filename", "hooks.py"), "exec"), namespace)  # noqa: S102
            hooks = {n: namespace[n] for n in HOOK_NAMES if callable(namespace.get(n))}
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit
        send({"ok": False, "error": _describe(exc)})
        return
    send({"ok": True, "hooks": sorted(hooks)})
    while True:
        ready, _, _ = select.select([stdin], [], [], idle_s)
        if not ready:
            return  # idle: the parent starts a fresh worker when it needs one
        line = stdin.readline()
        if not line:
            return  # the parent has gone
        try:
            req = json.loads(line)
            fn = hooks.get(req["name"])
            if fn is None:
                raise LookupError(f"hooks.py defines no {req['name']!r}")
            cpu_budget()
            value = check_result(req["name"], fn(*req["args"]))
            reply = {"ok": True, "value": value}
            if isinstance(value, str) and len(value) > max_chars:  # cut here: never sent whole
                reply = {"ok": True, "value": value[:max_chars], "cut_from": len(value)}
        except BaseException as exc:  # noqa: BLE001 - a hook bug is data for the caller
            reply = {"ok": False, "error": _describe(exc)}
        try:
            send(reply)
        except MemoryError:
            send({"ok": False, "error": "MemoryError: the reply did not fit in memory"})


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text[:1000]
