"""BENCHMARKS.md from the stored results in ``benchmarks/results/`` only (``run_benchmarks.py`` measures them).

Every section is a list of ``activeseg.bench.report`` blocks, rendered by its ``render_markdown``; the hippocampus
benchmark's sections are the report's own blocks (tables and figures) with an introduction. The clinical-size
pipeline's section is ``render_pipeline``'s, the label regimes' and issue 14's verdict ``render_regimes``'.

    python benchmarks/run_benchmarks.py --render-only
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from render_common import HERE, IMAGE_DIR, RESULTS, describe, figure  # this script's folder is on sys.path
from render_pipeline import render_pipeline
from render_regimes import acceptance_summary, render_regimes
from unit_seeds import render_unit_seeds

from activeseg.artifacts import read_json, write_text_atomic
from activeseg.bench.report import Block, blocks, render_markdown, write_images
from activeseg.bench.stats import aubc
from activeseg.demo import DEMO_STRATEGIES

OUTPUT = HERE.parent / "BENCHMARKS.md"
PARTS = ("speed", "memory", "full", "demo", "hippocampus", "units")
CLINICAL = ("pipeline", "score_memory", "score_speed", "clinical_scale", "viewer_scale")
"""Results of the clinical-size pipeline's own scripts (``pipeline_benchmark.py``, ``score_*.py``,
``clinical_scale.py``, ``viewer_scale.py``)."""
GPU_UNITS = RESULTS / "gpu-units"
"""Per-seed summaries (``seed-N/units.json`` and curves) and ``summary.json`` of the GPU units benchmark."""
CPU_UNITS = RESULTS / "cpu-units"
"""The same for the CPU-size seeds of ``cpu_units.sh``."""


def render_speed(result: dict[str, Any], where: str) -> list[Block]:
    """Training, scoring and selection times (``bench_speed``)."""
    out: list[Block] = [
        ("h", 2, "Speed (demo model and shapes, CPU)"),
        ("p", f"Machine: {where}."),
        (
            "p",
            f"MONAI U-Net channels {result['model']['channels']}, {result['model']['num_res_units']} residual "
            f"unit(s), patches {result['patch']} (the hippocampus plan).",
        ),
        (
            "table",
            ["measure", "median"],
            [
                [
                    f"training step (batch {result['batch_size']})",
                    f"{result['train_step_s_median']:.3f} s ({result['train_steps_per_s']:.2f} steps/s)",
                ],
                [
                    f"scoring one volume ({result['mc_samples']} MC-dropout passes + BALD)",
                    f"{result['score_s_per_volume_median']:.3f} s ({result['scored_volumes_per_s']:.2f} volumes/s)",
                ],
                *(
                    [f"selection of 5 from the {result['pool_size']}-volume pool: {k}", f"{v:.3f} ms"]
                    for k, v in result["selection_ms_median_160_pool"].items()
                ),
            ],
        ),
    ]
    by_source = result.get("score_s_per_volume_by_source", {})
    if by_source:
        base = by_source["mc_dropout"]
        out += [
            (
                "p",
                f"Scoring cost per uncertainty source (same model, K = {result['mc_samples']} predictions per volume, "
                "BALD):",
            ),
            (
                "table",
                ["source", "s per volume", "relative to MC dropout"],
                [[k, f"{v:.3f}", f"{v / base:.2f}x"] for k, v in by_source.items()],
            ),
        ]
    if "ensemble_members_train_s_per_round" in result:
        out.append(
            (
                "p",
                f"A deep ensemble of K = {result['mc_samples']} also trains {result['mc_samples'] - 1} extra models "
                f"per round: about {result['ensemble_members_train_s_per_round']:.0f} s at "
                f"{result['train_iterations']} iterations each (the median step above), on top of the round model's "
                "own training. Members predict one volume at a time (batch 1).",
            )
        )
    if by_source:
        out.append(
            (
                "p",
                "Selection times exclude scoring and embedding; they are the cost of `Strategy.select` alone "
                f"(BatchBALD with K = {result['mc_samples']} samples, 16 sites per volume, 1000 configurations).",
            )
        )
    return out


def render_memory(result: dict[str, Any], where: str) -> list[Block]:
    """Peak RSS while scoring (``score_memory.py``)."""
    small, large = result["20"], result["160"]
    return [
        ("h", 2, "Memory while scoring (streamed)"),
        (
            "p",
            f"Machine: {where}. Peak RSS (VmHWM, reset just before scoring) of `benchmarks/score_memory.py`: U-Net "
            "channels [16, 32, 64, 128], 8 MC-dropout passes + BALD per volume, one fresh process per pool size.",
        ),
        (
            "table",
            ["pool", "peak RSS", "scoring time"],
            [
                ["20 volumes", f"{small['peak_rss_mb']:.0f} MB", f"{small['seconds']:.1f} s"],
                ["160 volumes", f"{large['peak_rss_mb']:.0f} MB", f"{large['seconds']:.1f} s"],
            ],
        ),
        ("p", f"Ratio 160 / 20: **{result['ratio_160_to_20']:.3f}** (acceptance: at most 1.10)."),
    ]


def render_full(result: dict[str, Any], where: str) -> list[Block]:
    """The full-data upper bound (``benchmarks/full_data.yaml``)."""
    dice = result["dice"]
    train_cfg = result["config"]["train"]
    return [
        ("h", 2, "Full-data upper bound"),
        (
            "p",
            f"Machine: {where}. `activeseg full-data benchmarks/full_data.yaml`: all {result['n_train']} pool "
            f"volumes, {train_cfg['iterations']} iterations, batch {train_cfg['batch_size']}, "
            f"channels {result['config']['model']['channels']}; 40-volume test split (split seed 0).",
        ),
        (
            "table",
            ["class 1 (anterior)", "class 2 (posterior)", "mean foreground Dice", "training time", "peak RSS"],
            [
                [
                    f"{dice['class_1']:.4f}",
                    f"{dice['class_2']:.4f}",
                    f"**{dice['mean_foreground']:.4f}**",
                    f"{result['train_seconds']:.0f} s",
                    "not recorded" if result["peak_rss_mb"] is None else f"{result['peak_rss_mb']:.0f} MB",
                ]
            ],
        ),
        *([("p", result["machine"]["note"] + ".")] if "note" in result["machine"] else []),
        ("p", "For reference, nnActive reports 0.895 for full-data nnU-Net on its Hippocampus split."),
    ]


def render_demo(result: dict[str, Any], where: str) -> list[Block]:
    """``activeseg demo``: each strategy's curve, final Dice and AUBC (one seed)."""
    curves = result["curves"]
    names = [k for k in DEMO_STRATEGIES if k in curves]
    best_aubc = max(names, key=lambda k: curves[k]["aubc"])
    best_final = max(names, key=lambda k: curves[k]["final_dice"])
    rows = [
        [str(n), *(f"{curves[k]['mean_dice'][i]:.4f}" for k in names)]
        for i, n in enumerate(curves[names[0]]["n_labelled"])
    ]
    rows += [
        ["**final Dice**", *(f"**{curves[k]['final_dice']:.4f}**" for k in names)],
        ["**AUBC**", *(f"**{curves[k]['aubc']:.4f}**" for k in names)],
    ]
    return [
        ("h", 2, "`activeseg demo`"),
        (
            "p",
            f"Machine: {where}. Wall time **{result['wall_s'] / 60:.1f} min**, peak RSS "
            f"**{result['peak_rss_mb']:.0f} MB** (one seed; see the note below).",
        ),
        ("table", ["labelled volumes", *names], rows),
        (
            "p",
            f"Full-data bound with the demo's model (500 iterations on 160 volumes): {result['full_data_dice']:.4f}.",
        ),
        ("p", f"Highest AUBC: **{best_aubc}**; highest final Dice: **{best_final}**."),
        (
            "p",
            "One seed and one split: the differences between strategies are not tested for significance here "
            "(the hippocampus benchmark below has seeds, CIs and paired tests).",
        ),
        figure("demo curve", "demo-curve.png"),
        figure("demo montage", "demo-montage.png"),
    ]


