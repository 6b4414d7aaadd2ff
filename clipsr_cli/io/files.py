"""Writing files so that readers never see half of one."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterable

# no single file takes this long to write: a temporary this old was left by a killed writer
STALE_AFTER_S = 600
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{16}\.tmp")
NAME_MAX = 255  # bytes in one file name (Linux, macOS, Windows file systems alike)
_TEMP_EXTRA = len(".") + len(".0123456789abcdef.tmp")


def _temporary_stem(name: str) -> str:
    """The part of a temporary's name that says whose it is: the name itself, or
    for a name too long to carry 22 more bytes, its start and a hash of the whole."""
    if len(name.encode()) + _TEMP_EXTRA <= NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    head = name.encode()[: NAME_MAX - _TEMP_EXTRA - len(digest) - 1].decode(errors="ignore")
    return f"{head}~{digest}"


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename over `path`: readers never see half a file.

    The temporary file sits beside `path` (a rename within one file system is
    atomic) under a name no other writer uses, and is created by `write` itself,
    so it gets the usual mode under the process umask.  (mkstemp's 0600 would
    need a chmod, and reading the umask means setting it: a race between the
    lanes of `upscale`.)"""
    path = Path(path)
    tmp = path.with_name(f".{_temporary_stem(path.name)}.{os.urandom(8).hex()}.tmp")  # see _TEMPORARY
    try:
        try:
            write(tmp)
        except Exception:
            # The folder is made when a write into it fails, not checked before
            # every write (2 system calls per upscale output).  A write that made
            # its file met a real error; else retry once in the folder (no is_dir()
            # test: another lane may have made it since this write failed).
            if os.path.lexists(tmp):
                raise
            path.parent.mkdir(parents=True, exist_ok=True)
            write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable_folder(folder: Path) -> None:
    """Create `folder` (and its parents) and make and remove a file in it:
    raises OSError when outputs could not be written there."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".clipsr-probe.{os.urandom(8).hex()}.tmp"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.unlink(probe)


def remove_stale_temporaries(paths: Iterable[Path], older_than: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporaries that killed writers left beside these paths
    (`atomic_write`'s, older than `older_than` seconds; a writer still running
    has a younger one).  Returns what was removed."""
    names: dict[Path, set[str]] = defaultdict(set)
    for path in paths:
        names[Path(path).parent].add(_temporary_stem(Path(path).name))
    cutoff, removed = time.time() - older_than, []
    for folder, wanted in names.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            match = _TEMPORARY.fullmatch(entry.name)
            try:
                if match and match["name"] in wanted and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError:  # gone meanwhile, or not ours to remove
                continue
    return removed
