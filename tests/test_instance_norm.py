"""Channels-last instance normalisation: the same map as torch's, checked in float64, in the input's layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from activeseg.acquisition.instance_norm import (
    ChannelsLastInstanceNorm3d,
    supports,
    use_channels_last_instance_norm,
)
from activeseg.acquisition.subpixel import SubpixelConvTranspose3d
from activeseg.acquisition.uncertainty import make_window_sampler
from activeseg.config import ModelConfig
from activeseg.engine.model import build_model, network_plan

CHANNELS_LAST = torch.channels_last_3d


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, CHANNELS_LAST])
def test_it_equals_torchs_instance_norm_and_keeps_the_layout(affine: bool, layout: torch.memory_format) -> None:
    torch.manual_seed(0)
    norm = nn.InstanceNorm3d(5, affine=affine, eps=1e-3).double()
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 2.0)
            norm.bias.uniform_(-1.0, 1.0)
    # a large mean against a small spread: a one-pass E[x²] - E[x]² would lose digits here, two passes do not
    x = (torch.randn(3, 5, 6, 7, 4, dtype=torch.float64) * 0.01 + 50.0).contiguous(memory_format=layout)
    ours = ChannelsLastInstanceNorm3d(norm)
    with torch.no_grad():
        got, expected = ours(x), norm(x)
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=0)
    assert got.is_contiguous(memory_format=layout)
    reference = (x - x.mean(dim=(2, 3, 4), keepdim=True)) / torch.sqrt(
        x.var(dim=(2, 3, 4), keepdim=True, correction=0) + 1e-3
    )
    if not affine:  # by hand, too
        torch.testing.assert_close(got, reference, atol=1e-9, rtol=0)
    with torch.no_grad():  # an unbatched input goes through torch's own
        torch.testing.assert_close(ours(x[0]), norm(x[0]), atol=1e-9, rtol=0)


def test_float32_channels_last_stays_within_rounding_of_torch() -> None:
    torch.manual_seed(1)
    x = (torch.randn(2, 8, 12, 10, 6) * 3 + 1).contiguous(memory_format=CHANNELS_LAST)
    with torch.no_grad():
        got = ChannelsLastInstanceNorm3d(nn.InstanceNorm3d(8))(x)
    torch.testing.assert_close(got, F.instance_norm(x.double()).float(), atol=1e-5, rtol=0)


def test_only_per_instance_statistics_are_swapped() -> None:
    running = nn.InstanceNorm3d(4, track_running_stats=True)
    assert not supports(running) and supports(nn.InstanceNorm3d(4)) and not supports(nn.BatchNorm3d(4))
    with pytest.raises(ValueError, match="running statistics"):
        ChannelsLastInstanceNorm3d(running)
    model = nn.Sequential(nn.Conv3d(1, 4, 3), nn.InstanceNorm3d(4, affine=True), running, nn.BatchNorm3d(4))
    assert use_channels_last_instance_norm(model) == 1
    assert isinstance(model[1], ChannelsLastInstanceNorm3d) and model[2] is running


def test_a_float32_scoring_copy_stays_channels_last_and_a_bf16_one_keeps_torchs_norm() -> None:
    config = ModelConfig(channels=(4, 8, 16), strides=(2, 2), dropout=0.2)
    model = build_model(config, network_plan(config, 3))
    norms = sum(isinstance(m, nn.InstanceNorm3d) for m in model.modules())
    for amp in (False, True):
        copy = make_window_sampler("mc_dropout", model, 3, None, (), amp, channels_last=True).models[0]
        swapped = sum(isinstance(m, ChannelsLastInstanceNorm3d) for m in copy.modules())
        shuffles = {m.channels_last_output for m in copy.modules() if isinstance(m, SubpixelConvTranspose3d)}
        assert (swapped, shuffles) == ((0, {False}) if amp else (norms, {True}))
    assert sum(isinstance(m, nn.InstanceNorm3d) for m in model.modules()) == norms > 0  # the caller's model
