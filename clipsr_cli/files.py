"""Writing files so that readers never see half of one."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename over `path`: readers never see half a file.

    The temporary file sits beside `path` (a rename within one file system is
    atomic) under a name no other writer uses, and is created by `write` itself,
    so it gets the usual mode under the process umask.  (mkstemp's 0600 would
    need a chmod, and reading the umask means setting it: a race between the
    lanes of `upscale`.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:16]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
