"""Property-based tests (hypothesis) of the pieces that take outside input:
caption files of every format, caption keys, output naming and claims, and
checkpoint metadata.  Example counts are kept small: the suite stays fast."""

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipsr_cli.errors import CaptionError
from clipsr_cli.io.captions import CaptionTable, read_caption_file
from clipsr_cli.model.config import ConfigError, ModelConfig, load_preset
from clipsr_cli.pipeline.plan import CASE_INSENSITIVE_NAMES, OutputClaims, output_name, output_refusal
from stages.data.captions import normalise_key

# CLIPSR_HYPOTHESIS_EXAMPLES=600 for a longer hunt (24 s here); 60 in the suite
FAST = settings(max_examples=int(os.environ.get("CLIPSR_HYPOTHESIS_EXAMPLES", 60)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

# a path segment as users name files: letters of any script, digits, spaces, dots, dashes
segment = st.text(st.characters(codec="utf-8", categories=("L", "N", "Zs"), include_characters="-_.()'&,"),
                  min_size=1, max_size=12).filter(lambda s: s.strip(".") != "" and s == s.strip())
keys = st.lists(segment, min_size=1, max_size=3).map("/".join)
caption = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"),
                  max_size=40)
tables = st.dictionaries(keys, st.lists(caption, min_size=1, max_size=3), min_size=1, max_size=6)


def _write(table: dict[str, list[str]], fmt: str, bom: bool) -> bytes:
    if fmt == "json":
        text = json.dumps({k: v[0] if len(v) == 1 else v for k, v in table.items()}, ensure_ascii=False)
    elif fmt == "jsonl":
        text = "\n".join(json.dumps({"image": k, "captions": v}, ensure_ascii=False) for k, v in table.items())
    else:
        buf = io.StringIO(newline="")
        writer = csv.writer(buf)
        writer.writerow(["image", "caption"])
        writer.writerows([k, c] for k, v in table.items() for c in v)
        text = buf.getvalue()
    return ("\ufeff" if bom else "").encode() + text.encode("utf-8")


@FAST
@given(table=tables, fmt=st.sampled_from(["json", "jsonl", "csv"]), bom=st.booleans())
def test_every_caption_format_reads_back_what_was_written(table, fmt, bom):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"captions.{fmt}"
        path.write_bytes(_write(table, fmt, bom))
        assert read_caption_file(path) == table


@FAST
@given(key=st.text(max_size=30))
def test_a_caption_key_is_refused_or_stays_inside_the_input_folder(key):
    try:
        rel = normalise_key(key, Path("c.json"))
    except CaptionError as e:
        assert "outside the input folder" in str(e)
        return
    parts = Path(rel).parts
    assert not Path(rel).is_absolute() and ".." not in parts and not (parts and ":" in parts[0])


@FAST
@given(table=tables, pick=st.integers(min_value=0))
def test_every_key_finds_its_own_captions(table, pick):
    key = sorted(table)[pick % len(table)]
    assert CaptionTable(table).lookup(key) == table[key]


# --- output names and claims ---------------------------------------------------------------------
stems = st.sampled_from(["a", "A", "b", "a_x4", "a_c0", "a_c1", "photo.v2"])
exts = st.sampled_from([".png", ".PNG", ".jpg", ".webp", ".tif"])
trees = st.lists(st.tuples(st.sampled_from(["", "sub/", "Sub/"]), stems, exts), min_size=1, max_size=8, unique=True)


@FAST
@given(tree=trees, suffix=st.sampled_from(["", "_x4"]), ext=st.sampled_from([None, "png", "jpg"]),
       captions=st.lists(st.integers(1, 2), min_size=8, max_size=8), same_folder=st.booleans())
def test_no_two_inputs_share_an_output_and_no_output_overwrites_an_input(tree, suffix, ext, captions, same_folder):
    if same_folder and not suffix:
        return  # upscale refuses -o equal to the input folder without a suffix
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "in"
        images = []
        for folder, stem, extension in tree:
            path = root / f"{folder}{stem}{extension}"
            if CASE_INSENSITIVE_NAMES and any(str(p).casefold() == str(path).casefold() for p in images):
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
            images.append(path)
        out = root if same_folder else Path(d) / "out"
        claims, owner = OutputClaims(images, ext, out), {}
        for image, n in zip(images, captions):
            rel = image.relative_to(root)
            targets = [out / output_name(rel, suffix, ext, False, i if n > 1 else None) for i in range(n)]
            if output_refusal(image, targets, claims, skip_existing=False) is not None:
                continue
            for t in targets:
                key = str(t).casefold() if CASE_INSENSITIVE_NAMES else str(t)
                assert owner.setdefault(key, image) == image, f"{t} claimed by {owner[key]} and {image}"
                assert t.resolve() not in {p.resolve() for p in images}, f"{t} would overwrite an input"


# --- checkpoint metadata -------------------------------------------------------------------------
json_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 600) | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                        max_size=3), max_leaves=6)


@pytest.fixture(scope="module")
def tiny_dict():
    return load_preset("tiny").to_dict()


@FAST
@given(section=st.sampled_from(["clip", "generator", "discriminator", "stages", None]), value=json_values,
       data=st.data())
def test_any_metadata_value_gives_a_config_or_a_config_error(tiny_dict, section, value, data):
    config = json.loads(json.dumps(tiny_dict))
    if section is None:
        config = value  # the whole model_config replaced
    else:
        field = data.draw(st.sampled_from(sorted(config[section])))
        config[section][field] = value
    try:
        cfg = ModelConfig.from_dict(config, origin="metadata")
    except ConfigError:
        return
    assert isinstance(cfg, ModelConfig)  # accepted: every field has its declared type
    again = ModelConfig.from_dict(json.loads(cfg.to_json()), origin="again")
    assert again == cfg
