"""The accelerator paths of upscale and train, on a real CUDA device.

CI and the development machines have no GPU: these tests skip there and run on
a GPU machine (`python3 -m pytest tests/test_cuda.py`; figures in BENCHMARKS.md)."""

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.cli import app
from clipsr_cli.io.captions import Captions
from clipsr_cli.model.generator import Generator
from clipsr_cli.pipeline.devices import pick_device, pick_precision
from clipsr_cli.pipeline.graphs import GraphedForward
from clipsr_cli.pipeline.lanes import Lanes
from clipsr_cli.pipeline.upscale import run
from clipsr_cli.pipeline.upscaler import Upscaler

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device here: the GPU paths are checked on a GPU machine")
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10((a - b).square().mean()))


def smooth(h: int, w: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 6), max(2, w // 6), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255


@pytest.fixture
def gen(tiny_cfg, tiny_clip):
    g = Generator(tiny_cfg, tiny_clip, 4)
    with torch.no_grad():  # a residual that is not negligible, like a trained generator's
        g.upsampler.to_rgb.weight.normal_(0, 0.05)
    return g


def test_auto_picks_cuda_and_half_precision():
    assert pick_device("auto").type == "cuda"
    half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert pick_precision(None, CUDA) == half
    assert pick_precision("fp16", CUDA) == torch.float16  # allowed here, a usage error on the CPU


@pytest.mark.parametrize("dtype, min_psnr", [(torch.float32, 45), (torch.bfloat16, 30), (torch.float16, 35)])
def test_cuda_output_matches_the_cpu(gen, dtype, min_psnr):
    lr = smooth(24, 40)
    ref = Upscaler(copy.deepcopy(gen), CPU).upscale(lr, "a red bird", None)
    up = Upscaler(copy.deepcopy(gen), CUDA, dtype=dtype)
    assert next(up.gen.parameters()).device.type == "cuda"
    out = up.upscale(lr, "a red bird", None)
    assert out.device.type == "cpu" and out.dtype == torch.float32 and out.shape == ref.shape
    assert torch.isfinite(out).all()
    print(f"{dtype}: {psnr(out, ref):.1f} dB against the CPU")
    assert psnr(out, ref) > min_psnr
    if dtype != torch.float32:
        assert not torch.equal(out, ref)  # half precision really ran


@pytest.mark.parametrize("outscale", [2.5, 6.0])
def test_outscale_on_cuda_matches_the_cpu(gen, outscale):
    lr = smooth(24, 40)
    ref = Upscaler(copy.deepcopy(gen), CPU, outscale=outscale).upscale(lr, "a red bird", None)
    up = Upscaler(copy.deepcopy(gen), CUDA, dtype=torch.float32, outscale=outscale)
    for _ in range(3):  # eager, then from a graph: the resize runs after the graph's output
        out = up.upscale(lr, "a red bird", None)
        assert out.shape == ref.shape == (3, int(24 * outscale), int(40 * outscale)) and psnr(out, ref) > 45
    as_uint8 = up.upscale_batch([lr], ["a red bird"], as_uint8=True)[0]
    assert as_uint8.shape == (int(24 * outscale), int(40 * outscale), 3) and as_uint8.dtype == torch.uint8


def test_tiles_bound_device_memory_and_blend_like_the_cpu(gen):
    lr = smooth(256, 256)
    whole_cpu = Upscaler(copy.deepcopy(gen), CPU, tile=64, tile_pad=8).upscale(lr, "a photo", None)
    peaks = {}
    outs = {}
    for tile in (0, 64):
        up = Upscaler(copy.deepcopy(gen), CUDA, tile=tile, tile_pad=8)
        up.conditions(["a photo"])  # the text cache is not part of what a tile costs
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        outs[tile] = up.upscale(lr, "a photo", None)
        peaks[tile] = torch.cuda.max_memory_allocated() - base
    print({k: f"{v / 2**20:.0f} MiB" for k, v in peaks.items()})
    # 16 tiles of (64 + 2 * 8)^2 LR px instead of 256^2: the peak follows the tile
    assert peaks[64] < peaks[0] / 4
    assert psnr(outs[64], whole_cpu) > 45  # the same tiles and blending as on the CPU
    assert psnr(outs[64], outs[0]) > 30  # and the stated tiled-vs-untiled tolerance (test_tiling)


def test_out_of_memory_on_the_device_halves_the_tile_and_goes_on(gen):
    lr = smooth(256, 256)
    warnings = []
    up = Upscaler(copy.deepcopy(gen), CUDA, warn=warnings.append, tile=0, tile_pad=8)
    up.conditions(["a photo"])
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    limit = torch.cuda.memory_allocated() + 96 * 2**20  # a whole 256^2 LR image at x4 needs far more
    torch.cuda.set_per_process_memory_fraction(limit / total)
    try:
        out = up.upscale(lr, "a photo", None)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert warnings and all("out of memory: retrying with --tile" in w for w in warnings)
    assert 16 <= up.tile < 256
    same_tiles = Upscaler(copy.deepcopy(gen), CUDA, tile=up.tile, tile_pad=8).upscale(lr, "a photo", None)
    # the same tiles; under the memory cap cuDNN may pick other (TF32) kernels
    assert psnr(out, same_tiles) > 45


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_replays_give_what_the_eager_pass_gives(gen, dtype):
    graphed = Upscaler(copy.deepcopy(gen), CUDA, dtype=dtype, tile=0)
    eager = Upscaler(copy.deepcopy(gen), CUDA, dtype=dtype, tile=0, cuda_graphs=False)
    assert isinstance(graphed._net, GraphedForward) and eager._net == eager._eager
    sizes = [(24, 32)] * 4 + [(16, 16)] * 3 + [(24, 32)]
    for i, (h, w) in enumerate(sizes):  # new pixels and captions every call: the static inputs are refilled
        lrs = [smooth(h, w, seed=10 * i + k) for k in range(2)]
        captions = [f"a bird number {i}", f"a {'red' if i % 2 else 'blue'} bird"]
        out, ref = graphed.upscale_batch(lrs, captions), eager.upscale_batch(lrs, captions)
        assert torch.equal(out, ref) or psnr(out, ref) > 60, (i, psnr(out, ref))
    assert graphed._net.shapes == 2  # captured at each shape's second batch, kept


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (torchrun's second process)")
def test_graphs_on_a_device_that_is_not_the_current_one(gen):
    other = torch.device("cuda", torch.cuda.device_count() - 1)
    assert torch.cuda.current_device() != other.index
    graphed = Upscaler(copy.deepcopy(gen), other, tile=0)
    eager = Upscaler(copy.deepcopy(gen), other, tile=0, cuda_graphs=False)
    for i in range(3):
        lrs = [smooth(16, 16, seed=i)]
        out, ref = graphed.upscale_batch(lrs, ["a bird"]), eager.upscale_batch(lrs, ["a bird"])
        assert torch.equal(out, ref) or psnr(out, ref) > 60
    assert graphed._net.enabled and graphed._net.shapes == 1


def test_graphs_keep_at_most_max_graphs_and_a_failed_capture_turns_them_off():
    calls = []

    def fn(x, cond):
        calls.append(x.shape)
        return x * cond.w

    @dataclasses.dataclass
    class Cond:
        w: torch.Tensor

    g = GraphedForward(fn, max_graphs=2)
    cond = Cond(torch.full((1, 1, 1, 1), 2.0, device=CUDA))
    for side in (4, 4, 5, 5, 6, 6, 4):
        x = torch.rand(1, 1, side, side, device=CUDA)
        assert torch.equal(g(x, cond), x * 2)
    assert g.shapes == 2  # 4 was evicted for 6, then seen again: captured anew

    warnings = []

    def syncs(x, cond):  # a stage that reads a value back on the host cannot be captured
        return x * float(x.sum())

    g = GraphedForward(syncs, warn=warnings.append)
    x = torch.rand(1, 1, 4, 4, device=CUDA)
    for _ in range(3):
        assert torch.allclose(g(x, cond), x * float(x.sum()))
    assert not g.enabled and len(warnings) == 1 and "CUDA graphs off" in warnings[0]
    assert torch.equal(torch.ones(2, device=CUDA) + 1, torch.full((2,), 2.0, device=CUDA))  # CUDA still works


def _run_folder(gen, folder, out, lanes: Lanes, batch_size: int):
    up = Upscaler(copy.deepcopy(gen), CUDA, tile=0)
    report = run(up, folder, sorted(folder.glob("*.png")), out, Captions(folder, text="a bird"),
                 batch_size=batch_size, lanes=lanes)
    assert not report.failed
    return {p.name: np.asarray(Image.open(p)).astype(int) for p in out.iterdir()}


def test_two_writer_lanes_on_cuda_write_what_one_lane_writes(gen, tmp_path):
    folder = tmp_path / "lr"
    folder.mkdir()
    for i in range(7):
        Image.fromarray((smooth(20, 28, seed=i).permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(
            folder / f"{i}.png")
    one = _run_folder(gen, folder, tmp_path / "one", Lanes(1), batch_size=2)
    two = _run_folder(gen, folder, tmp_path / "two", Lanes(2), batch_size=2)
    assert one.keys() == two.keys() and len(one) == 7
    assert max(int(np.abs(one[k] - two[k]).max()) for k in one) <= 1


def test_cli_upscale_on_cuda_writes_what_the_cpu_writes(tmp_path):
    lr = tmp_path / "lr"
    lr.mkdir()
    rgb = (smooth(16, 20).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    Image.fromarray(rgb).save(lr / "rgb.png")
    Image.fromarray(rgb).convert("L").save(lr / "gray.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(lr / "alpha.png")
    (lr / "broken.png").write_bytes(b"\x89PNG broken")
    outputs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        torch.manual_seed(0)  # the same untrained generator weights for both
        res = CliRunner().invoke(app, ["upscale", str(lr), "-o", str(out), "--preset", "tiny", "--caption", "a bird",
                                       "--device", device, "--precision", "fp32", "--json", str(tmp_path / "r.json")])
        assert res.exit_code == 1, res.output  # the broken file, reported; the others written
        report = json.loads((tmp_path / "r.json").read_text())
        assert len(report["done"]) == 3 and [f["input"] for f in report["failed"]] == [str(lr / "broken.png")]
        outputs[device] = {p.name: np.asarray(Image.open(p)) for p in out.iterdir()}
    assert outputs["cpu"].keys() == outputs["cuda"].keys() == {"rgb.png", "gray.png", "alpha.png"}
    for name, a in outputs["cpu"].items():
        b = outputs["cuda"][name]
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2, name


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_steps_on_cuda(tmp_path, precision):
    from test_train import final_state, tiny_run

    from clipsr_cli.model.checkpoint import load_generator
    from clipsr_cli.train.distributed import Dist
    from clipsr_cli.train.experiment import Experiment
    from clipsr_cli.train.run import fit

    cfg = tiny_run(tmp_path, max_steps=4, precision=precision, device="cuda")
    exp = Experiment(tmp_path / "exp")
    try:
        trainer = fit(cfg, CUDA, Dist(), exp)
    finally:
        exp.close()
    assert trainer.step == 4
    state = final_state(cfg.exp_dir)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    gen = load_generator(tmp_path / "exp" / "model.safetensors")  # trained on the GPU, loads on the CPU
    out = Upscaler(gen, CPU).upscale(smooth(12, 12), "a bird", None)
    assert out.shape == (3, 48, 48) and torch.isfinite(out).all()


def test_resume_on_cuda_continues_the_same_run(tmp_path):
    from test_train import final_state, tiny_run

    from clipsr_cli.train.config import run_config
    from clipsr_cli.train.distributed import Dist
    from clipsr_cli.train.experiment import Experiment
    from clipsr_cli.train.run import fit

    def train(cfg):
        exp = Experiment(Path(cfg.exp_dir))
        try:
            fit(cfg, CUDA, Dist(), exp)
        finally:
            exp.close()

    common = dict(val_every=0, sample_every=0, checkpoint_every=3, device="cuda")
    straight = tiny_run(tmp_path / "a", max_steps=6, **common)
    train(straight)
    again = tiny_run(tmp_path / "a2", max_steps=6, **common)
    train(again)
    first = tiny_run(tmp_path / "b", max_steps=3, **common)
    train(first)
    train(run_config(None, {"exp_dir": first.exp_dir, "resume": True, "max_steps": 6}))

    def mean_difference(x, y) -> float:
        a, b = final_state(x.exp_dir), final_state(y.exp_dir)
        keys = [k for k in a if a[k].is_floating_point()]
        return float(sum((a[k].float() - b[k].float()).abs().sum() for k in keys) / sum(a[k].numel() for k in keys))

    # cuDNN's and the atomics' summation order varies from run to run on a GPU, and
    # Adam amplifies it: two uninterrupted runs already differ.  A resumed run must
    # be as close to an uninterrupted one as that (the same crops, captions and noise)
    repeat, resumed = mean_difference(straight, again), mean_difference(straight, first)
    print(f"mean |difference|: uninterrupted twice {repeat:.2e}, resumed {resumed:.2e}")
    assert resumed <= 3 * repeat + 1e-6
