"""Hot operations written the way this hardware runs them fastest.

Same results as the plain PyTorch formulation (tests compare them); only the
memory layout or the library that does the arithmetic differs.

* `dense`: on the CPU, PyTorch's fp32 `linear` goes to MKL's sgemm, which on
  this project's AMD machines reaches 145-190 GFLOP/s; oneDNN's convolution
  reaches 200-217 on the same shapes once M is large (the ViT's 528 tokens of
  a batch of 8).  A 1x1 convolution over a channels-last (1, K, 1, M) view
  *is* the (M, K) x (K, N) product, so the ViT's linear layers are run as that.
* `conv_pixel_shuffle`: conv3x3 + PixelShuffle(2) in channels-last memory.
  With the conv's output channels reordered (i, j, c) instead of (c, i, j),
  the shuffle copies whole C-float pixels instead of single floats.
* `vit_block`: open_clip's ResidualAttentionBlock with its four matrix
  products through `dense` and attention through SDPA.
* `bicubic_upsample`: PyTorch's bicubic upsampling by an integer factor as
  two matrix products, A_h @ x @ A_w^T; the CPU's bicubic kernel is scalar
  code, 12% of the tiny preset's forward pass.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN_MIN_ROWS = 512  # below this MKL is as fast or faster (the ViT at batch 1: 66 rows)


@functools.lru_cache(maxsize=1)
def onednn_bf16() -> bool:
    """Whether oneDNN computes bf16 in hardware here (AVX512-BF16/AMX, or AVX-NE-CONVERT):
    elsewhere it refuses bf16 weights in its blocked layout."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _onednn_dense(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and onednn_bf16()))
            and torch.backends.mkldnn.is_available()
            and not torch.compiler.is_compiling())  # an exported graph (ONNX) takes the plain ops


def dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
          min_rows: int = ONEDNN_MIN_ROWS) -> torch.Tensor:
    """F.linear(x, weight, bias), on the CPU computed by oneDNN from `min_rows` rows
    (fp32; bf16 where the CPU has bf16 units, with bf16 weights packed once as fp32's are)."""
    if not _onednn_dense(x) or x.numel() < min_rows * x.shape[-1] or weight.dtype != x.dtype:
        return F.linear(x, weight, bias)
    n, k = weight.shape
    rows = x.reshape(-1, k)
    m = rows.shape[0]
    view = rows.view(1, 1, m, k).permute(0, 3, 1, 2)
    packed = _packed(weight, view) if not torch.is_grad_enabled() else None
    if packed is not None:
        y = torch.ops.mkldnn._convolution_pointwise(view, packed, bias, [0, 0], [1, 1], [1, 1], 1, "none", [], "")
    else:
        y = F.conv2d(view, weight.view(n, k, 1, 1), bias)
    return y.permute(0, 2, 3, 1).reshape(*x.shape[:-1], n)


def _packed(weight: torch.Tensor, view: torch.Tensor) -> torch.Tensor | None:
    """`weight` as a 1x1 convolution's, reordered once into oneDNN's blocked
    layout (F.conv2d reorders it on every call: 8-14% of the ViT products'
    time, BENCHMARKS.md).  Kept on the weight itself, so it lives as long as
    the weight; repacked when the weight changes in place; None where this
    PyTorch has no prepacked convolution, and for a weight made in inference
    mode (no version counter to tell a change by: a model built or loaded
    there)."""
    if weight.is_inference():
        return None
    held = getattr(weight, "_clipsr_packed", None)
    if held is not None and held[0] == weight._version:
        return held[1]
    try:
        n, k = weight.shape
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            weight.detach().view(n, k, 1, 1).to_mkldnn(), [0, 0], [1, 1], [1, 1], 1, list(view.shape))
    except (AttributeError, RuntimeError):
        return None
    weight._clipsr_packed = (weight._version, packed)
    return packed


def is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _shuffle_order(channels: int, factor: int, device=None) -> torch.Tensor:
    """Output-channel permutation (c, i, j) -> (i, j, c) of a conv feeding PixelShuffle;
    made on the device (a copy from the host cannot be captured in a CUDA graph)."""
    return torch.arange(channels * factor * factor, device=device).view(channels, factor * factor).t().reshape(-1)


