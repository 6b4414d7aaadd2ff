"""Caption sources: files mapping an image path (relative to the input root)
to one caption or a list of captions.

Formats: JSON object (`{"a.png": "text" | ["text", ...]}`), JSONL (one
`{"image": ..., "caption(s)": ...}` per line), CSV (`image,caption` columns,
one row per caption).  Per-image `.txt` sidecars are read by the pipeline.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path, PurePosixPath

from clipsr_cli.errors import CaptionError
from clipsr_cli.plugins.hookspecs import hookimpl


def normalise_key(key: str, source: Path) -> str:
    """A relative POSIX path that cannot leave the input root."""
    p = PurePosixPath(key.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise CaptionError(f"{source}: caption key {key!r} points outside the input folder; "
                           "use paths relative to the input root")
    return str(p)


def _as_list(value, key: str, source: Path) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise CaptionError(f"{source}: captions of {key!r} must be a string or a list of strings")


def _add(out: dict[str, list[str]], key: str, value, source: Path) -> None:
    out.setdefault(normalise_key(key, source), []).extend(_as_list(value, key, source))


class _Pairs(list):
    """A JSON object as its (key, value) pairs, duplicates included."""


def read_json(path: Path) -> dict[str, list[str]]:
    try:  # as pairs: a key given twice keeps both captions (as two JSONL lines or CSV rows do), none is lost
        data = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=_Pairs)
    except json.JSONDecodeError as e:
        raise CaptionError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, _Pairs):
        raise CaptionError(f"{path}: expected an object mapping image paths to captions")
    out: dict[str, list[str]] = {}
    for key, value in data:
        _add(out, key, value, path)
    return out


def read_jsonl(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    # lines end at "\n" alone (JSON Lines): str.splitlines would also split inside a caption at
    # U+0085, U+2028 and other breaks that JSON leaves unescaped (found by tests/test_properties.py)
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key = row.get("image") or row.get("file") or row["path"]
            value = row["captions"] if "captions" in row else row["caption"]
        except (json.JSONDecodeError, KeyError, AttributeError):
            raise CaptionError(f"{path}:{n}: expected {{\"image\": ..., \"caption\": ...}}") from None
        if not isinstance(key, str):
            raise CaptionError(f"{path}:{n}: \"image\" must be a path string, not {json.dumps(key)}")
        _add(out, key, value, path)
    return out


def read_csv(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or [])
        img_col = next((c for c in ("image", "file", "path") if c in fields), None)
        if img_col is None or "caption" not in fields:
            raise CaptionError(f"{path}: CSV needs an 'image' and a 'caption' column (found {sorted(fields)})")
        for row in reader:
            _add(out, row[img_col], row["caption"], path)
    return out


@hookimpl
def register_caption_sources(register):
    register("json", read_json)
    register("jsonl", read_jsonl)
    register("csv", read_csv)
