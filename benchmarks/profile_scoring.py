"""Where a CPU spends an MC-dropout scoring pass: torch's profiler over one window's K passes, by kind of operator.

The network and window are those the clinical-shape set plans (``pipeline_benchmark.py``): the U-Net with channels
8-16-32-64, strides (2, 2, 1), (2, 2, 2), (2, 2, 2), dropout 0.1, a 120×128×48 window, K = 8 passes in the automatic
rows per call, channels-last, in float32 and under bf16 autocast (``strategy.cpu_bf16``). Self CPU time is summed
per operator and grouped: convolutions, normalisation, the dropout masks (drawing, comparing, applying), copies
(layout and dtype), activations and residual sums, concatenation, softmax and the rest.

    python benchmarks/profile_scoring.py [--repeats 3] -> benchmarks/results/profile_scoring.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from run_benchmarks import machine  # this script's folder is on sys.path when it runs
from torch import nn

from activeseg.acquisition.instance_norm import NORM_RANGE
from activeseg.acquisition.uncertainty import make_window_sampler
from activeseg.config import ModelConfig
from activeseg.engine.malloc import keep_freed_memory
from activeseg.engine.model import build_model, cpu_bf16_native, network_plan

RESULT = Path(__file__).resolve().parent / "results" / "profile_scoring.json"
WINDOW = (120, 128, 48)
STRIDES = [(2, 2, 1), (2, 2, 2), (2, 2, 2)]
SAMPLES = 8
GROUPS = {
    "convolution": ("convolution",),
    "normalisation": ("batch_norm", "instance_norm"),
    "dropout masks": ("random_", "aten::ge", "aten::where", "aten::mul"),
    "copies (layout, dtype)": ("copy_", "_to_copy", "clone", "contiguous"),
    "activation and residual sums": ("prelu", "aten::add"),
    "concatenation": ("aten::cat",),
    "softmax": ("softmax",),
}
"""Operator-name fragments per group (first match wins; ``aten::mul`` is the dropout's scaling). Every operator
inside the channels-last instance norm (its ``NORM_RANGE``) counts as normalisation instead."""


def within(event: Any, name: str) -> bool:
    """Whether a profiler event ran inside a ``record_function`` range called ``name``."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == name:
            return True
        parent = parent.cpu_parent
    return False


def group_of(name: str) -> str:
    return next((group for group, parts in GROUPS.items() if any(p in name for p in parts)), "other")


def network() -> nn.Module:
    """The clinical plan's U-Net, with seeded weights."""
    torch.manual_seed(0)
    config = ModelConfig(channels=(8, 16, 32, 64), dropout=0.1)
    return build_model(config, dataclasses.replace(network_plan(config), strides=STRIDES))


def setting() -> dict[str, Any]:
    """The window, strides and K, as a summary records them."""
    return {"window": list(WINDOW), "strides": [list(s) for s in STRIDES], "samples": SAMPLES}


def profile(amp: bool, repeats: int) -> dict[str, Any]:
    """Self CPU seconds per group over ``repeats`` scorings of one window, and each group's share."""
    model = network()
    sampler = make_window_sampler("mc_dropout", model, SAMPLES, None, (), amp, channels_last=True)
    window = torch.randn(1, 1, *WINDOW)
    sampler(window, [0])  # warm-up
    with torch.profiler.profile() as prof:
        for _ in range(repeats):
            sampler(window, [0])
    seconds: dict[str, float] = {}
    for event in prof.events():
        if event.name.startswith("aten::"):
            group = "normalisation" if within(event, NORM_RANGE) else group_of(event.name)
            seconds[group] = seconds.get(group, 0.0) + event.self_cpu_time_total / 1e6 / repeats
    total = sum(seconds.values())
    return {
        "seconds_per_window": total,
        "groups": {g: {"seconds": s, "share": s / total} for g, s in sorted(seconds.items(), key=lambda i: -i[1])},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    torch.set_num_threads(2)
    keep_freed_memory()  # as the CLI does (activeseg.engine.malloc)
    paths = {"float32_channels_last": profile(False, args.repeats)}
    if cpu_bf16_native():  # elsewhere bf16 runs a reference convolution, about 20x slower: nothing to learn
        paths["bf16_channels_last"] = profile(True, args.repeats)
    for name, result in paths.items():
        print(f"{name}: {result['seconds_per_window']:.2f} s per window (K = {SAMPLES})")
        for group, row in result["groups"].items():
            print(f"  {group:30s} {row['share']:6.1%}")
    summary = {
        **setting(),
        "repeats": args.repeats,
        "paths": paths,
        "machine": machine(),
        "command": "python benchmarks/profile_scoring.py",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