def conv_pixel_shuffle(x: torch.Tensor, conv: nn.Conv2d, factor: int) -> torch.Tensor:
    """pixel_shuffle(conv(x), factor), channels-last in and out when x is channels-last."""
    if not is_channels_last(x):
        return F.pixel_shuffle(conv(x), factor)
    c = conv.out_channels // (factor * factor)
    order = _shuffle_order(c, factor, x.device)
    bias = conv.bias[order] if conv.bias is not None else None
    y = conv._conv_forward(x, conv.weight[order], bias)  # NHWC memory: (B, H, W, i, j, c)
    b, _, h, w = y.shape
    y = y.permute(0, 2, 3, 1).view(b, h, w, factor, factor, c).permute(0, 1, 3, 2, 4, 5)
    return y.reshape(b, h * factor, w * factor, c).permute(0, 3, 1, 2)


def _plain_block(block: nn.Module) -> bool:
    """An open_clip ResidualAttentionBlock of the standard form (self-attention,
    batch-first, packed in-projection, no extra k/v biases)."""
    attn = getattr(block, "attn", None)
    return (
        isinstance(attn, nn.MultiheadAttention)
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.bias_k is None
        and not hasattr(block, "ln_1_kv")
        and all(hasattr(block, n) for n in ("ln_1", "ls_1", "ln_2", "ls_2", "mlp"))
        and all(hasattr(block.mlp, n) for n in ("c_fc", "gelu", "c_proj"))
    )


def vit_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """block(x) for a batch-first (B, N, D) token sequence."""
    if not (_onednn_dense(x) and _plain_block(block)):
        return block(x)
    attn, mlp = block.attn, block.mlp
    b, n, d = x.shape
    heads = attn.num_heads
    qkv = dense(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    dropout = attn.dropout if attn.training else 0.0
    o = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout).transpose(1, 2).reshape(b, n, d)
    x = x + block.ls_1(dense(o, attn.out_proj.weight, attn.out_proj.bias))
    h = mlp.gelu(dense(block.ln_2(x), mlp.c_fc.weight, mlp.c_fc.bias))
    return x + block.ls_2(dense(h, mlp.c_proj.weight, mlp.c_proj.bias))


BICUBIC_MATRIX_MAX_SIDE = 192  # dense rows cost O(side) per pixel: beyond ~256 the plain kernel wins


def bicubic_upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    for a (B, C, H, W) batch; on the CPU, for sides up to BICUBIC_MATRIX_MAX_SIDE,
    as A_h @ x @ A_w^T: 4-9x faster on 16-64 px inputs (BENCHMARKS.md), equal to
    float rounding, channels-last out where x is (adding it to a channels-last
    output then reads both in order)."""
    channels_last = is_channels_last(x)
    x = x.contiguous()  # PyTorch's bicubic kernel is twice as fast on this layout as on channels-last
    b, c, h, w = x.shape
    if (x.device.type != "cpu" or torch.compiler.is_compiling() or max(h, w) > BICUBIC_MATRIX_MAX_SIDE
            or not x.is_floating_point()):
        return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    rows, cols = _bicubic_matrix(h, scale, x.dtype), _bicubic_matrix(w, scale, x.dtype)
    # in x's precision, as F.interpolate is: autocast would make these products bf16
    with torch.autocast("cpu", enabled=False):
        wide = x @ cols.t()  # (B, C, H, W * scale)
        if not channels_last:
            return rows @ wide
        y = rows @ wide.permute(0, 2, 3, 1).reshape(b, h, w * scale * c)  # one product, rows (W * scale, C)
    return y.view(b, h * scale, w * scale, c).permute(0, 3, 1, 2)


@functools.lru_cache(maxsize=16)
def _bicubic_matrix(n: int, scale: int, dtype: torch.dtype) -> torch.Tensor:
    """(n * scale, n): PyTorch's bicubic weights (a = -0.75, half-pixel centres),
    taps beyond the border folded onto the edge pixel as its index clamping does."""
    with torch.inference_mode(False):  # usable in training too, whoever built it first
        out = torch.arange(n * scale, dtype=torch.float64)
        src = (out + 0.5) / scale - 0.5
        first = src.floor()
        taps = torch.arange(-1, 3, dtype=torch.float64)
        t = (src - first)[:, None] - taps  # distance of each of the 4 taps
        a, d = -0.75, t.abs()
        weights = torch.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                              ((a * d - 5 * a) * d + 8 * a) * d - 4 * a)
        index = (first[:, None] + taps).clamp(0, n - 1).long()
        matrix = torch.zeros(n * scale, n, dtype=torch.float64)
        matrix.scatter_add_(1, index, weights)
        return matrix.to(dtype)
