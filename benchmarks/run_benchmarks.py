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
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from activeseg.acquisition.embeddings import embed_volumes
from activeseg.acquisition.registry import STRATEGIES
from activeseg.acquisition.scorers import SKETCHES, bald, reduce_mean, strategy_maps, top_sites
from activeseg.acquisition.selectors import BATCHBALD_SITES, SelectionContext
from activeseg.acquisition.sliding import score_pool
from activeseg.acquisition.uncertainty import SOURCES, make_window_sampler
from activeseg.bench.stats import aubc
from activeseg.config import load_config
from activeseg.data.splits import open_data
from activeseg.demo import DEMO_STRATEGIES, default_config, find_hippocampus
from activeseg.engine.model import build_model
from activeseg.engine.pool import scoring_roi
from activeseg.engine.training import train
from activeseg.progress import SilentReporter
from activeseg.rundir.curves import read_curve

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OUTPUT = HERE.parent / "BENCHMARKS.md"
PARTS = ("speed", "memory", "full", "demo", "hippocampus", "units")
BENCH_DIR = [HERE.parent / "runs" / "benchmark-hippocampus"]
"""Where the hippocampus benchmark keeps its run directories (checkpoints included: never committed)."""


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
    }


def bench_speed(data_root: Path) -> dict[str, Any]:
    """Median training step, scoring and selection times with the demo's model and shapes (CPU)."""
    config = default_config().override({"data.root": data_root})
    data = open_data(config, SilentReporter())
    pool = list(data.pool.ids)
    torch.manual_seed(0)
    model = build_model(config.model, data.num_classes)
    examples = [(data.image(c), data.ground_truth(c)) for c in pool[:20]]
    steps: list[float] = []
    for _ in range(3):  # 3 x 10 steps; the first 2 steps of each are warm-up
        one = config.override({"train.iterations": 10}).train
        times: list[float] = []
        tick = [time.perf_counter()]

        def lap(_: int, times: list[float] = times, tick: list[float] = tick) -> None:
            now = time.perf_counter()
            times.append(now - tick[0])
            tick[0] = now

        train(model, examples, one, torch.device("cpu"), seed=0, progress=lap)
        steps += times[2:]
    strategy = config.strategy
    score_times: dict[str, list[float]] = {}
    members = [build_model(config.model, data.num_classes) for _ in range(strategy.mc_samples - 1)]
    roi = scoring_roi(config)
    for source in SOURCES:  # the same K for every source: an ensemble of K members
        sampler = make_window_sampler(source, model, strategy.mc_samples, strategy.mc_batch_size, (0,), False, members)
        score_times[source] = []
        for case_id in pool[:20]:
            tick0 = time.perf_counter()
            list(score_pool([(case_id, data.image(case_id))], sampler, bald, reduce_mean, lambda c: 0, roi))
            score_times[source].append(time.perf_counter() - tick0)
    per_volume = {source: statistics.median(times) for source, times in score_times.items()}
    sampler = make_window_sampler("mc_dropout", model, strategy.mc_samples, strategy.mc_batch_size, (0,), amp=False)
    selection = {}
    probe = [(c, data.image(c)) for c in pool]
    labelled = list(data.pool.ids)[:5]
    candidates = [c for c in pool if c not in labelled]
    for name, strategy_obj in STRATEGIES.items():  # everything each strategy needs, from the real model and data
        inputs: dict[str, Any] = {}
        vectors = None
        if strategy_obj.needs_scores:
            sketch = strategy_obj.sketch
            scorer = strategy_obj.scorer
            assert scorer is not None
            items = list(
                score_pool(
                    probe,
                    sampler,
                    functools.partial(strategy_maps, scorer),
                    reduce_mean,
                    lambda c: 0,
                    roi,
                    sketch_sites=None if sketch is None else BATCHBALD_SITES,
                    choose_sites=top_sites if sketch is None else SKETCHES[sketch],
                )
            )
            vectors = {item.key: item.scores for item in items}
            if strategy_obj.sketch is not None:
                inputs["sketches"] = {item.key: item.sketch for item in items}
        if strategy_obj.embedding is not None:
            embedded = dict(embed_volumes(model, probe, strategy_obj.embedding))
            inputs["embeddings"] = embedded
            inputs["labelled_embeddings_M_F"] = np.stack([embedded[c] for c in labelled])
        if strategy_obj.simulation_only:
            inputs["true_foreground"] = {c: float((data.ground_truth(c) > 0).mean()) for c in candidates}
        reps = []
        for i in range(20):
            tick0 = time.perf_counter()
            strategy_obj.select(candidates, vectors, 5, SelectionContext(np.random.default_rng(i), **inputs))
            reps.append(time.perf_counter() - tick0)
        selection[name] = statistics.median(reps) * 1e3
    return {
        "model": {"channels": list(config.model.channels), "num_res_units": config.model.num_res_units},
        "shape": list(config.data.shape),
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
        "selection_ms_median_160_pool": selection,
        "pool_size": len(candidates),
    }