def render_gpu(gpu: dict[str, Any]) -> list[Block]:
    """The demo and a wider full-data model on a GPU (``gpu_benchmark.py``)."""
    demo, full = gpu["demo"], gpu["full"]
    final = ", ".join(f"{k} {v['mean_dice'][-1]:.4f}" for k, v in demo["curves"].items())
    return [
        ("h", 2, "The same engine on a GPU"),
        (
            "p",
            f"Machine: {gpu['gpu']}, torch {gpu['torch']} (a lent device machine, 16 CPU cores), produced by "
            "`benchmarks/gpu_benchmark.py` (an earlier device run) and stored as `benchmarks/results/gpu.json`. "
            "Mixed precision (AMP) is on; GPU numbers are not bit-identical to CPU runs.",
        ),
        (
            "table",
            ["run", "result", "wall time"],
            [
                [
                    "`activeseg demo` (same config as above)",
                    f"final Dice {final}; full data {demo['full_data_dice']:.4f}",
                    f"{demo['wall_s']:.0f} s",
                ],
                [
                    f"full data, channels {full['channels']}, 2 residual units, {full['iterations']} iterations, "
                    f"batch {full['batch_size']} (`benchmarks/full_data_gpu.yaml`)",
                    f"mean foreground Dice **{full['dice']['mean_foreground']:.4f}** (class 1 "
                    f"{full['dice']['class_1']:.4f}, class 2 {full['dice']['class_2']:.4f})",
                    f"{full['train_seconds']:.0f} s training",
                ],
            ],
        ),
    ]


