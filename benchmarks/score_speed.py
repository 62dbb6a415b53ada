"""Speed of windowed MC-dropout scoring against MONAI Label's epistemic path, on CPU.

One synthetic 192x192x64 CT-like volume, the same U-Net (channels 8-16-32-64, strides 2-2-2, dropout), the same
96x96x64 Gaussian-weighted windows (overlap 0.5) and K=8:

- ``monailabel``: what MONAI Label's ``EpistemicScoring`` does: K sequential full ``sliding_window_inference``
  passes with dropout on (``sw_batch_size`` 1), the K×C×volume softmax outputs stacked in memory, then numpy
  entropy of the mean over the foreground channels, and its mean;
- ``ours``: ``sliding.sliding_moments`` (a window's K passes batched into model calls of the automatic rows per call,
  torch.inference_mode, moments fused instead of K volumes), then the same score, MONAI Label's
  (``foreground_entropy``, the ``epistemic`` strategy's scorer), and its mean; and variants: channels-last (NDHWC)
  windows and weights, bf16 autocast (``strategy.cpu_bf16``), and both. Like the engine, it computes only the
  moments the scorer reads (p̄ here);
- ``ours_bf16_channels_last_bald``: the fastest path scoring BALD instead, which also needs each sample's entropy
  (MONAI Label has no BALD; this row shows what the per-sample entropy costs);
- the ``_rows8`` rows: the K = 8 passes of a window in one model call (``strategy.mc_batch_size: 8``, the default
  until 2026-11-29) instead of the automatic rows per call (``uncertainty.rows_per_call``: 2 here).

The bf16 paths and the ranking check run only on a CPU that convolves bf16 natively (``machine.cpu_bf16_native``);
elsewhere the engine ignores ``strategy.cpu_bf16``. bf16 counts only if it moves the hippocampus ranking no more
than the noise every run already has: the ranking check trains the demo model on 20 hippocampus volumes and scores
the other 140 (BALD, mean reduction) in float32 and in bf16 with the same dropout masks, and in float32 with other
masks; bf16 is adopted (``bf16_adopted``) when its top-5 and top-20 overlap and rank correlation with float32 are at
least those of the other masks. (Until 2026-11-29 the rule was that bf16 leave the top 5 and top 20 unchanged,
stricter than two float32 runs with different seeds agree with each other; ``top5_same`` and ``top20_same`` still
record it.)

    python benchmarks/score_speed.py [--runs 3] [--no-ranking] -> benchmarks/results/score_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from run_benchmarks import machine  # this script's folder is on sys.path when it runs
from scipy.stats import spearmanr
from score_memory import ct_like
from torch import Tensor, nn

from activeseg.acquisition.scorers import bald, moments_needed, reduce_mean, strategy_maps
from activeseg.acquisition.sliding import score_pool, sliding_moments
from activeseg.acquisition.uncertainty import WindowSampler, enable_mc_dropout, make_window_sampler
from activeseg.config import ModelConfig
from activeseg.data.splits import open_data
from activeseg.demo import default_config, find_hippocampus
from activeseg.engine.malloc import keep_freed_memory
from activeseg.engine.model import build_model, cpu_bf16_native, network_plan
from activeseg.engine.patches import Example
from activeseg.engine.training import train
from activeseg.progress import SilentReporter
from activeseg.seeds import derive_seed

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "score_speed.json"
VOLUME = (192, 192, 64)
ROI = (96, 96, 64)
OVERLAP = 0.5
SAMPLES = 8


def monailabel_epistemic(
    model: nn.Module,
    image_1_D_H_W: np.ndarray | Callable[[], np.ndarray],
    roi: tuple[int, ...] = ROI,
    samples: int = SAMPLES,
    overlap: float = OVERLAP,
) -> float:
    """MONAI Label's path: K full sliding-window passes with dropout on, stacked; numpy entropy of the mean.

    Given a function instead of an array, it is called before each pass, as MONAI Label's ``infer_seg`` runs the
    app's pre-transforms (load, orient, resample, window) once per sample."""

    def as_inputs(image: np.ndarray) -> Tensor:
        return torch.from_numpy(np.array(image, dtype=np.float32))[None]

    if callable(image_1_D_H_W):
        reload = image_1_D_H_W

        def load() -> Tensor:
            return as_inputs(reload())
    else:
        fixed = as_inputs(image_1_D_H_W)  # converted once, not once per pass

        def load() -> Tensor:
            return fixed

    def predictor(window: Tensor) -> Tensor:
        return torch.softmax(model(window), dim=1)

    enable_mc_dropout(model)
    try:
        outputs = []
        for _ in range(samples):
            with torch.no_grad():
                out = sliding_window_inference(load(), roi, 1, predictor, overlap=overlap, mode="gaussian")
            assert isinstance(out, Tensor)
            outputs.append(out[0])
    finally:
        model.eval()
    accum_K_C_D_H_W = torch.stack(outputs)[:, 1:].numpy().astype(np.float32)  # foreground channels, as it does
    accum_K_C_D_H_W[accum_K_C_D_H_W <= 0] = 0.00005
    entropy_D_H_W = np.zeros(accum_K_C_D_H_W.shape[2:], dtype=np.float32)
    for c in range(accum_K_C_D_H_W.shape[1]):
        mean = accum_K_C_D_H_W[:, c].sum(axis=0) / samples
        entropy_D_H_W += -mean * np.log(mean)
    return float(np.nanmean(entropy_D_H_W))


