import dataclasses

import pytest
import torch
import torch.nn.functional as F

from clipsr_cli.model.config import ConfigError, ModelConfig
from clipsr_cli.model.discriminator import Discriminator
from clipsr_cli.model.generator import Generator
from stages.model.tifblock import TextReweight


@pytest.mark.parametrize("scale", [2, 4, 8, 16])
@pytest.mark.parametrize("size", [(16, 16), (13, 29), (37, 8)])
def test_output_is_exactly_scale_times_input(tiny_cfg, tiny_clip, scale, size):
    gen = Generator(tiny_cfg, tiny_clip, scale).eval()
    cond = gen.encode_text(["a red bird on a branch"])
    with torch.no_grad():
        sr = gen(torch.rand(1, 3, *size), cond)
    assert sr.shape == (1, 3, size[0] * scale, size[1] * scale)
    assert torch.isfinite(sr).all()


def test_batch_of_different_captions(tiny_cfg, tiny_clip):
    gen = Generator(tiny_cfg, tiny_clip, 4)
    cond = gen.encode_text(["a", "b", "c"])
    assert gen(torch.rand(3, 3, 20, 24), cond).shape == (3, 3, 80, 96)


def test_gradients_reach_trainable_parts_and_never_frozen_clip(tiny_cfg, tiny_clip):
    gen = Generator(tiny_cfg, tiny_clip, 4)
    # move every affine away from identity so gradients flow through the text MLPs too
    with torch.no_grad():
        for name, p in gen.named_parameters():
            if name.endswith("gamma.2.weight") or name.endswith("beta.2.weight"):
                p.normal_(0, 0.01)
    lr = torch.rand(2, 3, 16, 16)
    loss = gen(lr, gen.encode_text(["a cat", "a dog"])).square().mean()
    loss.backward()
    clip_params = {id(p) for p in tiny_clip.parameters()}
    assert all(not p.requires_grad and p.grad is None for p in tiny_clip.parameters())
    trainable = [(n, p) for n, p in gen.named_parameters() if id(p) not in clip_params]
    assert trainable and all(p.requires_grad for _, p in trainable)
    no_grad = [n for n, p in trainable if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []


def test_different_captions_give_different_outputs(tiny_cfg, tiny_clip):
    gen = Generator(tiny_cfg, tiny_clip, 4).eval()
    lr = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        a = gen(lr, gen.encode_text(["a yellow bird with black wings"]))
        b = gen(lr, gen.encode_text(["a red car parked on a street"]))
        a2 = gen(lr, gen.encode_text(["a yellow bird with black wings"]))
    assert torch.equal(a, a2)
    # the caption must move the network's part of the output (what it adds to
    # bicubic) measurably, not by rounding noise
    correction = (a - F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)).abs().mean()
    assert (a - b).abs().mean() > 1e-2 * correction


def test_output_depends_on_the_clip_vit_stage(tiny_cfg, tiny_clip):
    gen = Generator(tiny_cfg, tiny_clip, 4).eval()
    lr = torch.rand(1, 3, 16, 16)
    cond = gen.encode_text(["a bird"])
    with torch.no_grad():
        before = gen(lr, cond)
        block = tiny_clip.visual.transformer.resblocks[-1]
        saved = block.mlp.c_proj.weight.clone()
        block.mlp.c_proj.weight.mul_(3.0)  # perturb the last frozen ViT block only
        after = gen(lr, cond)
        block.mlp.c_proj.weight.copy_(saved)
    assert (before - after).abs().max() > 1e-4
    # and the ablation without CLIP-ViT really skips it
    no_vit = dataclasses.replace(tiny_cfg, stages=dataclasses.replace(tiny_cfg.stages, clip_vit=False))
    assert Generator(no_vit, tiny_clip, 4).refiner.vit is None


def test_softmax_reweighting_is_not_uniform(tiny_clip, tiny_cfg):
    # DESIGN.md: a plain softmax over a small-magnitude embedding is ~uniform; the
    # TIFBlock's re-weighting must single out channels of a real caption's embedding
    gen = Generator(tiny_cfg, tiny_clip, 4)
    sentence = gen.text.encode(["a small bird with a red head"]).sentence
    weights = TextReweight(sentence.shape[-1])(sentence)
    assert weights.std() > 0.5
    assert torch.allclose(weights.mean(), torch.tensor(1.0), atol=1e-4)


