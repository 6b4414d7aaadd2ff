"""Writes the bundled clipsr-default-real-x4: ESRGAN's network interpolation,
(1 - s) * clipsr-default-x4 + s * clipsr-default-real-denoise-x4 weight by weight
(s = 0.5, Real-ESRGAN's default denoise strength), stored fp16 without its
random CLIP (rebuilt from its seed when loaded), as `clipsr export --half
--no-clip` stores a model.  `clipsr upscale --denoise-strength s` computes the
same blend at run time for any s.

    python3 benchmarks/real_blend.py [--strength 0.5] [-o weights/clipsr-default-real-x4.safetensors]
    python3 benchmarks/real_blend.py --denoise runs/x/checkpoints/step_00001000.safetensors -o /tmp/blend.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clipsr_cli.model.bundled import DEFAULT_MODELS, DENOISE_MODELS, interpolated, model_file
from clipsr_cli.model.checkpoint import load_generator, save_generator
from clipsr_cli.model.weights import resolve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--strength", type=float, default=0.5)
    p.add_argument("-o", "--output", type=Path, default=Path("weights/clipsr-default-real-x4.safetensors"))
    p.add_argument("--denoise", default=DENOISE_MODELS[4], help="the model blended with the clean one: a name or a file")
    args = p.parse_args()
    clean, denoise = DEFAULT_MODELS[4], args.denoise
    gen = interpolated(load_generator(resolve(clean)), load_generator(model_file(Path(denoise))), args.strength)
    save_generator(args.output, gen, {"blend": f"{1 - args.strength:g} {clean} + {args.strength:g} {denoise}"},
                   half=True, with_clip=False)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
