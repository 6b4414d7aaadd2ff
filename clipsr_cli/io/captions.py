"""Caption lookup for the pipeline: caption files (through the registered
caption sources), `.txt` sidecars, and the missing-caption policy."""

from __future__ import annotations

from collections import Counter
from enum import Enum
from pathlib import Path, PurePosixPath

from clipsr_cli.errors import CaptionError
from clipsr_cli.plugins.registry import registry


class MissingPolicy(str, Enum):
    error = "error"
    empty = "empty"
    default = "default"


def read_caption_file(path: Path) -> dict[str, list[str]]:
    sources = registry("caption_source")
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in sources:
        raise CaptionError(f"{path}: unknown caption format {fmt!r}; known: {', '.join(sorted(sources))}")
    if not path.is_file():
        raise CaptionError(f"{path}: caption file not found")
    try:
        return sources[fmt].factory(path)
    except UnicodeDecodeError as e:
        raise CaptionError(f"{path}: {not_utf8(e)}") from None


def not_utf8(e: UnicodeDecodeError) -> str:
    return f"not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8"


class CaptionTable:
    """The one caption matcher (upscale, score and the folder dataset use it):
    which entry of a caption file names an image, given the image's path
    relative to the input root."""

    def __init__(self, table: dict[str, list[str]]):
        self.table = table
        self._by_path = {str(PurePosixPath(k).with_suffix("")): k for k in table}  # extension-free
        # by file stem, where no other key has that stem: a flat folder of LR copies
        # finds its captions in a file keyed by the dataset's tree (`Set5/baby.png` for `lr/baby.png`)
        stems = Counter(PurePosixPath(k).stem for k in table)
        self._by_stem = {PurePosixPath(k).stem: k for k in table if stems[PurePosixPath(k).stem] == 1}

    def keys(self, rel: str) -> list[str]:
        """The keys that may name the image at `rel`, in order of precedence: its
        relative path, its file name, its stem, its path with another extension,
        the one key in any folder with its stem."""
        p = PurePosixPath(rel)
        found = [rel, p.name, p.stem]
        for index, key in ((self._by_path, str(p.with_suffix(""))), (self._by_stem, p.stem)):
            if key in index:
                found.append(index[key])
        return found

    def lookup(self, rel: str) -> list[str] | None:
        """The captions of the image at `rel`; an empty list is no caption."""
        for key in self.keys(rel):
            if self.table.get(key):
                return self.table[key]
        return None

    def names_any(self, rels: list[str]) -> bool:
        return any(k in self.table for rel in rels for k in self.keys(rel))


class Captions:
    """Captions for images under an input root.  Order of precedence: `--caption`
    text, the caption file, a `.txt` sidecar next to the image, the policy."""

    def __init__(self, root: Path, file: Path | None = None, text: str | None = None,
                 policy: MissingPolicy = MissingPolicy.error, default: str = ""):
        self.root = root
        self.file = file
        self.table = CaptionTable(read_caption_file(file) if file else {})
        self.text = text
        self.policy = policy
        self.default = default

    def _rel(self, image: Path) -> str:
        return image.relative_to(self.root).as_posix() if image.is_relative_to(self.root) else image.name

    def check_inputs(self, images: list[Path]) -> None:
        """Both checks below, before the model loads."""
        if self.file is not None:
            self.check_file_names(images, self.file)
        self.check_some_source(images)

    def check_file_names(self, images: list[Path], file: Path) -> None:
        """Raise CaptionError when the caption file (read from `file`) names none
        of the images: its keys are relative to another folder, or it belongs to
        other images; every image would fail or get the fallback caption."""
        table = self.table.table
        if self.text is not None or not images or self.table.names_any([self._rel(i) for i in images]):
            return
        if not table:
            raise CaptionError(f"{file}: holds no captions")
        raise CaptionError(f"{file}: none of its {len(table)} entries names an input image; keys are paths "
                           f"relative to {self.root} (such as {self._rel(images[0])!r}), file names, or "
                           f"paths whose file name no other key has, and it has {next(iter(table))!r}")

    def check_some_source(self, images: list[Path]) -> None:
        """Raise CaptionError when, under the 'error' policy, nothing gives any
        image a caption (no --caption, no caption file, no sidecar): every
        image would fail, one line each, after the model had loaded."""
        if (self.policy is not MissingPolicy.error or self.text is not None or self.table.table or not images
                or any(image.with_suffix(".txt").is_file() for image in images)):
            return
        raise CaptionError(f"no caption for any of the {len(images)} input(s): give --captions FILE (.json, .jsonl, "
                           f".csv), --caption TEXT, a .txt sidecar beside each image (such as "
                           f"{images[0].with_suffix('.txt')}), or --missing-caption empty to upscale without one")

    def get(self, image: Path) -> list[str] | None:
        """Captions of `image`, else the policy's (None under 'error')."""
        own = self.own(image)
        return own if own is not None else self.fallback()

    def fallback(self) -> list[str] | None:
        """What an image without a caption gets under the policy: None under 'error'."""
        if self.policy is MissingPolicy.error:
            return None
        return [self.default if self.policy is MissingPolicy.default else ""]

    def own(self, image: Path) -> list[str] | None:
        """The captions given for `image` (`--caption`, the file, its sidecar),
        or None.  Raises CaptionError for a sidecar that cannot be read as text."""
        if self.text is not None:
            return [self.text]
        own = self.table.lookup(self._rel(image))  # an empty list is no caption: the policy decides
        if own is not None:
            return own
        sidecar = image.with_suffix(".txt")
        if sidecar.is_file():
            try:  # utf-8-sig: Windows editors start UTF-8 files with a byte-order mark
                text = sidecar.read_text(encoding="utf-8-sig")
            except UnicodeDecodeError as e:
                raise CaptionError(f"{sidecar}: {not_utf8(e)}") from None
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            if lines:
                return lines
        return None
