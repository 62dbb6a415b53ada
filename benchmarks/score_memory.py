"""Peak resident memory of windowed scoring: one clinical-size volume at K=8 and K=32, and a pool of N volumes.

Every measurement runs in a fresh process and reads its own high-water mark (``resource.getrusage`` ``ru_maxrss``).

    python benchmarks/score_memory.py                   # K=8 and K=32 on a synthetic 512x512x256 CT volume (each in
                                                        # a fresh process) -> benchmarks/results/score_memory.json
    python benchmarks/score_memory.py --one --samples 8 --volume 96 96 64    # one measurement, one JSON line
    python benchmarks/score_memory.py --pool 160 [--data DIR] [--cache DIR]   # hippocampus pool: flat in pool size

The volume is scored by ``sliding.sliding_moments`` (MC dropout, Gaussian-fused windows) and BALD, with a MONAI
U-Net as ``engine.model.build_model`` builds it (channels 8-16-32-64, strides 2-2-2, dropout), on 2 CPU threads.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from run_benchmarks import machine  # this script's folder is on sys.path when it runs

from activeseg.acquisition.scorers import bald, reduce_mean
from activeseg.acquisition.sliding import score_pool, sliding_moments
from activeseg.acquisition.uncertainty import make_window_sampler
from activeseg.config import ModelConfig, config_from_dict
from activeseg.data.splits import open_data
from activeseg.demo import find_hippocampus
from activeseg.engine.malloc import keep_freed_memory
from activeseg.engine.model import build_model, network_plan
from activeseg.progress import SilentReporter

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "score_memory.json"
CHANNELS = (8, 16, 32, 64)
BATCH_SIZE = 8
"""Forward rows per model call: 8, at least as many as ``strategy.mc_batch_size``'s automatic CPU choice
(``uncertainty.rows_per_call``) for these windows, so the peak is an upper bound for the default."""


def peak_rss_gb() -> float:
    """This process's peak resident set size so far, in GB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def ct_like(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A float32 image_1_D_H_W that looks like a normalised CT: air, a body ellipse, brighter organs, noise.

    Written one slice at a time, so making it costs no more than the image itself.
    """
    rng = np.random.default_rng(seed)
    d, h, w = shape
    image = np.empty((1, d, h, w), dtype=np.float32)
    y = ((np.arange(h, dtype=np.float32) - h / 2) / (0.42 * h))[:, None]
    x = ((np.arange(w, dtype=np.float32) - w / 2) / (0.45 * w))[None, :]
    organs = [(rng.uniform(0.2, 0.8, 3) * shape, rng.uniform(0.05, 0.15) * min(shape)) for _ in range(6)]
    body = (y**2 + x**2) < 1.0
    for i in range(d):
        slice_h_w = np.where(body, np.float32(0.0), np.float32(-1.0))
        for centre, radius in organs:
            yy, xx = np.arange(h)[:, None] - centre[1], np.arange(w)[None, :] - centre[2]
            inside = yy**2 + xx**2 + (i - centre[0]) ** 2 < radius**2
            slice_h_w[inside] = 0.4
        slice_h_w += rng.standard_normal((h, w), dtype=np.float32) * np.float32(0.05)
        image[0, i] = slice_h_w
    return image


def measure_one(
    samples: int, volume: tuple[int, int, int], roi: tuple[int, int, int], overlap: float, batch_size: int
) -> dict[str, Any]:
    """Score one synthetic volume here (K = ``samples`` MC dropout passes, BALD); figures as a dict."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    network = ModelConfig(channels=CHANNELS, strides=(2, 2, 2), dropout=0.2)
    model = build_model(network, network_plan(network))
    image = ct_like(volume)
    sampler = make_window_sampler("mc_dropout", model, samples, batch_size, (), amp=False)
    before = peak_rss_gb()
    tick = time.perf_counter()
    moments = sliding_moments(image, sampler, roi, overlap, windows_per_batch=1, seed=0)
    score = reduce_mean(bald(moments), moments.mean_probs_C_D_H_W)
    seconds = time.perf_counter() - tick
    return {
        "samples": samples,
        "volume": list(volume),
        "roi": list(roi),
        "overlap": overlap,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "peak_rss_gb": peak_rss_gb(),
        "peak_rss_gb_before_scoring": before,
        "seconds": seconds,
        "mean_bald": score,
    }


