import types
from pathlib import Path

import pytest
import torch

from clipsr_cli.model.generator import Generator
from clipsr_cli.plugins.hookspecs import hookimpl
from clipsr_cli.plugins.registry import UnknownStage, get_plugin_manager, lookup, registry

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_plugin():
    """The README's plugin example, exactly as a user copies it, as a module."""
    text = README.read_text(encoding="utf-8")
    code = text.split("<!-- plugin-example -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    module = types.ModuleType("my_plugin")
    exec(compile(code, "README.md (plugin example)", "exec"), module.__dict__)
    return module


@pytest.fixture
def throwaway():
    pm = get_plugin_manager()
    plugin = readme_plugin()
    pm.register(plugin, name="throwaway")
    yield plugin
    pm.unregister(plugin)


def test_builtins_come_from_the_entry_point_group():
    entries = registry("upsampler")
    assert entries["pixelshuffle"].source.startswith("clipsr ")
    assert set(registry("preset")) >= {"paper", "tiny"}


def test_throwaway_plugin_stage_is_used(throwaway, tiny_cfg, tiny_clip):
    import dataclasses

    cfg = dataclasses.replace(tiny_cfg, stages=dataclasses.replace(tiny_cfg.stages, upsampler="nearest"))
    gen = Generator(cfg, tiny_clip, 4)
    lr = torch.rand(1, 3, 5, 7)
    out = gen(lr, gen.encode_text(["x"]))
    assert torch.equal(out, lr.repeat_interleave(4, -1).repeat_interleave(4, -2))
    assert registry("upsampler")["nearest"].plugin == "throwaway"


def test_readme_plugin_metric_scores_through_the_cli(throwaway, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from clipsr_cli.cli import app

    for folder, value in (("sr", 10), ("hr", 30)):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (8, 8), (value,) * 3).save(tmp_path / folder / "a.png")
    out = tmp_path / "s.json"
    res = CliRunner().invoke(app, ["score", str(tmp_path / "sr"), "--ref", str(tmp_path / "hr"),
                                   "--metrics", "mae", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert __import__("json").loads(out.read_text())["images"][0]["mae"] == pytest.approx(20 / 255)


def test_a_registered_value_of_the_wrong_kind_is_refused_naming_the_plugin():
    class Wrong:
        @hookimpl
        def register_metrics(self, register):
            register("bad", lambda sr, ref, crop_border, captions: sr)  # a function, not a Metric

    pm = get_plugin_manager()
    wrong = Wrong()
    pm.register(wrong, name="wrong-kind")
    try:
        with pytest.raises(TypeError, match="wrong-kind registers metric 'bad' as function.*Metric"):
            registry("metric")
    finally:
        pm.unregister(wrong)


def test_unregistered_plugin_is_gone_and_error_lists_what_exists(throwaway):
    get_plugin_manager().unregister(throwaway)
    with pytest.raises(UnknownStage, match="available: bicubic, pixelshuffle"):
        lookup("upsampler", "nearest")
    get_plugin_manager().register(throwaway, name="throwaway")  # fixture unregisters it


def test_duplicate_stage_name_names_both_plugins(tiny_cfg):
    class Clash:
        @hookimpl
        def register_upsamplers(self, register):
            register("bicubic", readme_plugin().NearestUpsampler)

    pm = get_plugin_manager()
    clash = Clash()
    pm.register(clash, name="clash")
    try:
        with pytest.raises(ValueError, match="registered twice.*upsample.*clash|registered twice.*clash.*upsample"):
            registry("upsampler")
    finally:
        pm.unregister(clash)
