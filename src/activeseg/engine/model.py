"""The segmentation network, the device it runs on, and its checkpoints."""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import torch
from monai.networks.nets import DynUNet, UNet
from torch import nn

from activeseg.acquisition.uncertainty import WindowSampler, make_window_sampler
from activeseg.artifacts import write_atomic
from activeseg.config import ModelConfig, RunConfig, TrainConfig
from activeseg.data.plan import Normalisation, Plan

logger = logging.getLogger(__name__)


def build_model(config: ModelConfig, plan: Plan) -> nn.Module:
    """The network a run trains: MONAI UNet (``unet``, light enough for a CPU) or DynUNet (``dynunet``, nnU-Net's
    architecture), with the plan's input channels, classes and per-axis strides, and dropout for MC dropout."""
    strides = [tuple(s) for s in plan.strides]
    if config.name == "dynunet":
        network: nn.Module = DynUNet(
            spatial_dims=3,
            in_channels=plan.channels,
            out_channels=plan.num_classes,
            kernel_size=[3] * len(config.channels),
            strides=[1, *strides],
            upsample_kernel_size=strides,
            filters=list(config.channels),
            dropout=config.dropout,
            res_block=config.num_res_units > 0,
        )
        return network
    unet: nn.Module = UNet(
        spatial_dims=3,
        in_channels=plan.channels,
        out_channels=plan.num_classes,
        channels=config.channels,
        strides=strides,
        num_res_units=config.num_res_units,
        dropout=config.dropout,
    )
    return unet


def network_plan(config: ModelConfig, num_classes: int = 3, channels: int = 1) -> Plan:
    """A plan fixing only what a network needs (input channels, classes, equal strides on every axis): for a model
    built without a dataset (benchmarks, tests)."""
    strides = [(s, s, s) for s in (config.strides or (2,) * (len(config.channels) - 1))]
    return Plan(
        (1.0,) * 3, (32,) * 3, 2, strides, [Normalisation("zscore")] * channels, "none", channels, num_classes, 1.0, 0.0
    )


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


def cpu_bf16_native() -> bool:
    """Whether oneDNN convolves bfloat16 natively on this CPU (it needs AVX-512). Without it torch falls back to a
    reference convolution, about 20× slower than float32 (measured on an AVX2-only AMD EPYC, BENCHMARKS.md)."""
    return bool(torch._C._has_mkldnn and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@functools.cache
def _warn_bf16_fallback() -> None:
    logger.warning("strategy.cpu_bf16 is ignored: this CPU has no native bfloat16 convolution; scoring in float32")


def scoring_amp(config: RunConfig, device: torch.device) -> bool:
    """Autocast while scoring the pool: ``train.amp``'s float16 on CUDA, bfloat16 on CPU with ``strategy.cpu_bf16``
    where the CPU convolves bfloat16 natively (:func:`cpu_bf16_native`; elsewhere float32, with a warning)."""
    if device.type == "cpu" and config.strategy.cpu_bf16:
        if cpu_bf16_native():
            return True
        _warn_bf16_fallback()
    return use_amp(config.train, device)


def scoring_sampler(config: RunConfig, model: nn.Module, members: Sequence[nn.Module] = ()) -> WindowSampler:
    """The uncertainty source that scores a round's pool, and so the maps the human loop exports: the config's
    source bound to the round's model (and ensemble ``members``), autocast as :func:`scoring_amp` says, and on a CPU
    through channels-last copies (oneDNN's faster layout; BENCHMARKS.md: score_speed)."""
    settings, device = config.strategy, next(model.parameters()).device
    return make_window_sampler(
        settings.uncertainty,
        model,
        settings.mc_samples,
        settings.mc_batch_size,
        config.train.flip_indices,
        scoring_amp(config, device),
        members,
        channels_last=device.type == "cpu",
    )


def save_model(model: nn.Module, path: Path) -> None:
    """Atomically save a state dict."""

    def write(handle: IO[bytes]) -> None:
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        handle.write(buffer.getvalue())

    write_atomic(path, write)


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load a saved state dict into ``model`` (on the model's device) and return it."""
    device = next(model.parameters()).device
    model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return model