def test_tifblock_starts_as_identity_modulation(tiny_cfg, tiny_clip):
    gen = Generator(tiny_cfg, tiny_clip, 4)
    affine = gen.refiner.blocks[0].fuse1
    x = torch.randn(2, affine.gamma[-1].out_features, 4, 4)
    assert torch.allclose(affine(x, torch.randn(2, affine.gamma[0].in_features)), x)


def test_discriminator_logit_and_shared_clip_features(tiny_cfg, tiny_clip):
    d = Discriminator(tiny_cfg, tiny_clip)
    img = torch.rand(2, 3, 40, 56, requires_grad=True)
    maps, emb = d.features(img)
    assert emb.shape == (2, tiny_clip.text_projection.shape[1])
    logit = d.logit(maps, torch.randn(2, emb.shape[1]))
    assert logit.shape == (2,)
    logit.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0


def test_unknown_preset_key_is_refused():
    from clipsr_cli.model.config import ConfigError

    with pytest.raises(ConfigError, match="unknown key"):
        ModelConfig.from_dict({"generator": {"base_channel": 3}})


def test_text_tower_skips_the_padding_with_the_same_results(tiny_cfg, tiny_clip):
    from clipsr_cli.model.clip import TextTower

    tower = TextTower(tiny_clip).eval()
    captions = ["a bird", "a small yellow bird with black wings sitting on a thin branch"]
    tokens = tower.tokenizer(captions)  # all 77 positions, as CLIP runs them
    sentence, feats, pad = tower(tower.tokenize(captions))
    eot = tokens.argmax(dim=-1)
    assert feats.shape[1] == int(eot.max()) + 1 < tokens.shape[1]  # the padding was cut
    with torch.no_grad():  # reference
        c = tiny_clip
        full = c.ln_final(c.transformer(c.token_embedding(tokens) + c.positional_embedding, attn_mask=c.attn_mask))
    n = feats.shape[1]
    assert torch.allclose(feats, full[:, :n], atol=1e-5)
    assert torch.allclose(sentence, full[torch.arange(2), eot] @ c.text_projection, atol=1e-5)
    assert pad.tolist() == (torch.arange(n)[None] > eot[:, None]).tolist()
    assert not pad[1].any() and pad[0].sum() == n - int(eot[0]) - 1


def test_upsampler_channels_narrows_the_output_resolution_steps_only(tiny_cfg, tiny_clip, tmp_path):
    from clipsr_cli.model.checkpoint import load_generator, save_generator

    g = dataclasses.replace(tiny_cfg.generator, base_channels=32, upsampler_channels=8, subpixel_rgb=False)
    cfg = dataclasses.replace(tiny_cfg, generator=g)
    gen = Generator(cfg, tiny_clip, 8)
    assert gen.refiner.out_channels == 32
    convs = list(gen.upsampler.body.values())
    assert [(c.in_channels, c.out_channels) for c in convs] == [(32, 32), (8, 32), (8, 32)]
    assert gen.upsampler.to_rgb.in_channels == 8 and all(f.gamma[-1].out_features == 8 for f in gen.upsampler.fuse)
    lr = torch.rand(2, 3, 12, 10)
    with torch.no_grad():
        sr = gen(lr, gen.encode_text(["a", "b"]))
    assert sr.shape == (2, 3, 96, 80)
    save_generator(tmp_path / "g.safetensors", gen)  # the width travels in the checkpoint's config
    again = load_generator(tmp_path / "g.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(again(lr, again.encode_text(["a", "b"])), sr)
    paper_width = dataclasses.replace(g, upsampler_channels=0)  # 0: the refiner's width, as earlier checkpoints have it
    default = Generator(dataclasses.replace(tiny_cfg, generator=paper_width), tiny_clip, 8)
    assert all(c.out_channels == 4 * default.refiner.out_channels for c in default.upsampler.body.values())


def test_upsampler_convs_adds_caption_modulated_convs_at_each_output_step(tiny_cfg, tiny_clip, tmp_path):
    from clipsr_cli.model.checkpoint import load_generator, save_generator

    cfg = dataclasses.replace(tiny_cfg, generator=dataclasses.replace(tiny_cfg.generator, upsampler_convs=3,
                                                                      subpixel_rgb=False))
    torch.manual_seed(0)
    gen = Generator(cfg, tiny_clip, 8)
    up = gen.upsampler
    assert [len(step) for step in up.extra] == [2, 2, 2] and [len(step) for step in up.extra_fuse] == [2, 2, 2]
    lr = torch.rand(2, 3, 12, 10)
    sr = gen(lr, gen.encode_text(["a red bird", "green stripes"]))
    assert sr.shape == (2, 3, 96, 80)
    sr.square().mean().backward()  # every further conv and its caption affine take part
    assert all(float(p.grad.abs().sum()) > 0 for step in up.extra for conv in step for p in conv.parameters())
    assert all(float(a.gamma[-1].weight.grad.abs().sum()) > 0 for step in up.extra_fuse for a in step)
    sr = sr.detach()
    save_generator(tmp_path / "g.safetensors", gen)  # the key travels in the checkpoint's config
    again = load_generator(tmp_path / "g.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(again(lr, again.encode_text(["a red bird", "green stripes"])), sr)
    paper = Generator(tiny_cfg, tiny_clip, 8)  # 1, the paper's: no further modules, earlier files load as before
    assert not [k for k in paper.own_state_dict() if k.startswith("upsampler.extra")]
    with pytest.raises(ConfigError, match="upsampler_convs must be >= 1"):
        dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator, upsampler_convs=0)).validate()


