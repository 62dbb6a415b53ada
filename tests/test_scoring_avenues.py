"""The alternatives ``benchmarks/scoring_avenues.py`` times compute the engine's maps, so their times compare."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest
import torch
from torch import nn

from activeseg.acquisition.instance_norm import ChannelsLastInstanceNorm3d
from activeseg.acquisition.subpixel import SubpixelConvTranspose3d
from activeseg.acquisition.uncertainty import quantised_p, seeded_dropout

from _support import benchmark_script


@pytest.fixture(scope="module")
def avenues() -> Iterator[ModuleType]:
    yield from benchmark_script("scoring_avenues")


def test_the_vector_norm_variance_is_the_engines_normalisation(avenues: ModuleType) -> None:
    torch.manual_seed(0)
    norm = ChannelsLastInstanceNorm3d(nn.InstanceNorm3d(4, affine=True))
    nn.init.normal_(norm.weight)
    x = (3 + 2 * torch.randn(2, 4, 6, 5, 7)).contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(avenues.vector_norm_normalise(norm, x), norm(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("stride", "kernel", "padding", "output_padding"), [(2, 3, 1, 1), ((2, 2, 1), 3, 1, (1, 1, 0))]
)
def test_padding_inside_the_convolution_is_the_engines_sub_pixel_layer(
    avenues: ModuleType, stride: object, kernel: int, padding: int, output_padding: object
) -> None:
    torch.manual_seed(0)
    transposed = nn.ConvTranspose3d(5, 3, kernel, stride, padding, output_padding)  # type: ignore[arg-type]
    layer = SubpixelConvTranspose3d(transposed)
    x = torch.randn(2, 5, 6, 7, 5).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        torch.testing.assert_close(avenues.padded_conv_forward(layer, x), layer(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(layer(x), transposed(x), atol=1e-5, rtol=0)


def test_channels_last_masks_drop_at_the_engines_rate_and_scale_but_other_elements(avenues: ModuleType) -> None:
    identity = nn.Conv3d(8, 8, 1, bias=False)
    nn.init.dirac_(identity.weight)  # passes its input through
    model = nn.Sequential(identity, nn.Dropout(0.25))
    x = torch.ones(2, 8, 16, 16, 16).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        with seeded_dropout(model, [1, 2], channels_last=True):
            engine = model(x)
        with avenues.channels_last_masks(model, [1, 2], channels_last=True):
            reordered = model(x)
    for out in (engine, reordered):
        assert out.unique().tolist() == [0.0, pytest.approx(1 / (1 - quantised_p(0.25)))]
        assert abs(float((out == 0).double().mean()) - 0.25) < 0.01
    assert not torch.equal(engine, reordered)  # the same words, laid on other activations
    assert torch.equal(torch.sort(engine.flatten(1)).values, torch.sort(reordered.flatten(1)).values)
