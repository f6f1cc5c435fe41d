"""The errors of scaffold hooks: refused before they run (`HookCodeError`), refused on a
machine where they cannot run confined (`HookConfinementError`), or a call that failed
(`HookError` and its kinds). Used by both sides of the worker's pipe; standard library only."""

from __future__ import annotations


class HookCodeError(ValueError):
    """hooks.py that is refused before it runs, with the reason."""


class HookError(RuntimeError):
    """A hook call that failed: the hook raised, returned the wrong type, exceeded a limit,
    timed out, or its worker died. The caller records it and goes on without the hook."""


class HookTimeout(HookError):
    """A hook call that did not answer within its time limit (its worker was killed)."""


class HookDisabled(HookError):
    """A hook that timed out `HookLimits.max_timeouts` times: not called again by its runner."""


class HookOutputCut(HookError):
    """A hook returned more than `HookLimits.max_output_chars`: `value` holds its output cut
    to that length (the caller may use it, and records the error)."""

    def __init__(self, message: str, value: str):
        super().__init__(message)
        self.value = value


class HookConfinementError(RuntimeError):
    """Hooks cannot run confined on this machine: they are refused (fail closed), with what
    is missing and how to get it, or how to choose to run them unconfined."""
