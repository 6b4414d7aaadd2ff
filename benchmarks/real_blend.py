"""Writes the bundled x4 denoising model by ESRGAN's network interpolation, weight by weight:

- clipsr-default-real-denoise-x4 (`--denoise-strength 1`) = (1 - g) * L1 fine-tune + g * GAN stage
  (g = 0.4: the GAN stage lowers NIQE far more per dB of PSNR than the clean model does, and 0.4 of
  it keeps the NIQE under the clean model's on every set of photos measured, BENCHMARKS.md).

Stored fp16 without its random CLIP (rebuilt from its seed when loaded), as `clipsr export --half
--no-clip` stores a model.  The real model (`--real`) is no file: the clean and this model blended
per image at load (`--denoise-strength auto`).  The configs and commands of the two training stages:
benchmarks/configs/default-real-x4.toml (L1) and default-real-gan-x4.toml (GAN).

    python3 benchmarks/real_blend.py --l1 runs/default-real-x4/checkpoints/step_00001000.safetensors \\
        --gan runs/default-real-gan-x4/checkpoints/step_00000500.safetensors
    python3 benchmarks/real_blend.py --denoise FILE --strength 0.5 -o /tmp/half.safetensors   # one fixed
                                                                # strength of FILE, as a file, for experiments
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clipsr_cli.model.bundled import DEFAULT_MODELS, DENOISE_MODELS, interpolated, model_file
from clipsr_cli.model.checkpoint import load_generator, save_generator
from clipsr_cli.model.weights import resolve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--l1", type=Path, help="the L1 fine-tune (a checkpoint or generator file)")
    p.add_argument("--gan", type=Path, help="the GAN stage trained from it")
    p.add_argument("--gan-share", type=float, default=0.4)
    p.add_argument("--scale", type=int, default=4, choices=sorted(DENOISE_MODELS))
    p.add_argument("--denoise", type=Path, help="the denoising model: written from --l1 and --gan when given, "
                                                "else read (default: the bundled one of --scale)")
    p.add_argument("--strength", type=float, default=0.5)
    p.add_argument("-o", "--output", type=Path, help="also write the blend of the clean model and the "
                                                     "denoising one at --strength here")
    args = p.parse_args()
    args.denoise = args.denoise or Path(f"weights/{DENOISE_MODELS[args.scale]}.safetensors")
    if (args.l1 is None) != (args.gan is None):
        p.error("--l1 and --gan go together")
    if args.l1 is not None:
        denoise = interpolated(load_generator(model_file(args.l1)), load_generator(model_file(args.gan)),
                               args.gan_share)
        save_generator(args.denoise, denoise, {"blend": f"{1 - args.gan_share:g} {args.l1} + {args.gan_share:g} "
                                                        f"{args.gan}"}, half=True, with_clip=False)
        print(f"wrote {args.denoise}")
    if args.output is None:
        return
    clean = DEFAULT_MODELS[args.scale]
    gen = interpolated(load_generator(resolve(clean)), load_generator(model_file(args.denoise)), args.strength)
    save_generator(args.output, gen, {"blend": f"{1 - args.strength:g} {clean} + {args.strength:g} "
                                               f"{args.denoise}"}, half=True, with_clip=False)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