def render_hippocampus(result: dict[str, Any], where: str, gpu: bool = False) -> list[Block]:
    """The benchmark section: the report's own blocks and figures (written to ``RESULTS``), from the stored summary
    only, after an introduction."""
    content = blocks(result, level=2, figure_prefix="hippocampus-gpu-" if gpu else "hippocampus-")
    write_images(content, RESULTS)
    run = result["run"]
    intro: list[Block]
    if gpu:
        intro = gpu_intro(result, where)
    else:
        intro = [
            (
                "p",
                f"Machine: {where}. Produced by `python benchmarks/run_benchmarks.py --parts hippocampus` "
                "(`activeseg benchmark benchmarks/hippocampus.yaml`, then the summary the report is made from, stored "
                "as `benchmarks/results/hippocampus.json`).",
            ),
            (
                "p",
                f"Sized for 2 CPU cores: every round trains a small U-Net (channels {run['channels']}) for "
                f"{run['iterations']} iterations with {run['mc_samples']} MC-dropout samples, smaller than the demo "
                f"(250 and 8), and the full-data bound trains {result['full_data']['iterations']} iterations. Other "
                "jobs shared the two cores while it ran, so its wall time is an upper bound.",
            ),
            (
                "p",
                "It ran from a snapshot of commit 912b8f0 plus the benchmark module, while other engineers changed the "
                "loop. Its `foreground-random` is that commit's version: whole volumes drawn ∝ their true foreground "
                "fraction. The current version mixes nnActive's three sources (anywhere 4/6, foreground 1/6, border "
                "1/6; see the units section below).",
            ),
        ]
    finished = [r for r in result["runs"] if r["finished"] and len(r["mean_dice"]) > 1]
    drops = [r for r in finished if r["mean_dice"][-1] < r["mean_dice"][-2]]
    if finished:
        largest = max((r["mean_dice"][-2] - r["mean_dice"][-1] for r in drops), default=0.0)
        intro.append(
            (
                "p",
                "Each round retrains from scratch for a fixed number of iterations, so single rounds are noisy: in "
                f"{len(drops)} of {len(finished)} runs the last round's Dice is below the previous round's (the "
                f"largest drop is {largest:.3f}). AUBC averages over rounds and is the primary measure here.",
            )
        )
    for setting, bands in result["bands"].items():
        first = statistics.mean(b["mean"][0] for b in bands.values())
        last = statistics.mean(b["mean"][-1] for b in bands.values())
        if last < first:
            intro.append(
                (
                    "p",
                    f"**Caveat ({setting}):** averaged over all strategies, the mean Dice falls from {first:.3f} at "
                    f"{next(iter(bands.values()))['n_labelled'][0]} labelled volumes to {last:.3f} at the last "
                    "budget. With a fixed, small number of training iterations per round the models are "
                    "under-trained as the labelled set grows, so this run shows the benchmark machinery and "
                    "statistics working on real data more than it ranks the strategies; rerun it with more "
                    "iterations per round (the demo's 250 or more) on a machine with more time before drawing "
                    "conclusions about them. The GPU benchmark above is that rerun.",
                )
            )
    heading = content[0]
    if gpu:
        heading = (*heading[:2], heading[2] + " on a GPU, 5 seeds")
    return [heading, *intro, *content[1:]]


