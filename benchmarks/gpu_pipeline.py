"""The clinical-size pipeline's device checks (issue 12), prepared for a lent GPU and runnable on a CPU at toy size.

- ``speed`` (clinical-shape set, DynUNet plan): the training step with the whole data path (memory-mapped cache,
  patch sampling, DataLoader workers) as a share of the same network's bare step on synthetic tensors already on
  the device (goal ≥ 90%: the data path does not starve the device), and MC-dropout pool scoring per volume as a
  share of the bare forward passes it is made of (windows × K rows, the same rows per call, no dropout, no fusion).
- ``dynunet``: the full-data bound of the DynUNet plan on the hippocampus test split (goal ≥ 0.885; nnU-Net reports
  about 0.89).

Every timed step ends with a device synchronisation. Writes ``OUT/gpu_pipeline.json``::

    python benchmarks/gpu_pipeline.py --out DIR [--parts speed dynunet] [--iterations 4000] [--device cuda]
    python benchmarks/gpu_pipeline.py --out DIR --device cpu --small --steps 4 --iterations 4   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from run_benchmarks import machine
from step_timing import step_seconds, synchronised

from activeseg.acquisition.scorers import bald, reduce_mean
from activeseg.acquisition.sliding import WindowGrid, score_pool
from activeseg.acquisition.uncertainty import rows_per_call
from activeseg.config import RunConfig, config_from_dict
from activeseg.data.clinical import make_clinical_dataset
from activeseg.data.splits import open_data
from activeseg.demo import find_hippocampus
from activeseg.engine.full_data import full_data_run
from activeseg.engine.model import build_model, scoring_sampler, select_device, use_amp
from activeseg.engine.patches import Example
from activeseg.progress import RichReporter, SilentReporter

NNUNET_FILTERS = {"channels": [32, 64, 128, 256, 320], "num_res_units": 0}
"""nnU-Net's 3D full-resolution widths (capped at 320) and plain convolution blocks; the plan sets the strides."""


def run_config(root: Path, cache: Path, device: str, iterations: int, workers: int, small: bool) -> RunConfig:
    """DynUNet with nnU-Net's filters planned for ``device``, 8 MC-dropout samples, the demo's 40 test cases; ``small``
    (a smoke run) takes 12 cases, 4 for testing, and 32×32×16 patches (and the speed part runs on hippocampus)."""
    smoke = {"max_cases": 12, "test_size": 4} if small else {}
    return config_from_dict(
        {
            "name": root.name,
            "data": {"root": str(root), "test_size": 40, "split_seed": 0, "cache_dir": str(cache)} | smoke,
            "plan": {"patch_size": [32, 32, 16]} if small else {},
            "model": {"name": "dynunet", "dropout": 0.1} | ({} if small else NNUNET_FILTERS),
            "train": {"iterations": iterations, "device": device, "workers": workers},
            "strategy": {"name": "bald", "mc_samples": 8},
        }
    )


def bench_speed(clinical: Path, work: Path, device_name: str, steps: int, workers: int, small: bool) -> dict[str, Any]:
    config = run_config(clinical, work / "cache", device_name, steps, workers, small).override({"data.test_size": 2})
    data = open_data(config, SilentReporter())
    plan, pool = data.plan, list(data.pool.ids)
    device = select_device(config.train)
    amp, now = use_amp(config.train, device), synchronised(device)
    torch.manual_seed(0)
    model = build_model(config.model, plan).to(device)
    examples = [Example(data.image(c), data.ground_truth(c)) for c in pool]
    step, bare_step = step_seconds(model, examples, plan, config.train, device, amp)

    sampler = scoring_sampler(config, model)
    volumes = pool[:3]
    scoring = []
    for case_id in [volumes[0], *volumes]:  # the first call is untimed (allocator, kernels)
        start = now()
        list(score_pool([(case_id, data.image(case_id))], sampler, bald, reduce_mean, lambda c: 0, plan.patch_size))
        scoring.append(now() - start)
    windows = [len(WindowGrid.of(data.shape_of(c), plan.patch_size, 0.5).starts_W_3) for c in volumes]
    rows = rows_per_call(config.strategy.mc_batch_size, int(torch.tensor(plan.patch_size).prod()), device)
    batch = torch.randn(rows, plan.channels, *plan.patch_size, device=device)
    model.eval()
    forward = []
    with torch.inference_mode(), torch.autocast(device.type, enabled=amp):
        for _ in range(steps):
            start = now()
            model(batch)
            forward.append((now() - start) / rows)
    bare_scoring = [statistics.median(forward) * w * config.strategy.mc_samples for w in windows]  # per volume
    shares = [b / s for b, s in zip(bare_scoring, scoring[1:], strict=True)]
    return {
        "patch": list(plan.patch_size),
        "batch": plan.batch_size,
        "loader_workers": workers,
        "train_step_s": step,
        "bare_step_s": bare_step,
        "bare_over_step": bare_step / step,
        "score_s_per_volume": scoring[1:],
        "windows_per_volume": windows,
        "rows_per_call": rows,
        "bare_forward_s_per_volume": bare_scoring,
        "bare_over_scoring": statistics.median(shares),
        "mc_samples": config.strategy.mc_samples,
        "amp": amp,
    }


def bench_dynunet(
    hippocampus: Path, work: Path, device_name: str, iterations: int, workers: int, small: bool
) -> dict[str, Any]:
    config = run_config(hippocampus, work / "cache", device_name, iterations, workers, small)
    record = full_data_run(config, work / "dynunet-full-data", RichReporter())
    plan = json.loads((work / "dynunet-full-data" / "plan.json").read_text())
    return {
        "iterations": iterations,
        "mean_dice": record["dice"]["mean_foreground"],
        "train_seconds": record["train_seconds"],
        "patch": plan.get("patch_size"),
        "batch": plan.get("batch_size"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parts", nargs="+", choices=["speed", "dynunet"], default=["speed", "dynunet"])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--data", type=Path, default=None, help="the hippocampus data (default: as the demo finds it)")
    parser.add_argument("--cases", type=int, default=40, help="clinical-shape cases (speed)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (speed)")
    parser.add_argument("--iterations", type=int, default=4000, help="full-data training iterations (dynunet)")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers")
    parser.add_argument("--small", action="store_true", help="a smoke run: few cases, small patches")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (use --device cpu for a smoke run)")
    args.out.mkdir(parents=True, exist_ok=True)
    hippocampus = find_hippocampus(args.data)
    result: dict[str, Any] = {"machine": machine(), "device": args.device}
    path = args.out / "gpu_pipeline.json"
    for part in args.parts:  # written after each part: a run stopped by its budget keeps what finished
        if part == "speed":
            clinical = args.out / "clinical"
            if not args.small and not (clinical / "dataset.json").exists():
                make_clinical_dataset(hippocampus, clinical, n_cases=args.cases, seed=0)
            clinical = hippocampus if args.small else clinical  # a smoke run scores small volumes
            result["speed"] = bench_speed(clinical, args.out, args.device, args.steps, args.workers, args.small)
        else:
            result["dynunet"] = bench_dynunet(
                hippocampus, args.out, args.device, args.iterations, args.workers, args.small
            )
        path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        print(json.dumps(result[part], indent=2))


if __name__ == "__main__":
    main()
