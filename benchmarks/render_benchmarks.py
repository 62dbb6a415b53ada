"""BENCHMARKS.md from the stored results in ``benchmarks/results/`` only (``run_benchmarks.py`` measures them).

Every section is a list of ``activeseg.bench.report`` blocks, rendered by its ``render_markdown``; the hippocampus
benchmark's sections are the report's own blocks (tables and figures) with an introduction.

    python benchmarks/run_benchmarks.py --render-only
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unit_seeds import render_unit_seeds  # this script's folder is on sys.path when it runs

from activeseg.artifacts import read_json, write_text_atomic
from activeseg.bench.report import Block, blocks, render_markdown, write_images
from activeseg.bench.stats import aubc
from activeseg.demo import DEMO_STRATEGIES

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OUTPUT = HERE.parent / "BENCHMARKS.md"
PARTS = ("speed", "memory", "full", "demo", "hippocampus", "units")
CLINICAL = ("pipeline", "score_memory", "score_speed")
"""Results of the clinical-size pipeline's own scripts (``pipeline_benchmark.py``, ``score_*.py``)."""
GPU_UNITS = RESULTS / "gpu-units"
"""Per-seed summaries (``seed-N/units.json`` and curves) and ``summary.json`` of the GPU units benchmark."""
CPU_UNITS = RESULTS / "cpu-units"
"""The same for the CPU-size seeds of ``cpu_units.sh``."""
IMAGE_DIR = "benchmarks/results"
"""Where BENCHMARKS.md finds the figures (relative to the repository root)."""


def describe(m: dict[str, Any]) -> str:
    """One line naming the machine of a result."""
    return f"{m['cpu']}, {m['threads']} torch thread(s), GPU: {m['gpu']}, torch {m['torch']}, {m['date']}"


def where_of(result: dict[str, Any]) -> str:
    """The machine of a result that may predate recording it (measured on the same 2-core VM)."""
    return describe(result["machine"]) if "machine" in result else "AMD EPYC, 2 torch threads (not recorded)"


def export_of(full: dict[str, Any]) -> str:
    """How a pipeline run's predictions reached the native grid (runs before it was recorded copied label maps)."""
    way = full.get("native_export", "nearest labels")
    return "argmax of linearly resampled probabilities" if way == "linear probabilities" else "nearest-neighbour labels"


ISOTROPIC = "cropped-isotropic-1mm-3000"
"""The pipeline variant that keeps the clinical image but not its thick slices (``--in-plane 1 1 --slices 1 1``)."""


def dice_of(run: dict[str, Any], name: str) -> str:
    """A pipeline variant's mean foreground Dice on set ``name``, or a dash where it did not train that set."""
    return f"{run[name]['dice']['mean_foreground']:.4f}" if name in run else "–"


def ranking_text(ranking: dict[str, Any]) -> str:
    """The bf16 ranking check of ``score_speed.py``, against other dropout masks where it was measured."""
    text = (
        f"bf16 ranking check: the demo model trained on 20 hippocampus volumes scores the other {ranking['pool']} "
        f"(BALD, mean) in float32 and in bf16 with the same dropout masks: top 5 shared {ranking['top5_overlap']}/5 "
        f"(same order: {ranking['top5_order_same']}), top 20 shared {ranking['top20_overlap']}/20, Spearman ρ "
        f"{ranking['spearman']:.4f}, largest score difference {ranking['max_abs_score_difference']:.1e} (top score "
        f"{ranking['max_score']:.4f})."
    )
    noise = ranking.get("other_dropout_masks")
    if noise:
        text += (
            f" Float32 with other dropout masks, the noise every run has: top 5 shared {noise['top5_overlap']}/5, "
            f"top 20 shared {noise['top20_overlap']}/20, Spearman ρ {noise['spearman']:.4f}. Within that noise: "
            f"{'yes' if ranking['within_noise'] else 'no'}."
        )
    return text


def figure(alt: str, name: str) -> Block:
    """A figure stored in ``benchmarks/results`` by the part that measured it."""
    return ("p", f"![{alt}]({IMAGE_DIR}/{name})")


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