def measure_pool(pool: int, data: Path | None, cache: Path | None, samples: int, channels: list[int]) -> dict[str, Any]:
    """Score the first ``pool`` hippocampus volumes here; figures as a dict (MB, as ``run_benchmarks`` stores them)."""
    torch.set_num_threads(2)
    data_section: dict[str, object] = {"root": str(find_hippocampus(data)), "test_size": 40}
    if cache:
        data_section["cache_dir"] = str(cache)
    strides = [2] * (len(channels) - 1)
    config = config_from_dict({"data": data_section, "model": {"channels": channels, "strides": strides}})
    run_data = open_data(config, SilentReporter())
    ids = list(run_data.pool.ids)[:pool]
    if len(ids) < pool:
        raise SystemExit(f"the pool has only {len(ids)} volumes")
    torch.manual_seed(0)
    model = build_model(config.model, run_data.plan)
    sampler = make_window_sampler("mc_dropout", model, samples, BATCH_SIZE, (0,), amp=False)
    roi = run_data.plan.patch_size
    # Warm up (allocator, thread pool) on one volume so both pool sizes start from the same state.
    list(score_pool([(ids[0], run_data.image(ids[0]))], sampler, bald, reduce_mean, lambda c: 0, roi))
    Path("/proc/self/clear_refs").write_text("5")  # reset the kernel's high-water mark (VmHWM) before scoring
    baseline = _status_mb("VmRSS")
    tick = time.perf_counter()
    volumes = ((c, run_data.image(c)) for c in ids)
    scores = [s.scores[0] for s in score_pool(volumes, sampler, bald, reduce_mean, lambda c: 0, roi)]
    seconds = time.perf_counter() - tick
    assert len(scores) == pool
    return {"pool": pool, "peak_rss_mb": _status_mb("VmHWM"), "baseline_rss_mb": baseline, "seconds": seconds}


def _status_mb(field: str) -> float:
    """VmRSS or VmHWM of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def suite(volume: tuple[int, int, int], roi: tuple[int, int, int], overlap: float, out: Path) -> dict[str, Any]:
    """K=8 and K=32, each in a fresh process; the figures and their ratio, written to ``out``."""
    runs = {}
    for samples in (8, 32):
        command = [sys.executable, __file__, "--one", "--samples", str(samples), "--overlap", str(overlap)]
        command += ["--volume", *map(str, volume), "--roi", *map(str, roi)]
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        runs[f"K={samples}"] = json.loads(result.stdout.strip().splitlines()[-1])
        print(json.dumps(runs[f"K={samples}"]), flush=True)
    summary = {
        **runs,
        "ratio_peak_rss_K32_to_K8": runs["K=32"]["peak_rss_gb"] / runs["K=8"]["peak_rss_gb"],
        "machine": machine(),
        "goals": {"peak_rss_gb_K8_below": 6.0, "ratio_K32_to_K8_at_most": 1.10},
        "command": "python benchmarks/score_memory.py " + " ".join(sys.argv[1:]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", action="store_true", help="one measurement in this process")
    parser.add_argument("--pool", type=int, default=None, help="score this many hippocampus volumes instead")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--volume", type=int, nargs=3, default=[512, 512, 256])
    parser.add_argument("--roi", type=int, nargs=3, default=[96, 96, 64])
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="forward rows per model call")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128])
    args = parser.parse_args()
    keep_freed_memory()  # as the CLI does (activeseg.engine.malloc); each measurement's process calls this too
    volume = (args.volume[0], args.volume[1], args.volume[2])
    roi = (args.roi[0], args.roi[1], args.roi[2])
    if args.pool is not None:
        print(json.dumps(measure_pool(args.pool, args.data, args.cache, args.samples, args.channels)))
    elif args.one:
        print(json.dumps(measure_one(args.samples, volume, roi, args.overlap, args.batch_size)))
    else:
        print(json.dumps(suite(volume, roi, args.overlap, args.out), indent=2))


if __name__ == "__main__":
    main()
