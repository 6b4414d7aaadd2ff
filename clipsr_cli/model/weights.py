"""Find, verify and fetch the external files named in ``weights/manifest.toml``.

Resolution order: explicit path -> a weights directory (option or
``CLIPSR_WEIGHTS_DIR``) -> the files bundled in the package -> the user cache (``CLIPSR_CACHE`` or
``$XDG_CACHE_HOME/clipsr``) -> download into the cache (online machines only).
Every file is checked against its sha256 before it is used.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from clipsr_cli.errors import UserError
from clipsr_cli.model.config import read_toml
from weights import BUNDLED_DIR, MANIFEST

ENV_DIR = "CLIPSR_WEIGHTS_DIR"
ENV_CACHE = "CLIPSR_CACHE"
ENV_OFFLINE = "CLIPSR_OFFLINE"


class WeightsError(UserError, RuntimeError):
    pass


@dataclass(frozen=True)
class WeightsFile:
    name: str
    filename: str
    url: str
    sha256: str
    description: str = ""


def manifest(path: Path = MANIFEST) -> dict[str, WeightsFile]:
    return {name: WeightsFile(name=name, **entry) for name, entry in read_toml(path).items()}


def get_entry(name: str) -> WeightsFile:
    entries = manifest()
    if name not in entries:
        raise WeightsError(f"no weights named {name!r}; known: {', '.join(sorted(entries))}")
    return entries[name]


def cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clipsr"


def sha256sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_verified: dict[tuple[str, int, int], str] = {}


def verify(path: Path, entry: WeightsFile) -> None:
    """Raise WeightsError unless `path` has the manifest's sha256 (memoised per file state)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    digest = _verified.get(key) or sha256sum(path)
    if not digest.startswith(entry.sha256.lower()):
        raise WeightsError(
            f"{path}: sha256 {digest[:16]}... does not match {entry.name} ({entry.sha256[:16]}...); "
            f"the file is corrupt, truncated or a different file: replace it with {entry.url}"
        )
    _verified[key] = digest


def resolve(
    name: str,
    path: str | Path | None = None,
    weights_dir: str | Path | None = None,
    download: bool | None = None,
) -> Path:
    """Local, verified path of manifest entry `name`."""
    entry = get_entry(name)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"{path}: no such file (given for {name})")
        verify(path, entry)
        return path
    weights_dir = weights_dir or os.environ.get(ENV_DIR)
    candidates = [Path(weights_dir) / entry.filename] if weights_dir else []
    candidates += [BUNDLED_DIR / entry.filename, cache_dir() / entry.filename]
    for candidate in candidates:
        if candidate.is_file():
            verify(candidate, entry)
            return candidate
    if not entry.url:  # shipped inside the package, nowhere to download it from
        raise WeightsError(f"{name}: {entry.filename} should be bundled in {BUNDLED_DIR} but is missing; "
                           "reinstall clipsr")
    if download is None:
        download = not os.environ.get(ENV_OFFLINE)
    target = cache_dir() / entry.filename
    if download:
        try:
            return _download(entry, target)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = f"download failed ({e})"
    else:
        reason = f"offline ({ENV_OFFLINE} is set)" if os.environ.get(ENV_OFFLINE) else "downloads disabled"
    where = " or ".join(str(c) for c in candidates if c.parent != BUNDLED_DIR)
    raise WeightsError(
        f"{name}: {entry.filename} not found and {reason}. Download {entry.url} and put it at {where} "
        f"(or point --weights-dir / {ENV_DIR} at its folder)"
    )


def _download(entry: WeightsFile, target: Path, timeout: float = 15.0) -> Path:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{entry.filename}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry.url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                          TransferSpeedColumn(), transient=True) as progress:
                task = progress.add_task(f"downloading {entry.filename}", total=total)
                while block := resp.read(1 << 20):
                    out.write(block)
                    progress.advance(task, len(block))
        try:
            verify(Path(tmp), entry)
        except WeightsError as e:
            raise WeightsError(f"download of {entry.name} from {entry.url} is bad and was deleted: {e}") from None
        os.replace(tmp, target)
        return target
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
