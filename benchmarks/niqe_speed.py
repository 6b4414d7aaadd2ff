"""NIQE speed: clipsr's batched torch NIQE against a per-block numpy loop with
the structure of BasicSR's `niqe` (scipy.ndimage convolve, one block at a time),
on the same 512x512 image, in one run.  Also checks that both agree.

    CLIPSR_WEIGHTS_DIR=../shared/weights python3 benchmarks/niqe_speed.py [--basicsr SRC]
(needs scipy, used only here).  With --basicsr, BasicSR's own `calculate_niqe`
runs too, from an unpacked source tree (`pip download --no-deps basicsr`, then
untar): only its NIQE modules are loaded, from a throw-away package, so none of
BasicSR's other dependencies are needed (a stub stands in for cv2, which the
Y-channel path does not use).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import convolve
from scipy.special import gamma

from clipsr_cli.io.images import load_image
from stages.metrics.fullref import to_y
from stages.metrics.niqe import imresize_half, niqe, pristine_params

SHARED = Path(__file__).resolve().parents[2] / "shared"


def aggd_loop(block):
    block = block.flatten()
    gam = np.arange(0.2, 10.001, 0.001)
    r_gam = gamma(2 / gam) ** 2 / (gamma(1 / gam) * gamma(3 / gam))
    left = np.sqrt(np.mean(block[block < 0] ** 2))
    right = np.sqrt(np.mean(block[block > 0] ** 2))
    g = left / right
    rhat = np.mean(np.abs(block)) ** 2 / np.mean(block**2)
    rn = rhat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    alpha = gam[np.argmin((r_gam - rn) ** 2)]
    k = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    return alpha, left * k, right * k


def features_loop(block):
    a, bl, br = aggd_loop(block)
    feat = [a, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a, bl, br = aggd_loop(block * np.roll(block, shift, axis=(0, 1)))
        feat += [a, (br - bl) * gamma(2 / a) / gamma(1 / a), bl, br]
    return feat


def niqe_loop(y, mu_p, cov_p, window, bs=96):
    h, w = y.shape
    nh, nw = h // bs, w // bs
    img = y[: nh * bs, : nw * bs]
    dist = []
    for scale in (1, 2):
        mu = convolve(img, window, mode="nearest")
        sigma = np.sqrt(np.abs(convolve(img * img, window, mode="nearest") - mu * mu))
        norm = (img - mu) / (sigma + 1)
        b = bs // scale
        dist.append(np.array([features_loop(norm[i * b:(i + 1) * b, j * b:(j + 1) * b])
                              for j in range(nw) for i in range(nh)]))
        if scale == 1:
            img = imresize_half(torch.from_numpy(img / 255.0)).numpy() * 255.0
    d = np.concatenate(dist, axis=1)
    mu_d = np.nanmean(d, axis=0)
    cov_d = np.cov(d[~np.isnan(d).any(axis=1)], rowvar=False)
    diff = mu_p - mu_d
    return float(np.sqrt(diff @ np.linalg.pinv((cov_p + cov_d) / 2) @ diff.T))


def basicsr_niqe(src: Path, work: Path):
    """BasicSR's calculate_niqe, imported from the files of its source tree."""
    pkg = work / "basicsr"
    for rel in ("metrics/niqe.py", "metrics/metric_util.py", "metrics/niqe_pris_params.npz",
                "utils/matlab_functions.py", "utils/color_util.py", "utils/registry.py"):
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "basicsr" / rel, pkg / rel)
    (pkg / "__init__.py").write_text("")
    (pkg / "metrics" / "__init__.py").write_text("")
    (pkg / "utils" / "__init__.py").write_text("from .color_util import bgr2ycbcr  # noqa: F401\n")
    try:
        import cv2  # noqa: F401
    except ImportError:
        (work / "cv2.py").write_text("COLOR_BGR2GRAY = 6\n")  # only the grayscale path calls cv2
    sys.path.insert(0, str(work))
    from basicsr.metrics.niqe import calculate_niqe

    return calculate_niqe


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--basicsr", type=Path, help="Unpacked BasicSR source tree (holds basicsr/metrics/niqe.py).")
    args = ap.parse_args()
    rgb = load_image(SHARED / "data" / "sr-bench" / "Set14" / "baboon.png").rgb
    img = torch.nn.functional.pad(rgb[None], (0, 12, 0, 32), mode="reflect")  # 512x512
    mu_p, cov_p, window = (t.numpy() for t in pristine_params())
    y = to_y(img)[0, 0].round().numpy()
    niqe(img)  # warm-up
    candidates = [("clipsr (batched torch)", lambda: float(niqe(img)[0])),
                  ("per-block numpy loop", lambda: niqe_loop(y, mu_p[0], cov_p, window))]
    if args.basicsr:
        calculate_niqe = basicsr_niqe(args.basicsr, Path(tempfile.mkdtemp()))
        bgr = (img[0].permute(1, 2, 0).numpy()[..., ::-1] * 255).round().astype(np.float64)
        candidates.append(("BasicSR calculate_niqe", lambda: float(calculate_niqe(bgr, 0))))
    rows = []
    for name, fn in candidates:
        best, value = math.inf, None
        for _ in range(3):
            t = time.perf_counter()
            value = fn()
            best = min(best, time.perf_counter() - t)
        rows.append((name, value, best))
    print(f"torch threads: {torch.get_num_threads()}, image 512x512")
    print("| implementation | NIQE | s / image |")
    print("|---|---|---|")
    for name, value, t in rows:
        print(f"| {name} | {value:.5f} | {t:.3f} |")
    for name, _, t in rows[1:]:
        print(f"clipsr is {t / rows[0][2]:.1f}x faster than {name}")


if __name__ == "__main__":
    main()
