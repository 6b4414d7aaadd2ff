"""CPU time of `images.load_image` per image (core-ms, every thread, median of
alternated rounds) on small PNGs (the tiny preset's x8 and x4 inputs) and on a
1024x800 photo as JPEG and PNG; with --against COMMIT, side by side with that
commit's `clipsr_cli/io/images.py` (read with `git show`, loaded as a second
module, run alternately in the same process), and the paired median ratio.

    python3 benchmarks/decode_speed.py [--against 55ff1e0] [--rounds 9]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def module_at(commit: str, folder: Path, name: str = "images"):
    """clipsr_cli/<name>.py as it was at `commit`, as a module of its own."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:clipsr_cli/{name}.py"],
                            capture_output=True, text=True, check=True).stdout
    path = folder / f"{name}_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"{name}_then", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"{name}_then"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def compared(times: dict[str, list[float]], against: str | None, digits: int) -> str:
    """Each version's median; with `against`, its paired median ratio to "now"."""
    line = ", ".join(f"{v} {statistics.median(t):.{digits}f}" for v, t in times.items())
    if against:
        ratio = statistics.median(a / b for a, b in zip(times[against], times["now"]))
        line += f"; {against} / now, paired median: {ratio:.2f}x"
    return line


def inputs(folder: Path) -> dict[str, list[Path]]:
    rng = np.random.default_rng(0)
    sets = {}
    for side in (32, 64):
        paths = []
        for i in range(100):
            path = folder / f"{side}_{i}.png"
            small = rng.integers(0, 256, (side // 4, side // 4, 3), dtype=np.uint8)
            Image.fromarray(small).resize((side, side), Image.BICUBIC).save(path)
            paths.append(path)
        sets[f"{side}x{side} PNG"] = paths
    with Image.open(REPO / "examples" / "astronaut.png") as im:
        photo = im.convert("RGB").resize((1024, 800), Image.BICUBIC)
    photo.save(folder / "photo.jpg", quality=95)
    photo.save(folder / "photo.png")
    sets["1024x800 JPEG"] = [folder / "photo.jpg"] * 10
    sets["1024x800 PNG"] = [folder / "photo.png"] * 5
    return sets


def core_ms(load, paths: list[Path]) -> float:
    start = time.process_time()
    for path in paths:
        load(path)
    return (time.process_time() - start) / len(paths) * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--against", metavar="COMMIT", help="compare with this commit's images.py")
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args()
    from clipsr_cli.io import images

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        versions = {"now": images}
        if args.against:
            versions[args.against] = module_at(args.against, tmp)
        for name, paths in inputs(tmp).items():
            times: dict[str, list[float]] = {v: [] for v in versions}
            for _ in range(args.rounds):
                for version, module in versions.items():
                    times[version].append(core_ms(module.load_image, paths))
            print(f"{name}: core-ms per image: {compared(times, args.against, 3)}")


if __name__ == "__main__":
    main()
