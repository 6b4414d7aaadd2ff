import pytest
import torch
from torch import nn

from clipsr_cli.plugins.hookspecs import hookimpl
from clipsr_cli.model.generator import Generator
from clipsr_cli.plugins.registry import UnknownStage, get_plugin_manager, lookup, registry


class NearestUpsampler(nn.Module):
    uses_features = False

    def __init__(self, cfg, scale, in_channels):
        super().__init__()
        self.scale = scale

    def forward(self, features, lr):
        return torch.nn.functional.interpolate(lr, scale_factor=self.scale, mode="nearest")


class ThrowawayPlugin:
    @hookimpl
    def register_upsamplers(self, register):
        register("nearest-test", NearestUpsampler)


@pytest.fixture
def throwaway():
    pm = get_plugin_manager()
    plugin = ThrowawayPlugin()
    pm.register(plugin, name="throwaway")
    yield plugin
    pm.unregister(plugin)


def test_builtins_come_from_the_entry_point_group():
    entries = registry("upsampler")
    assert entries["pixelshuffle"].source.startswith("clipsr ")
    assert set(registry("preset")) >= {"paper", "tiny"}


def test_throwaway_plugin_stage_is_used(throwaway, tiny_cfg, tiny_clip):
    import dataclasses

    cfg = dataclasses.replace(tiny_cfg, stages=dataclasses.replace(tiny_cfg.stages, upsampler="nearest-test"))
    gen = Generator(cfg, tiny_clip, 4)
    lr = torch.rand(1, 3, 5, 7)
    out = gen(lr, gen.encode_text(["x"]))
    assert torch.equal(out, lr.repeat_interleave(4, -1).repeat_interleave(4, -2))
    assert registry("upsampler")["nearest-test"].plugin == "throwaway"


def test_unregistered_plugin_is_gone_and_error_lists_what_exists(throwaway):
    get_plugin_manager().unregister(throwaway)
    with pytest.raises(UnknownStage, match="available: bicubic, pixelshuffle"):
        lookup("upsampler", "nearest-test")
    get_plugin_manager().register(throwaway, name="throwaway")  # fixture unregisters it


def test_duplicate_stage_name_names_both_plugins(tiny_cfg):
    class Clash:
        @hookimpl
        def register_upsamplers(self, register):
            register("bicubic", NearestUpsampler)

    pm = get_plugin_manager()
    clash = Clash()
    pm.register(clash, name="clash")
    try:
        with pytest.raises(ValueError, match="registered twice.*upsample.*clash|registered twice.*clash.*upsample"):
            registry("upsampler")
    finally:
        pm.unregister(clash)
