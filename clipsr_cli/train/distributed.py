"""Data parallelism under torchrun: one process per device, gradients averaged.

G and D share one frozen CLIP and take alternating steps, with D's gradients
unwanted during G's step; rather than wrapping each in DistributedDataParallel
(whose reducer expects one forward/backward per wrapped module per step), the
trainer all-reduces the gradients of exactly the parameters it is about to
step, as one flat buffer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> Dist:
    """This process's place among those torchrun started (it sets WORLD_SIZE,
    RANK and LOCAL_RANK; without them this is one process), read from the
    environment: no process group (upscale's processes share only the folder)."""
    env = os.environ
    return Dist(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0")))


def rank_device(device: torch.device, d: Dist) -> torch.device:
    """Each of torchrun's processes on its own GPU: cuda:LOCAL_RANK for a CUDA
    device given without an index (an explicit cuda:N is kept)."""
    if device.type == "cuda" and device.index is None and d.world > 1:
        return torch.device("cuda", d.local_rank)
    return device


def init_from_env(device_type: str) -> Dist:
    """The process group torchrun's processes train in; one process without torchrun."""
    place = launched()
    if place.world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), place.local_rank)


def average_gradients(params: list[torch.nn.Parameter], d: Dist) -> None:
    if d.world == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= d.world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def any_rank(flag: bool, d: Dist, device) -> bool:
    """True when `flag` is true on any process (so all skip a bad step together)."""
    if d.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