def render_pipeline(results: dict[str, dict[str, Any]]) -> list[Block]:
    """The clinical-size pipeline: clinical-shape vs native full-data Dice and CPU speed (``pipeline_benchmark.py``),
    peak memory on a 512×512×256 CT (``score_memory.py``) and pool scoring against MONAI Label (``score_speed.py``)."""
    out: list[Block] = [("h", 2, "Clinical-size pipeline")]
    pipeline = results.get("pipeline")
    if pipeline and "full" in pipeline:
        full = pipeline["full"]
        native, clinical = full["native"], full["clinical"]
        sets = [("native", native)] + ([("cropped to the pasted boxes", full["cropped"])] if "cropped" in full else [])
        sets.append(("clinical-shape", clinical))
        lcc = full.get("largest_component", False)
        out += [
            (
                "p",
                f"Machine: {describe(pipeline['machine'])}. `python benchmarks/pipeline_benchmark.py "
                f"--iterations {full['iterations']}{' --largest-component' if lcc else ''}`: "
                f"{pipeline['cases']} hippocampus cases resampled to and pasted at random offsets into 192×192×48–80 "
                "CT-like fields (0.7–1.0 mm in-plane, 2–4 mm slices, five orientations, some oblique; "
                "`activeseg.data.clinical`), the same cases at their native size, and the clinical cases cut to the "
                "box their crop was pasted into (`clinical.crop_to_structure`: same voxels, spacing and noise, no "
                "field). All train the demo's U-Net for "
                f"{full['iterations']} iterations (batch 2) on all but 10 cases; Dice on the same 10 test cases, "
                f"each on its own native grid ({export_of(full)})"
                + (", keeping the largest connected foreground region of each prediction." if lcc else "."),
            ),
            (
                "table",
                ["set", "plan: spacing (mm)", "patch", "normalisation", "mean foreground Dice", "training"],
                [
                    [
                        name,
                        " × ".join(f"{v:.2f}" for v in r["target_spacing"]),
                        "×".join(str(v) for v in r["patch"]),
                        ", ".join(r["normalisation"]),
                        f"{r['dice']['mean_foreground']:.4f}",
                        f"{r['train_seconds']:.0f} s",
                    ]
                    for name, r in sets
                ],
            ),
            (
                "p",
                f"Clinical − native: **{full['difference']:+.4f}** (acceptance: within 0.03: "
                f"{'met' if abs(full['difference']) <= 0.03 else 'not met'})."
                + (
                    f" Clinical − the same clinical cases cut to their boxes: **{full['difference_to_cropped']:+.4f}**"
                    ": the large field, the orientations and the planning cost nothing measurable. What separates "
                    "both from the native crops is the image the generator makes, which the cut-out cases share"
                    + (
                        f"; the `{ISOTROPIC}` row below places it in the 2–4 mm slices: the same CT intensities and "
                        "noise at 1 mm cost "
                        f"{-pipeline['variants'][ISOTROPIC]['cropped_minus_native']:.4f}."
                        if ISOTROPIC in pipeline.get("variants", {})
                        else "."
                    )
                    if "difference_to_cropped" in full
                    else ""
                )
                + (f" Note: {full['note']}." if "note" in full else ""),
            ),
        ]
        ceiling = pipeline.get("ceiling")
        if ceiling:
            out.append(
                (
                    "p",
                    "Do the clinical labels' coarse grids themselves cap Dice? `pipeline_benchmark.py --parts ceiling` "
                    "carries the native model's 1 mm probabilities of each test case into its clinical field the way "
                    "the generator pastes the label (linear, then argmax and largest component there): mean "
                    f"foreground Dice **{ceiling['mean_foreground']:.4f}** against the clinical labels, against "
                    f"{native['dice']['mean_foreground']:.4f} on the native grid. The grid does not cap it; the "
                    "image the clinical model sees does.",
                )
            )
    variants = (pipeline or {}).get("variants", {})
    if variants:
        out += [
            (
                "p",
                "Where the gap comes from (`pipeline_benchmark.py --label NAME` with the options in the table; "
                "`--paste voxel` copies the crops voxel-wise, so their size in millimetres follows the drawn spacing; "
                "equal spacings give isotropic fields; `--sets native cropped` trains only the cut-out cases, so the "
                "last difference is cropped − native). Same 10 test cases, native grid:",
            ),
            (
                "table",
                [
                    "variant",
                    "paste",
                    "spacing in-plane / slices (mm)",
                    "iterations",
                    "clinical",
                    "cropped",
                    "native",
                    "clinical (or cropped) − native",
                    "to the native grid",
                ],
                [
                    [
                        f"`{name}`",
                        v["paste"],
                        f"{'–'.join(map(str, v['in_plane_mm']))} / {'–'.join(map(str, v['slices_mm']))}",
                        str(v["iterations"]),
                        dice_of(v, "clinical"),
                        dice_of(v, "cropped"),
                        dice_of(v, "native"),
                        f"{v.get('difference', v.get('cropped_minus_native')):+.4f}",
                        export_of(v),
                    ]
                    for name, v in variants.items()
                ],
            ),
        ]
    if pipeline and "speed" in pipeline:
        speed = pipeline["speed"]
        out += [
            (
                "table",
                ["CPU, clinical-shape set", "median"],
                [
                    [
                        f"patch training step, data path included (patch {'×'.join(map(str, speed['patch']))}, "
                        f"batch {speed['batch']})",
                        f"{speed['train_step_s']:.2f} s",
                    ],
                    ["the same network's bare step on synthetic tensors", f"{speed['bare_step_s']:.2f} s"],
                    ["bare step / step with the data path", f"{speed['data_path_fraction']:.0%}"],
                    [
                        f"sliding-window scoring per volume (K = {speed['mc_samples']} MC dropout, BALD)",
                        f"{speed['score_s_per_volume']:.1f} s",
                    ],
                ],
            )
        ]
        versus = speed.get("versus_monailabel")
        if versus:
            out += [
                (
                    "p",
                    f"MONAI Label's epistemic path beside ours on {versus['volumes']} volumes of the clinical-shape "
                    f"set (the same model and {'×'.join(map(str, versus['roi']))} windows, K = 8, overlap 0.5, both "
                    "scoring MONAI Label's foreground entropy of the mean; median seconds per volume):",
                ),
                (
                    "table",
                    ["path", "median s per volume", "speed-up"],
                    [
                        [name, f"{seconds:.1f}", f"{versus['speedup_vs_monailabel'][name]:.2f}x"]
                        for name, seconds in versus["median_s"].items()
                    ],
                ),
            ]
    memory = results.get("score_memory")
    if memory:
        k8, k32 = memory["K=8"], memory["K=32"]
        out += [
            (
                "p",
                f"Machine: {where_of(memory)}. "
                f"Peak RSS while scoring one synthetic {'×'.join(map(str, k8['volume']))} CT with MC dropout "
                f"(`python benchmarks/score_memory.py`, {k8['threads']} threads, windows "
                f"{'×'.join(map(str, k8['roi']))}): K = 8 **{k8['peak_rss_gb']:.2f} GB** (goal under 6 GB), "
                f"K = 32 {k32['peak_rss_gb']:.2f} GB, ratio **{memory['ratio_peak_rss_K32_to_K8']:.3f}**.",
            )
        ]
    speed_vs = results.get("score_speed")
    if speed_vs:
        res = speed_vs["results"]
        out += [
            (
                "p",
                f"Machine: {where_of(speed_vs)}. "
                f"Scoring one {'×'.join(map(str, speed_vs['volume']))} CT-like volume against MONAI Label's epistemic "
                f"path (`python benchmarks/score_speed.py`: same U-Net, {'×'.join(map(str, speed_vs['roi']))} "
                f"windows, overlap {speed_vs['overlap']}, K = {speed_vs['samples']}, {speed_vs['threads']} threads, "
                f"median of {speed_vs['runs']}):",
            ),
            (
                "table",
                ["path", "median s", "speed-up"],
                [
                    [name, f"{r['median_s']:.1f}", f"{speed_vs['speedup_vs_monailabel'][name]:.2f}x"]
                    for name, r in res.items()
                ],
            ),
            (
                "p",
                f"Goal: {speed_vs['goal_speedup']:.0f}x. bf16 adopted: {speed_vs.get('bf16_adopted', False)} "
                f"({speed_vs.get('note', '')})."
                + (
                    " On a CPU the engine scores as `ours_channels_last`, and as `ours_bf16_channels_last` with "
                    "`strategy.cpu_bf16: true`."
                    if "ours_bf16_channels_last" in res
                    else ""
                ),
            ),
        ]
        ranking = speed_vs.get("bf16_ranking")
        if ranking:
            out.append(("p", ranking_text(ranking)))
    return out


