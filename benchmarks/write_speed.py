"""CPU time of writing one upscale output (core-us, every thread, median of
alternated rounds): a 256x256 RGB PNG encoded by clipsr's writer and written
atomically (temporary file, rename), as `images.write_image` does; with
--against COMMIT, side by side with that commit's `png.py` and `files.py`
(loaded as modules of their own, run alternately in the same process), and
the paired median ratio.

    python3 benchmarks/write_speed.py [--against 2c41e82] [--rounds 9]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_speed import compared, module_at  # noqa: E402

TEXT = {"Software": "clipsr"}


def outputs(n: int = 8) -> list[np.ndarray]:
    """Smooth 256x256 images (a tiny x4 output's size), as an upscaler writes them."""
    rng = np.random.default_rng(0)
    return [np.ascontiguousarray((rng.random((64, 64, 3)) * 255).astype(np.uint8).repeat(4, 0).repeat(4, 1))
            for _ in range(n)]


def core_us(files, png, folder: Path, arrays: list[np.ndarray], n: int = 300) -> float:
    start = time.process_time()
    for i in range(n):
        arr = arrays[i % len(arrays)]
        files.atomic_write(folder / f"o{i % 50}.png", lambda tmp: png.write_png(tmp, arr, text=TEXT))
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--against", metavar="COMMIT", help="compare with this commit's png.py and files.py")
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args()
    from clipsr_cli.io import files, png

    arrays = outputs()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        versions = {"now": (files, png)}
        if args.against:
            versions[args.against] = (module_at(args.against, tmp, "files"), module_at(args.against, tmp, "png"))
        times: dict[str, list[float]] = {v: [] for v in versions}
        for r in range(args.rounds):
            order = list(versions.items()) if r % 2 else list(reversed(versions.items()))
            for version, (f, w) in order:
                times[version].append(core_us(f, w, tmp / f"out-{version}-{r}", arrays))
        print(f"256x256 RGB PNG, written atomically: core-us per output: {compared(times, args.against, 0)}")


if __name__ == "__main__":
    main()
