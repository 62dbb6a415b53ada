"""Sub-pixel transposed convolutions: the same map as ``nn.ConvTranspose3d``, checked in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from activeseg.acquisition.subpixel import SubpixelConvTranspose3d, pixel_shuffle, supports, use_subpixel_upsampling
from activeseg.acquisition.uncertainty import make_window_sampler
from activeseg.config import ModelConfig
from activeseg.engine.model import build_model, network_plan

LAYERS = [  # kernel, stride, padding, output padding, input shape
    (3, (2, 2, 1), 1, (1, 1, 0), (5, 6, 4)),  # MONAI UNet's up-sampling on an anisotropic plan
    (3, 2, 1, 1, (4, 5, 3)),
    (2, 2, 0, 0, (3, 4, 5)),  # DynUNet's: kernel = stride
    (2, 2, 0, 1, (3, 4, 5)),  # kernel = stride with output padding: an extra phase row past the input
    (4, 2, 1, 0, (3, 3, 3)),
    (3, 3, 1, 2, (2, 3, 4)),
    (5, 2, 2, 1, (4, 4, 4)),
    (1, 1, 0, 0, (3, 3, 3)),
    ((3, 2, 1), (2, 1, 2), (0, 1, 0), (1, 0, 0), (3, 4, 5)),
]


@pytest.mark.parametrize(("kernel", "stride", "padding", "output_padding", "shape"), LAYERS)
def test_subpixel_form_equals_the_transposed_convolution(
    kernel: int, stride: int, padding: int, output_padding: int, shape: tuple[int, int, int]
) -> None:
    torch.manual_seed(0)
    layer = nn.ConvTranspose3d(4, 3, kernel, stride, padding, output_padding).double()
    x = torch.randn(2, 4, *shape, dtype=torch.float64)
    with torch.no_grad():
        expected, got = layer(x), SubpixelConvTranspose3d(layer)(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_unsupported_layers_are_left_alone_and_refused() -> None:
    grouped = nn.ConvTranspose3d(4, 4, 3, 2, groups=2)
    dilated = nn.ConvTranspose3d(4, 4, 3, 2, dilation=2)
    assert not supports(grouped) and not supports(dilated) and supports(nn.ConvTranspose3d(4, 4, 3, 2))
    with pytest.raises(ValueError, match="no sub-pixel form"):
        SubpixelConvTranspose3d(grouped)
    model = nn.Sequential(grouped, nn.ConvTranspose3d(4, 2, 2, 2, bias=False))
    assert use_subpixel_upsampling(model) == 1
    assert model[0] is grouped and isinstance(model[1], SubpixelConvTranspose3d)


def test_a_channels_last_sampler_scores_the_unet_through_subpixel_layers_with_the_same_samples() -> None:
    torch.manual_seed(0)
    config = ModelConfig(channels=(4, 8, 16), strides=(2, 2), dropout=0.2)
    model = build_model(config, network_plan(config, 3))
    transposed = sum(isinstance(m, nn.ConvTranspose3d) for m in model.modules())
    windows = torch.randn(2, 1, 16, 12, 8)
    plain = make_window_sampler("mc_dropout", model, 3, None, (), amp=False)
    fast = make_window_sampler("mc_dropout", model, 3, None, (), amp=False, channels_last=True)
    assert transposed == 2 and sum(isinstance(m, SubpixelConvTranspose3d) for m in fast.models[0].modules()) == 2
    assert sum(isinstance(m, nn.ConvTranspose3d) for m in model.modules()) == 2  # the caller's model is untouched
    torch.testing.assert_close(fast(windows, [3, 4]), plain(windows, [3, 4]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("kernel", "stride", "padding", "output_padding", "shape"), LAYERS)
def test_a_channels_last_input_gives_the_same_map_laid_out_channels_last(
    kernel: int, stride: int, padding: int, output_padding: int, shape: tuple[int, int, int]
) -> None:
    torch.manual_seed(0)
    layer = nn.ConvTranspose3d(4, 3, kernel, stride, padding, output_padding)  # float32: oneDNN keeps the layout
    x = torch.randn(2, 4, *shape)
    fast = SubpixelConvTranspose3d(layer).to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    with torch.no_grad():
        expected, got = layer.double()(x.double()), fast(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)
    assert got.stride(1) == 1  # channels-last (a cropped view of a channels-last tensor)


def test_pixel_shuffle_interleaves_the_phases_the_same_way_in_both_layouts() -> None:
    channels, stride = 2, (2, 1, 3)
    phases_N_PC_U = torch.arange(2 * 6 * channels * 3 * 4 * 2, dtype=torch.float64).reshape(2, 6 * channels, 3, 4, 2)
    standard = pixel_shuffle(phases_N_PC_U, stride, channels)
    # by hand: output (n, c, 2u1 + a, u2, 3u3 + b) is phase (a, 0, b) of channel c, phase-major channel order
    for a, b, c in ((0, 0, 0), (1, 2, 1), (1, 0, 0), (0, 1, 1)):
        phase = (a * 1 + 0) * 3 + b
        torch.testing.assert_close(standard[:, c, a::2, :, b::3], phases_N_PC_U[:, phase * channels + c])
    last = pixel_shuffle(phases_N_PC_U.contiguous(memory_format=torch.channels_last_3d), stride, channels)
    assert torch.equal(last, standard) and last.is_contiguous(memory_format=torch.channels_last_3d)
    cropped = phases_N_PC_U.contiguous(memory_format=torch.channels_last_3d)[:, :, :2, :3, :1]  # a view with gaps
    assert torch.equal(pixel_shuffle(cropped, stride, channels), pixel_shuffle(cropped.contiguous(), stride, channels))
