"""Self-ensemble (EDSR's geometric ensemble): each LR upscaled as given and flipped / rotated,
the outputs turned back and averaged.  Scores the plain output and the mean of 2 (identity,
mirror) and of 8 (every flip and rotation) on the LRs of benchmarks/real_inputs.py, PSNR-Y
(crop = 4) and NIQE.

    python3 benchmarks/self_ensemble.py --hr DIR --work /tmp/real-sk --models clipsr-default-real-x4 clipsr-default-x4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from real_inputs import BENCH, first_captions, make_inputs

import clipsr_cli as clipsr

T = Image.Transpose
# (forward, inverse): the mirror first, so the first k give the ensembles of 1, 2 and 8
TURNS = [(None, None), (T.FLIP_LEFT_RIGHT, T.FLIP_LEFT_RIGHT), (T.FLIP_TOP_BOTTOM, T.FLIP_TOP_BOTTOM),
         (T.ROTATE_90, T.ROTATE_270), (T.ROTATE_180, T.ROTATE_180), (T.ROTATE_270, T.ROTATE_90),
         (T.TRANSPOSE, T.TRANSPOSE), (T.TRANSVERSE, T.TRANSVERSE)]
SIZES = (1, 2, 8)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["clipsr-default-real-x4"])
    p.add_argument("--hr", type=Path, default=BENCH)
    p.add_argument("--work", type=Path, default=Path("/tmp/clipsr-real-inputs"))
    p.add_argument("--levels", nargs="+", default=["medium", "clean"])
    args = p.parse_args()
    captions = first_captions(args.hr)
    inputs = make_inputs(args.work, args.hr)
    print("| level | model | ensemble of | PSNR-Y | NIQE |\n|---|---|---|---|---|")
    for level in args.levels:
        for name in args.models:
            model = clipsr.load_model(name, device="cpu", precision="fp32")
            scores = {k: [] for k in SIZES}
            for image, hr, lr_path in inputs[level]:
                lr = Image.open(lr_path).convert("RGB")
                caption = captions.get(image, "")
                outs = []
                for turn, back in TURNS:
                    sr = model.upscale(lr if turn is None else lr.transpose(turn), caption)
                    outs.append(np.asarray(sr if back is None else sr.transpose(back), np.float64))
                for k in SIZES:
                    sr = Image.fromarray(np.clip(np.mean(outs[:k], axis=0), 0, 255).round().astype(np.uint8))
                    scores[k].append(clipsr.score(sr, hr, metrics=["psnr"], crop_border=4)
                                     | clipsr.score(sr, metrics=["niqe"], crop_border=4))
            for k, rows in scores.items():
                print(f"| {level} | {Path(name).stem} | {k} | {np.mean([r['psnr'] for r in rows]):.2f} | "
                      f"{np.mean([r['niqe'] for r in rows]):.2f} |", flush=True)


if __name__ == "__main__":
    main()
