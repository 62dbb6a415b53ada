"""BENCHMARKS.md's clinical-size pipeline section, from ``pipeline.json``, ``score_memory.json`` and
``score_speed.json`` (``pipeline_benchmark.py``, ``score_memory.py``, ``score_speed.py``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from render_common import describe, where_of  # this script's folder is on sys.path when it runs

from activeseg.bench.report import Block
from activeseg.bench.stats import PairedTest, paired_test


def export_of(full: dict[str, Any]) -> str:
    """How a pipeline run's predictions reached the native grid (runs before it was recorded copied label maps)."""
    way = full.get("native_export", "nearest labels")
    return "argmax of linearly resampled probabilities" if way == "linear probabilities" else "nearest-neighbour labels"


GAP_GOAL = 0.03
"""Issue 12's bound on clinical − native full-data Dice."""


def within_goal(gap: float) -> str:
    """Whether one run's clinical − native lies within :data:`GAP_GOAL`, in words."""
    return f"{'within' if abs(gap) <= GAP_GOAL else 'not within'} {GAP_GOAL}"


def acceptance(gap: float) -> str:
    """The acceptance remark on one run's clinical − native."""
    return f"acceptance: within {GAP_GOAL}: {'met' if abs(gap) <= GAP_GOAL else 'not met'}"


ISOTROPIC = "cropped-isotropic-1mm-3000"
"""The pipeline variant that keeps the clinical image but not its thick slices (``--in-plane 1 1 --slices 1 1``)."""


LONGER = "cropped-12000"
"""The pipeline variant that trains the cut-out clinical cases 4× as long (``--sets cropped --iterations 12000``)."""


SPATIAL = "spatial-3000"
"""The pipeline variant that trains every set with nnU-Net's rotation and scaling (``--spatial-augment``)."""


THICK = "thick-3000"
"""The pipeline variant that trains the native cases on images sent through their clinical spacing and back
(``--sets native cropped thick``)."""
THICK_MARGIN = 0.015
"""How far the thick-slice images on the 1 mm grid may lie from the cut-out clinical cases and still count as
explaining them (fixed before the variant ran: about the drift between two kinds of CPU, 0.012)."""


def mean_dice(run: dict[str, Any], name: str) -> float:
    """A pipeline run's mean foreground Dice on set ``name``."""
    value: float = run[name]["dice"]["mean_foreground"]
    return value


def thick_text(thick: dict[str, Any]) -> str:
    """Is the gap the information the thick slices keep, or what the coarse grid's planning and training cost?"""
    native, cropped, coarse = (mean_dice(thick, name) for name in ("native", "cropped", "thick"))
    verdict = (
        "The thick slices' information accounts for the gap: a model that sees the same information on the 1 mm "
        "grid, with the 1 mm labels and the native plan, does no better than the one planned and trained on the "
        "coarse grid, so the coarse grid's planning and training lose nothing measurable."
        if abs(coarse - cropped) <= THICK_MARGIN
        else (
            f"Planning and training on the coarse grid cost {coarse - cropped:.4f} beyond what the slices lose."
            if coarse > cropped
            else "The coarse grid does better than the same information on the 1 mm grid."
        )
    )
    return (
        f"Is it the information the thick slices keep, or what planning and training on their coarse grid cost? "
        f"`{THICK}` (`--sets native cropped thick`) trains the native cases with each image sent to its clinical "
        "field's spacing and back (`clinical.through_clinical_spacing`, resampled as the generator resamples: the "
        "coarse image's information on the 1 mm grid), with the 1 mm labels, the native plan and the same "
        f"{thick['iterations']} iterations: mean foreground Dice **{coarse:.4f}**, against {native:.4f} for the "
        f"native images ({coarse - native:+.4f}) and {cropped:.4f} for the cut-out clinical cases "
        f"({coarse - cropped:+.4f}; within {THICK_MARGIN} counts as the same, a margin fixed before it ran). " + verdict
    )


