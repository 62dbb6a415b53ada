"""Peak resident memory while scoring a pool of N hippocampus volumes (MC dropout + BALD, streamed).

Prints one JSON line: {"pool": N, "peak_rss_mb": ..., "baseline_rss_mb": ..., "seconds": ...}. The peak is the
kernel's high-water mark (VmHWM), reset just before scoring starts, so dataset validation does not hide it.

    python benchmarks/score_memory.py --pool 160 [--data DIR] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from activeseg.acquisition.scorers import bald, reduce_mean
from activeseg.acquisition.uncertainty import make_sampler, score_pool
from activeseg.config import config_from_dict
from activeseg.data.splits import open_data
from activeseg.demo import find_hippocampus
from activeseg.engine.model import build_model
from activeseg.progress import SilentReporter


def rss_mb(field: str) -> float:
    """VmRSS or VmHWM of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pool", type=int, required=True)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128])
    args = parser.parse_args()
    torch.set_num_threads(2)
    data_section: dict[str, object] = {"root": str(find_hippocampus(args.data)), "test_size": 40}
    if args.cache:
        data_section["cache_dir"] = str(args.cache)
    strides = [2] * (len(args.channels) - 1)
    config = config_from_dict({"data": data_section, "model": {"channels": args.channels, "strides": strides}})
    data = open_data(config, SilentReporter())
    ids = list(data.pool.ids)[: args.pool]
    if len(ids) < args.pool:
        raise SystemExit(f"the pool has only {len(ids)} volumes")
    torch.manual_seed(0)
    model = build_model(config.model, data.num_classes)
    # Warm up (allocator, thread pool) on one volume so both pool sizes start from the same state.
    sampler = make_sampler("mc_dropout", model, args.samples, 8, (0,), amp=False)
    list(score_pool([(ids[0], data.image(ids[0]))], sampler, bald, reduce_mean, lambda c: 0))
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
    baseline = rss_mb("VmRSS")
    tick = time.perf_counter()
    volumes = ((c, data.image(c)) for c in ids)
    scores = [s.scores[0] for s in score_pool(volumes, sampler, bald, reduce_mean, lambda c: 0)]
    seconds = time.perf_counter() - tick
    assert len(scores) == args.pool
    result = {"pool": args.pool, "peak_rss_mb": rss_mb("VmHWM"), "baseline_rss_mb": baseline, "seconds": seconds}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
