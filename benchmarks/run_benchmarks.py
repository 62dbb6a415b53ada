"""Measure activeseg on this machine and write BENCHMARKS.md.

Each part stores its raw results in ``benchmarks/results/<part>.json``; BENCHMARKS.md is rendered from those files
only, so every number in it can be traced and regenerated. Parts:

- ``speed``:    training steps/s, scored volumes/s (MC dropout), selection time for a 160-volume pool
- ``memory``:   peak RSS while scoring a 20- and a 160-volume pool (``score_memory.py``)
- ``full``:     full-data mean foreground Dice on the 40-volume test split (``benchmarks/full_data.yaml``)
- ``demo``:     ``activeseg demo`` wall time, peak RSS, each strategy's Dice per round, final Dice and AUBC
- ``units``:    volumes vs slices vs patches at equal voxel budgets (``units_benchmark.py``)
- ``hippocampus``: ``activeseg benchmark benchmarks/hippocampus.yaml`` (6 strategies x 3 seeds, full-data bound) into
  ``--bench-dir`` (resumable; default ``runs/benchmark-hippocampus``), then its summary: CIs, paired tests, ranking

    python benchmarks/run_benchmarks.py                 # every part (about 40 min + the hippocampus benchmark)
    python benchmarks/run_benchmarks.py --parts hippocampus --bench-dir /somewhere/big
    python benchmarks/run_benchmarks.py --parts speed memory
    python benchmarks/run_benchmarks.py --render-only   # rewrite BENCHMARKS.md from stored results

A lent GPU machine runs ``benchmarks/gpu_check.sh`` (the hippocampus grid of ``hippocampus_gpu.yaml`` and the units
benchmark at 400 iterations, seed 0) and ``benchmarks/gpu_units.sh`` (the units benchmark for seeds 1-4), each
returning a ``results.tar.gz``; unpacked together into DIR here, their summaries are stored as
``benchmarks/results/hippocampus-gpu.json`` and ``benchmarks/results/gpu-units/`` by

    python benchmarks/run_benchmarks.py --render-only --gpu-results DIR

This script measures; ``render_benchmarks.py`` writes BENCHMARKS.md from the stored results, and ``unit_seeds.py``
summarises the units benchmark over seeds (statistics from ``activeseg.bench.stats``, figure from
``activeseg.plots.band_png``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from render_benchmarks import CPU_UNITS, GPU_UNITS, PARTS, write_benchmarks  # this script's folder is on sys.path
from render_common import HERE, RESULTS
from torch import nn
from unit_seeds import summarise_unit_seeds, unit_bands_png

from activeseg.acquisition.embeddings import embed_volumes
from activeseg.acquisition.registry import STRATEGIES
from activeseg.acquisition.scorers import SKETCHES, bald, reduce_mean, strategy_maps, top_sites
from activeseg.acquisition.selectors import SelectionContext
from activeseg.acquisition.sliding import score_pool
from activeseg.acquisition.uncertainty import SOURCES, make_window_sampler
from activeseg.artifacts import read_json, write_bytes_atomic, write_json_atomic
from activeseg.bench.results import summarise
from activeseg.bench.stats import aubc
from activeseg.config import RunConfig, load_config
from activeseg.data.splits import RunData, open_data
from activeseg.demo import DEMO_STRATEGIES, default_config, find_hippocampus
from activeseg.engine.full_data import full_data_dice
from activeseg.engine.malloc import freed_memory_kept, keep_freed_memory
from activeseg.engine.model import build_model, cpu_bf16_native
from activeseg.engine.patches import Example
from activeseg.engine.training import train
from activeseg.oracles.simulated import SimulatedOracle
from activeseg.progress import SilentReporter
from activeseg.rundir.curves import read_curve
from activeseg.rundir.layout import FullDataLayout

BENCH_DIR = HERE.parent / "runs" / "benchmark-hippocampus"
"""Where the hippocampus benchmark keeps its run directories by default (checkpoints included: never committed)."""


def machine() -> dict[str, Any]:
    """What ran the benchmark."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "gpu": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": date.today().isoformat(),
        "cpu_bf16_native": cpu_bf16_native(),
        "malloc": "freed memory kept" if freed_memory_kept() else "system",  # activeseg.engine.malloc
    } | commit()