PLAN = "cropped-1mm-plan-3000"
"""The cut-out clinical cases planned at 1 mm (``--sets cropped --plan-spacing 1 1 1``)."""
FRESH_THICK, FRESH_PLAN = "fresh-thick-3000", "fresh-cropped-1mm-plan-3000"
"""The thick-slice diagnostic and the 1 mm plan again on cases the choice was not made on (``--first-case 40
--seed 1``)."""
CLINICAL_PLAN = "plan-1mm-3000"
"""The clinical-shape fields planned at 1 mm (``--sets native clinical --plan-spacing 1 1 1``)."""
FRESH_CLINICAL_PLAN, FRESH_CLINICAL = "fresh-plan-1mm-3000", "fresh-full-3000"
"""The clinical-shape fields on the fresh cases, planned at 1 mm and at the plan's own spacing."""
PLAN_GAIN = 0.015
"""What the 1 mm plan must gain over the planned spacing on the fresh cases to count (fixed before they ran)."""
SLICE_AXIS = "cropped-z1-plan-3000"
AXES = {SLICE_AXIS: "the slice axis", "cropped-xy1-plan-3000": "the in-plane axes"}
"""The cut-out cases with one kind of axis at 1 mm and the other at the planned spacing (``--plan-spacing 0.8635
0.8635 1`` and ``1 1 2.2``); an axis accounts for the 1 mm plan's gain if refining it alone gains
:data:`PLAN_GAIN` (fixed before they ran). The fresh cases repeat the one that does as ``fresh-`` + its name."""
STRIDES = {"cropped-z1-strides221-3000": "the slice grid's voxels", "cropped-strides222-3000": "the stride pattern"}
"""The two things the slice axis's 1 mm plan changes, each alone on the cut-out cases: the 1 mm slice grid with the
planned grid's strides (``--plan-spacing 0.8635 0.8635 1 --strides 2,2,1 2,2,2 2,2,2``), and the planned grid with
the 1 mm grid's strides (``--strides 2,2,2 2,2,2 2,2,2``). A factor counts if its run gains :data:`PLAN_GAIN` over
the planned spacing (fixed before they ran); the fresh cases repeat the one that does as ``fresh-`` + its name."""


def plan_text(variants: dict[str, Any]) -> str:
    """Does planning on the coarse grid cost? The cut-out cases planned at 1 mm, checked on fresh cases, and the
    clinical fields planned at 1 mm against the native gap."""
    plan, thick = variants[PLAN], variants[THICK]
    planned, fine, coarse = mean_dice(thick, "cropped"), mean_dice(plan, "cropped"), mean_dice(thick, "thick")
    text = (
        f"Does planning on the coarse grid cost? `{PLAN}` (`--sets cropped --plan-spacing 1 1 1`) plans the cut-out "
        "clinical cases at 1 mm instead of the planned "
        + " × ".join(f"{v:.2f}" for v in thick["cropped"]["target_spacing"])
        + f" mm (Dice still on their own coarse grid): **{fine:.4f}** against {planned:.4f} at the planned spacing "
        f"({fine - planned:+.4f}), and {coarse:.4f} for the thick-slice images on the 1 mm grid ({fine - coarse:+.4f})."
    )
    if FRESH_THICK in variants and FRESH_PLAN in variants:
        fresh, fresh_plan = variants[FRESH_THICK], variants[FRESH_PLAN]
        f_native, f_planned = mean_dice(fresh, "native"), mean_dice(fresh, "cropped")
        f_fine, f_coarse = mean_dice(fresh_plan, "cropped"), mean_dice(fresh, "thick")
        confirmed = f_fine - f_planned >= PLAN_GAIN
        text += (
            f" The plan was chosen on these 10 test cases, so it was checked on cases it was not chosen on "
            f"({cases_of(fresh, 40)}; `--first-case 40 --seed 1`; the rule, fixed before they ran: the 1 mm plan "
            f"counts if it gains at least {PLAN_GAIN}): native {f_native:.4f}, cut-out cases at the planned spacing "
            f"{f_planned:.4f}, at 1 mm **{f_fine:.4f}** ({f_fine - f_planned:+.4f}: "
            f"{'confirmed' if confirmed else 'not confirmed'}; {f_fine - f_native:+.4f} to native), thick-slice images "
            f"on the 1 mm grid {f_coarse:.4f}."
        )
    clinical = variants.get(CLINICAL_PLAN)
    if clinical and "difference" in clinical:
        gap = clinical["difference"]
        text += (
            f" The clinical-shape fields planned at 1 mm (`{CLINICAL_PLAN}`, `--sets native clinical --plan-spacing "
            f"1 1 1`): {mean_dice(clinical, 'clinical'):.4f} against {mean_dice(clinical, 'native'):.4f} native, "
            f"clinical − native **{gap:+.4f}** ({within_goal(gap)} on these 10 "
            "test cases, with `plan.target_spacing: [1, 1, 1]` in the config; the default plan is unchanged). Its "
            f"training took {clinical['clinical']['train_seconds']:.0f} s with "
            + "×".join(map(str, clinical["clinical"]["patch"]))
            + " patches."
        )
        fresh_clinical = variants.get(FRESH_CLINICAL_PLAN)
        if fresh_clinical and "difference" in fresh_clinical:
            gap = fresh_clinical["difference"]
            text += (
                f" Again on the fresh cases (`{FRESH_CLINICAL_PLAN}`, `--first-case 40 --seed 1`): "
                f"{mean_dice(fresh_clinical, 'clinical'):.4f} against {mean_dice(fresh_clinical, 'native'):.4f} "
                f"native, **{gap:+.4f}** ({within_goal(gap)} there)."
            )
            default = variants.get(FRESH_CLINICAL)
            if default and "difference" in default:
                change = mean_dice(fresh_clinical, "clinical") - mean_dice(default, "clinical")
                text += (
                    f" The same fresh fields at the plan's own spacing (`{FRESH_CLINICAL}`): "
                    f"{mean_dice(default, 'clinical'):.4f} ({default['difference']:+.4f} to native), so the 1 mm "
                    f"plan changes them by {change:+.4f}."
                )
        else:
            text += " The full fields were not rerun on the fresh cases."
    return text


