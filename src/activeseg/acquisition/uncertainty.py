"""Uncertainty sources: K stochastic predictions of a batch of windows, seeded per window.

A :class:`WindowSampler` maps (windows_B_Cin_d_h_w, seeds, one per window) to probs_K_B_C_d_h_w (float32, CPU), or
streams it as groups of samples (:meth:`WindowSampler.chunks`) so that memory is bounded by a group, not by K. Three
sources:

- MC dropout (Gal & Ghahramani, ICML 2016): dropout on, normalisation in eval mode, K passes ``batch_size`` forward
  rows at a time (:func:`rows_per_call` when None). Each (window, pass) row draws its dropout masks from its own
  generator, seeded from the window's seed and the pass index, so a window's samples do not depend on the batch
  size, nor on which windows share its batch or in which order.
- Test-time augmentation (Wang et al., Neurocomputing 2019): K seeded augmented copies of each window (flips on the
  allowed axes, small intensity scale and shift; the first copy is the plain window), dropout off, each prediction
  flipped back.
- Deep ensembles (Lakshminarayanan et al., NeurIPS 2017): one plain prediction (dropout off) from each of K
  independently seeded models. The loop trains the extra members and accounts for their training time.

Any sampler combines with any scorer (through ``moments`` and ``sliding``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from activeseg.acquisition.instance_norm import use_channels_last_instance_norm
from activeseg.acquisition.subpixel import use_subpixel_upsampling
from activeseg.seeds import derive_seed

Source = Literal["mc_dropout", "tta", "ensemble"]
SOURCES: tuple[Source, ...] = ("mc_dropout", "tta", "ensemble")
_CHANNELWISE = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def enable_mc_dropout(model: nn.Module) -> None:
    """Eval mode for everything (normalisation included) except dropout layers, which keep sampling from torch's
    global generator (how MONAI Label samples; :class:`WindowSampler` seeds each row instead)."""
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.train()


def _dropout_layers(model: nn.Module) -> list[nn.modules.dropout._DropoutNd]:
    layers = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    for layer in layers:
        if not isinstance(layer, (nn.Dropout, *_CHANNELWISE)):
            raise TypeError(f"seeded MC dropout supports Dropout and Dropout1d/2d/3d, not {type(layer).__name__}")
    return layers


RandomBits = Callable[[int], Tensor]
"""n -> n 64-bit words of uniform random bits (int64, every bit uniform), continuing one seeded stream."""


def random_bits(seed: int, device: torch.device) -> RandomBits:
    """A seeded stream of random bits on ``device``: numpy's SFC64 on a CPU (about twice as fast as torch's
    Mersenne Twister there, and MC dropout draws a word for every four activations), torch's generator elsewhere."""
    if device.type == "cpu":
        generator = np.random.SFC64(seed)
        return lambda n: torch.from_numpy(generator.random_raw(n).view(np.int64))
    return torch_bits(seed, device)


