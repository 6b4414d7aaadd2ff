"""clipsr against the paper and GALIP (its discriminator and losses) and
against open_clip, not against its own helpers: hand-computed values, the
reference code's prompt placement, open_clip's own forward passes."""

import dataclasses
import math
import types
from pathlib import Path

import pytest
import torch

from clipsr_cli.model.checkpoint import checkpoint_config, read_metadata
from clipsr_cli.model.clip import PromptedViT, clip_preprocess, preprocess_cfg, vit_tokens
from clipsr_cli.model.config import ConfigError, load_preset
from clipsr_cli.model.discriminator import Discriminator
from clipsr_cli.model.generator import Generator
from clipsr_cli.train.config import TrainConfig
from clipsr_cli.train.distributed import Dist
from clipsr_cli.train.experiment import Experiment
from clipsr_cli.train.losses import g_adversarial
from clipsr_cli.train.trainer import Trainer

BUNDLED = Path(__file__).resolve().parents[1] / "weights"


# --- the generator's adversarial term (paper Eq. 9, GALIP) -----------------------------------
def test_generator_adversarial_term_equals_a_hand_computed_value():
    logits = torch.tensor([1.0, -0.5])
    image = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    text = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    # -mean(D) - alpha * mean(cos) = -0.25 - 4 * (1/sqrt(2) - 1) / 2
    want = -0.25 - 4.0 * (1 / math.sqrt(2) - 1.0) / 2
    assert g_adversarial(logits, image, text, alpha=4.0).item() == pytest.approx(want, abs=1e-6)


def test_the_paper_weights_alpha_4_and_lambda_0_01_reach_the_generator_loss(tmp_path, monkeypatch):
    defaults = TrainConfig()
    assert (defaults.clip_alpha, defaults.adversarial_weight, defaults.l1_weight) == (4.0, 0.01, 1.0)
    cfg = dataclasses.replace(defaults, preset="tiny", perceptual_weight=0.0, exp_dir=str(tmp_path / "e"))
    trainer = Trainer(cfg, torch.device("cpu"), Dist(), Experiment(tmp_path / "e"))
    logits = torch.tensor([1.0, -0.5])
    image, text = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    # D's outputs fixed, so the loss is checked against numbers worked out by hand
    monkeypatch.setattr(trainer, "disc", types.SimpleNamespace(features=lambda sr: (None, image),
                                                               logit=lambda maps, sentence: logits))
    hr, sr = torch.zeros(2, 3, 8, 8), torch.full((2, 3, 8, 8), 0.25)
    out = trainer.g_losses(hr, sr, text)
    adv = -0.25 - 4.0 * (1 / math.sqrt(2) - 1.0) / 2
    assert out["adv"].item() == pytest.approx(adv, abs=1e-6)
    assert out["loss_g"].item() == pytest.approx(0.25 + 0.01 * adv, abs=1e-6)


def test_the_mismatched_caption_is_never_the_matching_one_even_at_batch_size_1(tmp_path):
    cfg = dataclasses.replace(TrainConfig(), preset="tiny", perceptual_weight=0.0, exp_dir=str(tmp_path / "e"))
    trainer = Trainer(cfg, torch.device("cpu"), Dist(), Experiment(tmp_path / "e"))
    s2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.equal(trainer.mismatched(s2), s2.flip(0))  # GALIP: the batch shifted by one
    one = torch.tensor([[1.0, 0.0]])
    assert trainer.mismatched(one) is None  # no other caption yet: the term is left out, not faked
    hr, sr = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    first = trainer.tower(trainer.tower.tokenize(["a red bird"]))[0]
    trainer.d_losses(hr, sr, first)
    trainer.previous_sentence = first  # what train_step keeps of each batch
    second = trainer.tower(trainer.tower.tokenize(["a blue car"]))[0]
    mis = trainer.mismatched(second)
    assert mis is not None and not torch.equal(mis, second) and torch.equal(mis, first)


