"""Routes to faster float32 MC-dropout scoring on a CPU that were measured and not taken, against the engine's path.

Issue 12 asks for pool scoring 3× as fast as MONAI Label's epistemic path; in float32 on 2 cores the engine reaches
about 2.1–2.3× (BENCHMARKS.md). This script times one window's K = 8 passes of the clinical plan's network
(``profile_scoring.py``'s: U-Net 8-16-32-64, strides (2, 2, 1), (2, 2, 2), (2, 2, 2), 120×128×48, channels-last, the
automatic rows per call) as the engine scores it, beside each alternative, in interleaved rounds (a shared VM's
speed drifts), and reports the median seconds per window and the ratio to the engine's path:

- ``no_dropout``: the same passes with every dropout probability 0 (no masks drawn or applied): what dropout costs,
  and so the most any cheaper mask could save;
- ``mask_channels_last``: masks drawn in channels-last element order, so they line up with the activations (this
  changes which random word drops which activation: every score would move by MC noise);
- ``norm_vector_norm``: the instance norm's variance as a vector norm of the centred values (no squared copy);
- ``subpixel_conv_padding``: the sub-pixel layers padded by the convolution itself instead of ``F.pad``;
- ``two_workers``: two windows at once, one thread each, against one window on two threads;
- ``engine_forward``, ``unswapped_forward``, ``compiled_forward``: the K passes' forward calls without dropout (the
  best case for compilation: no hooks, no masks) of the engine's scoring copy, of the network without its sub-pixel
  and channels-last-norm layers, and of that network under ``torch.compile`` (inductor), each against the first.

    python benchmarks/scoring_avenues.py [--rounds 11] -> benchmarks/results/scoring_avenues.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast
from unittest import mock

import torch
import torch.nn.functional as F
from profile_scoring import SAMPLES, WINDOW, network, setting  # this script's folder is on sys.path when it runs
from run_benchmarks import machine
from torch import Tensor, nn

from activeseg.acquisition import instance_norm, subpixel, uncertainty
from activeseg.acquisition.uncertainty import WindowSampler, make_window_sampler
from activeseg.engine.malloc import keep_freed_memory

RESULT = Path(__file__).resolve().parent / "results" / "scoring_avenues.json"


def vector_norm_normalise(self: instance_norm.ChannelsLastInstanceNorm3d, x: Tensor) -> Tensor:
    """The channels-last instance norm with the variance taken as a vector norm of the centred values."""
    spatial = (2, 3, 4)
    centred = torch.empty_like(x)
    torch.sub(x, x.mean(dim=spatial, keepdim=True), out=centred)
    count = x.shape[2] * x.shape[3] * x.shape[4]
    variance = torch.linalg.vector_norm(centred, dim=spatial, keepdim=True).square_().div_(count)
    scale = torch.rsqrt(variance + self.eps)
    if self.weight is not None:
        scale = scale * self.weight.reshape(1, -1, 1, 1, 1)
    out = centred.mul_(scale)
    return out if self.bias is None else out.add_(self.bias.reshape(1, -1, 1, 1, 1))


def padded_conv_forward(self: subpixel.SubpixelConvTranspose3d, x: Tensor) -> Tensor:
    """The sub-pixel layer with symmetric padding done by the convolution, the extra phase rows cropped."""
    size = x.shape[2:]
    out = [
        (i - 1) * s - 2 * p + k + q
        for i, s, p, k, q in zip(size, self.stride, self.padding, self.kernel, self.output_padding, strict=True)
    ]
    rows = [math.ceil((o + p) / s) for o, p, s in zip(out, self.padding, self.stride, strict=True)]
    left = [j - 1 for j in self.taps]
    pad = [max(a, u - i) for a, u, i in zip(left, rows, size, strict=True)]  # a >= 0
    y = F.conv3d(x, self.weight, self.bias, padding=pad)
    first = [p - a for p, a in zip(pad, left, strict=True)]
    phases = y[:, :, first[0] : first[0] + rows[0], first[1] : first[1] + rows[1], first[2] : first[2] + rows[2]]
    shuffled = subpixel.pixel_shuffle(phases, self.stride, self.out_channels, self.channels_last_output)
    (p1, p2, p3), (o1, o2, o3) = self.padding, out
    return shuffled[:, :, p1 : p1 + o1, p2 : p2 + o2, p3 : p3 + o3]


@contextmanager
def channels_last_masks(model: nn.Module, row_seeds: list[int], channels_last: bool = False) -> Iterator[None]:
    """``uncertainty.seeded_dropout`` with each row's mask drawn in channels-last element order (D, H, W, C)."""
    streams = [uncertainty.random_bits(s, torch.device("cpu")) for s in row_seeds]

    def drop(module: nn.Module, _: tuple[Tensor, ...], output: Tensor) -> Tensor:
        p = float(module.p)  # type: ignore[arg-type]
        keep = uncertainty.keep_masks((*output.shape[2:], output.shape[1]), p, streams, output.device, output.dtype)
        layout = torch.channels_last_3d if channels_last and output.dim() == 5 else torch.contiguous_format
        dropped = torch.empty_like(output, memory_format=layout)
        return torch.mul(output, keep.movedim(-1, 1), out=dropped).mul_(1.0 / (1.0 - uncertainty.quantised_p(p)))

    model.eval()
    hooks = [layer.register_forward_hook(drop) for layer in uncertainty._dropout_layers(model)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    torch.set_num_threads(2)
    keep_freed_memory()  # as the CLI does
    model = network()
    window = torch.randn(1, 1, *WINDOW)

    def sampler(of: nn.Module) -> WindowSampler:
        return make_window_sampler("mc_dropout", of, SAMPLES, None, (), False, channels_last=True)

    engine, second = sampler(model), sampler(model)  # two copies: a sampler's dropout hooks live on its model
    silent = copy.deepcopy(model)
    for layer in silent.modules():
        if isinstance(layer, nn.Dropout):
            layer.p = 0.0
    no_dropout = sampler(silent)
    swapped = engine.models[0]  # what the engine's passes run (sub-pixel, channels-last norms), here without dropout
    unswapped = copy.deepcopy(model).eval().to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    compiled = cast(nn.Module, torch.compile(copy.deepcopy(unswapped)))

    def score(on: WindowSampler) -> Callable[[], object]:
        return lambda: on(window, [0])

    def under(replaced: Any, run: Callable[[], object]) -> Callable[[], object]:
        """``run`` with one attribute replaced (a ``mock.patch.object``, entered anew at each call)."""

        def call() -> object:
            with replaced:
                return run()

        return call

    def two_workers() -> None:
        torch.set_num_threads(1)
        workers = [threading.Thread(target=s, args=(window, [0])) for s in (engine, second)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        torch.set_num_threads(2)

    rows = 2  # the automatic rows per call of this window (CPU_ROW_VOXELS)
    batch = window.repeat(rows, 1, 1, 1, 1).contiguous(memory_format=torch.channels_last_3d)

    def forward(net: nn.Module) -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode():
                return [net(batch) for _ in range(SAMPLES // rows)]

        return call

    masks = mock.patch.object(uncertainty, "seeded_dropout", channels_last_masks)
    norm = mock.patch.object(instance_norm.ChannelsLastInstanceNorm3d, "_normalise", vector_norm_normalise)
    padding = mock.patch.object(subpixel.SubpixelConvTranspose3d, "forward", padded_conv_forward)
    paths: dict[str, tuple[Callable[[], object], float]] = {  # (timed call, windows it scores)
        "engine": (score(engine), 1),
        "no_dropout": (score(no_dropout), 1),
        "mask_channels_last": (under(masks, score(engine)), 1),
        "norm_vector_norm": (under(norm, score(engine)), 1),
        "subpixel_conv_padding": (under(padding, score(engine)), 1),
        "two_workers": (two_workers, 2),
        "engine_forward": (forward(swapped), 1),
        "unswapped_forward": (forward(unswapped), 1),
        "compiled_forward": (forward(compiled), 1),
    }
    start = time.perf_counter()
    for call, _ in paths.values():
        call()  # warm-up (and compilation)
    warm_up = time.perf_counter() - start
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, (call, windows) in paths.items():
            start = time.perf_counter()
            call()
            seconds[name].append((time.perf_counter() - start) / windows)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    ratios = {name: m / medians["engine"] for name, m in medians.items()}
    for name in ("unswapped_forward", "compiled_forward"):  # forward passes without dropout: against the engine's
        ratios[name] = medians[name] / medians["engine_forward"]
    for name, median in medians.items():
        print(f"{name:24s} {median:.3f} s per window   {ratios[name]:.3f}")
    summary = {
        **setting(),
        "rounds": args.rounds,
        "median_s_per_window": medians,
        "ratio": ratios,
        "ratio_means": "each path's median over the engine's; the forward passes' over engine_forward's",
        "warm_up_s": warm_up,
        "machine": machine(),
        "command": f"python benchmarks/scoring_avenues.py --rounds {args.rounds}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