def torch_bits(seed: int, device: torch.device) -> RandomBits:
    """A seeded stream of random bits from torch's generator on ``device`` (what :func:`random_bits` uses off a
    CPU)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return lambda n: torch.empty(n, dtype=torch.int64, device=device).random_(-(2**63), None, generator=generator)


def keep_masks(
    row_shape: Sequence[int],
    p: float,
    streams: Sequence[RandomBits],
    device: torch.device,
    dtype: torch.dtype = torch.bool,
) -> Tensor:
    """Dropout keep-masks, one of ``row_shape`` per stream of :func:`random_bits` (rows first), whose elements are
    kept (1, or True) with probability ``1 - p`` to a resolution of 2⁻¹⁶ (:func:`quantised_p`); row i depends only
    on ``streams[i]``. ``dtype`` is the mask's: a mask in the activations' own dtype multiplies them at the speed of
    any product, where a bool mask goes through a slow type-promoting kernel.

    Each element compares one 16-bit word of uniform random bits with a threshold: four elements per 64-bit draw.
    """
    count = int(np.prod(row_shape))
    threshold = round(p * 2**16) - 2**15  # P(word < threshold) = quantised_p(p)
    keep_R_N = torch.empty((len(streams), count), dtype=dtype, device=device)
    for keep_N, stream in zip(keep_R_N, streams, strict=True):
        torch.ge(stream((count + 3) // 4).view(torch.int16)[:count], threshold, out=keep_N)
    return keep_R_N.reshape(len(streams), *row_shape)


def quantised_p(p: float) -> float:
    """The drop probability :func:`keep_masks` realises: ``p`` rounded to a multiple of 2⁻¹⁶ (0.1 → 0.100006)."""
    return round(p * 2**16) / 2**16


@contextmanager
def seeded_dropout(model: nn.Module, row_seeds: Sequence[int], channels_last: bool = False) -> Iterator[None]:
    """Within the block, ``model`` is in eval mode and each dropout layer drops row i of its batch with masks drawn
    from a stream of :func:`random_bits` seeded by ``row_seeds[i]`` (one per row, shared by the layers in call
    order).

    Kept activations are scaled by 1 / (1 - p') with p' = :func:`quantised_p`, so the mean is preserved exactly.
    With ``channels_last`` a 5-D output is written channels-last (the same values): the normalisation before each
    dropout returns the standard layout, and the next convolution would otherwise convert it again or run a slower
    kernel (float32 scoring of the clinical plan's window about 5–10% faster).
    """
    device = next(model.parameters()).device
    streams = [random_bits(s, device) for s in row_seeds]

    def drop(module: nn.Module, _: tuple[Tensor, ...], output: Tensor) -> Tensor:
        p = float(module.p)  # type: ignore[arg-type]
        if p == 0.0:
            return output
        if output.shape[0] != len(streams):
            raise ValueError(f"batch of {output.shape[0]} rows, but {len(streams)} row seeds")
        channelwise = isinstance(module, _CHANNELWISE)
        row_shape = (output.shape[1], *[1] * (output.dim() - 2)) if channelwise else output.shape[1:]
        keep = keep_masks(row_shape, p, streams, output.device, output.dtype)
        layout = torch.channels_last_3d if channels_last and output.dim() == 5 else torch.contiguous_format
        dropped = torch.empty_like(output, memory_format=layout)
        return torch.mul(output, keep, out=dropped).mul_(1.0 / (1.0 - quantised_p(p)))

    model.eval()
    hooks = [layer.register_forward_hook(drop) for layer in _dropout_layers(model)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


@dataclass(frozen=True)
class Augmentation:
    """One test-time augmentation: spatial axes to flip, then intensity * scale + shift."""

    flips: tuple[int, ...]
    scale: float
    shift: float


def draw_augmentations(samples: int, flip_axes: Sequence[int], seed: int) -> list[Augmentation]:
    """K seeded augmentations; the first is the identity so the plain prediction is always among the samples."""
    rng = np.random.default_rng(seed)
    drawn = [Augmentation((), 1.0, 0.0)]
    for _ in range(samples - 1):
        flips = tuple(axis for axis in flip_axes if rng.random() < 0.5)
        drawn.append(Augmentation(flips, float(1.0 + rng.uniform(-0.1, 0.1)), float(rng.uniform(-0.1, 0.1))))
    return drawn


def _flip(window_Cin_d_h_w: Tensor, axes: tuple[int, ...]) -> Tensor:
    return torch.flip(window_Cin_d_h_w, [1 + axis for axis in axes]) if axes else window_Cin_d_h_w


CPU_ROW_VOXELS = 1_500_000
"""Voxels of the forward rows one model call runs on a CPU when the batch size is automatic (two 96×96×64 windows):
per row, a batch much larger than the cache runs slower than a small one (BENCHMARKS.md: the ``_rows8`` rows of
the scoring speed tables, 8 rows per call against this)."""
DEVICE_ROWS = 8
"""Forward rows per model call on an accelerator when the batch size is automatic."""


def rows_per_call(batch_size: int | None, window_voxels: int, device: torch.device) -> int:
    """Forward rows per model call: ``batch_size`` if given, else :data:`CPU_ROW_VOXELS` worth of windows on a CPU
    (at least one) and :data:`DEVICE_ROWS` elsewhere."""
    if batch_size is not None:
        return batch_size
    return max(1, CPU_ROW_VOXELS // window_voxels) if device.type == "cpu" else DEVICE_ROWS


def along_windows(parts_k_b_dots: list[Tensor]) -> Tensor:
    """Groups of windows' samples, probs_k_b_…, joined along the window axis (no copy for one group)."""
    return parts_k_b_dots[0] if len(parts_k_b_dots) == 1 else torch.cat(parts_k_b_dots, dim=1)


@dataclass(frozen=True)
class WindowSampler:
    """K stochastic softmax predictions of each window in a batch, from one uncertainty source."""

    source: Source
    models: tuple[nn.Module, ...]
    """The round model, then (ensembles only) the other members."""
    samples: int
    """K (for an ensemble: the number of models)."""
    batch_size: int | None
    """Forward rows per model call (MC dropout, TTA): each call runs max(1, rows // B) passes of B windows, with rows
    = :func:`rows_per_call` (``batch_size``, or chosen by the device when None)."""
    flip_axes: tuple[int, ...] = ()
    amp: bool = False
    channels_last: bool = False
    """Feed the model channels-last (NDHWC) windows."""

    def __call__(self, windows_B_Cin_d_h_w: Tensor, seeds: Sequence[int]) -> Tensor:
        """probs_K_B_C_d_h_w (float32, CPU); sample k of window b depends only on the window and ``seeds[b]``."""
        return torch.cat(list(self.chunks(windows_B_Cin_d_h_w, seeds)))

    def chunks(self, windows_B_Cin_d_h_w: Tensor, seeds: Sequence[int]) -> Iterator[Tensor]:
        """The K samples as consecutive groups probs_k_B_C_d_h_w (k <= max(1, rows // B)), in sample order.

        No model call runs more than max(rows, 1) rows (:func:`rows_per_call`): B windows beyond that are taken a
        call's worth at a time, so ``inference.windows_per_batch`` does not inflate a CPU's cache-sized calls (4
        clinical-plan windows made every call 4 rows instead of 2, about 8% slower). Each window's samples are the
        same either way."""
        if len(seeds) != windows_B_Cin_d_h_w.shape[0]:
            raise ValueError(f"{windows_B_Cin_d_h_w.shape[0]} windows but {len(seeds)} seeds")
        device = next(self.models[0].parameters()).device
        rows = rows_per_call(self.batch_size, windows_B_Cin_d_h_w[0, 0].numel(), device)
        groups = [slice(i, i + rows) for i in range(0, len(seeds), rows)]
        windows = windows_B_Cin_d_h_w
        if self.source == "ensemble":
            for member in self.models:
                member.eval()
                yield along_windows([self._softmax(member, windows[g]).unsqueeze(0) for g in groups])
            return
        per_call = max(1, rows // len(seeds))
        drawn = [draw_augmentations(self.samples, self.flip_axes, s) for s in seeds] if self.source == "tta" else []
        for first in range(0, self.samples, per_call):
            passes = range(first, min(first + per_call, self.samples))
            if self.source == "mc_dropout":
                yield along_windows([self._dropout_passes(windows[g], seeds[g], passes) for g in groups])
            else:
                yield along_windows(
                    [self._augmented_passes(windows[g], [[a[k] for a in drawn[g]] for k in passes]) for g in groups]
                )

    def _dropout_passes(self, windows_B_Cin_d_h_w: Tensor, seeds: Sequence[int], passes: range) -> Tensor:
        """probs_k_B_C_d_h_w of MC-dropout passes ``passes``, all in one model call."""
        rows = windows_B_Cin_d_h_w.repeat(len(passes), *[1] * (windows_B_Cin_d_h_w.dim() - 1))
        row_seeds = [derive_seed(s, "dropout", k) for k in passes for s in seeds]
        with seeded_dropout(self.models[0], row_seeds, self.channels_last):
            probs = self._softmax(self.models[0], rows)
        return probs.reshape(len(passes), len(seeds), *probs.shape[1:])

    def _augmented_passes(self, windows_B_Cin_d_h_w: Tensor, augmentations_k_B: list[list[Augmentation]]) -> Tensor:
        """probs_k_B_C_d_h_w of the windows under augmentations_k_B[k][b], each mapped back, in one model call."""
        self.models[0].eval()
        chosen = [(a, w) for row in augmentations_k_B for a, w in zip(row, windows_B_Cin_d_h_w, strict=True)]
        probs = self._softmax(self.models[0], torch.stack([_flip(w * a.scale + a.shift, a.flips) for a, w in chosen]))
        back = torch.stack([_flip(p, a.flips) for p, (a, _) in zip(probs, chosen, strict=True)])
        return back.reshape(len(augmentations_k_B), windows_B_Cin_d_h_w.shape[0], *back.shape[1:])

    def _softmax(self, model: nn.Module, rows_N_Cin_d_h_w: Tensor) -> Tensor:
        device = next(model.parameters()).device
        rows = rows_N_Cin_d_h_w.to(device)
        if self.channels_last:
            rows = rows.contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode(), torch.autocast(device.type, enabled=self.amp):
            logits = model(rows)
        # one copy to float32 in the standard layout (softmax would otherwise copy a channels-last input again)
        return torch.softmax(logits.to(torch.float32, memory_format=torch.contiguous_format), dim=1).cpu()


def make_window_sampler(
    source: Source,
    model: nn.Module,
    samples: int,
    batch_size: int | None,
    flip_axes: Sequence[int],
    amp: bool,
    members: Sequence[nn.Module] = (),
    channels_last: bool = False,
) -> WindowSampler:
    """The uncertainty source called ``source`` bound to a trained model (and, for ``ensemble``, its other
    ``members``; K is then ``1 + len(members)``). With ``channels_last`` the sampler holds channels-last (NDHWC)
    copies of the models, which oneDNN convolves faster on a CPU, with their transposed convolutions in sub-pixel
    form (``subpixel``: the same map, faster there) and, in float32, their instance normalisation kept channels-last
    (``instance_norm``); the models passed in are left as they are."""
    if source not in SOURCES:
        raise ValueError(f"unknown uncertainty source {source!r}; valid: {', '.join(SOURCES)}")
    if source == "ensemble" and not members:
        raise ValueError("an ensemble sampler needs at least one member besides the round model")
    models = (model, *members) if source == "ensemble" else (model,)
    if channels_last:
        models = tuple(copy.deepcopy(m).to(memory_format=torch.channels_last_3d) for m in models)  # type: ignore[call-overload]
        for copied in models:
            # under bf16 autocast torch's instance norm (in float32, from the standard layout) is faster than ours
            use_subpixel_upsampling(copied, torch.channels_last_3d, channels_last_output=not amp)
            if not amp:
                use_channels_last_instance_norm(copied)
    if source == "ensemble":
        return WindowSampler(source, models, len(models), batch_size, amp=amp, channels_last=channels_last)
    return WindowSampler(source, models, samples, batch_size, tuple(flip_axes), amp, channels_last)
