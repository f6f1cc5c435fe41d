"""Scaffold hooks, confined.

A scaffold's `hooks.py` is written by the meta-LLM, which reads game text: it is untrusted
input. It never runs in the episode's process:

- **Compiled with RestrictedPython** (`check_source`, `policy.py`): no names or attributes
  starting with `_`, no frame/code/generator internals, no `exec`/`eval`/`open`, imports
  only from `ALLOWED_MODULES`. A revision that fails is refused at candidate validation
  with the reason.
- **Vetted module proxies** (`guards.py`): RestrictedPython alone is not a sandbox
  (`t = typing; t.sys.modules["os"]` compiles). The guarded `__import__` hands hook code a
  proxy that exposes only the listed public names of an allowed module, never another
  module; the guarded `getattr` refuses to return a module, frame, code object or traceback
  from any object, and the `str.format` family.
- **A worker process** (`HookRunner`, `runner.py`, one per episode, started on the first
  call; its program is `worker.py`): memory (RLIMIT_AS), CPU seconds per call (RLIMIT_CPU),
  a wall-clock timeout per call, output cut to `HookLimits.max_output_chars`, arguments and
  results as JSON values.
- **An OS sandbox that holds for root** (`confine_self`, `confine.py`, applied by the
  worker to itself before any hook code runs): no capabilities, Landlock with no file
  access and no TCP, a seccomp filter refusing processes, sockets, file metadata changes
  and more. Where it cannot be set up, hooks are refused (`HookConfinementError`) unless
  the run chose `confinement="none"`.

A hook that raises, hangs, exceeds a limit or kills its worker raises `HookError` to the
caller (the agent records it and goes on); the next call starts a fresh worker.

What runs where: the episode's process imports this package and runs `runner.py` (and
`check_source`); the worker (`python -I -c runner.WORKER_BOOTSTRAP <project root>`) runs
`worker.py`, which imports the package's modules, confines itself, then runs hook code
against `guards.py`'s globals. Every module here imports only the standard library,
RestrictedPython and this package (errors.py < policy.py < guards.py, confine.py <
worker.py, runner.py), so the worker never imports the rest of the project (or torch).
"""

from agent_core.hooks.confine import SECCOMP_LIBRARY_ENV, require_confinement
from agent_core.hooks.errors import (HookCodeError, HookConfinementError, HookDisabled, HookError, HookOutputCut,
                                     HookTimeout)
from agent_core.hooks.guards import load_hooks
from agent_core.hooks.policy import HOOK_IMPORTS, HOOK_NAMES, check_source
from agent_core.hooks.runner import HookLimits, HookRunner, live_workers

__all__ = ["HOOK_IMPORTS", "HOOK_NAMES", "SECCOMP_LIBRARY_ENV", "HookCodeError", "HookConfinementError",
           "HookDisabled", "HookError", "HookLimits", "HookOutputCut", "HookRunner", "HookTimeout", "check_source",
           "live_workers", "load_hooks", "require_confinement"]
