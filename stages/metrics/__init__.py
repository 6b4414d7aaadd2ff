"""The built-in metrics, registered with one call signature each
(`clipsr_cli.plugins.protocols.Metric`): fn(sr, ref, crop_border, captions)."""

from __future__ import annotations

import torch

from clipsr_cli.plugins.conventions import Y_DEFINITION
from clipsr_cli.plugins.hookspecs import hookimpl
from clipsr_cli.plugins.protocols import Metric


def _psnr(sr, ref, crop_border, captions):
    from stages.metrics.fullref import psnr

    return psnr(sr, ref, crop_border)


def _ssim(sr, ref, crop_border, captions):
    from stages.metrics.fullref import ssim

    return ssim(sr, ref, crop_border)


def _niqe(sr, ref, crop_border, captions):
    from stages.metrics.niqe import niqe  # its pristine parameters are resolved on first use only

    return niqe(sr, crop_border)


def _lpips(sr, ref, crop_border, captions):
    from stages.metrics.lpips import lpips

    return lpips(sr, ref, crop_border)


def _fid_features(sr, ref, crop_border, captions):
    """Per image: the Inception pool3 features of the SR image and of its reference, (B, 2, D)."""
    from stages.metrics.fid import fid_features

    return torch.stack([fid_features(sr), fid_features(ref)], dim=1)


def _fid(stats: list[torch.Tensor]) -> float:
    from stages.metrics.fid import fid

    return fid([s[:, 0] for s in stats], [s[:, 1] for s in stats])


def _clip_score(sr, ref, crop_border, captions, preset: str = "paper"):
    from stages.metrics.clip_score import clip_score

    return clip_score(sr, captions, preset)


@hookimpl
def register_metrics(register):
    register("psnr", Metric("psnr", _psnr, False, "[0, inf) dB", f"PSNR on {Y_DEFINITION}"))
    register("ssim", Metric("ssim", _ssim, False, "[-1, 1]", f"SSIM (11x11 Gaussian, sigma 1.5) on {Y_DEFINITION}"))
    register("niqe", Metric("niqe", _niqe, True, "[0, inf)", "NIQE (MATLAB-compatible, 96x96 blocks) on Y",
                            needs_reference=False))
    register("lpips", Metric("lpips", _lpips, True, "[0, 1]", "LPIPS v0.1, AlexNet (learned perceptual distance) on RGB"))
    register("fid", Metric("fid", _fid_features, True, "[0, inf)",
                           "FID (pytorch-fid's TF Inception, pool3) of the SR set against the reference set; "
                           "one value per folder", reduce=_fid))
    register("clip_score", Metric("clip_score", _clip_score, False, "[-1, 1]",
                                  "cosine of CLIP image and caption embeddings (needs --captions; "
                                  "the CLIP of --clip-preset)", needs_reference=False, needs_captions=True,
                                  options=("preset",)))