SECTIONS: dict[str, Callable[[dict[str, Any], str], list[Block]]] = {
    "speed": render_speed,
    "memory": render_memory,
    "full": render_full,
    "demo": render_demo,
}
"""The parts whose section needs only their own stored result (hippocampus and units fold in the GPU runs)."""


REGIME_NOTES = {
    "regimes-patch-cpu-ssl": " The full-data bound, and in the medium setting round 0 and the foreground-random "
    "runs, are those of `regimes-patch-cpu` (copied into the results dir before the run: same config, seeds and "
    "code path for them), so the wall time does not count them. clasp-pe was rerun because its MC-dropout masks "
    "changed since (see CHANGELOG); the low setting ran entirely here. The high setting and the clasp-pe+pool-pl "
    "arm ran in a later session (2026-11-29), after a scoring change that keeps every dropout mask and reorders "
    "float32 sums (see CHANGELOG); the two +cal-pl arms ran in the session after that, where scoring skips the "
    "moments ClaSP PE does not read (its mean prediction is bit-identical), the three +warm arms in the session "
    "after that and foreground-random+warm in the one after that, each with no change to the code it runs. The "
    "results dir's benchmark.yaml was replaced by the grown config each time (and once more when "
    "foreground-random+warm became a baseline).",
    "regimes-patch-cpu-shift": " The full-data bound is `regimes-patch-cpu-ssl`'s (copied into the results dir "
    "before the run: the same run config but for unit.edge, which a full-data run does not read), so the wall time "
    "does not count it. foreground-random and clasp-pe ran first as a two-arm pilot; the two +cal-pl+warm arms and "
    "the clasp-pe and foreground-random+cal-pl+warm baselines were added to the config before either arm ran, in the "
    "next session (2026-11-29), with no change to the code the pilot's arms run (the results dir's benchmark.yaml "
    "was replaced by the grown config). Most planned hippocampus volumes are shorter than two patches on every axis, "
    "so their full-size patches all overlap and each such case yields one patch: the high setting runs out of pool "
    "after 204 patches from 160 cases, in its third acquisition round, in every run.",
}
"""What a regime's summary cannot say about how it was run."""