def bench_memory(data_root: Path) -> dict[str, Any]:
    """Peak RSS while scoring 20 and 160 volumes, each in a fresh process."""
    out = {}
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
    record = json.loads((out_dir / "full_data.json").read_text())
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
    full = json.loads((out_dir / "full-data" / "full_data.json").read_text())
    for png in ("curve.png", "montage.png"):
        shutil.copy(out_dir / png, RESULTS / f"demo-{png}")
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"wall_s": wall, "peak_rss_mb": rss, "curves": curves, "full_data_dice": full["dice"]["mean_foreground"]}


def bench_units(data_root: Path) -> dict[str, Any]:
    """``units_benchmark.py`` (resumable, into /tmp/activeseg-units), read back from its stored summary."""
    subprocess.run([sys.executable, str(HERE / "units_benchmark.py"), "--data", str(data_root)], check=True)
    return dict(json.loads((RESULTS / "units.json").read_text()))


def bench_hippocampus(data_root: Path) -> dict[str, Any]:
    """The hippocampus benchmark (resumes whatever ``BENCH_DIR`` holds), summarised from its stored results."""
    from activeseg.bench.results import summarise

    results_dir = BENCH_DIR[0]
    config = HERE / "hippocampus.yaml"
    run_cli(["benchmark", str(config), "--data", str(data_root), "--results-dir", str(results_dir), "--no-report"])
    return summarise(results_dir)


def render_hippocampus(result: dict[str, Any], where: str, gpu: bool = False) -> list[str]:
    """The benchmark section: the report's own tables and figure, from the stored summary only."""
    from activeseg.bench.report import blocks, render_markdown, write_images

    content = blocks(result, level=2, figure_prefix="hippocampus-gpu-" if gpu else "hippocampus-")
    write_images(content, RESULTS)
    run = result["run"]
    intro = (
        gpu_intro(result, where)
        if gpu
        else [
            f"Machine: {where}. Produced by `python benchmarks/run_benchmarks.py --parts hippocampus` "
            "(`activeseg benchmark benchmarks/hippocampus.yaml`, then the summary the report is made from, stored as "
            "`benchmarks/results/hippocampus.json`).",
            "",
            f"Sized for 2 CPU cores: every round trains a small U-Net (channels {run['channels']}) for "
            f"{run['iterations']} iterations with {run['mc_samples']} MC-dropout samples, smaller than the demo "
            "(250 and 8), and the full-data bound trains "
            f"{result['full_data']['iterations']} iterations. Other jobs shared the two cores while it ran, so its "
            "wall time is an upper bound.",
            "",
            "It ran from a snapshot of commit 912b8f0 plus the benchmark module, while other engineers changed the "
            "loop. Its `foreground-random` is that commit's version: whole volumes drawn ∝ their true foreground "
            "fraction. The current version mixes nnActive's three sources (anywhere 4/6, foreground 1/6, border 1/6; "
            "see the units section below).",
            "",
        ]
    )
    finished = [r for r in result["runs"] if r["finished"] and len(r["mean_dice"]) > 1]
    drops = [r for r in finished if r["mean_dice"][-1] < r["mean_dice"][-2]]
    if finished:
        intro += [
            f"Each round retrains from scratch for a fixed number of iterations, so single rounds are noisy: in "
            f"{len(drops)} of {len(finished)} runs the last round's Dice is below the previous round's (the "
            "largest drop is "
            f"{max((r['mean_dice'][-2] - r['mean_dice'][-1] for r in drops), default=0.0):.3f}). AUBC averages "
            "over rounds and is the primary measure here.",
            "",
        ]
    for setting, bands in result["bands"].items():
        first = statistics.mean(b["mean"][0] for b in bands.values())
        last = statistics.mean(b["mean"][-1] for b in bands.values())
        if last < first:
            intro += [
                f"**Caveat ({setting}):** averaged over all strategies, the mean Dice falls from {first:.3f} at "
                f"{next(iter(bands.values()))['n_labelled'][0]} labelled volumes to {last:.3f} at the last budget. "
                "With a fixed, small number of training iterations per round the models are under-trained as the "
                "labelled set grows, so this run shows the benchmark machinery and statistics working on real data "
                "more than it ranks the strategies; rerun it with more iterations per round (the demo's 250 or "
                "more) on a machine with more time before drawing conclusions about them. The GPU benchmark above "
                "is that rerun.",
                "",
            ]
    markdown = render_markdown(content, image_dir="benchmarks/results").splitlines()
    if gpu:
        markdown[0] += " on a GPU, 5 seeds"
    return [*markdown[:2], *intro, *markdown[2:], ""]