def commit() -> dict[str, str]:
    """The checkout's commit ({"commit": short hash, with "+changes" when tracked files other than the stored
    results and the BENCHMARKS.md rendered from them differ from it}), or nothing outside a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(HERE), *args], capture_output=True, text=True, check=True).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        changed = bool(
            git(
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ":(top)",
                ":(top,exclude)benchmarks/results",
                ":(top,exclude)BENCHMARKS.md",
            ).strip()
        )
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": head + ("+changes" if changed else "")}


def bench_speed(data_root: Path) -> dict[str, Any]:
    """Median training step, scoring and selection times with the demo's model and shapes (CPU)."""
    config = default_config().override({"data.root": data_root})
    data = open_data(config, SilentReporter())
    pool = list(data.pool.ids)
    torch.manual_seed(0)
    model = build_model(config.model, data.plan)
    examples = [Example(data.image(c), data.ground_truth(c)) for c in pool[:20]]
    steps: list[float] = []
    for _ in range(3):  # 3 x 10 steps; the first 2 steps of each are warm-up
        one = config.override({"train.iterations": 10}).train
        times: list[float] = []
        tick = [time.perf_counter()]

        def lap(_: int, times: list[float] = times, tick: list[float] = tick) -> None:
            now = time.perf_counter()
            times.append(now - tick[0])
            tick[0] = now

        train(model, examples, data.plan.patch_size, one, torch.device("cpu"), seed=0, progress=lap)
        steps += times[2:]
    strategy = config.strategy
    score_times: dict[str, list[float]] = {}
    members = [build_model(config.model, data.plan) for _ in range(strategy.mc_samples - 1)]
    roi = data.plan.patch_size
    for source in SOURCES:  # the same K for every source: an ensemble of K members
        sampler = make_window_sampler(source, model, strategy.mc_samples, strategy.mc_batch_size, (0,), False, members)
        score_times[source] = []
        for case_id in pool[:20]:
            tick0 = time.perf_counter()
            list(score_pool([(case_id, data.image(case_id))], sampler, bald, reduce_mean, lambda c: 0, roi))
            score_times[source].append(time.perf_counter() - tick0)
    per_volume = {source: statistics.median(times) for source, times in score_times.items()}
    labelled = pool[:5]
    candidates = [c for c in pool if c not in labelled]
    return {
        "model": {"channels": list(config.model.channels), "num_res_units": config.model.num_res_units},
        "patch": list(data.plan.patch_size),
        "batch_size": config.train.batch_size,
        "train_step_s_median": statistics.median(steps),
        "train_steps_per_s": 1 / statistics.median(steps),
        "mc_samples": strategy.mc_samples,
        "score_s_per_volume_median": per_volume["mc_dropout"],
        "scored_volumes_per_s": 1 / per_volume["mc_dropout"],
        "score_s_per_volume_by_source": per_volume,
        "ensemble_members_train_s_per_round": (strategy.mc_samples - 1)
        * config.train.iterations
        * statistics.median(steps),
        "train_iterations": config.train.iterations,
        "selection_ms_median_160_pool": selection_ms(config, data, model, labelled, candidates),
        "pool_size": len(candidates),
    }


