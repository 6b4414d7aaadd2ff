"""Text encoding per caption (CLIP text tower + prompt predictor), paper preset,
random CLIP weights: at CLIP's full 77 positions (as before), on the captions'
own length one at a time, and the new captions of a batch of 8 together (what
`upscale` does).  Alternated, best of --repeats.

    python3 benchmarks/text_speed.py
"""

from __future__ import annotations

import argparse
import time

import torch

CAPTIONS = [  # CUB-style, 9-16 tokens
    "this bird has a yellow belly, black wings and a short pointed beak",
    "a small brown bird with a white throat",
    "the bird is red with black wing bars and a thick orange bill",
    "a grey bird with a long tail sitting on a branch",
    "this small bird has a blue crown and white cheek patches",
    "a black bird with bright red shoulders",
    "a tiny green bird with a long thin curved bill",
    "this bird is white with grey wings and a yellow eye ring",
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    from clipsr_cli.model.clip import build_clip
    from clipsr_cli.model.config import load_preset
    from clipsr_cli.model.generator import Generator
    from stages.model.text import TextFeatures

    cfg = load_preset("paper")
    gen = Generator(cfg, build_clip(cfg), 4).eval()
    text = gen.text

    def full_length(caption: str) -> None:  # open_clip's tokenizer pads to 77
        text(TextFeatures(*text.tower(text.tower.tokenizer([caption]))))

    ways = {
        "77 positions, one at a time": lambda: [full_length(c) for c in CAPTIONS],
        "own length, one at a time": lambda: [gen.encode_text([c]) for c in CAPTIONS],
        "own length, batch of 8": lambda: gen.encode_text(CAPTIONS),
    }
    best = dict.fromkeys(ways, float("inf"))
    with torch.inference_mode():
        for fn in ways.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for name, fn in ways.items():
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], (time.perf_counter() - start) / len(CAPTIONS))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, paper preset\n")
    print("| text encoding | ms / caption | vs 77 positions |\n|---|---|---|")
    base = best["77 positions, one at a time"]
    for name, sec in best.items():
        print(f"| {name} | {1000 * sec:.1f} | {base / sec:.1f}x |")


if __name__ == "__main__":
    main()
