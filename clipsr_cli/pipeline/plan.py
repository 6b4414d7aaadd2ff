"""What a run reads and writes: its inputs (a file, a folder, a glob; a
shard of them), the name of each output, and which input owns each output,
so that no output is written for two inputs or over an input."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

from clipsr_cli.errors import UsageError
from clipsr_cli.io.images import IMAGE_EXTS, image_files, written_by_clipsr


def collect_inputs(spec: str, recursive: bool = False) -> tuple[Path, list[Path]]:
    """(root, images) for a file, a folder or a glob pattern."""
    path = Path(spec)
    if path.is_file():
        return path.parent, [path]
    if path.is_dir():
        files = image_files(path, recursive)
        if not files:
            below = not recursive and bool(image_files(path, True))
            raise UsageError(f"{spec}: no images ({', '.join(sorted(e[1:] for e in IMAGE_EXTS))}) in this folder"
                             + ("; its subfolders hold some: add -r" if below else ""))
        return path, files
    parts = Path(spec).parts
    n_fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    root = Path(*parts[:n_fixed]) if n_fixed else Path(".")  # the leading parts without wildcards
    pattern = Path(*parts[n_fixed:]).as_posix() if n_fixed < len(parts) else ""
    if not recursive:
        pattern = pattern.replace("**", "*")
    # pathlib's glob never descends into a symlinked folder, as the folder walk does not:
    # `dir/self -> .` or `sub/up -> ..` would repeat every image or never end
    matches = sorted(p for p in root.glob(pattern) if p.is_file()
                     and not any(s.startswith(".") for s in p.relative_to(root).parts)) if pattern else []
    if not matches:
        raise UsageError(f"{spec}: no such file or folder, and no file matches it as a pattern")
    return root, matches


def parse_shard(spec: str) -> tuple[int, int]:
    """'K/N' -> (K, N), 0 <= K < N."""
    try:
        k, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise UsageError(f"--shard {spec}: expected K/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= k < n):
        raise UsageError(f"--shard {spec}: need 0 <= K < N")
    return k, n


def shard(images: list[Path], root: Path, k: int, n: int) -> list[Path]:
    """Shard K of N by a stable hash of the path relative to the root: N
    processes on N machines cover a folder exactly once, whatever order
    their file systems list it in."""
    import zlib

    return [p for p in images if zlib.crc32(p.relative_to(root).as_posix().encode()) % n == k]


def output_name(rel: Path, suffix: str, ext: str | None, alpha: bool, index: int | None) -> Path:
    """`<stem><suffix>.<ext>`; with several captions per image, `<stem><suffix>_c<i>.<ext>`
    (i counts from 0 in caption order)."""
    ext = ext or ("png" if alpha else rel.suffix.lstrip(".").lower())
    if ext not in ("png", "jpg", "jpeg", "webp"):
        ext = "png"
    tag = f"_c{index}" if index is not None else ""
    return rel.with_name(f"{rel.stem}{suffix}{tag}.{ext}")


class InputFiles:
    """Whether a path is one of the run's inputs, by file identity.  Only a path
    that exists can be an input, so a fresh output folder costs one stat per
    output; the inputs' identities are read once, the first time one exists
    (resolving every path instead took 0.1-0.25 ms per image: BENCHMARKS.md)."""

    def __init__(self, images: list[Path]):
        self._images = images
        self._ids: set[tuple[int, int]] | None = None

    def __contains__(self, path: Path) -> bool:
        target = identity(path)
        if target is None:
            return False
        if self._ids is None:
            self._ids = set(filter(None, map(identity, self._images)))
        return target in self._ids


_CAPTION_TAG = re.compile(r"_c\d+$")  # an output per caption: <stem><suffix>_c<i>

# file systems that compare names without case by default (APFS, NTFS): A.png is a.png
CASE_INSENSITIVE_NAMES = sys.platform in ("darwin", "win32")


class OutputClaims:
    """Which input each output path belongs to, so that no output is written
    for two inputs (`a.png` and `a.jpg` under `--ext png`; an RGBA `a.webp`,
    written as PNG, beside `a.png`; `A.PNG` and `a.png` where names ignore
    case) and none over an input."""

    def __init__(self, images: list[Path], ext: str | None, out_dir: Path | None = None):
        self._inputs = InputFiles(images)
        self._owner: dict[str, tuple[Path, Path]] = {}  # name key -> (output, input)
        self._ext = ext
        self.out_dir = out_dir  # outputs stay under it: no symlinked subfolder leads out of it

    @staticmethod
    def _key(target: Path) -> str:
        return str(target).casefold() if CASE_INSENSITIVE_NAMES else str(target)

    def claim(self, image: Path, targets: list[Path]) -> tuple[str, str] | None:
        """(kind, reason) why `image` cannot have these outputs, or None once they are its own."""
        for target in targets:
            if target in self._inputs:
                return "output would overwrite an input", \
                    "output would overwrite an input; choose another -o or a --suffix"
            _, other = self._owner.get(self._key(target), (target, image))
            if other != image:  # the first image in input order keeps the name
                return "output name taken by another input", \
                    (f"its output {target.name} is also the output of {other}; rename one of the two"
                     + ("" if self._ext else " or give --ext"))
        self._owner.update({self._key(t): (t, image) for t in targets})
        return None

    def paths(self) -> list[Path]:
        """Every output path claimed, written or skipped."""
        return [target for target, _ in self._owner.values()]


def identity(path: Path) -> tuple[int, int] | None:
    """(device, inode), or None for a file gone since it was listed (its decoding reports it)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def earlier_outputs(images: list[Path], root: Path, out_dir: Path, suffix: str) -> dict[Path, Path]:
    """The inputs that an earlier run wrote as another input's outputs, each
    with that input: under the output folder, named `<stem><suffix>[_c<i>]`
    for an image `<stem>` in the mirrored input folder, and marked by clipsr
    (`-o` inside the input folder with `-r`, or the input folder itself with
    `--suffix`: the same command run again).  They are outputs of this run,
    overwritten or kept with `--skip-existing`; any other input in an
    output's place is kept, that output refused.  None when the output
    folder is outside the input folder: no stat or read then."""
    try:
        sub = out_dir.resolve().relative_to(root.resolve())
    except (OSError, ValueError):
        return {}
    stems: dict[Path, dict[str, list[Path]]] = {}  # folder -> image stem -> its images there
    earlier = {}
    for image in images:
        try:
            rel = image.relative_to(root / sub)
        except ValueError:
            continue
        folder = root / rel.parent
        if folder not in stems:
            stems[folder] = defaultdict(list)
            with contextlib.suppress(OSError):
                for name in sorted(os.listdir(folder)):
                    if Path(name).suffix.lower() in IMAGE_EXTS:
                        stems[folder][Path(name).stem].append(folder / name)
        names = {_CAPTION_TAG.sub("", rel.stem), rel.stem}
        bases = [name[: len(name) - len(suffix)] for name in sorted(names) if name.endswith(suffix)]
        sources = [source for base in bases for source in stems[folder].get(base, []) if source != image]
        if sources and written_by_clipsr(image):
            earlier[image] = sources[0]
    return earlier


def _linked_folders(folder: Path, top: Path | None):
    """Symbolic links among `folder` and its parents below `top` (the -o folder,
    which itself may be a link the user chose)."""
    if top is None:
        return
    while folder != top and top in folder.parents:
        if folder.is_symlink():
            yield folder
        folder = folder.parent


def output_refusal(image: Path, targets: list[Path], claims: OutputClaims,
             skip_existing: bool) -> tuple[str, str, str] | None:
    """("failed" | "skipped", kind, reason) when `image` is not to write
    `targets`, else None; the targets of a skipped image stay claimed (they exist)."""
    conflict = claims.claim(image, targets)
    if conflict:
        return "failed", *conflict
    escape = next((link for t in targets for link in _linked_folders(t.parent, claims.out_dir)), None)
    if escape is not None:
        return ("failed", "output folder is a symbolic link",
                f"output folder {escape} is a symbolic link (to {os.readlink(escape)}): writes would land outside "
                "the output folder; remove the link or choose another -o")
    if skip_existing and all(t.exists() for t in targets):
        return "skipped", "output exists", "output exists"
    return None