def selection_ms(
    config: RunConfig, data: RunData, model: nn.Module, labelled: list[str], candidates: list[str]
) -> dict[str, float]:
    """Median milliseconds of every strategy's ``select`` (5 of ``candidates``), given everything it needs, computed
    from the real model and data the way the loop computes it (``engine.pool``)."""
    settings = config.strategy
    sampler = make_window_sampler("mc_dropout", model, settings.mc_samples, settings.mc_batch_size, (0,), amp=False)
    probe = [(c, data.image(c)) for c in [*labelled, *candidates]]
    foreground, border = SimulatedOracle(data.ground_truth).true_fractions(candidates)
    selection = {}
    for name, strategy in STRATEGIES.items():
        scores = sketches = embeddings = labelled_M_F = None
        if strategy.scorer is not None:
            items = list(
                score_pool(
                    probe,
                    sampler,
                    partial(strategy_maps, strategy.scorer),
                    reduce_mean,
                    lambda c: 0,
                    data.plan.patch_size,
                    sketch_sites=None if strategy.sketch is None else settings.sketch_sites,
                    choose_sites=SKETCHES[strategy.sketch] if strategy.sketch else top_sites,
                )
            )
            scores = {item.key: item.scores for item in items}
            if strategy.sketch is not None:
                sketches = {item.key: item.sketch for item in items if item.sketch is not None}
        if strategy.embedding is not None:
            embeddings = dict(embed_volumes(model, probe, strategy.embedding, data.plan.patch_size))
            labelled_M_F = np.stack([embeddings[c] for c in labelled])
        reps = []
        for i in range(20):
            context = SelectionContext(
                np.random.default_rng(i),
                embeddings=embeddings,
                labelled_embeddings_M_F=labelled_M_F,
                true_foreground=foreground if strategy.simulation_only else None,
                true_border=border if strategy.simulation_only else None,
                sketches=sketches,
            )
            tick0 = time.perf_counter()
            strategy.select(candidates, scores, 5, context)
            reps.append(time.perf_counter() - tick0)
        selection[name] = statistics.median(reps) * 1e3
    return selection


def bench_memory(data_root: Path) -> dict[str, Any]:
    """Peak RSS while scoring 20 and 160 volumes, each in a fresh process."""
    out: dict[str, Any] = {}
    for pool in (20, 160):
        command = [sys.executable, str(HERE / "score_memory.py"), "--pool", str(pool), "--data", str(data_root)]
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        out[str(pool)] = json.loads(result.stdout.strip().splitlines()[-1])
    out["ratio_160_to_20"] = out["160"]["peak_rss_mb"] / out["20"]["peak_rss_mb"]
    return out


def run_cli(args: list[str]) -> tuple[float, float]:
    """Run ``activeseg ARGS`` in a child process; return (wall seconds, peak RSS MB of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    tick = time.perf_counter()
    subprocess.run([sys.executable, "-m", "activeseg.cli", *args], check=True)
    wall = time.perf_counter() - tick
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024


def bench_full(data_root: Path) -> dict[str, Any]:
    """The full-data upper bound with the benchmark's longer training (``benchmarks/full_data.yaml``)."""
    out_dir = RESULTS / "full-data-run"
    shutil.rmtree(out_dir, ignore_errors=True)
    config_path = HERE / "full_data.yaml"
    wall, rss = run_cli(["full-data", str(config_path), "--out-dir", str(out_dir), "--data", str(data_root)])
    record = read_json(FullDataLayout(out_dir).record)
    config = load_config(config_path)
    shutil.rmtree(out_dir, ignore_errors=True)  # keep the numbers, not the checkpoint
    return {
        "config": config.to_dict() | {"data": {**config.to_dict()["data"], "root": "hippocampus"}},
        "n_train": record["n_labelled"],
        "dice": record["dice"],
        "train_seconds": record["train_seconds"],
        "wall_s": wall,
        "peak_rss_mb": rss,
    }


def bench_demo(data_root: Path) -> dict[str, Any]:
    """``activeseg demo`` from scratch: wall time, peak RSS, and each strategy's curve."""
    out_dir = RESULTS / "demo-run"
    shutil.rmtree(out_dir, ignore_errors=True)
    wall, rss = run_cli(["demo", "--out", str(out_dir), "--data", str(data_root)])
    curves = {}
    for name in DEMO_STRATEGIES:
        curve = read_curve(out_dir / name)
        curves[name] = {
            "n_labelled": curve.n_labelled,
            "mean_dice": curve.mean_dice,
            "final_dice": curve.mean_dice[-1],
            "aubc": aubc(curve.n_labelled, curve.mean_dice),
        }
    full = full_data_dice(out_dir / "full-data")
    for png in ("curve.png", "montage.png"):
        shutil.copy(out_dir / png, RESULTS / f"demo-{png}")
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"wall_s": wall, "peak_rss_mb": rss, "curves": curves, "full_data_dice": full}