def axis_text(variants: dict[str, Any]) -> str:
    """Which axis carries the 1 mm plan's gain: each kind of axis refined alone, against :data:`PLAN_GAIN`."""
    planned, fine = mean_dice(variants[THICK], "cropped"), mean_dice(variants[PLAN], "cropped")
    parts = []
    for name, axis in AXES.items():
        dice = mean_dice(variants[name], "cropped")
        parts.append(f"{axis} alone (`{name}`, " + plan_of(variants[name]) + f"): {dice:.4f} ({dice - planned:+.4f})")
    return (
        f"Which axis carries the 1 mm plan's {fine - planned:+.4f}? On the same cut-out cases, "
        + "; ".join(parts)
        + f". An axis counts if refining it alone gains at least {PLAN_GAIN} (fixed before they ran): "
        + counted(variants, AXES)
    )


def counted(variants: dict[str, Any], factors: dict[str, str]) -> str:
    """Which of ``factors`` (cut-out variant: what it tests) gain at least :data:`PLAN_GAIN` over the planned
    spacing, in words, then each such variant again on the fresh cases (``fresh-`` + its name)."""
    planned = mean_dice(variants[THICK], "cropped")
    carriers = [name for name in factors if mean_dice(variants[name], "cropped") - planned >= PLAN_GAIN]
    text = (" and ".join(factors[name] for name in carriers) if carriers else "neither") + "."
    if FRESH_THICK not in variants:
        return text
    fresh_planned = mean_dice(variants[FRESH_THICK], "cropped")
    for name in carriers:
        fresh = variants.get(f"fresh-{name}")
        if fresh:
            gain = mean_dice(fresh, "cropped") - fresh_planned
            text += (
                f" On the fresh cases (`fresh-{name}`): {mean_dice(fresh, 'cropped'):.4f} against "
                f"{fresh_planned:.4f} at the planned spacing ({gain:+.4f}: "
                f"{'confirmed' if gain >= PLAN_GAIN else 'not confirmed'})."
            )
    return text


def strides_text(variants: dict[str, Any]) -> str:
    """What the slice axis's 1 mm plan changes, one thing at a time: the grid's voxels and the stride pattern."""
    planned, both = mean_dice(variants[THICK], "cropped"), mean_dice(variants[SLICE_AXIS], "cropped")
    parts = []
    for name, factor in STRIDES.items():
        run = variants[name]
        dice = mean_dice(run, "cropped")
        parts.append(
            f"{factor} alone (`{name}`: {plan_of(run)}, patch "
            + "×".join(map(str, run["cropped"]["patch"]))
            + f"): {dice:.4f} ({dice - planned:+.4f})"
        )
    return (
        "The slice axis at 1 mm changes two things at once: how many voxels cross the structure along it, and the "
        "network's first level, which strides that axis on the 1 mm grid but not on the coarse one (planned strides "
        + strides_of(variants[THICK]["cropped"]["strides"])
        + " against "
        + strides_of(variants[SLICE_AXIS]["cropped"]["strides"])
        + "). `--strides` sets them apart (`plan.strides`): "
        + "; ".join(parts)
        + f"; against {planned:.4f} at the planned spacing and {both:.4f} with both. A factor counts if it alone "
        f"gains at least {PLAN_GAIN} (fixed before they ran): " + counted(variants, STRIDES)
    )


def strides_of(strides: list[list[int]]) -> str:
    """Network strides per level, as ``(2,2,1) (2,2,2)``."""
    return " ".join("(" + ",".join(map(str, level)) + ")" for level in strides)


def case_dice(run: dict[str, Any], name: str) -> dict[str, float]:
    """Each test case's mean foreground Dice in set ``name`` of a pipeline run (runs recorded before per-case Dice
    was kept have none)."""
    rows = run[name].get("per_case", {})
    return {case: float(np.mean([v for v in row if v is not None])) for case, row in rows.items()}


def pooled(pairs: list[tuple[dict[str, Any], str, dict[str, Any], str]]) -> PairedTest | None:
    """Set ``a`` − set ``b``, paired by test case and pooled over runs (``(run_a, a, run_b, b)``, each run's own
    cases); None where a run has no per-case Dice."""
    a, b = [], []
    for run_a, name_a, run_b, name_b in pairs:
        dice_a, dice_b = case_dice(run_a, name_a), case_dice(run_b, name_b)
        if not dice_a or sorted(dice_a) != sorted(dice_b):
            return None
        a += [dice_a[case] for case in sorted(dice_a)]
        b += [dice_b[case] for case in sorted(dice_a)]
    return paired_test(a, b)


def paired_of(test: PairedTest) -> str:
    """A pooled paired difference: mean, 95% bootstrap CI, cases and the paired t p."""
    return (
        f"{test.mean_difference:+.4f} [{test.low:+.4f}, {test.high:+.4f}] over {test.n} test cases "
        f"({test.wins} higher, paired t p {test.t_p:.2g})"
    )


