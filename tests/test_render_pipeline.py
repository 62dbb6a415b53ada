"""BENCHMARKS.md's pooled pipeline comparisons (``benchmarks/render_pipeline.py``) on hand-made per-case records."""

from __future__ import annotations

import re
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from _support import benchmark_script


@pytest.fixture(scope="module")
def render() -> Iterator[ModuleType]:
    yield from benchmark_script("render_pipeline")


def run(**sets: dict[str, list[float | None]]) -> dict[str, Any]:
    return {name: {"per_case": per_case} for name, per_case in sets.items()}


def test_pooled_pairs_each_case_with_itself_across_runs(render: ModuleType) -> None:
    # Case order differs between the two sets of one run; a class absent from a case (None) is left out of its mean.
    first = run(
        clinical={"b": [0.6, 0.8], "a": [0.5, None]},
        native={"a": [0.9, 0.7], "b": [0.6, 0.6]},
    )
    second = run(clinical={"c": [0.7, 0.7]}, native={"c": [0.8, 0.6]})
    test = render.pooled([(first, "clinical", first, "native"), (second, "clinical", second, "native")])
    # By hand: a 0.5 - 0.8 = -0.3, b 0.7 - 0.6 = +0.1, c 0.7 - 0.7 = 0.0 (paired by position: b - a and a - b, -0.1
    # each, no win; the mean alone cannot tell, the wins and the spread can)
    assert test.n == 3
    assert test.mean_difference == pytest.approx(-0.2 / 3)
    assert test.wins == 1
    assert test.sd == pytest.approx(float(np.std([-0.3, 0.1, 0.0], ddof=1)))


def test_pooled_refuses_runs_without_the_same_cases(render: ModuleType) -> None:
    older: dict[str, Any] = {"clinical": {"dice": {}}, "native": {"dice": {}}}  # recorded before per-case Dice was kept
    assert render.pooled([(older, "clinical", older, "native")]) is None
    mismatched = run(clinical={"a": [0.5, 0.5]}, native={"b": [0.5, 0.5]})
    assert render.pooled([(mismatched, "clinical", mismatched, "native")]) is None


def split(thick: float, field_cost: float, planning_cost: list[float]) -> dict[str, Any]:
    """A field-image variant of 10 cases: thick-field = thick − field_cost, cropped = thick-field + planning_cost[i]
    (case i's thick Dice varies so that the cases differ)."""
    cases = [f"case{i}" for i in range(len(planning_cost))]
    base = {c: thick + 0.01 * i for i, c in enumerate(cases)}
    sets: dict[str, dict[str, list[float | None]]] = {
        "thick": {c: [base[c]] * 2 for c in cases},
        "thick-field": {c: [base[c] - field_cost] * 2 for c in cases},
        "cropped": {c: [base[c] - field_cost + d] * 2 for c, d in zip(cases, planning_cost, strict=True)},
    }
    return run(**sets)


def test_field_image_text_applies_the_rule_written_down_before_the_runs(render: ModuleType) -> None:
    names = render.FIELD_IMAGE
    assert render.field_image_text({names[0]: split(0.8, 0.02, [0.0] * 10)}) is None  # one set alone: nothing
    noise = [0.004, -0.004, 0.002, -0.002, 0.001, -0.001, 0.003, -0.003, 0.0, 0.0]  # planning: mean 0
    image_only = render.field_image_text({n: split(0.8, 0.02, noise) for n in names})
    assert "**the image's:" in image_only
    # by hand: the field's image −0.02 in every case, planning on the grid 0.0 on average, cut-out − thick their sum
    assert "cut-out cases at 1 mm − thick-slice images -0.0200 [" in image_only
    assert "the field's image (thick-field − thick) -0.0200 [-0.0200, -0.0200]" in image_only
    assert re.search(r"cut-out at 1 mm − thick-field\) [+-]0\.0000 \[", image_only)
    costly = render.field_image_text({n: split(0.8, 0.0, [-0.01 + d for d in noise]) for n in names})
    assert "**the pipeline's:" in costly and "thick-field) -0.0100 [" in costly
    # the field's image costs nothing and planning nothing: neither rule holds
    assert "**undecided**" in render.field_image_text({n: split(0.8, 0.0, noise) for n in names})


