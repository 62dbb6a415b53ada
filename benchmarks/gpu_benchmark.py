"""The same engine on a CUDA GPU: full-data Dice with longer training, and the demo's wall time.

Writes ``OUT/gpu.json`` (and the demo's curve PNG). ``run_benchmarks.py --render-only`` folds a copy of it, stored
as ``benchmarks/results/gpu.json``, into BENCHMARKS.md.

    python benchmarks/gpu_benchmark.py --out DIR [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from activeseg.artifacts import write_json_atomic
from activeseg.bench.stats import aubc
from activeseg.config import load_config
from activeseg.demo import find_hippocampus, run_demo
from activeseg.engine.full_data import full_data_run

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    root = find_hippocampus(args.data)
    work = Path("/tmp/activeseg-gpu")
    shutil.rmtree(work, ignore_errors=True)
    result: dict[str, object] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}

    tick = time.perf_counter()
    demo = run_demo(work / "demo", root)
    result["demo"] = {
        "wall_s": time.perf_counter() - tick,
        "full_data_dice": demo.full_data_dice,
        "curves": {
            c.label: {"n_labelled": c.n_labelled, "mean_dice": c.mean_dice, "aubc": aubc(c.n_labelled, c.mean_dice)}
            for c in demo.curves
        },
    }
    shutil.copy(demo.curve_png, args.out / "gpu-demo-curve.png")
    print(json.dumps(result["demo"]), flush=True)

    config = load_config(HERE / "full_data_gpu.yaml").override({"data.root": root})
    tick = time.perf_counter()
    record = full_data_run(config, work / "full")
    result["full"] = {
        "wall_s": time.perf_counter() - tick,
        "train_seconds": record["train_seconds"],
        "dice": record["dice"],
        "n_train": record["n_labelled"],
        "iterations": config.train.iterations,
        "batch_size": config.train.batch_size,
        "channels": list(config.model.channels),
    }
    print(json.dumps(result["full"]), flush=True)
    write_json_atomic(args.out / "gpu.json", result)


if __name__ == "__main__":
    main()
