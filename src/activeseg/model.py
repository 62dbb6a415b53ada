"""The segmentation network and the device it runs on."""

from __future__ import annotations

import torch
from monai.networks.nets import UNet
from torch import nn

from activeseg.config import ModelConfig, TrainConfig


def build_model(config: ModelConfig, num_classes: int) -> nn.Module:
    """A MONAI 3D U-Net with dropout in every block, for one input channel and ``num_classes`` outputs."""
    network: nn.Module = UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=num_classes,
        channels=config.channels,
        strides=config.strides,
        num_res_units=config.num_res_units,
        dropout=config.dropout,
    )
    return network


def select_device(config: TrainConfig) -> torch.device:
    """``cuda`` when asked for or (with ``auto``) when present; otherwise ``cpu``."""
    if config.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device; install a CUDA build of torch")
    if config.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def use_amp(config: TrainConfig, device: torch.device) -> bool:
    """Mixed precision only on CUDA: CPU runs stay in float32 and bit-reproducible."""
    return config.amp and device.type == "cuda"


def enable_mc_dropout(model: nn.Module) -> None:
    """Eval mode for everything (normalisation included) except dropout layers, which keep sampling."""
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.train()