def test_whole_pipeline_text_reads_the_field_images_against_the_originals_and_the_full_fields(
    render: ModuleType,
) -> None:
    runs = [split(0.8, 0.02, [0.0] * 10) for _ in render.FIELD_IMAGE]
    variants = dict(zip(render.FIELD_IMAGE, runs, strict=True))
    assert render.whole_pipeline_text(variants, runs) == ""  # neither the originals nor the full fields: nothing
    cases = sorted(runs[0]["thick"]["per_case"])
    for record in runs:  # the originals 0.03 above the thick-slice images, so 0.05 above the field's images
        record["native"] = {"per_case": {c: [v[0] + 0.03] * 2 for c, v in record["thick"]["per_case"].items()}}
    older = {c: [v[0] - 0.001] * 2 for c, v in runs[0]["thick"]["per_case"].items()}  # the other CPU: 0.001 lower
    fields = {c: [v[0] - 0.01] * 2 for c, v in runs[0]["thick-field"]["per_case"].items()}  # 0.01 below the images
    variants |= {render.CLINICAL_PLAN: run(clinical=fields), render.FRESH_CLINICAL_PLAN: run(clinical=fields)}
    assert "full clinical fields" not in render.whole_pipeline_text(variants, runs)  # no thick-slice runs to compare
    variants |= {render.THICK: run(thick=older), render.FRESH_THICK: run(thick=older)}
    text = render.whole_pipeline_text(variants, runs)
    assert len(cases) == 10
    assert "the field's images on the 1 mm grid − the original crops, same runs: -0.0500 [" in text
    assert "the thick-slice images moved by +0.0010 between the two" in text
    assert "− the field's images on the 1 mm grid: -0.0100 [-0.0100, -0.0100] over 20 test cases" in text
    assert "(within ±0.03)" in text


def cut_out(dice: float, patch: list[int], strides: list[list[int]], **record: Any) -> dict[str, Any]:
    return {"cropped": {"dice": {"mean_foreground": dice}, "patch": patch, "strides": strides}, **record}


def test_strides_text_counts_each_factor_against_the_fixed_gain_and_checks_it_once_on_fresh_cases(
    render: ModuleType,
) -> None:
    coarse, fine = [[2, 2, 1], [2, 2, 2]], [[2, 2, 2], [2, 2, 2]]
    variants = {
        "thick-3000": cut_out(0.780, [48, 64, 20], coarse),
        "cropped-z1-plan-3000": cut_out(0.816, [48, 64, 40], fine),
        "cropped-z1-strides221-3000": cut_out(
            0.796, [48, 64, 36], coarse, plan_spacing=[0.8635, 0.8635, 1], plan_strides=coarse
        ),
        "cropped-strides222-3000": cut_out(0.794, [48, 64, 24], fine, plan_strides=fine),
        "fresh-thick-3000": cut_out(0.814, [48, 64, 20], coarse),
        "fresh-cropped-z1-strides221-3000": cut_out(0.828, [48, 64, 36], coarse),
    }
    text = render.strides_text(variants)
    # +0.016 counts, +0.014 does not: the bar is 0.015; the fresh check gains +0.014, under the bar again
    assert "(+0.0160)" in text and "(+0.0140)" in text
    assert "(fixed before they ran): the slice grid's voxels." in text
    assert "planned strides (2,2,1) (2,2,2) against (2,2,2) (2,2,2)" in text
    assert "0.8635 × 0.8635 × 1 mm, strides (2,2,1) (2,2,2), patch 48×64×36" in text
    assert (
        "`fresh-cropped-z1-strides221-3000`): 0.8280 against 0.8140 at the planned spacing (+0.0140: not confirmed)"
        in text
    )
    variants["cropped-strides222-3000"] = cut_out(0.800, [48, 64, 24], fine, plan_strides=fine)
    assert "the slice grid's voxels and the stride pattern." in render.strides_text(variants)


