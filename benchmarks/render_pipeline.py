"""BENCHMARKS.md's clinical-size pipeline section, from ``pipeline.json``, ``score_memory.json`` and
``score_speed.json`` (``pipeline_benchmark.py``, ``score_memory.py``, ``score_speed.py``)."""

from __future__ import annotations

from typing import Any

from render_common import describe, where_of  # this script's folder is on sys.path when it runs

from activeseg.bench.report import Block


def export_of(full: dict[str, Any]) -> str:
    """How a pipeline run's predictions reached the native grid (runs before it was recorded copied label maps)."""
    way = full.get("native_export", "nearest labels")
    return "argmax of linearly resampled probabilities" if way == "linear probabilities" else "nearest-neighbour labels"


ISOTROPIC = "cropped-isotropic-1mm-3000"
"""The pipeline variant that keeps the clinical image but not its thick slices (``--in-plane 1 1 --slices 1 1``)."""


LONGER = "cropped-12000"
"""The pipeline variant that trains the cut-out clinical cases 4× as long (``--sets cropped --iterations 12000``)."""


SPATIAL = "spatial-3000"
"""The pipeline variant that trains every set with nnU-Net's rotation and scaling (``--spatial-augment``)."""


def spatial_text(spatial: dict[str, Any], full: dict[str, Any]) -> str:
    """Does spatial augmentation close the gap? Each set with it against the full part's same set without it."""
    sets = [name for name in ("native", "cropped", "clinical") if name in spatial and name in full]
    changes = ", ".join(
        f"{name} {spatial[name]['dice']['mean_foreground']:.4f} against {full[name]['dice']['mean_foreground']:.4f} "
        f"({spatial[name]['dice']['mean_foreground'] - full[name]['dice']['mean_foreground']:+.4f})"
        for name in sets
    )
    gap: float = spatial["difference"] if "difference" in spatial else spatial["cropped_minus_native"]
    which = "clinical" if "difference" in spatial else "cropped"
    machines = (  # records made before cpu_bf16_native was recorded came from the AVX-512 CPU (bf16 ran faster there)
        " The two ran on different kinds of CPU (with and without native bf16 convolution), so each difference "
        "also holds the drift between them: the demo's curves moved by up to 0.012 Dice between the two."
        if spatial["machine"].get("cpu_bf16_native") != full["machine"].get("cpu_bf16_native", True)
        else ""
    )
    return (
        f"Does augmentation close it? `{SPATIAL}` trains every set with `train.spatial_augment` (nnU-Net's random "
        f"rotation and scaling of about a third of the patches; `--spatial-augment`), the same "
        f"{spatial['iterations']} iterations, against the full part without it: mean foreground Dice {changes}. "
        f"{which.capitalize()} − native with it: **{gap:+.4f}** (acceptance: within 0.03: "
        f"{'met' if abs(gap) <= 0.03 else 'not met'}).{machines}"
    )


def augmentation_of(run: dict[str, Any]) -> str:
    """The training augmentation of a pipeline run."""
    return "flips, intensity, rotation, scaling" if run.get("spatial_augment") else "flips, intensity"


def longer_text(longer: dict[str, Any], full: dict[str, Any]) -> str:
    """Does more training close the gap? The cut-out cases trained longer, against the full part's same set."""
    before, after = full["cropped"]["dice"]["mean_foreground"], longer["cropped"]["dice"]["mean_foreground"]
    return (
        f"Does more training close the gap? `{LONGER}` trains the cut-out cases for {longer['iterations']} "
        f"iterations, {longer['iterations'] / full['iterations']:.0f}× the full part's {full['iterations']}: mean "
        f"foreground Dice {after:.4f} against {before:.4f} ({after - before:+.4f}). "
        + (
            "Longer training does not close it, so the budget is not what separates them from the native crops."
            if after - before < 0.01
            else "Longer training narrows it, so part of the gap is the training budget."
        )
    )


def signed(value: float | None) -> str:
    """A difference with its sign, or a dash where the variant did not train both sets."""
    return "–" if value is None else f"{value:+.4f}"


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


def speed_blocks(speed: dict[str, Any], cpu: str) -> list[Block]:
    """One CPU's speed part (``pipeline_benchmark.py --parts speed``): its machine, training step and scoring time,
    and MONAI Label's epistemic path beside ours."""
    out: list[Block] = [
        ("p", f"Speed on a CPU {cpu}, `pipeline_benchmark.py --parts speed`. Machine: {describe(speed['machine'])}."),
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
        ),
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
    return out


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
                f"Machine: {describe(full['machine'])}. "
                "`python benchmarks/pipeline_benchmark.py "
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
                    "augmentation",
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
                        augmentation_of(v),
                        dice_of(v, "clinical"),
                        dice_of(v, "cropped"),
                        dice_of(v, "native"),
                        signed(v.get("difference", v.get("cropped_minus_native"))),
                        export_of(v),
                    ]
                    for name, v in variants.items()
                ],
            ),
        ]
        longer = variants.get(LONGER)
        if longer and pipeline and "cropped" in pipeline.get("full", {}):
            out.append(("p", longer_text(longer, pipeline["full"])))
        spatial = variants.get(SPATIAL)
        if spatial and pipeline and "full" in pipeline:
            out.append(("p", spatial_text(spatial, pipeline["full"])))
    for key, cpu in (
        ("speed", "with native bf16 convolution (not recorded then: bf16 ran faster than float32 there)"),
        ("speed_no_bf16", "without native bf16 convolution (float32 paths only)"),
    ):
        if pipeline and key in pipeline:
            out += speed_blocks(pipeline[key], cpu)
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