def gpu_intro(result: dict[str, Any], where: str) -> list[Block]:
    """What differs in the GPU run of the hippocampus grid (``hippocampus_gpu.yaml``)."""
    run = result["run"]
    return [
        (
            "p",
            f"Machine: {where} (a lent device machine, 16 CPU cores, 10 runs at once on one GPU). Produced by "
            "`benchmarks/gpu_check.sh` (`activeseg benchmark benchmarks/hippocampus_gpu.yaml`), summarised by "
            "`python benchmarks/run_benchmarks.py --render-only --gpu-results DIR` into "
            "`benchmarks/results/hippocampus-gpu.json`.",
        ),
        (
            "p",
            f"The same grid as the CPU benchmark below with the training it lacked: {run['iterations']} iterations "
            f"per round with augmentation, {run['mc_samples']} MC-dropout samples, 5 seeds, and a full-data bound of "
            f"{result['full_data']['iterations']} iterations. The current `foreground-random` (nnActive's mixture) "
            "ran. CUDA runs are not bit-identical to CPU runs (AMP, non-deterministic kernels); every selection is "
            "still recorded in each run's ledger.",
        ),
    ]


def render_units(result: dict[str, Any], where: str) -> list[Block]:
    """Volumes vs slices vs patches at equal voxel budgets (``units_benchmark.py``), one seed."""
    per_round = result["per_round_volumes"] * result["volume_voxels"]
    rows = []
    by_unit: dict[str, list[float]] = {}
    for run in result["runs"]:
        dice = run["mean_dice"]
        area = aubc(run["costs"]["voxels"], dice)
        by_unit.setdefault(run["unit"], []).append(area)
        rows.append(
            [run["unit"], run["strategy"], " / ".join(f"{d:.3f}" for d in dice), f"{dice[-1]:.3f}", f"{area:.3f}"]
        )
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
    return [
        ("h", 2, "Annotation units at equal voxel budgets"),
        (
            "p",
            f"Machine: {where}. Produced by `python benchmarks/units_benchmark.py` (stored as "
            "`benchmarks/results/units.json`); one seed, so single numbers, not a comparison with statistics.",
        ),
        (
            "p",
            f"Every round labels {per_round:,} voxels ({result['per_round_volumes']} volumes' worth): whole volumes, "
            "patches of 20×28×20 (1/8 volume) or slices of 56×40 along axis 0; round 0 is random units of the same "
            f"budget. U-Net channels {result['model']['channels']}, {result['model']['iterations']} iterations per "
            f"round from scratch, {result['mc_samples']} MC-dropout samples, {result['rounds']} acquisition rounds, "
            "the demo's 160/40 split. AUBC is on the labelled-voxel axis, normalised to [0, 1].",
        ),
        ("table", ["unit", "strategy", "Dice per round", "final Dice", "AUBC (voxels)"], rows),
        ("p", "Best AUBC per unit: " + ", ".join(f"{unit} {value:.3f}" for unit, value in best.items()) + "."),
        (
            "p",
            f"**Reading.** {verdict} The likely cause is training, not selection: every round trains "
            f"{iterations} iterations of batch 2 from scratch, so each whole volume is seen about "
            f"{2 * iterations // 4} times at 4 volumes and {2 * iterations // 16} at 16, but each partly labelled case "
            f"only {2 * iterations // 32} times at 32 patches and {2 * iterations // 128} at 128; partial-label curves "
            f"move by up to {swing:.2f} Dice from one round to the next. "
            "nnActive trains much longer on partial labels. The masking itself is checked: a box-shaped labelled "
            "region gives exactly MONAI's DiceCELoss on that box (`tests/test_units.py`), and scrambling every label "
            "outside the queried units leaves models, scores and selections byte-identical "
            "(`tests/test_loop_units.py`). Rerun with more iterations per round before drawing conclusions about "
            "units or strategies.",
        ),
        figure("Dice against labelled voxels", "units_curves.png"),
    ]


