"""A front as one ``torch.export`` program: uint8 pixels and a stitch index in, logits out, the
stitch chosen by a balanced tree of ``torch.cond`` over one copy of the weights.

:class:`FrontModule` runs the network that keeps only the front's stitches
(:meth:`SNNet.restrict`) and takes the same inputs as the ONNX front (:mod:`.switch`):
``(pixels / 255 - mean) / std`` inside, the index checked (a negative one counts from the end).
``torch.cond`` is traced by TorchDynamo, which cannot trace the LoRA switch of a
parameter-efficient network: such a front exports to ONNX and safetensors only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn

from snnet.data.config import DataConfig
from snnet.network import SNNet
from snnet.stitch import Stitch

PEFT_PT2 = (
    "a parameter-efficient (LoRA) network's front exports to onnx and safetensors; pt2 needs "
    "torch.cond, which cannot trace the LoRA switch"
)


class FrontModule(nn.Module):
    """``net``'s ``stitches`` behind one forward: ``module(pixels, torch.tensor(i))`` runs
    ``stitches[i]`` on uint8 ``pixels`` normalised by ``data``.

    Example:
        >>> module = FrontModule(front_network(net, stitches), stitches, net.data_config)
        >>> logits = module(pixels, torch.tensor(2))
    """

    def __init__(self, net: SNNet, stitches: Sequence[Stitch], data: DataConfig) -> None:
        super().__init__()
        if net.adapter_config.frozen_anchors:
            raise ValueError(PEFT_PT2)
        self.net = net.eval()
        self.stitches = tuple(stitches)
        c = data.channels
        self.register_buffer("mean", torch.tensor(data.mean).view(c, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data.std).view(c, 1, 1), persistent=False)
        self.register_buffer("order", torch.arange(len(self.stitches)), persistent=False)

    def forward(self, pixels: torch.Tensor, stitch: torch.Tensor) -> torch.Tensor:
        x = pixels.to(self.mean.dtype).div(255).sub(self.mean).div(self.std)  # (N, C, H, W)
        index = self.order[stitch].clone()  # out of range: an error; negative: from the end
        return self._choose(x, index, lo=0, hi=len(self.stitches))

    def _choose(self, x: torch.Tensor, index: torch.Tensor, *, lo: int, hi: int) -> torch.Tensor:
        if hi - lo == 1:
            return self.net(x, stitch=self.stitches[lo])
        mid = (lo + hi) // 2
        return torch.cond(
            index < mid,
            functools.partial(self._choose, lo=lo, hi=mid),
            functools.partial(self._choose, lo=mid, hi=hi),
            (x, index),
        )


def front_program(
    net: SNNet, stitches: Sequence[Stitch], data: DataConfig
) -> torch.export.ExportedProgram:
    """:class:`FrontModule` exported with ``torch.export`` (batch dimension dynamic), without the
    source locations ``torch.export`` records per node (in nested ``torch.cond`` branches they
    grow with the branches' weights and would make most of the file)."""
    module = FrontModule(net, stitches, data)
    p = next(net.parameters())
    pixels = torch.zeros(2, *data.input_size, dtype=torch.uint8, device=p.device)
    with torch.no_grad():
        x = torch.zeros(pixels.shape, dtype=p.dtype, device=p.device)
        for s in module.stitches:  # fills the network's caches: cond's branches cannot
            net(x, stitch=s)
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(
            module, (pixels, torch.tensor(0)), dynamic_shapes=({0: batch}, None)
        )
    for graph_module in program.graph_module.modules():
        if isinstance(graph_module, torch.fx.GraphModule):
            for node in graph_module.graph.nodes:
                node.meta.pop("stack_trace", None)
    return program