def test_speed_blocks_give_the_ratio_to_monailabel_with_and_without_its_per_sample_reloading(
    render: ModuleType,
) -> None:
    machine = {"cpu": "test CPU", "threads": 2, "gpu": "none", "torch": "2", "python": "3", "date": "2026-11-30"}
    medians = {"monailabel": 30.0, "monailabel_reloading": 50.0, "ours_channels_last": 20.0}
    speed: dict[str, Any] = {
        "machine": machine,
        "patch": [8, 8, 8],
        "batch": 2,
        "train_step_s": 1.0,
        "bare_step_s": 0.9,
        "data_path_fraction": 0.9,
        "score_s_per_volume": 2.0,
        "mc_samples": 8,
        "versus_monailabel": {
            "volumes": 3,
            "roi": [8, 8, 8],
            "median_s": medians,
            "speedup_vs_monailabel": {"monailabel": 1.0, "monailabel_reloading": 0.6, "ours_channels_last": 1.5},
        },
    }
    text = " ".join(str(block[-1]) for block in render.speed_blocks(speed, "test"))
    assert "is 1.50× as fast as the passes alone and 2.50× as fast as the path as written" in text
    assert "sub-pixel" not in text and "bf16" not in text
    # the engine's bf16 path, the layers it swapped and a record's note are reported when present
    medians["ours_bf16_channels_last"] = 10.0
    speed["versus_monailabel"]["speedup_vs_monailabel"]["ours_bf16_channels_last"] = 3.0
    speed["versus_monailabel"]["subpixel_layers"] = 3
    speed["note"] = "Measured before a change."
    text = " ".join(str(block[-1]) for block in render.speed_blocks(speed, "test"))
    assert "`ours_bf16_channels_last` is 3.00× as fast as the passes alone and 5.00× as fast as the path" in text
    assert "its 3 transposed convolutions in sub-pixel form" in text and "Measured before a change." in text
    assert "instance normalisations" not in text and "windows per batch" not in text  # records before 2026-12-01
    assert "each timed" not in text and "volumes of the clinical-shape set (the same model" in text
    speed["versus_monailabel"] |= {"instance_norm_layers": 9, "windows_per_batch": 4, "rounds": 3}
    text = " ".join(str(block[-1]) for block in render.speed_blocks(speed, "test"))
    assert "volumes of the clinical-shape set, each timed 3 times in interleaved rounds (the same model" in text
    assert "and, in float32, its 9 instance normalisations computed in that layout" in text
    assert "as the engine does on a CPU, 4 windows per batch (`inference.windows_per_batch`) taken a model" in text
    del medians["monailabel_reloading"]
    assert "as written" not in " ".join(str(block[-1]) for block in render.speed_blocks(speed, "test"))


def test_allocator_text_compares_like_with_like_and_monailabel_as_it_runs(render: ModuleType) -> None:
    def record(malloc: str, step: float, medians: dict[str, float]) -> dict[str, Any]:
        machine = {"cpu": "c", "threads": 2, "gpu": "none", "torch": "2", "date": "d", "malloc": malloc}
        versus = {"median_s": medians}
        return {"machine": machine, "train_step_s": step, "bare_step_s": step, "score_s_per_volume": 9.0} | {
            "versus_monailabel": versus
        }

    system = record("system", 0.5, {"monailabel": 16.0, "monailabel_reloading": 18.0, "ours_channels_last": 8.0})
    kept = record(
        "freed memory kept", 0.4, {"monailabel": 12.0, "monailabel_reloading": 13.0, "ours_channels_last": 4.0}
    )
    text = render.allocator_text(kept, system)
    assert "the patch training step 0.50 → 0.40 s" in text
    assert (
        "MONAI Label's passes 16.0 → 12.0 s; its path as written 18.0 → 13.0 s; `ours_channels_last` 8.0 → 4.0 s"
        in text
    )
    # MONAI Label as it runs (glibc's defaults) against ours as the CLI runs it (memory kept): 16 / 4 and 18 / 4
    assert "`ours_channels_last` 4.00× the passes alone and 4.50× the path as written" in text
    assert "freed memory kept" in render.describe(kept["machine"]) and "allocator defaults" in render.describe(
        system["machine"]
    )