SECTIONS: dict[str, Callable[[dict[str, Any], str], list[Block]]] = {
    "speed": render_speed,
    "memory": render_memory,
    "full": render_full,
    "demo": render_demo,
}
"""The parts whose section needs only their own stored result (hippocampus and units fold in the GPU runs)."""


def render(results: dict[str, dict[str, Any]]) -> str:
    """BENCHMARKS.md from stored results."""
    content: list[Block] = [
        ("h", 1, "Benchmarks"),
        ("p", "Generated by `python benchmarks/run_benchmarks.py` from `benchmarks/results/*.json`."),
        ("p", "Timings vary by up to ~1.7x between runs on these VMs; medians are quoted."),
        (
            "p",
            "Sections dated before 2026-11-28 (the hippocampus benchmark grids on CPU and GPU, the GPU units runs and "
            "the GPU demo) were measured on the fixed-grid pipeline that the planned pipeline replaced; they have "
            "not been rerun, and each names its date.",
        ),
    ]
    for part in PARTS:
        if part not in results:
            content += [("h", 2, part), ("p", "_not measured yet_")]
            continue
        result = results[part]
        where = describe(result["machine"])
        if part == "units":  # the CPU seeds replace the single-seed run (``units.json``) once they exist
            if "units-cpu" in results:
                cpu = results["units-cpu"]
                content += render_unit_seeds(cpu, describe(cpu["machine"]), device="cpu")
            else:
                content += render_units(result, where)
            if "units-gpu" in results:
                content += render_unit_seeds(results["units-gpu"], describe(results["units-gpu"]["machine"]))
        elif part == "hippocampus":
            if "hippocampus-gpu" in results:
                gpu_result = results["hippocampus-gpu"]
                content += render_hippocampus(gpu_result, describe(gpu_result["machine"]), gpu=True)
            content += render_hippocampus(result, where)
        else:
            content += SECTIONS[part](result, where)
        if part == "full":
            content += render_pipeline(results)
        if part == "hippocampus":
            content += acceptance_summary(results)
            for name in sorted(n for n in results if n.startswith("regimes-")):
                content += render_regimes(name, results[name], describe(results[name]["machine"]))
    if "gpu" in results:
        content += render_gpu(results["gpu"])
    return render_markdown(content, image_dir=IMAGE_DIR)


def stored_results() -> dict[str, dict[str, Any]]:
    """Every part's stored result that exists (``benchmarks/results/<part>.json``, the GPU summaries)."""
    files = {p: RESULTS / f"{p}.json" for p in (*PARTS, *CLINICAL, "gpu", "hippocampus-gpu")}
    files["units-gpu"] = GPU_UNITS / "summary.json"
    files["units-cpu"] = CPU_UNITS / "summary.json"
    files |= {path.stem: path for path in sorted(RESULTS.glob("regimes-*.json"))}
    return {p: read_json(f) for p, f in files.items() if f.exists()}


def write_benchmarks() -> Path:
    """Render BENCHMARKS.md (and the hippocampus figures) from the stored results; returns its path."""
    write_text_atomic(OUTPUT, render(stored_results()))
    return OUTPUT