def test_subpixel_rgb_draws_the_output_from_the_last_step_s_subpixels(tiny_cfg, tiny_clip, tmp_path):
    """`subpixel_rgb`: the last x2 step's conv gives RGB sub-pixels, so no feature map
    is made at the output's size; the image still starts at bicubic and trains."""
    from clipsr_cli.model.checkpoint import load_generator, save_generator
    from clipsr_cli.model.kernels import bicubic_upsample

    cfg = dataclasses.replace(tiny_cfg, generator=dataclasses.replace(tiny_cfg.generator, subpixel_rgb=True,
                                                                      upsampler_convs=2))
    torch.manual_seed(0)
    gen = Generator(cfg, tiny_clip, 8)
    up = gen.upsampler
    assert len(up.body) == 2 and len(up.extra) == 2 and len(up.fuse) == 2  # x2 twice, then the RGB step
    assert (up.to_rgb.in_channels, up.to_rgb.out_channels) == (up.body["0"].out_channels // 4, 12)
    lr = torch.rand(2, 3, 12, 10)
    sr = gen(lr, gen.encode_text(["a red bird", "green stripes"]))
    assert sr.shape == (2, 3, 96, 80)
    assert float((sr - bicubic_upsample(lr, 8)).abs().mean()) < 0.05  # a small correction at the start
    sr.square().mean().backward()
    assert float(up.body["0"].weight.grad.abs().sum()) > 0 and float(up.to_rgb.weight.grad.abs().sum()) > 0
    sr = sr.detach()
    save_generator(tmp_path / "g.safetensors", gen)  # the key travels in the checkpoint's config
    again = load_generator(tmp_path / "g.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(again(lr, again.encode_text(["a red bird", "green stripes"])), sr)
    x2 = Generator(cfg, tiny_clip, 2)  # one step: the RGB step alone, on the refiner's features
    assert len(x2.upsampler.body) == 0 and x2.upsampler.to_rgb.in_channels == x2.refiner.out_channels
    with torch.no_grad():
        assert x2(lr, x2.encode_text(["a", "b"])).shape == (2, 3, 24, 20)


def test_upsampler_in_chunks_gives_what_the_whole_batch_gives(tiny_cfg, tiny_clip, monkeypatch):
    """On the CPU the upsampler takes a large batch a few images at a time (its
    maps at the output's size were the forward pass's peak memory): the same
    output, each image with its own caption."""
    import stages.model.upsample as upsample

    gen = Generator(tiny_cfg, tiny_clip, 4).eval().to(memory_format=torch.channels_last)
    lr = torch.rand(5, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    widest = gen.upsampler.widest_map(16, 16) * 4  # bytes of one image's widest map
    assert widest == 32 * 32 * 32 * 4  # the tiny preset's: 32 channels at half the output's size
    with torch.no_grad():
        cond = gen.encode_text(["a red bird", "a blue car", "stripes", "", "a cat"])
        monkeypatch.setattr(upsample, "CPU_CHUNK_BYTES", 1 << 40)
        whole = gen(lr, cond)
        monkeypatch.setattr(upsample, "CPU_CHUNK_BYTES", 2 * widest)
        assert gen.upsampler.chunk(torch.empty(5, 16, 16, 16)) == 2  # chunks of 2, 2 and 1
        chunked = gen(lr, cond)
    assert chunked.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
    assert not torch.equal(chunked[0], chunked[1])  # each image its own caption
