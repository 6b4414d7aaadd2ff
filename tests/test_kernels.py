"""The fast formulations give what the plain PyTorch ones give."""

import ctypes
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipsr_cli.model.clip import build_clip
from clipsr_cli.model.generator import Generator
from clipsr_cli.model.kernels import (
    BICUBIC_MATRIX_MAX_SIDE,
    bicubic_upsample,
    conv_pixel_shuffle,
    dense,
    is_channels_last,
    onednn_bf16,
    vit_block,
)
from clipsr_cli.pipeline.devices import pick_memory_format
from clipsr_cli.pipeline.memory import keep_freed_memory
from clipsr_cli.pipeline.upscaler import Upscaler


@pytest.mark.parametrize("shape", [(7, 12), (2, 9, 12), (600, 12), (2, 300, 12)])  # below / above ONEDNN_MIN_ROWS
@pytest.mark.parametrize("bias", [True, False])
def test_dense_matches_linear_values_and_gradients(shape, bias):
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(20, 12, requires_grad=True)
    b = torch.randn(20, requires_grad=True) if bias else None
    ours = dense(x, w, b)
    ref = F.linear(x, w, b)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(ours, [x, w], g)
    ref_grads = torch.autograd.grad(ref, [x, w], g)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def test_dense_threshold_is_a_parameter():
    x, w, b = torch.randn(5, 12), torch.randn(3, 12), torch.randn(3)
    torch.testing.assert_close(dense(x, w, b, min_rows=0), F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_dense_on_a_non_contiguous_input():
    x = torch.randn(12, 600).t()  # (600, 12), transposed strides
    w, b = torch.randn(3, 12), torch.randn(3)
    torch.testing.assert_close(dense(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_dense_in_inference_packs_the_weight_once_and_again_after_it_changes():
    w, b = torch.randn(24, 16), torch.randn(24)
    with torch.inference_mode():
        for rows in (600, 700):  # packed for the first input's shape, right for any
            x = torch.randn(rows, 16)
            torch.testing.assert_close(dense(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
        if not hasattr(w, "_clipsr_packed"):
            pytest.skip("this PyTorch has no prepacked oneDNN convolution: dense reorders on every call")
        packed = w._clipsr_packed[1]
        dense(x, w, b)
        assert w._clipsr_packed[1] is packed  # not packed again
    w.mul_(-2)  # e.g. an optimizer step between two validations
    with torch.inference_mode():
        torch.testing.assert_close(dense(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    assert w._clipsr_packed[1] is not packed


def test_dense_on_weights_made_in_inference_mode():
    # a model built or loaded under inference_mode holds inference tensors, which have no
    # version counter to key a packed copy on: packed on every call instead, never stale
    with torch.inference_mode():
        w, b, x = torch.randn(24, 16), torch.randn(24), torch.randn(600, 16)
        torch.testing.assert_close(dense(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
        w.mul_(-2)  # inference tensors change in place only in inference mode
        torch.testing.assert_close(dense(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factor", [2, 3])
def test_conv_pixel_shuffle_channels_last_matches_pixel_shuffle(factor):
    conv = nn.Conv2d(8, 5 * factor * factor, 3, 1, 1)
    x = torch.randn(2, 8, 6, 7)
    ref = F.pixel_shuffle(conv(x), factor)
    cl = conv_pixel_shuffle(x.contiguous(memory_format=torch.channels_last), conv, factor)
    assert is_channels_last(cl) and cl.shape == ref.shape == (2, 5, 6 * factor, 7 * factor)
    torch.testing.assert_close(cl, ref, rtol=1e-5, atol=1e-5)
    plain = conv_pixel_shuffle(x, conv, factor)  # the default layout takes the plain path
    assert plain.is_contiguous()
    torch.testing.assert_close(plain, ref)


@pytest.mark.parametrize("scale", [2, 4, 8, 16])
@pytest.mark.parametrize("size", [(1, 1), (3, 5), (16, 16), (37, 64), (BICUBIC_MATRIX_MAX_SIDE + 1, 7)])
def test_bicubic_upsample_matches_interpolate_values_and_gradients(scale, size):
    x = torch.rand(2, 3, *size, requires_grad=True)
    ref = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    ours = bicubic_upsample(x, scale)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(ref, x, g)[0],
                               rtol=1e-4, atol=1e-4)


def test_bicubic_upsample_on_channels_last_and_from_inference_into_training():
    x = torch.rand(4, 3, 12, 20).to(memory_format=torch.channels_last)
    with torch.inference_mode():  # its matrices are cached here first ...
        ours = bicubic_upsample(x, 4)
    assert is_channels_last(ours)
    torch.testing.assert_close(ours, F.interpolate(x, scale_factor=4, mode="bicubic"), rtol=1e-5, atol=1e-5)
    y = x.clone().requires_grad_()
    g = torch.randn_like(ours)
    (bicubic_upsample(y, 4) * g).sum().backward()  # ... and still usable where autograd saves them
    z = x.clone().requires_grad_()
    (F.interpolate(z, scale_factor=4, mode="bicubic") * g).sum().backward()
    torch.testing.assert_close(y.grad, z.grad, rtol=1e-4, atol=1e-4)


def test_bicubic_upsample_keeps_the_input_precision_under_autocast():
    x = torch.rand(2, 3, 16, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as `train` / `upscale --precision bf16` run it
        ours = bicubic_upsample(x, 4)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, F.interpolate(x, scale_factor=4, mode="bicubic"), rtol=1e-5, atol=1e-5)


def test_vit_block_matches_open_clip_block(tiny_clip):
    x = torch.randn(8, 66, tiny_clip.visual.conv1.out_channels)  # 528 rows: the oneDNN path
    for block in tiny_clip.visual.transformer.resblocks:
        torch.testing.assert_close(vit_block(block, x), block(x), rtol=1e-5, atol=1e-5)


def test_vit_block_falls_back_for_other_blocks():
    calls = []

    class Odd(nn.Module):
        def forward(self, x):
            calls.append(x.shape)
            return x * 2

    x = torch.ones(1, 2, 4)
    assert torch.equal(vit_block(Odd(), x), x * 2) and calls == [(1, 2, 4)]


# the layout tests convert a CLIP of their own: the session's shared one stays as built


@pytest.mark.parametrize("scale", [4, 8])
def test_generator_in_channels_last_gives_the_same_image(tiny_cfg, scale):
    gen = Generator(tiny_cfg, build_clip(tiny_cfg), scale).eval()
    lr = torch.rand(2, 3, 19, 24)
    with torch.inference_mode():
        cond = gen.encode_text(["a bird", "a cat"])
        ref = gen(lr, cond)
    gen = gen.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = gen(lr.contiguous(memory_format=torch.channels_last), cond)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-5)


def test_upscaler_runs_the_cpu_in_channels_last(tiny_cfg):
    cpu = torch.device("cpu")
    assert pick_memory_format(cpu) == torch.channels_last
    gen = Generator(tiny_cfg, build_clip(tiny_cfg), 4).eval()
    up = Upscaler(gen, cpu, tile=0)
    assert all(is_channels_last(m.weight) for m in gen.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1))
    seen = []
    gen.upsampler.register_forward_pre_hook(lambda m, args: seen.append(is_channels_last(args[0])))
    up.upscale(torch.rand(3, 16, 20), "a photo", None)
    assert seen == [True]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_keep_freed_memory_is_accepted_by_glibc():
    try:
        _ = ctypes.CDLL(None).gnu_get_libc_version
    except AttributeError:
        pytest.skip("not glibc")
    assert keep_freed_memory() is True


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_keep_freed_memory_is_a_no_op_off_linux(monkeypatch, platform):
    # ctypes.CDLL(None) raises TypeError on Windows: every command would fail at start
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(ctypes, "CDLL", lambda *args: pytest.fail("asked the C library"))
    assert keep_freed_memory() is False


ARENA_CHECK = """
import ctypes, resource, sys, threading
sys.path.insert(0, {root!r})
if {fix}:
    from clipsr_cli.pipeline.memory import keep_freed_memory
    assert keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
faults = []
def work():  # a worker thread (an upscale lane) allocating an activation map batch after batch
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        p = libc.malloc(100 << 20)
        ctypes.memset(p, 1, 100 << 20)
        libc.free(p)
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
t = threading.Thread(target=work)
t.start()
t.join()
print(max(faults[1:]))
"""


def test_worker_threads_reuse_freed_memory_after_keep_freed_memory():
    import subprocess
    import sys
    from pathlib import Path

    try:
        _ = ctypes.CDLL(None).gnu_get_libc_version
    except AttributeError:
        pytest.skip("not glibc")
    root = str(Path(__file__).resolve().parents[1])

    def refaulted_pages(fix: bool) -> int:
        code = ARENA_CHECK.format(root=root, fix=fix)
        return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)

    # a fresh process each: the arena setting holds for threads started after it.  glibc's
    # default maps every such block afresh: 25,600 faults of 4 KiB pages (fewer with huge pages)
    unfixed, fixed = refaulted_pages(fix=False), refaulted_pages(fix=True)
    assert fixed * 10 < unfixed, (fixed, unfixed)


@pytest.mark.skipif(not onednn_bf16(), reason="this CPU has no bf16 units for oneDNN (AVX512-BF16, AMX or "
                                              "AVX-NE-CONVERT): its bf16 products go to F.linear")
def test_dense_in_bf16_packs_the_bf16_weight_once():
    w, b = torch.randn(24, 16).bfloat16(), torch.randn(24).bfloat16()
    x = torch.randn(600, 16).bfloat16()
    with torch.inference_mode():
        ours = dense(x, w, b)
    assert ours.dtype == torch.bfloat16 and w._clipsr_packed[1] is not None
    torch.testing.assert_close(ours.float(), F.linear(x.float(), w.float(), b.float()), rtol=2e-2, atol=5e-2)