def gpu_intro(result: dict[str, Any], where: str) -> list[str]:
    """What differs in the GPU run of the hippocampus grid (``hippocampus_gpu.yaml``)."""
    run = result["run"]
    return [
        f"Machine: {where} (a lent device machine, 16 CPU cores, 10 runs at once on one GPU). Produced by "
        "`benchmarks/gpu_check.sh` (`activeseg benchmark benchmarks/hippocampus_gpu.yaml`), summarised by "
        "`python benchmarks/run_benchmarks.py --render-only --gpu-results DIR` into "
        "`benchmarks/results/hippocampus-gpu.json`.",
        "",
        f"The same grid as the CPU benchmark below with the training it lacked: {run['iterations']} iterations per "
        f"round with augmentation, {run['mc_samples']} MC-dropout samples, 5 seeds, and a full-data bound of "
        f"{result['full_data']['iterations']} iterations. The current `foreground-random` (nnActive's mixture) ran. "
        "CUDA runs are not bit-identical to CPU runs (AMP, non-deterministic kernels); every selection is still "
        "recorded in each run's ledger.",
        "",
    ]


def render_units(result: dict[str, Any], where: str) -> list[str]:
    """Volumes vs slices vs patches at equal voxel budgets (``units_benchmark.py``)."""
    per_round = result["per_round_volumes"] * result["volume_voxels"]
    lines = [
        "## Annotation units at equal voxel budgets",
        "",
        f"Machine: {where}. Produced by `python benchmarks/units_benchmark.py` (stored as "
        "`benchmarks/results/units.json`); one seed, so single numbers, not a comparison with statistics.",
        "",
        f"Every round labels {per_round:,} voxels ({result['per_round_volumes']} volumes' worth): whole volumes, "
        "patches of 20×28×20 (1/8 volume) or slices of 56×40 along axis 0; round 0 is random units of the same "
        f"budget. U-Net channels {result['model']['channels']}, {result['model']['iterations']} iterations per "
        f"round from scratch, {result['mc_samples']} MC-dropout samples, {result['rounds']} acquisition rounds, the "
        "demo's 160/40 split. AUBC is on the labelled-voxel axis, normalised to [0, 1].",
        "",
        "| unit | strategy | Dice per round | final Dice | AUBC (voxels) |",
        "|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        dice = run["mean_dice"]
        area = aubc(run["costs"]["voxels"], dice)
        per = " / ".join(f"{d:.3f}" for d in dice)
        lines.append(f"| {run['unit']} | {run['strategy']} | {per} | {dice[-1]:.3f} | {area:.3f} |")
    by_unit: dict[str, list[float]] = {}
    for run in result["runs"]:
        by_unit.setdefault(run["unit"], []).append(aubc(run["costs"]["voxels"], run["mean_dice"]))
    best = {unit: max(values) for unit, values in by_unit.items()}
    iterations = result["model"]["iterations"]
    partial_best = max((v for unit, v in best.items() if unit != "volume"), default=float("nan"))
    if "volume" not in best:
        verdict = "Whole volumes have not been run yet, so units cannot be compared."
    elif best["volume"] > partial_best:
        verdict = (
            "In this setup whole volumes beat partial labels at equal voxel budgets, the opposite of Zhang, Kramer & "
            "Mazurowski (MIDL 2025)."
        )
    else:
        verdict = "Partial labels match or beat whole volumes at equal voxel budgets, as Zhang et al. (MIDL 2025) did."
    partial = [r["mean_dice"] for r in result["runs"] if r["unit"] != "volume"]
    swing = max((abs(b - a) for dice in partial for a, b in itertools.pairwise(dice)), default=0.0)
    lines += [
        "",
        "Best AUBC per unit: " + ", ".join(f"{unit} {value:.3f}" for unit, value in best.items()) + ".",
        "",
        f"**Reading.** {verdict} The likely cause is training, not selection: every round trains "
        f"{iterations} iterations of batch 2 from scratch, so each whole volume is seen about {2 * iterations // 4} "
        f"times at 4 volumes and {2 * iterations // 16} at 16, but each partly labelled case only "
        f"{2 * iterations // 32} times at 32 patches and {2 * iterations // 128} at 128; partial-label curves move "
        f"by up to {swing:.2f} Dice from one round to the next. "
        "nnActive trains much longer on partial labels. The masking itself is checked: a box-shaped labelled "
        "region gives exactly MONAI's DiceCELoss on that box (`tests/test_units.py`), and scrambling every label "
        "outside the queried units leaves models, scores and selections byte-identical "
        "(`tests/test_loop_units.py`). Rerun with more iterations per round before drawing conclusions about "
        "units or strategies.",
        "",
        "![Dice against labelled voxels](benchmarks/results/units_curves.png)",
        "",
    ]
    return lines


def render(results: dict[str, dict[str, Any]]) -> str:
    """BENCHMARKS.md from stored results."""
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/run_benchmarks.py` from `benchmarks/results/*.json`.",
        "",
    ]
    lines += ["Timings vary by up to ~1.7x between runs on these VMs; medians are quoted.", ""]
    for part in PARTS:
        if part not in results:
            lines += [f"## {part}", "", "_not measured yet_", ""]
            continue
        result = results[part]
        where = describe(result["machine"])
        if part == "speed":
            sel = result["selection_ms_median_160_pool"]
            lines += [
                "## Speed (demo model and shapes, CPU)",
                "",
                f"Machine: {where}.",
                "",
                f"MONAI U-Net channels {result['model']['channels']}, {result['model']['num_res_units']} residual "
                f"unit(s), volumes {result['shape']}.",
                "",
                "| measure | median |",
                "|---|---|",
                f"| training step (batch {result['batch_size']}) | {result['train_step_s_median']:.3f} s "
                f"({result['train_steps_per_s']:.2f} steps/s) |",
                f"| scoring one volume ({result['mc_samples']} MC-dropout passes + BALD) | "
                f"{result['score_s_per_volume_median']:.3f} s ({result['scored_volumes_per_s']:.2f} volumes/s) |",
                *(
                    f"| selection of 5 from the {result['pool_size']}-volume pool: {k} | {v:.3f} ms |"
                    for k, v in sel.items()
                ),
                "",
            ]
            by_source = result.get("score_s_per_volume_by_source", {})
            if by_source:
                base = by_source["mc_dropout"]
                lines += [
                    "Scoring cost per uncertainty source (same model, K = "
                    f"{result['mc_samples']} predictions per volume, BALD):",
                    "",
                    "| source | s per volume | relative to MC dropout |",
                    "|---|---|---|",
                    *(f"| {k} | {v:.3f} | {v / base:.2f}x |" for k, v in by_source.items()),
                    "",
                ]
            if "ensemble_members_train_s_per_round" in result:
                lines += [
                    f"A deep ensemble of K = {result['mc_samples']} also trains {result['mc_samples'] - 1} extra "
                    f"models per round: about {result['ensemble_members_train_s_per_round']:.0f} s at "
                    f"{result['train_iterations']} iterations each (the median step above), on top of the round "
                    "model's own training. Members predict one volume at a time (batch 1).",
                    "",
                ]
            if by_source:
                lines += [
                    "Selection times exclude scoring and embedding; they are the cost of `Strategy.select` alone "
                    f"(BatchBALD with K = {result['mc_samples']} samples, 16 sites per volume, 1000 configurations).",
                    "",
                ]
        elif part == "memory":
            small, large = result["20"], result["160"]
            lines += [
                "## Memory while scoring (streamed)",
                "",
                f"Machine: {where}. Peak RSS (VmHWM, reset just before scoring) of `benchmarks/score_memory.py`: U-Net "
                "channels [16, 32, 64, 128], 8 MC-dropout passes + BALD per volume, one fresh process per pool size.",
                "",
                "| pool | peak RSS | scoring time |",
                "|---|---|---|",
                f"| 20 volumes | {small['peak_rss_mb']:.0f} MB | {small['seconds']:.1f} s |",
                f"| 160 volumes | {large['peak_rss_mb']:.0f} MB | {large['seconds']:.1f} s |",
                "",
                f"Ratio 160 / 20: **{result['ratio_160_to_20']:.3f}** (acceptance: at most 1.10).",
                "",
            ]
        elif part == "full":
            dice = result["dice"]
            train_cfg = result["config"]["train"]
            lines += [
                "## Full-data upper bound",
                "",
                f"Machine: {where}. `activeseg full-data benchmarks/full_data.yaml`: all {result['n_train']} pool "
                f"volumes, {train_cfg['iterations']} iterations, batch {train_cfg['batch_size']}, "
                f"channels {result['config']['model']['channels']}; 40-volume test split (split seed 0).",
                "",
                "| class 1 (anterior) | class 2 (posterior) | mean foreground Dice | training time | peak RSS |",
                "|---|---|---|---|---|",
                f"| {dice['class_1']:.4f} | {dice['class_2']:.4f} | **{dice['mean_foreground']:.4f}** | "
                f"{result['train_seconds']:.0f} s | {result['peak_rss_mb']:.0f} MB |",
                "",
                "For reference, nnActive reports 0.895 for full-data nnU-Net on its Hippocampus split.",
                "",
            ]
        elif part == "units":
            lines += render_units(result, where)
            if "units-gpu" in results:
                lines += render_unit_seeds(results["units-gpu"])
        elif part == "hippocampus":
            if "hippocampus-gpu" in results:
                gpu_result = results["hippocampus-gpu"]
                lines += render_hippocampus(gpu_result, describe(gpu_result["machine"]), gpu=True)
            lines += render_hippocampus(result, where)
        elif part == "demo":
            curves = result["curves"]
            names = [k for k in DEMO_STRATEGIES if k in curves]
            best_aubc = max(names, key=lambda k: curves[k]["aubc"])
            best_final = max(names, key=lambda k: curves[k]["final_dice"])
            first = curves[names[0]]
            lines += [
                "## `activeseg demo`",
                "",
                f"Machine: {where}. Wall time **{result['wall_s'] / 60:.1f} min**, peak RSS "
                f"**{result['peak_rss_mb']:.0f} MB** (one seed; see the note below).",
                "",
                "| labelled volumes | " + " | ".join(names) + " |",
                "|---|" + "---|" * len(names),
            ]
            for i, n in enumerate(first["n_labelled"]):
                lines.append(f"| {n} | " + " | ".join(f"{curves[k]['mean_dice'][i]:.4f}" for k in names) + " |")
            lines += [
                "| **final Dice** | " + " | ".join(f"**{curves[k]['final_dice']:.4f}**" for k in names) + " |",
                "| **AUBC** | " + " | ".join(f"**{curves[k]['aubc']:.4f}**" for k in names) + " |",
                "",
                "Full-data bound with the demo's model (500 iterations on 160 volumes): "
                f"{result['full_data_dice']:.4f}.",
                "",
                f"Highest AUBC: **{best_aubc}**; highest final Dice: **{best_final}**.",
                "",
                "One seed and one split: the differences between strategies are not tested for significance here "
                "(the hippocampus benchmark below has seeds, CIs and paired tests).",
                "",
                "![demo curve](benchmarks/results/demo-curve.png)",
                "",
                "![demo montage](benchmarks/results/demo-montage.png)",
                "",
            ]
    if "gpu" in results:
        gpu = results["gpu"]
        demo, full = gpu["demo"], gpu["full"]
        lines += [
            "## The same engine on a GPU",
            "",
            f"Machine: {gpu['gpu']}, torch {gpu['torch']} (a lent device machine, 16 CPU cores), produced by "
            "`benchmarks/gpu_benchmark.py` (an earlier device run) and stored as `benchmarks/results/gpu.json`. "
            "Mixed precision (AMP) is on; GPU numbers are not bit-identical to CPU runs.",
            "",
            "| run | result | wall time |",
            "|---|---|---|",
            "| `activeseg demo` (same config as above) | final Dice "
            + ", ".join(f"{k} {v['mean_dice'][-1]:.4f}" for k, v in demo["curves"].items())
            + f"; full data {demo['full_data_dice']:.4f} | {demo['wall_s']:.0f} s |",
            f"| full data, channels {full['channels']}, 2 residual units, {full['iterations']} iterations, "
            f"batch {full['batch_size']} (`benchmarks/full_data_gpu.yaml`) | mean foreground Dice "
            f"**{full['dice']['mean_foreground']:.4f}** (class 1 {full['dice']['class_1']:.4f}, class 2 "
            f"{full['dice']['class_2']:.4f}) | {full['train_seconds']:.0f} s training |",
            "",
        ]
    return "\n".join(lines)


def describe(m: dict[str, Any]) -> str:
    """One line naming the machine of a result."""
    return f"{m['cpu']}, {m['threads']} torch thread(s), GPU: {m['gpu']}, torch {m['torch']}, {m['date']}"


GPU_UNITS = RESULTS / "gpu-units"
"""Per-seed summaries (``seed-N/units.json`` and curves) and ``summary.json`` of the GPU units benchmark."""


def store_gpu_results(directory: Path) -> None:
    """Summaries of unpacked device results (run directories, no checkpoints): ``hippocampus-gpu/`` from
    ``gpu_check.sh``, and ``units-seed-N/`` from ``gpu_check.sh`` (seed 0) and ``gpu_units.sh`` (more seeds)."""
    from activeseg.bench.results import summarise

    if (directory / "hippocampus-gpu").exists():
        machine_of_run = json.loads((directory / "machine.json").read_text())
        summary = summarise(directory / "hippocampus-gpu") | {"machine": machine_of_run}
        (RESULTS / "hippocampus-gpu.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    flags = ["--iterations", "400", "--mc-samples", "8", "--device", "cuda", "--render-only"]
    for units in sorted(directory.glob("units-seed-*")):
        seed = units.name.rsplit("-", 1)[1]
        out = GPU_UNITS / f"seed-{seed}"
        script = [sys.executable, str(HERE / "units_benchmark.py"), "--out", str(units), "--seed", seed]
        subprocess.run([*script, "--results-dir", str(out), *flags], check=True)
    per_seed = [json.loads(path.read_text()) for path in sorted(GPU_UNITS.glob("seed-*/units.json"))]
    if per_seed:
        summary = summarise_unit_seeds(per_seed)
        (GPU_UNITS / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        (GPU_UNITS / "curves.png").write_bytes(plot_unit_bands(summary))


UNIT_COMPARISONS = [
    *((f"patch/{s}", "patch/random") for s in ("foreground-random", "entropy", "bald", "clasp-pe")),
    *((f"patch/{s}", "patch/foreground-random") for s in ("entropy", "bald", "clasp-pe")),
    ("slice/strided", "slice/random"),
    *((run, "volume/random") for run in ("slice/strided", "slice/random", "patch/entropy", "patch/clasp-pe")),
]
"""(a, b) pairs compared on AUBC, paired by seed (one split; a unit kind's strategies share round 0)."""


def summarise_unit_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Every (unit, strategy) over seeds: AUBC and final Dice with bootstrap CIs, the mean curve with its band on
    the labelled-voxel axis, and the paired comparisons of ``UNIT_COMPARISONS``."""
    from dataclasses import asdict

    from activeseg.bench.stats import bootstrap_ci, curve_band, paired_test

    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for result in per_seed:
        for run in result["runs"]:
            voxels = [int(v) for v in run["costs"]["voxels"]]
            runs.setdefault(f"{run['unit']}/{run['strategy']}", {})[result["seed"]] = {
                "voxels": voxels,
                "mean_dice": run["mean_dice"],
                "aubc": aubc(voxels, run["mean_dice"]),
            }
    estimates = {}
    for key, by_seed in runs.items():
        seeds = sorted(by_seed)
        estimates[key] = {
            "seeds": seeds,
            "aubc_per_seed": [by_seed[s]["aubc"] for s in seeds],
            "mean_dice_per_seed": [by_seed[s]["mean_dice"] for s in seeds],
            "aubc": asdict(bootstrap_ci([by_seed[s]["aubc"] for s in seeds])),
            "final_dice": asdict(bootstrap_ci([by_seed[s]["mean_dice"][-1] for s in seeds])),
            "band": asdict(curve_band([(by_seed[s]["voxels"], by_seed[s]["mean_dice"]) for s in seeds])),
        }
    paired = []
    for a, b in UNIT_COMPARISONS:
        if a in runs and b in runs:
            common = sorted(set(runs[a]) & set(runs[b]))
            test = paired_test([runs[a][s]["aubc"] for s in common], [runs[b][s]["aubc"] for s in common])
            paired.append({"a": a, "b": b, "seeds": common, **asdict(test)})
    first = per_seed[0]
    return {
        "seeds": sorted(r["seed"] for r in per_seed),
        "iterations": first["model"]["iterations"],
        "channels": first["model"]["channels"],
        "mc_samples": first["mc_samples"],
        "rounds": first["rounds"],
        "per_round_voxels": first["per_round_volumes"] * first["volume_voxels"],
        "machine": first["machine"],
        "runs": estimates,
        "paired": paired,
    }


def plot_unit_bands(summary: dict[str, Any]) -> bytes:
    """Mean Dice against labelled voxels per (unit, strategy) with its bootstrap band, as PNG bytes."""
    import io

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5), dpi=120)
    styles = {"volume": "-", "slice": "--", "patch": ":"}
    for key, estimate in summary["runs"].items():
        band = estimate["band"]
        millions = [v / 1e6 for v in band["n_labelled"]]
        (line,) = ax.plot(
            millions, band["mean"], linestyle=styles[key.split("/")[0]], marker="o", label=f"{key} (n={band['n']})"
        )
        ax.fill_between(millions, band["low"], band["high"], color=line.get_color(), alpha=0.12)
    ax.set_xlabel("labelled voxels (millions)")
    ax.set_ylabel("mean foreground Dice (test split)")
    ax.set_title(f"Units at equal voxel budgets: mean over {len(summary['seeds'])} seeds, 95% CI")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def render_unit_seeds(summary: dict[str, Any]) -> list[str]:
    """The GPU units benchmark over seeds: estimates, paired comparisons and a reading stated from the numbers."""
    seeds = summary["seeds"]
    lines = [
        f"## Annotation units at equal voxel budgets on a GPU, {len(seeds)} seeds",
        "",
        f"Machine: {describe(summary['machine'])} (a lent device machine). Produced by `benchmarks/gpu_check.sh` "
        "(seed 0) and `benchmarks/gpu_units.sh` (the other seeds): `units_benchmark.py --device cuda --iterations 400 "
        "--mc-samples 8 --seed N`, patches in one process and slices and volumes in another per seed; summarised by "
        "`python benchmarks/run_benchmarks.py --render-only --gpu-results DIR` into "
        "`benchmarks/results/gpu-units/` (one `seed-N/units.json` per seed and `summary.json`).",
        "",
        f"Every round labels {summary['per_round_voxels']:,} voxels (4 volumes' worth): whole volumes, patches of "
        "20×28×20 (1/8 volume) or slices of 56×40 along axis 0; round 0 is random units of the same budget, shared "
        f"by the strategies of one unit kind and seed. U-Net channels {summary['channels']}, "
        f"{summary['iterations']} iterations per round from scratch, {summary['mc_samples']} MC-dropout samples, "
        f"{summary['rounds']} acquisition rounds, the demo's 160/40 split, seeds {seeds}. AUBC is on the "
        "labelled-voxel axis, normalised to [0, 1]; intervals are 95% percentile-bootstrap CIs over seeds.",
        "",
        "| unit / strategy | seeds | AUBC [95% CI] | final Dice [95% CI] | AUBC per seed |",
        "|---|---|---|---|---|",
    ]
    ranked = sorted(summary["runs"].items(), key=lambda kv: -kv[1]["aubc"]["mean"])
    for key, e in ranked:
        a, f = e["aubc"], e["final_dice"]
        per = ", ".join(f"{v:.3f}" for v in e["aubc_per_seed"])
        lines.append(
            f"| `{key}` | {len(e['seeds'])} | {a['mean']:.3f} [{a['low']:.3f}, {a['high']:.3f}] | "
            f"{f['mean']:.3f} [{f['low']:.3f}, {f['high']:.3f}] | {per} |"
        )
    lines += [
        "",
        "Paired differences in AUBC (a − b, same seed and split), mean with 95% bootstrap CI; with "
        f"{len(seeds)} pairs the exact two-sided Wilcoxon test cannot go below p = {2 / 2 ** len(seeds):.4f}, "
        "and p-values are not corrected for multiple comparisons:",
        "",
        "| a | b | n | difference [CI] | wins | Wilcoxon p | paired t p |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in summary["paired"]:
        t_p = "—" if t["t_p"] is None else f"{t['t_p']:.3f}"
        lines.append(
            f"| `{t['a']}` | `{t['b']}` | {t['n']} | {t['mean_difference']:+.4f} [{t['low']:+.4f}, {t['high']:+.4f}] "
            f"| {t['wins']}/{t['n']} | {t['wilcoxon_p']:.3f} | {t_p} |"
        )
    significant = [t for t in summary["paired"] if t["t_p"] is not None and t["t_p"] < 0.05]
    better = [f"`{t['a']}` over `{t['b']}`" for t in significant if t["mean_difference"] > 0]
    worse = [f"`{t['a']}` under `{t['b']}`" for t in significant if t["mean_difference"] < 0]
    best_key, best = ranked[0]

    def points(kinds: tuple[str, ...]) -> list[float]:
        """Every (strategy, seed, round) Dice of the given unit kinds, round 0 excluded (it is shared)."""
        return [
            d
            for key, e in summary["runs"].items()
            if key.split("/")[0] in kinds
            for curve in e["mean_dice_per_seed"]
            for d in curve[1:]
        ]

    def round_zero(kind: str) -> float:
        curves = next(e["mean_dice_per_seed"] for key, e in summary["runs"].items() if key.startswith(kind + "/"))
        return statistics.mean(curve[0] for curve in curves)

    partial, whole = points(("patch", "slice")), points(("volume",))
    low = 0.5
    lines += [
        "",
        f"**Reading.** The highest mean AUBC is `{best_key}` ({best['aubc']['mean']:.3f}). At p < 0.05 (paired t, "
        "uncorrected): " + ("; ".join(better + worse) if better or worse else "no difference") + ". "
        f"Round 0 (random units of the same budget) starts at a mean Dice of {round_zero('volume'):.3f} for "
        f"volumes, {round_zero('slice'):.3f} for slices and {round_zero('patch'):.3f} for patches, which weighs on "
        "the patch AUBC. Training on partial labels is still unstable at this budget: "
        f"{sum(d < low for d in partial)} of {len(partial)} later-round results of slice and patch runs fall "
        f"below {low} Dice, against {sum(d < low for d in whole)} of {len(whole)} for whole volumes, so the "
        "uncertainty strategies' lead over random patches is partly a lead over unstable training.",
        "",
        "![Dice against labelled voxels over seeds](benchmarks/results/gpu-units/curves.png)",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--bench-dir", type=Path, default=BENCH_DIR[0], help="hippocampus benchmark results")
    parser.add_argument("--gpu-results", type=Path, default=None, help="an unpacked gpu_check.sh results.tar.gz")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.gpu_results is not None:
        store_gpu_results(args.gpu_results)
    if not args.render_only:
        data_root = find_hippocampus(args.data)
        BENCH_DIR[0] = args.bench_dir.resolve()
        runners = {
            "speed": bench_speed,
            "memory": bench_memory,
            "full": bench_full,
            "demo": bench_demo,
            "hippocampus": bench_hippocampus,
            "units": bench_units,
        }
        for part in args.parts:
            print(f"benchmark: {part} …", flush=True)
            result = runners[part](data_root) | {"machine": machine()}
            (RESULTS / f"{part}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    files = {p: RESULTS / f"{p}.json" for p in (*PARTS, "gpu", "hippocampus-gpu")}
    files["units-gpu"] = GPU_UNITS / "summary.json"
    stored = {p: json.loads(f.read_text()) for p, f in files.items() if f.exists()}
    OUTPUT.write_text(render(stored))
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
