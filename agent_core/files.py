"""One way to replace a file atomically: write a temp file beside it, then rename it over.

A crash at any point leaves the old file or the new one, never a torn one; the rename
replaces the directory entry, so it never writes through a symlink at the destination.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path


def atomic_write(dest: Path | str, data: bytes | str | Callable[[Path], None], *, fsync: bool = False,
                 prefix: str = ".tmp-") -> None:
    """Replace `dest` with `data` (bytes, text as UTF-8, or a function that writes the temp
    path it is given, e.g. a Parquet writer). `fsync`: also flush to stable storage."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if not callable(data):
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        if callable(data):
            data(Path(tmp))
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