_ATTEMPTS = ("clasp-pe+pl", "clasp-pe+pool-pl", "clasp-pe+cal-pl", "clasp-pe+cal-pl+warm", "clasp-pe+warm")
VERDICTS = {
    "regimes-patch": (("spread-clasp-pe", *_ATTEMPTS), ("foreground-random", "clasp-pe")),
    "regimes-patch-cpu-ssl": (_ATTEMPTS, ("foreground-random", "clasp-pe")),
    "regimes-patch-shift": (("clasp-pe+warm", "clasp-pe+cal-pl+warm"), ("foreground-random", "clasp-pe")),
    "regimes-patch-cpu-shift": (("clasp-pe+cal-pl+warm",), ("foreground-random", "clasp-pe")),
}
"""Issue 14's acceptance, per regime benchmark: (activeseg's arms, the baselines each must beat)."""
SAME_TRAINING = {
    "clasp-pe+pl": "foreground-random+pl",
    "clasp-pe+cal-pl": "foreground-random+cal-pl",
    "clasp-pe+cal-pl+warm": "foreground-random+cal-pl+warm",
    "clasp-pe+warm": "foreground-random+warm",
}
"""An arm's fair baseline where the summary compares them: foreground-random trained the same way (issue 14)."""


AXES = (("aubc", "rounds"), ("aubc_voxels", "labelled voxels"))
"""The budget axes issue 14's acceptance is read on: AUBC over rounds (the issue's), and over labelled voxels."""


