"""Instance normalisation that keeps a channels-last input channels-last, for faster scoring on a CPU.

torch's ``instance_norm`` runs as a batch norm over a (1, N·C, …) view, which a channels-last (NDHWC) tensor does
not have: it copies the input to the standard layout, normalises, and returns the standard layout, which the next
element-wise step converts back. :class:`ChannelsLastInstanceNorm3d` computes the same map with reductions and
element-wise steps that keep the input's layout, in two passes (the mean, then the variance of the centred values,
so no cancellation): on the clinical plan's 8- and 16-channel activations about 2.5× faster than torch's (float32,
2 threads), and within 3e-6 of it. :func:`use_channels_last_instance_norm` swaps the layers of a scoring copy of
the model; training keeps ``nn.InstanceNorm3d``.
"""

from __future__ import annotations

from typing import TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from activeseg.acquisition.layer_swap import replace_layers

NORM_RANGE = "activeseg::channels_last_instance_norm"
"""The profiler range each normalisation runs in."""


class ChannelsLastInstanceNorm3d(nn.Module):
    """The same map as a given ``nn.InstanceNorm3d`` without running statistics: each channel of each row shifted
    to mean 0 and scaled to variance 1 (biased, ``eps`` added), then the optional affine. The output has the
    input's memory layout."""

    def __init__(self, norm: nn.InstanceNorm3d) -> None:
        super().__init__()
        if not supports(norm):
            raise ValueError(f"{norm} keeps running statistics; only per-instance statistics are supported")
        self.eps = float(norm.eps)
        self.weight = None if norm.weight is None else nn.Parameter(norm.weight.detach(), requires_grad=False)
        self.bias = None if norm.bias is None else nn.Parameter(norm.bias.detach(), requires_grad=False)

    def forward(self, x_N_C_D_H_W: Tensor) -> Tensor:
        if x_N_C_D_H_W.dim() != 5:  # unbatched input: torch's own
            return F.instance_norm(x_N_C_D_H_W.unsqueeze(0), weight=self.weight, bias=self.bias, eps=self.eps)[0]
        with torch.profiler.record_function(NORM_RANGE):  # for benchmarks/profile_scoring.py
            return self._normalise(x_N_C_D_H_W)

    def _normalise(self, x_N_C_D_H_W: Tensor) -> Tensor:
        spatial = (2, 3, 4)
        centred = torch.empty_like(x_N_C_D_H_W)  # the input's layout
        torch.sub(x_N_C_D_H_W, x_N_C_D_H_W.mean(dim=spatial, keepdim=True), out=centred)
        variance_N_C_1_1_1 = (centred * centred).mean(dim=spatial, keepdim=True)
        scale = torch.rsqrt(variance_N_C_1_1_1 + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.reshape(1, -1, 1, 1, 1)
        out = centred.mul_(scale)
        return out if self.bias is None else out.add_(self.bias.reshape(1, -1, 1, 1, 1))


def supports(layer: nn.Module) -> TypeGuard[nn.InstanceNorm3d]:
    """Whether ``layer`` is an ``nn.InstanceNorm3d`` that normalises by each instance's own statistics (no running
    statistics), which :class:`ChannelsLastInstanceNorm3d` can replace."""
    return isinstance(layer, nn.InstanceNorm3d) and not layer.track_running_stats


def use_channels_last_instance_norm(model: nn.Module) -> int:
    """Replace every supported ``nn.InstanceNorm3d`` in ``model`` (in place) by
    :class:`ChannelsLastInstanceNorm3d`; returns how many were replaced."""
    return replace_layers(model, lambda layer: ChannelsLastInstanceNorm3d(layer) if supports(layer) else None)
