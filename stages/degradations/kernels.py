"""Blur kernels of the second-order degradation model (Wang et al., Real-ESRGAN,
ICCVW 2021, section 3.1): isotropic and anisotropic Gaussian, generalised
Gaussian, plateau, and the 2-D sinc (an ideal low-pass, its ringing).  Each is
(size, size), odd, sums to 1; every random choice from the given `rng`."""

from __future__ import annotations

import math

import numpy as np
import torch

KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


def _grid(size: int) -> np.ndarray:
    r = np.arange(size) - (size - 1) / 2
    xx, yy = np.meshgrid(r, r)
    return np.stack([xx, yy], axis=-1)  # (size, size, 2)


def _quadratic(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """x^T Sigma^-1 x over the grid, Sigma = R diag(sx^2, sy^2) R^T."""
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    inv = np.linalg.inv(rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T)
    g = _grid(size)
    return np.einsum("...i,ij,...j->...", g, inv, g)


def shaped_kernel(kind: str, size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    """One kernel of `kind` (KINDS); `beta` is the shape of the generalised and plateau ones."""
    if kind.endswith("iso") and not kind.endswith("aniso"):
        sigma_y, theta = sigma_x, 0.0
    q = _quadratic(size, sigma_x, sigma_y, theta)
    if kind.startswith("generalized"):
        k = np.exp(-0.5 * np.power(q, beta))
    elif kind.startswith("plateau"):
        k = 1.0 / (1.0 + np.power(q, beta))
    else:
        k = np.exp(-0.5 * q)
    return k / k.sum()


def sinc_kernel(size: int, cutoff: float) -> np.ndarray:
    """The circular low-pass of cutoff frequency `cutoff` (radians per pixel):
    cutoff * J1(cutoff * r) / (2 pi r), normalised."""
    g = _grid(size)
    r = np.hypot(g[..., 0], g[..., 1])
    j1 = torch.special.bessel_j1(torch.from_numpy(cutoff * r)).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.where(r == 0, cutoff**2 / (4 * math.pi), cutoff * j1 / (2 * math.pi * r))
    return k / k.sum()


def random_kernel(rng: np.random.Generator, p: dict) -> np.ndarray:
    """A kernel as one blur step draws it: `p` holds that step's kernel_* keys."""
    size = int(rng.choice(np.arange(p["kernel_size"][0], p["kernel_size"][1] + 1, 2)))
    if rng.random() < p["sinc_prob"]:
        low = math.pi / 3 if size < 13 else math.pi / 5
        return sinc_kernel(size, rng.uniform(low, math.pi))
    kind = str(rng.choice(KINDS, p=np.asarray(p["kernel_prob"]) / np.sum(p["kernel_prob"])))
    sx, sy = rng.uniform(*p["sigma_x"]), rng.uniform(*p["sigma_y"])
    theta = rng.uniform(*p["rotation"])
    beta = rng.uniform(*(p["betag"] if kind.startswith("generalized") else p["betap"]))
    return shaped_kernel(kind, size, sx, sy, theta, beta)