def ours(
    sampler: WindowSampler, scorer: str = "foreground_entropy", roi: tuple[int, ...] = ROI, windows_per_batch: int = 1
) -> Callable[[np.ndarray], float]:
    """sliding_moments with this sampler (by default one window per batch, as MONAI Label), then the scorer's
    mean."""

    def score(image_1_D_H_W: np.ndarray) -> float:
        needs = moments_needed(scorer)
        moments = sliding_moments(image_1_D_H_W, sampler, roi, OVERLAP, windows_per_batch, seed=0, needs=needs)
        return reduce_mean(strategy_maps(scorer, moments)[0], moments.mean_probs_C_D_H_W)

    return score


def timed(variants: dict[str, Callable[[np.ndarray], float]], image: np.ndarray, runs: int) -> dict[str, Any]:
    """Median wall time of ``runs`` calls of each variant, after one untimed warm-up call each; the runs are
    interleaved (every variant once per round) so a change in the machine's load hits all of them alike."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    values = {name: score(image) for name, score in variants.items()}
    for _ in range(runs):
        for name, score in variants.items():
            tick = time.perf_counter()
            values[name] = score(image)
            seconds[name].append(time.perf_counter() - tick)
            print(name, seconds[name][-1], flush=True)
    return {
        name: {"median_s": statistics.median(seconds[name]), "runs_s": seconds[name], "mean_entropy": values[name]}
        for name in variants
    }


def bf16_ranking() -> dict[str, Any]:
    """Hippocampus pool ranks (BALD, mean reduction) of a trained demo model in float32 and in bf16 autocast with
    the same dropout masks, set against the noise every run already has: float32 with other dropout masks."""
    config = default_config().override({"data.root": find_hippocampus()})
    data = open_data(config, SilentReporter())
    pool = list(data.pool.ids)
    torch.manual_seed(0)
    model = build_model(config.model, data.plan)
    labelled = [Example(data.image(c), data.ground_truth(c)) for c in pool[:20]]
    train(model, labelled, data.plan.patch_size, config.train, torch.device("cpu"), seed=0)
    candidates = pool[20:]

    def scores(amp: bool, masks: int) -> np.ndarray:
        sampler = make_window_sampler("mc_dropout", model, SAMPLES, 8, (), amp, channels_last=True)  # as pool.py
        items = score_pool(
            ((c, data.image(c)) for c in candidates),
            sampler,
            bald,
            reduce_mean,
            lambda c: derive_seed(masks, c),
            data.plan.patch_size,
        )
        return np.array([item.scores[0] for item in items])

    full, half, reseeded = scores(False, 0), scores(True, 0), scores(False, 1)

    def agreement(other: np.ndarray) -> dict[str, Any]:
        order, other_order = np.argsort(-full, kind="stable"), np.argsort(-other, kind="stable")
        return {
            **{f"top{k}_overlap": len(set(order[:k]) & set(other_order[:k])) for k in (5, 20)},
            "top5_order_same": bool((order[:5] == other_order[:5]).all()),
            "spearman": float(spearmanr(full, other).statistic),
            "max_abs_score_difference": float(np.abs(full - other).max()),
        }

    bf16, noise = agreement(half), agreement(reseeded)
    return {
        "pool": len(candidates),
        **bf16,
        "top5_same": bf16["top5_overlap"] == 5,
        "top20_same": bf16["top20_overlap"] == 20,
        "max_score": float(full.max()),
        "other_dropout_masks": noise,
        "within_noise": all(bf16[k] >= noise[k] for k in ("top5_overlap", "top20_overlap", "spearman")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-ranking", action="store_true", help="skip the bf16 ranking check")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    torch.set_num_threads(2)
    keep_freed_memory()  # as the CLI does (activeseg.engine.malloc)
    native = cpu_bf16_native()  # without it bf16 runs a reference convolution about 20x slower: not timed
    ranking = None if args.no_ranking or not native else bf16_ranking()
    print(json.dumps({"bf16_ranking": ranking}), flush=True)
    torch.manual_seed(0)
    network = ModelConfig(channels=(8, 16, 32, 64), strides=(2, 2, 2), dropout=0.1)
    model = build_model(network, network_plan(network))
    image = ct_like(VOLUME)

    def sampler(amp: bool, channels_last: bool, rows: int | None = None) -> WindowSampler:
        return make_window_sampler("mc_dropout", model, SAMPLES, rows, (), amp, channels_last=channels_last)

    variants: dict[str, Callable[[np.ndarray], float]] = {
        "monailabel": lambda x: monailabel_epistemic(model, x),
        "ours": ours(sampler(False, False)),
        "ours_channels_last": ours(sampler(False, True)),
        "ours_channels_last_rows8": ours(sampler(False, True, SAMPLES)),
    }
    if native:
        variants |= {
            "ours_bf16": ours(sampler(True, False)),
            "ours_bf16_channels_last": ours(sampler(True, True)),
            "ours_bf16_channels_last_bald": ours(sampler(True, True), "bald"),
            "ours_bf16_channels_last_rows8": ours(sampler(True, True, SAMPLES)),
        }
    results = timed(variants, image, args.runs)
    baseline = results["monailabel"]["median_s"]
    summary = {
        "volume": list(VOLUME),
        "roi": list(ROI),
        "overlap": OVERLAP,
        "samples": SAMPLES,
        "threads": torch.get_num_threads(),
        "runs": args.runs,
        "results": results,
        "speedup_vs_monailabel": {name: baseline / r["median_s"] for name, r in results.items()},
        "bf16_ranking": ranking,
        "bf16_adopted": bool(ranking is not None and ranking["within_noise"]),
        "note": "the bf16 paths (strategy.cpu_bf16) count only when bf16_adopted: bf16 moves the hippocampus ranking "
        "no more than drawing other dropout masks in float32 does (top-5 and top-20 overlap, Spearman); every path "
        "but the _bald one computes MONAI Label's score (foreground entropy of the mean), so the mean entropies "
        "differ only by the dropout masks drawn",
        "machine": machine(),
        "goal_speedup": 3.0,
        "command": "python benchmarks/score_speed.py",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["speedup_vs_monailabel"], indent=2))


if __name__ == "__main__":
    main()
