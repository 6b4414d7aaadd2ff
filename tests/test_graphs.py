"""GraphedForward's bookkeeping, on the CPU (the CUDA captures themselves: test_cuda.py)."""

import dataclasses

import torch

from clipsr_cli.pipeline.graphs import GraphedForward


def test_graphed_forward_refills_its_static_inputs_and_keeps_the_latest_shapes():
    """GraphedForward's bookkeeping on the CPU: a 'graph' that replays by
    running fn on the static tensors stands in for a captured CUDA graph."""

    @dataclasses.dataclass
    class Cond:
        w: torch.Tensor

    class Replayed(GraphedForward):
        captured = []

        def _capture(self, x, cond):
            static_x, static_cond = x.clone(), Cond(cond.w.clone())
            out = torch.empty_like(x)
            graph = type("Graph", (), {"replay": lambda _: out.copy_(self.fn(static_x, static_cond))})()
            self.captured.append(tuple(x.shape))
            return graph, static_x, static_cond, out

    calls = []
    g = Replayed(lambda x, c: (calls.append(1), x * c.w)[1], max_graphs=2)
    for side in (4, 4, 4, 5, 6, 6, 5, 4):
        x, w = torch.rand(1, 1, side, side), torch.rand(1, 1, 1, 1)
        assert torch.equal(g(x, Cond(w)), x * w)  # new pixels and weights every call
    # 4 captured at its second call, 6 at its second (evicting 4), 5 at its second, then 4 again
    assert Replayed.captured == [(1, 1, 4, 4), (1, 1, 6, 6), (1, 1, 5, 5), (1, 1, 4, 4)]
    assert g.shapes == 2