def test_clinical_scale_text_says_in_which_rounds_the_model_found_the_structure(render: ModuleType) -> None:
    def record(*dice: float) -> dict[str, Any]:
        machine = {"cpu": "c", "threads": 2, "gpu": "none", "torch": "2", "date": "d", "malloc": "system"}
        case = {"shape": [512, 512, 230], "spacing": [0.8, 0.8, 1.5], "orientation": "LAS", "oblique_degrees": 0.0}
        metrics = [{"round": r, "n_labelled": 2 + r, "dice": {"mean_foreground": d}} for r, d in enumerate(dice)]
        return {
            "machine": machine,
            "command": "python benchmarks/clinical_scale.py",
            "cases": {"a": case},
            "plan": {"target_spacing": [0.8, 0.8, 1.5], "patch_size": [112, 120, 72], "batch_size": 2},
            "iterations": 1500,
            "strategy": {"name": "bald", "mc_samples": 8},
            "loop": {"initial": 2, "per_round": 1, "rounds": 1},
            "steps": {"plan": {"seconds": 33.0, "peak_rss_gb": 1.79}, "generate": {"seconds": 104.0}},
            "checks": {"exported_on_native_grid": ["image.nii.gz"], "metrics": metrics},
        }

    def text(scale: dict[str, Any]) -> str:
        return " ".join(str(block[1]) for block in render.clinical_scale_blocks(scale) if block[0] == "p")

    assert (
        "round 0 (2 labelled) 0.610, round 1 (3 labelled) 0.720. The model finds the structure at this size "
        "(Dice at least 0.5) in every round." in text(record(0.61, 0.72))
    )
    assert (
        "finds the structure at this size (Dice at least 0.5) in round 1 (3 labelled scans), not in round 0 "
        "(2 labelled scans)." in text(record(0.38, 0.52))
    )
    assert "do not find the structure at this size (Dice below 0.5)" in text(record(0.0, 0.49))
    rows = next(block[2] for block in render.clinical_scale_blocks(record(0.6)) if block[0] == "table")
    assert rows == [["plan", "33 s", "1.79 GB"], ["generate", "104 s", "–"]]


def test_viewer_scale_text_gives_the_waits_and_what_a_save_sends(render: ModuleType) -> None:
    viewer: dict[str, Any] = {
        "machine": {"cpu": "c", "threads": 2, "gpu": "none", "torch": "2", "date": "d", "malloc": "system"},
        "command": "python benchmarks/viewer_scale.py --work DIR --iterations 5",
        "case": {"id": "a", "shape": [512, 220, 512]},
        "strategy": {"name": "bald", "mc_samples": 8},
        "seconds": {"open at start": 233.4, "package made, at start": 170.2, "open ready": 56.6, "save": 12.2},
        "package_mb": {"image.nii.gz": 55.8, "prediction.nii.gz": 5.9},
        "sent": {"bytes": 5_900_079, "drawn": 57_672_032, "gzip": True},
        "checks": {"stored_label_is_the_prediction": True},
    }
    text = render.viewer_scale_text(viewer)
    assert "a 512×220×512 case queried by bald (MC dropout, K = 8)" in text
    assert "**233 s** (the package made 170 s after the click); opened with its package made: **57 s** (the " in text
    assert "**12 s**, sending 5.9 MB of gzip for a 57.7 MB drawing; the label the run stored is the prediction" in text
    viewer["checks"]["stored_label_is_the_prediction"] = False
    assert "the label the run stored is not the prediction" in render.viewer_scale_text(viewer)