def bench_units(data_root: Path) -> dict[str, Any]:
    """``units_benchmark.py`` (resumable, into /tmp/activeseg-units), read back from its stored summary."""
    subprocess.run([sys.executable, str(HERE / "units_benchmark.py"), "--data", str(data_root)], check=True)
    return dict(read_json(RESULTS / "units.json"))


def bench_hippocampus(data_root: Path, results_dir: Path) -> dict[str, Any]:
    """The hippocampus benchmark (resumes whatever ``results_dir`` holds), summarised from its stored results."""
    config = HERE / "hippocampus.yaml"
    run_cli(["benchmark", str(config), "--data", str(data_root), "--results-dir", str(results_dir), "--no-report"])
    return summarise(results_dir)


def store_gpu_results(directory: Path) -> None:
    """Summaries of unpacked device results (run directories, no checkpoints): ``hippocampus-gpu/`` from
    ``gpu_check.sh``, and ``units-seed-N/`` from ``gpu_check.sh`` (seed 0) and ``gpu_units.sh`` (more seeds)."""
    if (directory / "hippocampus-gpu").exists():
        machine_of_run = read_json(directory / "machine.json")
        summary = summarise(directory / "hippocampus-gpu") | {"machine": machine_of_run}
        write_json_atomic(RESULTS / "hippocampus-gpu.json", summary)
    flags = ["--iterations", "400", "--mc-samples", "8", "--device", "cuda", "--render-only"]
    for units in sorted(directory.glob("units-seed-*")):
        seed = units.name.rsplit("-", 1)[1]
        out = GPU_UNITS / f"seed-{seed}"
        script = [sys.executable, str(HERE / "units_benchmark.py"), "--out", str(units), "--seed", seed]
        subprocess.run([*script, "--results-dir", str(out), *flags], check=True)
    summarise_seed_dir(GPU_UNITS)


def summarise_seed_dir(directory: Path) -> None:
    """``summary.json`` and ``curves.png`` of the units benchmark's seeds in ``directory`` (``seed-N/units.json``)."""
    per_seed = [read_json(path) for path in sorted(directory.glob("seed-*/units.json"))]
    if per_seed:
        summary = summarise_unit_seeds(per_seed)
        write_json_atomic(directory / "summary.json", summary)
        write_bytes_atomic(directory / "curves.png", unit_bands_png(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--bench-dir", type=Path, default=BENCH_DIR, help="hippocampus benchmark results")
    parser.add_argument("--gpu-results", type=Path, default=None, help="an unpacked gpu_check.sh results.tar.gz")
    parser.add_argument(
        "--regime-results",
        type=Path,
        nargs="+",
        default=[],
        help="results dirs of benchmarks/regimes/*.yaml runs; each summary is stored as results/<name>.json",
    )
    args = parser.parse_args()
    keep_freed_memory()  # as the CLI does, which the parts it runs in a subprocess call (activeseg.engine.malloc)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for directory in args.regime_results:
        summary = summarise(directory) | {"machine": machine()}
        write_json_atomic(RESULTS / f"{summary['name']}.json", summary)
    if args.gpu_results is not None:
        store_gpu_results(args.gpu_results)
    if not args.render_only:
        data_root = find_hippocampus(args.data)
        bench_dir = args.bench_dir.resolve()
        runners: dict[str, Callable[[Path], dict[str, Any]]] = {
            "speed": bench_speed,
            "memory": bench_memory,
            "full": bench_full,
            "demo": bench_demo,
            "hippocampus": lambda root: bench_hippocampus(root, bench_dir),
            "units": bench_units,
        }
        for part in args.parts:
            print(f"benchmark: {part} …", flush=True)
            result = runners[part](data_root) | {"machine": machine()}
            write_json_atomic(RESULTS / f"{part}.json", result)
    summarise_seed_dir(CPU_UNITS)  # cpu_units.sh's seeds
    print(f"wrote {write_benchmarks()}")


if __name__ == "__main__":
    main()