# --- where the deep prompts go -----------------------------------------------------------------
def _tokens_seen_by_each_block(clip, prompts_before):
    seen = []
    # each block's first layer norm sees the block's whole input, whichever kernel runs the block
    hooks = [b.ln_1.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
             for b in clip.visual.transformer.resblocks]
    try:
        vit = PromptedViT(clip, prompts_before)
        n = 4
        vit(torch.randn(1, n, clip.visual.conv1.out_channels), (2, 2), torch.randn(1, len(prompts_before), 64))
    finally:
        for h in hooks:
            h.remove()
    return [s - (n + 1) for s in seen]  # extra tokens beyond class + patches


def test_the_paper_preset_prompts_blocks_1_to_8_as_the_reference_code():
    paper = load_preset("paper").generator
    assert paper.prompt_tokens == 8 and paper.prompted_blocks == (1, 2, 3, 4, 5, 6, 7, 8)  # block 0 gets none


def test_each_prompt_enters_exactly_the_block_the_preset_names(tiny_clip):
    assert _tokens_seen_by_each_block(tiny_clip, (1, 2, 3)) == [0, 1, 1, 1]
    assert _tokens_seen_by_each_block(tiny_clip, (0, 2)) == [1, 0, 1, 0]


def test_bundled_models_keep_the_blocks_they_were_trained_with():
    for name in ("clipsr-default-x4", "clipsr-default-x8", "clipsr-demo-x8"):
        cfg, _ = checkpoint_config(read_metadata(BUNDLED / f"{name}.safetensors"))
        assert cfg.generator.prompted_blocks == (0, 1, 2), name
    for preset in ("small", "demo", "tiny"):
        assert load_preset(preset).generator.prompted_blocks == (0, 1, 2)


def test_prompt_blocks_must_match_the_prompt_count(tmp_path):
    text = (Path(__file__).resolve().parents[1] / "stages/presets/paper.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("prompt_blocks = [1, 2, 3, 4, 5, 6, 7, 8]", "prompt_blocks = [1, 2, 3]"))
    with pytest.raises(ConfigError, match="prompt_blocks"):
        load_preset(str(bad))


# --- the frozen CLIP, as open_clip runs it ---------------------------------------------------------
def test_the_vit_pass_without_prompts_is_open_clips_encode_image(tiny_clip):
    img = torch.rand(2, 3, 64, 64)
    v = tiny_clip.visual
    x = v.conv1(img)
    tokens, _ = vit_tokens(v, x.flatten(2).transpose(1, 2), tuple(x.shape[-2:]))
    ours = v.ln_post(tokens[:, 0]) @ v.proj
    assert torch.allclose(ours, tiny_clip.encode_image(img), atol=1e-5)
    # and the patch tokens PromptedViT hands back are open_clip's own
    v.output_tokens = True
    try:
        _, theirs = v(img)
    finally:
        v.output_tokens = False
    patches = PromptedViT(tiny_clip, ())(x.flatten(2).transpose(1, 2), tuple(x.shape[-2:]), None)
    assert torch.allclose(v.ln_post(patches), theirs, atol=1e-5)


def test_the_discriminators_image_embedding_is_encode_image_of_clips_input(tiny_cfg, tiny_clip):
    img = torch.rand(2, 3, 48, 80)
    _, embedding = Discriminator(tiny_cfg, tiny_clip).features(img)
    want = tiny_clip.encode_image(clip_preprocess(img, preprocess_cfg(tiny_clip)))
    assert torch.allclose(embedding, want, atol=1e-5)


def test_the_generator_without_the_clip_vit_builds_no_prompted_vit(tiny_cfg, tiny_clip):
    no_vit = dataclasses.replace(tiny_cfg, stages=dataclasses.replace(tiny_cfg.stages, clip_vit=False))
    gen = Generator(no_vit, tiny_clip, 4)
    assert gen.refiner.vit is None
    assert not any(isinstance(m, PromptedViT) for m in gen.modules())