def verdict(result: dict[str, Any], arms: tuple[str, ...], baselines: tuple[str, ...]) -> list[Block]:
    """Issue 14's acceptance read from a summary, on each budget axis the summary has: in how many settings each arm
    beats every baseline on AUBC with a Holm-adjusted paired t p < 0.05, in how many it is significantly worse than
    one, and in how many it beats foreground-random trained the same way (``SAME_TRAINING``), with the seeds that
    comparison would need for 80% power where the summary has them."""
    settings = sorted({row["setting"] for row in result["paired"]})
    axes = [(metric, name) for metric, name in AXES if any(r["metric"] == metric for r in result["paired"])]
    rows = {(r["strategy"], r["baseline"], r["setting"], r["metric"]): r for r in result["paired"]}

    def significant(arm: str, baseline: str, setting: str, metric: str, sign: int) -> bool:
        row = rows.get((arm, baseline, setting, metric))
        return row is not None and row["t_p_holm"] < 0.05 and sign * row["mean_difference"] > 0

    def power(arm: str, fair: str, metric: str) -> str:
        needed = [
            (s, rows[arm, fair, s, metric].get("seeds_for_power")) for s in settings if (arm, fair, s, metric) in rows
        ]
        if not any(n for _, n in needed):
            return ""  # summaries stored before the planning figure
        return "; seeds for 80% power: " + ", ".join(f"{s} {n or '—'}" for s, n in needed)

    def count(hits: list[str]) -> str:
        return f"{len(hits)} of {len(settings)}" + (f" ({', '.join(hits)})" if hits else "")

    cells: dict[str, list[str]] = {arm: [f"`{arm}`"] for arm in arms}
    met = dict.fromkeys((name for _, name in axes), False)
    for metric, name in axes:
        for arm in arms:
            wins = [s for s in settings if all(significant(arm, b, s, metric, +1) for b in baselines)]
            losses = [s for s in settings if any(significant(arm, b, s, metric, -1) for b in baselines)]
            met[name] = met[name] or (len(wins) >= 2 and not losses)
            fair = SAME_TRAINING.get(arm)
            fair_wins = [s for s in settings if fair and significant(arm, fair, s, metric, +1)]
            compared = fair is not None and any((arm, fair, s, metric) in rows for s in settings)
            fair_cell = f"{count(fair_wins)} (`{fair}`{power(arm, fair, metric)})" if fair and compared else "—"
            cells[arm] += [count(wins), count(losses), fair_cell]
    both = " and ".join(f"`{b}`" for b in baselines)
    headline = (
        f"**Acceptance (issue 14: beat {both}, Holm-adjusted paired t p < 0.05 on AUBC, in at least 2 of the "
        f"{len(settings)} patch regimes, and be significantly worse in none): "
        + "; ".join(f"{'met' if ok else 'not met'} on AUBC over {name}" for name, ok in met.items())
        + ".** The last columns compare each arm with foreground-random trained the same way, where it ran."
    )
    header = ["arm"] + [
        column
        for _, name in axes
        for column in (f"beats both ({name})", f"worse than one ({name})", f"beats the same training ({name})")
    ]
    return [("p", headline), ("table", header, list(cells.values()))]


def render_regimes(name: str, result: dict[str, Any], where: str) -> list[Block]:
    """A label-regime benchmark (``benchmarks/regimes/``): the report's blocks from its stored summary."""
    content = blocks(result, level=2, figure_prefix=f"{name}-")
    write_images(content, RESULTS)
    config = f"benchmarks/regimes/{name.removeprefix('regimes-')}.yaml"
    cpu = result["run"]["iterations"] < 1000
    sized = " Sized for 2 CPU cores (see the config): not the GPU protocol." if cpu else ""
    sized += REGIME_NOTES.get(name, "")
    intro: list[Block] = [
        (
            "p",
            f"Machine: {where}. `activeseg benchmark {config} --data HIPPOCAMPUS --results-dir DIR`, then "
            f"`python benchmarks/run_benchmarks.py --render-only --regime-results DIR` (summary stored as "
            f"`benchmarks/results/{name}.json`).{sized}",
        )
    ]
    if name in VERDICTS:
        intro += verdict(result, *VERDICTS[name])
    return [content[0], *intro, *content[1:]]


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