def pooled_text(variants: dict[str, Any]) -> str | None:
    """Both case sets' test cases together, paired: the 1 mm plan's native gap, what the field costs at 1 mm, and
    the slice axis's gain."""
    if not all(name in variants for name in (CLINICAL_PLAN, FRESH_CLINICAL_PLAN, PLAN, FRESH_PLAN)):
        return None
    plan, fresh = variants[CLINICAL_PLAN], variants[FRESH_CLINICAL_PLAN]
    gap = pooled([(plan, "clinical", plan, "native"), (fresh, "clinical", fresh, "native")])
    field = pooled(
        [(plan, "clinical", variants[PLAN], "cropped"), (fresh, "clinical", variants[FRESH_PLAN], "cropped")]
    )
    if gap is None or field is None:
        return None
    verdict = (
        f"met: the interval lies within ±{GAP_GOAL}"
        if gap.low >= -GAP_GOAL and gap.high <= GAP_GOAL
        else f"not met: the interval lies wholly outside ±{GAP_GOAL}"
        if gap.high < -GAP_GOAL or gap.low > GAP_GOAL
        else f"undecided: the interval crosses ±{GAP_GOAL}"
    )
    text = (
        "Ten test cases per set is few, so the two sets' 20 test cases are pooled, paired by case (mean, 95% "
        f"bootstrap CI): planned at 1 mm, clinical − native **{paired_of(gap)}** (the goal, within {GAP_GOAL}: "
        f"{verdict}); the full fields − their cut-out twins, both at 1 mm, {paired_of(field)}."
    )
    if THICK in variants and FRESH_THICK in variants:
        thick, fresh_thick = variants[THICK], variants[FRESH_THICK]
        lost = pooled([(thick, "thick", thick, "native"), (fresh_thick, "thick", fresh_thick, "native")])
        cost = pooled([(plan, "clinical", thick, "thick"), (fresh, "clinical", fresh_thick, "thick")])
        if lost is not None and cost is not None:
            text += (
                " Of the gap, the thick slices' information (thick-slice images − native, both on the 1 mm grid): "
                f"{paired_of(lost)}; the pipeline's own share (the full fields at 1 mm − the thick-slice images, Dice "
                f"each on its own grid): {paired_of(cost)}."
            )
    if all(name in variants for name in (SLICE_AXIS, f"fresh-{SLICE_AXIS}", THICK, FRESH_THICK)):
        z = pooled(
            [
                (variants[SLICE_AXIS], "cropped", variants[THICK], "cropped"),
                (variants[f"fresh-{SLICE_AXIS}"], "cropped", variants[FRESH_THICK], "cropped"),
            ]
        )
        text += (
            f" The slice axis at 1 mm − the planned spacing, cut-out cases: {paired_of(z)}." if z is not None else ""
        )
    return text


FIELD_IMAGE = ("field-image-3000", "fresh-field-image-3000")
"""The variants that split the pipeline's own share (``--sets cropped thick thick-field --plan-spacing 1 1 1``, on
the first 40 cases and on cases 41-80 with generator seed 1): the cut-out cases planned at 1 mm, the thick-slice
images, and the field's own box back on the 1 mm grid, all three on one machine and commit.

Written down before they ran: pooled over both sets' test cases, A = thick-field − thick (what the field's CT
intensities, noise and faded border take from the thick slices) and B = cropped at 1 mm − thick-field (what planning
on the clinical grid costs: its resampling, its nearest-neighbour labels, CT normalisation, Dice on the coarse grid).
The pipeline's own share is the image's if B's 95% interval holds 0 and A's lies below 0, the pipeline's if B's
lies below 0, and undecided otherwise."""


def field_image_text(variants: dict[str, Any]) -> str | None:
    """The pre-registered split of the pipeline's own share (:data:`FIELD_IMAGE`)."""
    if not all(name in variants for name in FIELD_IMAGE):
        return None
    runs = [variants[name] for name in FIELD_IMAGE]
    image = pooled([(run, "thick-field", run, "thick") for run in runs])
    pipeline = pooled([(run, "cropped", run, "thick-field") for run in runs])
    whole = pooled([(run, "cropped", run, "thick") for run in runs])
    if image is None or pipeline is None or whole is None:
        return None
    verdict = (
        "the image's: planning on the clinical grid costs nothing measurable beyond what the field's image lacks"
        if pipeline.low <= 0.0 <= pipeline.high and image.high < 0.0
        else "the pipeline's: planning on the clinical grid costs Dice the field's image does not explain"
        if pipeline.high < 0.0
        else "undecided"
    )
    return (
        f"Is the pipeline's own share the pipeline, or the field's image? `{FIELD_IMAGE[0]}` and `{FIELD_IMAGE[1]}` "
        "(`--sets native cropped thick thick-field --plan-spacing 1 1 1`, cases 1–40 and 41–80; `native` was added "
        "after the rule's three sets had run) train, on one machine and "
        "commit, the cut-out clinical cases planned at 1 mm, the thick-slice images, and `thick-field`: each case's "
        "pasted box taken from its field (CT intensities, the field's noise and faded border) and brought back to "
        "the 1 mm grid the same way (`clinical.field_image_on_source_grid`), with the 1 mm labels and the native "
        "plan. Pooled over the 20 test cases: cut-out cases at 1 mm − thick-slice images "
        f"{paired_of(whole)}; of that, the field's image (thick-field − thick) {paired_of(image)}, and planning on "
        f"the clinical grid (cut-out at 1 mm − thick-field) {paired_of(pipeline)}. The rule, written down before "
        "they ran (the pipeline's share is the image's if the second interval holds 0 and the first lies below 0, "
        f"the pipeline's if the second lies below 0): **{verdict}**."
    ) + whole_pipeline_text(variants, runs)


def whole_pipeline_text(variants: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """Not part of the rule: the full clinical fields at 1 mm against the native pipeline on their own images
    (what the whole pipeline costs beyond the image it is given), and those images against the originals."""
    text = ""
    natives = (
        pooled([(run, "thick-field", run, "native") for run in runs]) if all("native" in r for r in runs) else None
    )
    if natives is not None:
        text += (
            " Read beside it, not part of the rule: the field's images on the 1 mm grid − the original crops, same "
            f"runs: {paired_of(natives)}, what the generated images lack at this budget even for the native "
            "pipeline with the 1 mm labels."
        )
    if all(name in variants for name in (CLINICAL_PLAN, FRESH_CLINICAL_PLAN, THICK, FRESH_THICK)):
        fields = [variants[CLINICAL_PLAN], variants[FRESH_CLINICAL_PLAN]]
        drift = pooled(
            [(run, "thick", variants[old], "thick") for run, old in zip(runs, (THICK, FRESH_THICK), strict=True)]
        )
        whole = pooled([(field, "clinical", run, "thick-field") for field, run in zip(fields, runs, strict=True)])
        if whole is not None and drift is not None:
            inside = whole.low >= -GAP_GOAL and whole.high <= GAP_GOAL
            text += (
                f" The full clinical fields planned at 1 mm (`{CLINICAL_PLAN}`, `{FRESH_CLINICAL_PLAN}`, on the other "
                "kind of CPU; the thick-slice images moved by "
                f"{drift.mean_difference:+.4f} between the two) − the field's images on the 1 mm grid: "
                f"{paired_of(whole)}: what the whole pipeline, field and all, costs beyond the image it is given "
                f"({'within' if inside else 'not within'} ±{GAP_GOAL})."
            )
    return text


FOUND = 0.5
"""The test scan's mean foreground Dice from which the clinical-scale render says that a round's model found the
structure."""


def found_text(metrics: list[dict[str, Any]], iterations: int) -> str:
    """Which rounds' models found the structure on the clinical-scale run's test scan (Dice at least FOUND)."""
    found = [m for m in metrics if m["dice"]["mean_foreground"] >= FOUND]
    missed = [m for m in metrics if m not in found]

    def rounds(chosen: list[dict[str, Any]]) -> str:
        return ", ".join(f"round {m['round']} ({m['n_labelled']} labelled scans)" for m in chosen)

    if not missed:
        return f"The model finds the structure at this size (Dice at least {FOUND}) in every round."
    if found:
        return (
            f"At {iterations} iterations a round the model finds the structure at this size (Dice at least {FOUND}) "
            f"in {rounds(found)}, not in {rounds(missed)}."
        )
    return (
        f"{iterations} iterations a round do not find the structure at this size (Dice below {FOUND}), so this run "
        "shows that every step holds, not how good the model gets; whether the pipeline finds the structure is "
        "measured on the 192×192 fields above."
    )


def clinical_scale_blocks(scale: dict[str, Any]) -> list[Block]:
    """The human loop end to end on clinical-size scans (``clinical_scale.py``): each step's time and memory."""
    cases = scale["cases"].values()
    shapes = sorted({"×".join(map(str, c["shape"])) for c in cases})
    spacings = sorted({" × ".join(f"{s:g}" for s in c["spacing"]) for c in cases})
    plan, loop, strategy, checks = scale["plan"], scale["loop"], scale["strategy"], scale["checks"]
    dice = ", ".join(
        f"round {m['round']} ({m['n_labelled']} labelled) {m['dice']['mean_foreground']:.3f}" for m in checks["metrics"]
    )
    return [
        (
            "p",
            f"Machine: {where_of(scale)}. The human loop end to end on {len(scale['cases'])} clinical-size scans "
            f"(`{scale['command']}`): hippocampus cases pasted into CT-like fields of {', '.join(shapes)} voxels "
            f"({', '.join(spacings)} mm; orientations "
            f"{', '.join(sorted({c['orientation'] for c in cases}))}), each step a fresh command-line process as a "
            f"user runs it. The plan: {' × '.join(f'{s:.2f}' for s in plan['target_spacing'])} mm, patch "
            f"{'×'.join(map(str, plan['patch_size']))}, batch {plan['batch_size']}. {loop['rounds']} round of "
            f"{loop['per_round']} queried volume ({strategy['name']}, MC dropout, K = {strategy['mc_samples']}) "
            f"after {loop['initial']} labelled ones; the model trains {scale['iterations']} iterations a round.",
        ),
        (
            "table",
            ["step", "wall time", "peak RSS"],
            [
                [name, f"{step['seconds']:.0f} s", f"{step['peak_rss_gb']:.2f} GB" if "peak_rss_gb" in step else "–"]
                for name, step in scale["steps"].items()
            ],
        ),
        (
            "p",
            f"Checked by the script: the exported files ({', '.join(checks['exported_on_native_grid'])}) lie on "
            "each image's own grid (shape and affine), the label the run stored for each queried case is the "
            "annotator's file voxel for voxel, and both rounds were evaluated. The test scan's mean foreground "
            f"Dice: {dice}. {found_text(checks['metrics'], scale['iterations'])}",
        ),
    ]


def viewer_scale_text(viewer: dict[str, Any]) -> str:
    """The browser viewer on a clinical-size case (``viewer_scale.py``): the waits, and what a save sends."""
    seconds, sent, case = viewer["seconds"], viewer["sent"], viewer["case"]
    files = ", ".join(f"{name} {mb:g} MB" for name, mb in viewer["package_mb"].items())
    kept = viewer["checks"]["stored_label_is_the_prediction"]
    return (
        f"Machine: {where_of(viewer)}. The browser viewer on a clinical-size case (`{viewer['command']}`; headless "
        f"Chromium drawing in software, against the annotation server on loopback): a "
        f"{'×'.join(map(str, case['shape']))} case queried by {viewer['strategy']['name']} (MC dropout, K = "
        f"{viewer['strategy']['mc_samples']}). Opened as soon as the server is up, while the server computes its "
        f"package in the background: **{seconds['open at start']:.0f} s** (the package made "
        f"{seconds['package made, at start']:.0f} s after the click); opened with its package made: "
        f"**{seconds['open ready']:.0f} s** (the package: {files}). Saving the accepted prediction: "
        f"**{seconds['save']:.0f} s**, sending {sent['bytes'] / 1e6:.1f} MB of gzip for a "
        f"{sent['drawn'] / 1e6:.1f} MB drawing; the label the run stored "
        f"{'is' if kept else 'is not'} the prediction voxel for voxel."
    )


def cpu_kind(run: dict[str, Any]) -> bool:
    """Whether a run's CPU convolves bf16 natively (records made before it was recorded came from the AVX-512 CPU,
    where bf16 ran faster)."""
    return bool(run["machine"].get("cpu_bf16_native", True))


def baseline(name: str, iterations: int, *runs: dict[str, Any] | None) -> dict[str, Any] | None:
    """The first of ``runs`` that trained set ``name`` for ``iterations`` (put a same-CPU run first), else None."""
    return next((run for run in runs if run and name in run and run["iterations"] == iterations), None)


def spatial_text(spatial: dict[str, Any], full: dict[str, Any], same_cpu: dict[str, Any] | None = None) -> str:
    """Does spatial augmentation close the gap? Each set with it against the same set without it: from
    ``same_cpu`` (a run on the same kind of CPU with the same budget) where it has the set, else the full part."""
    pairs = [
        (name, run)
        for name in ("native", "cropped", "clinical")
        if name in spatial and (run := baseline(name, spatial["iterations"], same_cpu, full))
    ]
    changes = ", ".join(
        f"{name} {mean_dice(spatial, name):.4f} against {mean_dice(run, name):.4f} "
        f"({mean_dice(spatial, name) - mean_dice(run, name):+.4f}"
        + ("" if cpu_kind(run) == cpu_kind(spatial) else ", against the other kind of CPU")
        + ")"
        for name, run in pairs
    )
    gap: float = spatial["difference"] if "difference" in spatial else spatial["cropped_minus_native"]
    which = "clinical" if "difference" in spatial else "cropped"
    machines = (
        " Runs on different kinds of CPU (with and without native bf16 convolution) also differ by the drift between "
        "them: the demo's curves moved by up to 0.012 Dice between the two."
        if any(cpu_kind(run) != cpu_kind(spatial) for _, run in pairs)
        else ""
    )
    return (
        f"Does augmentation close it? `{SPATIAL}` trains every set with `train.spatial_augment` (nnU-Net's random "
        f"rotation and scaling of about a third of the patches; `--spatial-augment`), the same "
        f"{spatial['iterations']} iterations, against the same set without it: mean foreground Dice {changes}. "
        f"{which.capitalize()} − native with it: **{gap:+.4f}** ({acceptance(gap)}).{machines}"
    )


def augmentation_of(run: dict[str, Any]) -> str:
    """The training augmentation of a pipeline run."""
    return "flips, intensity, rotation, scaling" if run.get("spatial_augment") else "flips, intensity"


def longer_text(longer: dict[str, Any], full: dict[str, Any], same_cpu: dict[str, Any] | None = None) -> str:
    """Does more training close the gap? The cut-out cases trained longer, against the same set at the full part's
    budget: from ``same_cpu`` (a run on the same kind of CPU) where it has the set, else the full part."""
    base = baseline("cropped", full["iterations"], same_cpu, full) or full
    before, after = mean_dice(base, "cropped"), mean_dice(longer, "cropped")
    return (
        f"Does more training close the gap? `{LONGER}` trains the cut-out cases for {longer['iterations']} "
        f"iterations, {longer['iterations'] / base['iterations']:.0f}× the {base['iterations']} it is compared with: "
        f"mean foreground Dice {after:.4f} against {before:.4f} ({after - before:+.4f}"
        + ("" if cpu_kind(base) == cpu_kind(longer) else ", against a run on the other kind of CPU")
        + "). "
        + (
            "Longer training does not close it, so the budget is not what separates them from the native crops."
            if after - before < 0.01
            else "Longer training narrows it, so part of the gap is the training budget."
        )
    )


def cases_of(run: dict[str, Any], cases: int) -> str:
    """Which sorted hippocampus cases a pipeline run's sets were made from, and the generator's seed."""
    first = run.get("first_case", 0)
    return f"{first + 1}–{first + run.get('cases', cases)}, generator seed {run.get('seed', 0)}"


def plan_of(run: dict[str, Any]) -> str:
    """The target spacing the clinical sets were planned at (the plan's own, or ``--plan-spacing``), and their
    strides where ``--strides`` fixed them."""
    spacing, strides = run.get("plan_spacing"), run.get("plan_strides")
    text = "planned" if not spacing else " × ".join(f"{v:g}" for v in spacing) + " mm"
    return text + (", strides " + strides_of(strides) if strides else "")


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


ENGINE_PATHS = ("ours_channels_last", "ours_bf16_channels_last")
"""How the engine scores on a CPU: in float32, and in bf16 with ``strategy.cpu_bf16`` where oneDNN convolves it."""


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
    if speed.get("note"):
        out.append(("p", speed["note"]))
    versus = speed.get("versus_monailabel")
    if versus:
        timed = f", each timed {versus['rounds']} times in interleaved rounds" if versus.get("rounds") else ""
        out += [
            (
                "p",
                f"MONAI Label's epistemic path beside ours on {versus['volumes']} volumes of the clinical-shape "
                f"set{timed} (the same model and {'×'.join(map(str, versus['roi']))} windows, K = 8, overlap 0.5, both "
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
        reloading = versus["median_s"].get("monailabel_reloading")
        if reloading is not None:
            engine = [name for name in ENGINE_PATHS if name in versus["median_s"]]
            norms = versus.get("instance_norm_layers")
            subpixel = (
                f" Ours runs the same weights channels-last, with its {versus['subpixel_layers']} transposed "
                "convolutions in sub-pixel form (`acquisition/subpixel.py`, the same map)"
                + (
                    f" and, in float32, its {norms} instance normalisations computed in that layout "
                    "(`acquisition/instance_norm.py`, the same map)"
                    if norms
                    else ""
                )
                + ", as the engine does on a CPU"
                + (
                    f", {versus['windows_per_batch']} windows per batch (`inference.windows_per_batch`) taken a "
                    "model call's rows at a time"
                    if versus.get("windows_per_batch")
                    else ""
                )
                + "."
                if versus.get("subpixel_layers")
                else ""
            )
            ratios = "; ".join(
                f"`{name}` is {versus['speedup_vs_monailabel'][name]:.2f}× as fast as the passes alone and "
                f"{reloading / versus['median_s'][name]:.2f}× as fast as the path as written"
                for name in engine
            )
            out.append(
                (
                    "p",
                    "`monailabel` is given the planned image once: its K sliding-window passes alone. "
                    "`monailabel_reloading` is MONAI Label's path as its code runs it (`EpistemicScoring.infer_seg` "
                    "applies the app's pre-transforms before each of the K passes): the image file loaded, "
                    "reoriented to RAS, resampled to the plan's spacing and windowed by MONAI's transforms "
                    "(`pipeline_benchmark.monailabel_loader`, the radiology app's chain for a CT model) K times. "
                    "MONAI Label's apps also ship overlap 0.25 with flat blending (fewer windows); both paths here "
                    f"use 0.5 with Gaussian blending, as activeseg does.{subpixel} Issue 12's goal of 3×: {ratios}.",
                )
            )
    return out


def allocator_text(kept: dict[str, Any], system: dict[str, Any]) -> str:
    """What keeping freed memory (``activeseg.engine.malloc``) changes, from one kind of CPU's two speed parts, and
    MONAI Label's path as it runs (glibc's defaults) against ours as activeseg's CLI runs it (memory kept)."""
    a, b = kept["versus_monailabel"]["median_s"], system["versus_monailabel"]["median_s"]
    engine = [name for name in ENGINE_PATHS if name in a and name in b]
    changes = "; ".join(
        f"{label} {b[key]:.1f} → {a[key]:.1f} s"
        for key, label in (
            ("monailabel", "MONAI Label's passes"),
            ("monailabel_reloading", "its path as written"),
            *((name, f"`{name}`") for name in engine),
        )
        if key in a and key in b
    )
    crossed = "; ".join(
        f"`{name}` {b['monailabel'] / a[name]:.2f}× the passes alone and "
        f"{b.get('monailabel_reloading', b['monailabel']) / a[name]:.2f}× the path as written"
        for name in engine
    )
    return (
        "Keeping freed memory in the process (`activeseg.engine.malloc`; the records above say which allocator "
        f"setting each ran with): the patch training step {system['train_step_s']:.2f} → {kept['train_step_s']:.2f} s, "
        f"the bare step {system['bare_step_s']:.2f} → {kept['bare_step_s']:.2f} s, BALD scoring per volume "
        f"{system['score_s_per_volume']:.1f} → {kept['score_s_per_volume']:.1f} s; per volume against MONAI Label, "
        f"{changes}. The setting speeds MONAI Label's path too, so the ratios above compare like with like. MONAI "
        "Label's server leaves glibc's defaults; against it as it runs there (the second record) ours as activeseg's "
        f"CLI runs it (the first): {crossed}."
    )


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
                f"Clinical − native: **{full['difference']:+.4f}** ({acceptance(full['difference'])})."
                + (
                    f" Clinical − the same clinical cases cut to their boxes: **{full['difference_to_cropped']:+.4f}**"
                    ": the large field, the orientations and cropping to the body cost nothing measurable. What "
                    "separates both from the native crops is the image the generator makes, which the cut-out cases "
                    "share"
                    + (
                        f"; the `{ISOTROPIC}` row below places it in the 2–4 mm slices: the same CT intensities and "
                        "noise at 1 mm cost "
                        f"{-pipeline['variants'][ISOTROPIC]['cropped_minus_native']:.4f}"
                        + (
                            f", and `{THICK}` splits it into the slices' information and their coarse planned grid."
                            if THICK in pipeline.get("variants", {})
                            else "."
                        )
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
                "last difference is cropped − native; `thick` is the native cases on images sent through their "
                "clinical slices and back, `thick-field` the same with each image taken from its field's box). The "
                "cases are positions in the sorted hippocampus ids; the rows made from the first 40 share their 10 "
                "test cases, the fresh rows have 10 others. Dice on each case's native grid:",
            ),
            (
                "table",
                [
                    "variant",
                    "CPU: native bf16",
                    "cases",
                    "paste",
                    "spacing in-plane / slices (mm)",
                    "iterations",
                    "augmentation",
                    "clinical sets' plan",
                    "clinical",
                    "cropped",
                    "thick-slice images, 1 mm",
                    "the field's box, 1 mm",
                    "native",
                    "clinical (or cropped) − native",
                    "to the native grid",
                ],
                [
                    [
                        f"`{name}`",
                        "yes" if cpu_kind(v) else "no",
                        cases_of(v, (pipeline or {}).get("cases", 40)),
                        v["paste"],
                        f"{'–'.join(map(str, v['in_plane_mm']))} / {'–'.join(map(str, v['slices_mm']))}",
                        str(v["iterations"]),
                        augmentation_of(v),
                        plan_of(v),
                        dice_of(v, "clinical"),
                        dice_of(v, "cropped"),
                        dice_of(v, "thick"),
                        dice_of(v, "thick-field"),
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
            out.append(("p", longer_text(longer, pipeline["full"], variants.get(THICK))))
        spatial = variants.get(SPATIAL)
        if spatial and pipeline and "full" in pipeline:
            out.append(("p", spatial_text(spatial, pipeline["full"], variants.get(THICK))))
        thick = variants.get(THICK)
        if thick:
            out.append(("p", thick_text(thick)))
        if thick and PLAN in variants:
            out.append(("p", plan_text(variants)))
            if all(name in variants for name in AXES):
                out.append(("p", axis_text(variants)))
                if all(name in variants for name in STRIDES):
                    out.append(("p", strides_text(variants)))
            text = pooled_text(variants)
            if text:
                out.append(("p", text))
            text = field_image_text(variants)
            if text:
                out.append(("p", text))
    for key, cpu in (
        ("speed", "with native bf16 convolution (float32 and bf16 paths)"),
        ("speed_system_malloc", "with native bf16 convolution, glibc's allocator defaults for both paths"),
        ("speed_no_bf16", "without native bf16 convolution (float32 paths only)"),
    ):
        if pipeline and key in pipeline:
            out += speed_blocks(pipeline[key], cpu)
    if pipeline and "speed" in pipeline and "speed_system_malloc" in pipeline:
        out.append(("p", allocator_text(pipeline["speed"], pipeline["speed_system_malloc"])))
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
    scale = results.get("clinical_scale")
    if scale:
        out += clinical_scale_blocks(scale)
    viewer = results.get("viewer_scale")
    if viewer:
        out.append(("p", viewer_scale_text(viewer)))
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
