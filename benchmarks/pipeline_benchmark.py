"""The clinical-size pipeline on clinical-shape scans, on CPU: does it find the structure, and how fast is it?

A clinical-shape set (``data.clinical``: hippocampus crops resampled to and pasted into 192×192×48–80 CT-like fields
with 0.7–1.0 mm in-plane and 2–4 mm slice spacing, in five orientations, a few oblique; ``--paste voxel`` copies them
voxel-wise instead, so their size in millimetres varies with the spacing) is planned and trained on, and compared
with the same cases at their native size (the hippocampus files themselves) and with the same clinical cases cut to
the box their crop was pasted into (``data.clinical.crop_to_structure``: same voxels, spacing and noise, no field):

- ``full``: the full-data bound on the three sets with the same model and training budget (iterations, batch),
  Dice on the same 10 test cases, each on its own native grid;
- ``speed``: on the clinical set, the median patch training step with the data path (memory-mapped cache,
  patch sampling, DataLoader) against the same network's bare step on synthetic tensors of the same shape, the
  median sliding-window scoring time per volume (K = 8 MC dropout, BALD), and MONAI Label's epistemic path against
  ours scoring the same score on the same volumes (``score_speed.monailabel_epistemic``, the plan's window), also as
  its code runs it, loading and preprocessing the image again for each sample (:func:`monailabel_loader`). Kept
  per kind of CPU: ``speed`` where oneDNN convolves bf16 natively (the bf16 paths are timed), ``speed_no_bf16``
  where it does not (float32 only); a run with ``ACTIVESEG_MALLOC=system`` (glibc's allocator defaults for both
  paths, as MONAI Label runs) is kept beside it as ``<key>_system_malloc``.

    python benchmarks/pipeline_benchmark.py [--parts full speed] [--cases 40] [--iterations 500] [--paste world]
        [--largest-component]

writes ``benchmarks/results/pipeline.json`` (each part with its machine); ``render_pipeline.py`` puts it in
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, ScaleIntensityRanged, Spacingd
from run_benchmarks import machine
from score_speed import monailabel_epistemic, ours
from step_timing import step_seconds

from activeseg.acquisition.instance_norm import supports as norm_supports
from activeseg.acquisition.scorers import bald, reduce_mean
from activeseg.acquisition.sliding import score_pool
from activeseg.acquisition.subpixel import supports
from activeseg.acquisition.uncertainty import make_window_sampler
from activeseg.config import InferenceConfig, RunConfig, config_from_dict, load_config
from activeseg.data.clinical import (
    crop_to_structure,
    field_image_on_source_grid,
    make_clinical_dataset,
    paste_class_maps,
    through_clinical_spacing,
)
from activeseg.data.plan import Plan
from activeseg.data.splits import open_data
from activeseg.demo import find_hippocampus
from activeseg.engine.evaluation import dice_per_class
from activeseg.engine.full_data import full_data_run
from activeseg.engine.inference import largest_component, predict_volume
from activeseg.engine.malloc import keep_freed_memory
from activeseg.engine.model import build_model, cpu_bf16_native, load_weights
from activeseg.engine.patches import Example
from activeseg.progress import RichReporter, SilentReporter

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Options:
    """What the sets train with beyond the defaults; each option marks the runs' folder names."""

    largest_component: bool = False
    spatial_augment: bool = False
    plan_spacing: tuple[float, float, float] | None = None
    """The target spacing of the clinical sets' plans (:data:`REPLANNED_SETS`) instead of the planned one."""
    strides: tuple[tuple[int, int, int], ...] | None = None
    """The network strides (per level and axis) of the clinical sets' plans instead of the planned ones."""

    def spacing_for(self, name: str) -> tuple[float, float, float] | None:
        """The target spacing set ``name`` is planned at, where it is not the plan's own."""
        return self.plan_spacing if name in REPLANNED_SETS else None

    def suffix(self, name: str) -> str:
        """What set ``name``'s run folder adds for these options."""
        spacing = self.spacing_for(name)
        return (
            ("-lcc" if self.largest_component else "")
            + ("-spatial" if self.spatial_augment else "")
            + ("-plan" + "-".join(map(str, spacing)) if spacing else "")
            + ("-strides" + "-".join("".join(map(str, s)) for s in self.strides or ()) if self.replans(name) else "")
        )

    def replans(self, name: str) -> bool:
        """Whether set ``name`` takes ``strides``."""
        return self.strides is not None and name in REPLANNED_SETS

    def plan_section(self, name: str) -> dict[str, Any]:
        """Set ``name``'s ``plan`` overrides."""
        spacing = self.spacing_for(name)
        return ({"target_spacing": list(spacing)} if spacing else {}) | (
            {"strides": [list(s) for s in self.strides or ()]} if self.replans(name) else {}
        )


REPLANNED_SETS = ("cropped", "clinical")
"""The sets ``--plan-spacing`` and ``--strides`` replan (the native and thick sets lie on the 1 mm grid already)."""


def config(root: Path, cache: Path, iterations: int, options: Options = Options(), name: str = "native") -> RunConfig:
    """The run config set ``name`` trains with: the demo's U-Net, 10 test cases, a CPU budget, ``options``."""
    plan = options.plan_section(name)
    return config_from_dict(
        {
            "name": root.name,
            "data": {"root": str(root), "test_size": 10, "cache_dir": str(cache)},
            **({"plan": plan} if plan else {}),
            "model": {"channels": [8, 16, 32, 64], "num_res_units": 1, "dropout": 0.1},
            "train": {
                "iterations": iterations,
                "batch_size": 2,
                "learning_rate": 0.005,
                "device": "cpu",
                "spatial_augment": options.spatial_augment,
            },
            "inference": {"largest_component": options.largest_component},
        }
    )


def native_subset(source: Path, ids: list[str], out: Path) -> Path:
    """The same cases at their native size: links to the hippocampus files."""
    for folder in ("imagesTr", "labelsTr"):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for case_id in ids:
            link = out / folder / f"{case_id}.nii.gz"
            if not link.exists():
                link.symlink_to(source / folder / f"{case_id}.nii.gz")
    return out


SETS = ("native", "cropped", "clinical")
DIAGNOSTIC_SETS = ("thick", "thick-field")
"""``thick``: the native cases with each image sent to its clinical field's spacing and back
(``clinical.through_clinical_spacing``): the thick slices' information on the 1 mm grid, with the 1 mm labels.
``thick-field``: the same, but each image is the field's own box (CT intensities, noise, faded border) brought back
to the 1 mm grid (``clinical.field_image_on_source_grid``): the clinical image's information there."""


def bench_full(
    clinical: Path,
    native: Path,
    cropped: Path,
    work: Path,
    iterations: int,
    options: Options = Options(),
    sets: tuple[str, ...] = SETS,
    thick: Path | None = None,
    thick_field: Path | None = None,
) -> dict[str, Any]:
    """Full-data Dice of the three sets with the same budget (a run already finished in ``work`` with the same
    config is read, not repeated)."""
    out: dict[str, Any] = {
        "iterations": iterations,
        "largest_component": options.largest_component,
        "spatial_augment": options.spatial_augment,
        "plan_spacing": list(options.plan_spacing) if options.plan_spacing else None,
        "plan_strides": [list(s) for s in options.strides] if options.strides else None,
        "native_export": "linear probabilities",  # how predictions reach the native grid (evaluation.evaluate)
    }
    roots = {"native": native, "cropped": cropped, "clinical": clinical, "thick": thick, "thick-field": thick_field}
    for name in sets:
        root = roots[name]
        if root is None:
            raise ValueError(f"set {name!r} needs its folder")
        run_config = config(root, work / "cache", iterations, options, name)
        data = open_data(run_config, RichReporter())
        out_dir = full_run_dir(work, name, clinical, iterations, options)
        record = finished_run(out_dir, run_config) or full_data_run(run_config, out_dir, RichReporter(), data=data)
        out[name] = {
            "dice": record["dice"],
            "per_case": record["per_case"],
            "train_seconds": record["train_seconds"],
            "test_cases": list(data.test.ids),
            "patch": list(data.plan.patch_size),
            "target_spacing": list(data.plan.target_spacing),
            "strides": [list(s) for s in data.plan.strides],
            "normalisation": [n.scheme for n in data.plan.normalisation],
        }
    dice = {name: out[name]["dice"]["mean_foreground"] for name in sets}
    if "clinical" in dice and "native" in dice:
        out["difference"] = dice["clinical"] - dice["native"]
    if "clinical" in dice and "cropped" in dice:
        out["difference_to_cropped"] = dice["clinical"] - dice["cropped"]
    if "cropped" in dice and "native" in dice:
        out["cropped_minus_native"] = dice["cropped"] - dice["native"]
    if "thick" in dice and "native" in dice:
        out["thick_minus_native"] = dice["thick"] - dice["native"]
    return out


def full_run_dir(work: Path, name: str, clinical: Path, iterations: int, options: Options) -> Path:
    """Where the full-data run of set ``name`` goes: the native set is the same for every clinical set, the others
    carry what tells a non-default clinical set (e.g. ``clinical-world-1.0-1.0-1.0-1.0``) from the default's."""
    suffix = "" if name == "native" else clinical.name.removeprefix("clinical-world")
    return work / f"full-{name}{suffix}-{iterations}{options.suffix(name)}"


def finished_run(out_dir: Path, run_config: RunConfig) -> dict[str, Any] | None:
    """The record of a full-data run already finished in ``out_dir`` with this very config, else None."""
    record, saved = out_dir / "full_data.json", out_dir / "config.yaml"
    if record.exists() and saved.exists() and load_config(saved) == run_config:
        loaded: dict[str, Any] = json.loads(record.read_text())
        return loaded
    return None


def bench_ceiling(clinical: Path, native_run: Path) -> dict[str, Any]:
    """Does the clinical labels' coarse grid itself cap Dice? The native (1 mm) full-data model's probabilities of
    each test case, carried into its clinical field the way the generator pastes the label
    (``clinical.paste_class_maps``), argmax and largest component there, Dice against the clinical label."""
    config_ = load_config(native_run / "config.yaml")
    data = open_data(config_, SilentReporter())
    model = load_weights(build_model(config_.model, data.plan), native_run / "model.pt").eval()
    drawn = json.loads((clinical / "dataset.json").read_text())["clinical"]
    per_case: dict[str, list[float]] = {}
    for case_id in data.test.ids:
        probs_C = predict_volume(model, data.image(case_id), data.plan.patch_size, config_.inference).numpy()
        native_C = data.geometry(case_id).to_native(probs_C, fill=0.0)
        reference = data.native_label(case_id)
        indicators_C = np.stack([(reference == c).astype(np.float32) for c in range(data.num_classes)])
        zoom = np.asarray(data.geometry(case_id).native_spacing) / np.asarray(drawn[case_id]["ras_spacing"])
        carried = paste_class_maps(native_C, zoom).argmax(axis=0).astype(np.uint8)
        label = paste_class_maps(indicators_C, zoom).argmax(axis=0).astype(np.uint8)
        per_case[case_id] = dice_per_class(largest_component(carried), label, data.num_classes)
    table = np.array(list(per_case.values()))
    return {
        "native_run": str(native_run),
        "mean_foreground": float(np.nanmean(np.nanmean(table, axis=0))),
        "per_case": per_case,
    }


def bench_speed(clinical: Path, work: Path, steps: int = 12) -> dict[str, Any]:
    """Patch training step (with and without the data path) and sliding-window scoring per volume."""
    run_config = config(clinical, work / "cache", steps)
    data = open_data(run_config, SilentReporter())
    plan, pool = data.plan, list(data.pool.ids)
    torch.manual_seed(0)
    model = build_model(run_config.model, plan)
    examples = [Example(data.image(c), data.ground_truth(c)) for c in pool[:8]]
    step_with_data, bare_step = step_seconds(model, examples, plan, run_config.train, torch.device("cpu"), amp=False)
    sampler = make_window_sampler("mc_dropout", model, 8, None, (), amp=False, channels_last=True)  # as pool.py
    windows = run_config.inference.windows_per_batch  # as pool.py
    scoring = []
    for case_id in pool[:3]:
        start = time.perf_counter()
        volume = [(case_id, data.image(case_id))]
        list(score_pool(volume, sampler, bald, reduce_mean, lambda c: 0, plan.patch_size, windows_per_batch=windows))
        scoring.append(time.perf_counter() - start)
    shapes = [list(data.shape_of(c)) for c in pool[:3]]
    reloads = [monailabel_loader(data.case(c).image, plan) for c in pool[:3]]
    versus = versus_monailabel(model, [data.image(c) for c in pool[:3]], plan.patch_size, reloads)
    return {
        "patch": list(plan.patch_size),
        "batch": plan.batch_size,
        "train_step_s": step_with_data,
        "bare_step_s": bare_step,
        "data_path_fraction": bare_step / step_with_data,
        "score_s_per_volume": statistics.median(scoring),
        "scored_shapes": shapes,
        "mc_samples": 8,
        "threads": torch.get_num_threads(),
        "versus_monailabel": versus,
    }


SPEED_KEYS = {True: "speed", False: "speed_no_bf16"}
"""Where ``pipeline.json`` keeps the speed part of a CPU that convolves bf16 natively, and of one that does not."""
SYSTEM_MALLOC = "_system_malloc"
"""What the key of a speed part measured with glibc's allocator defaults (``ACTIVESEG_MALLOC=system``) adds."""


def speed_key(machine: dict[str, Any]) -> str:
    """Where ``pipeline.json`` keeps a speed part measured on ``machine``: by kind of CPU and allocator."""
    kept = machine.get("malloc") == "freed memory kept"
    return SPEED_KEYS[machine["cpu_bf16_native"]] + ("" if kept else SYSTEM_MALLOC)


SPEED_ROUNDS = 3
"""Timed rounds over the volumes against MONAI Label: the median of 3 per path and volume steadies the ratio on a
shared VM, where one round's ratios moved by about 10% between runs of the same code."""


def versus_monailabel(
    model: torch.nn.Module,
    images: list[np.ndarray],
    roi: tuple[int, int, int],
    reloads: list[Callable[[], np.ndarray]] | None = None,
    rounds: int = SPEED_ROUNDS,
) -> dict[str, Any]:
    """MONAI Label's epistemic path against ours computing the same score (foreground entropy of the mean, K = 8,
    the same model and windows, overlap 0.5) on the same volumes: the median seconds per volume of each path, the
    paths interleaved volume by volume after one untimed call each, over ``rounds`` rounds of the volumes. With
    ``reloads`` (one per volume: MONAI Label's pre-transforms on its file, :func:`monailabel_loader`) MONAI Label's
    path also runs as its code does, reading and preprocessing the image again for each of the K samples
    (``monailabel_reloading``)."""
    native = cpu_bf16_native()  # elsewhere bf16 runs a reference convolution, about 20x slower: not timed
    paths: dict[str, Callable[[int], float]] = {"monailabel": lambda i: monailabel_epistemic(model, images[i], roi)}
    if reloads is not None:
        paths["monailabel_reloading"] = lambda i: monailabel_epistemic(model, reloads[i], roi)

    def ours_path(rows: int | None, amp: bool) -> Callable[[int], float]:
        sampler = make_window_sampler("mc_dropout", model, 8, rows, (), amp, channels_last=True)
        score = ours(sampler, roi=roi, windows_per_batch=InferenceConfig().windows_per_batch)  # as the engine
        return lambda i: score(images[i])

    for name, amp, rows in (
        ("ours_channels_last", False, None),
        ("ours_bf16_channels_last", True, None),
        ("ours_bf16_channels_last_rows8", True, 8),
    ):
        if native or not amp:
            paths[name] = ours_path(rows, amp)
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    scores = {name: path(0) for name, path in paths.items()}
    for i in [v for _ in range(rounds) for v in range(len(images))]:
        for name, path in paths.items():
            start = time.perf_counter()
            scores[name] = path(i)
            seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    return {
        "subpixel_layers": sum(supports(m) for m in model.modules()),  # what each of our samplers' copies swapped
        "instance_norm_layers": sum(norm_supports(m) for m in model.modules()),  # swapped in float32
        "windows_per_batch": InferenceConfig().windows_per_batch,
        "volumes": len(images),
        "rounds": rounds,
        "roi": list(roi),
        "median_s": medians,
        "speedup_vs_monailabel": {name: medians["monailabel"] / m for name, m in medians.items()},
        "last_mean_score": scores,
    }


def monailabel_loader(path: Path, plan: Plan) -> Callable[[], np.ndarray]:
    """MONAI Label's radiology-app pre-transforms for a CT model, run on the image file at each call: LoadImaged,
    EnsureChannelFirstd, Orientationd (RAS), Spacingd (to the plan's spacing), ScaleIntensityRanged (the plan's CT
    window to 0–1). image_1_D_H_W (float32)."""
    low, high = plan.normalisation[0].clip or (-1000.0, 1000.0)
    chain = Compose(
        [
            LoadImaged("image"),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd("image", pixdim=plan.target_spacing),
            ScaleIntensityRanged("image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
        ]
    )
    return lambda: np.asarray(chain({"image": str(path)})["image"], dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=["full", "ceiling", "speed"], default=["full", "speed"])
    parser.add_argument(
        "--sets",
        nargs="+",
        choices=SETS + DIAGNOSTIC_SETS,
        default=list(SETS),
        help="which sets the full part trains (a diagnostic; thick: see DIAGNOSTIC_SETS)",
    )
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument(
        "--first-case", type=int, default=0, help="skip this many sorted case ids (other cases: use another --work)"
    )
    parser.add_argument("--seed", type=int, default=0, help="the clinical generator's seed (use another --work)")
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--paste", choices=["world", "voxel"], default="world", help="how crops enter the fields")
    parser.add_argument(
        "--largest-component", action="store_true", help="both sets keep only the largest foreground region"
    )
    parser.add_argument(
        "--spatial-augment", action="store_true", help="every set trains with train.spatial_augment (rotation, scale)"
    )
    parser.add_argument(
        "--plan-spacing",
        type=float,
        nargs=3,
        default=None,
        help="plan the cropped and clinical sets at this target spacing (mm, RAS) instead of the planned one",
    )
    parser.add_argument(
        "--strides",
        type=lambda text: tuple(int(s) for s in text.split(",")),
        nargs="+",
        default=None,
        help="plan the cropped and clinical sets with these network strides, one x,y,z per level (e.g. 2,2,1)",
    )
    parser.add_argument("--in-plane", type=float, nargs=2, default=(0.7, 1.0), help="in-plane spacing range (mm)")
    parser.add_argument("--slices", type=float, nargs=2, default=(2.0, 4.0), help="slice spacing range (mm)")
    parser.add_argument(
        "--label", default=None, help="store the full part under variants.LABEL (a diagnostic) instead of full"
    )
    parser.add_argument("--work", type=Path, default=None, help="where the data and runs go (default: a temp dir)")
    parser.add_argument("--note", default=None, help="a remark stored with the full-data part (e.g. a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    keep_freed_memory()  # as the CLI does (activeseg.engine.malloc)
    work = args.work or Path(tempfile.mkdtemp(prefix="activeseg-pipeline-"))
    source = find_hippocampus()
    spacing = (*args.in_plane, *args.slices)
    default = spacing == (0.7, 1.0, 2.0, 4.0)
    clinical = work / (f"clinical-{args.paste}" + ("" if default else "-" + "-".join(map(str, spacing))))
    if not (clinical / "dataset.json").exists():
        make_clinical_dataset(
            source,
            clinical,
            n_cases=args.cases,
            first_case=args.first_case,
            seed=args.seed,
            paste=args.paste,
            in_plane_spacing=tuple(args.in_plane),
            slice_spacing=tuple(args.slices),
        )
    ids = sorted(json.loads((clinical / "dataset.json").read_text())["clinical"])
    native = native_subset(source, ids, work / "native")
    path = RESULTS / "pipeline.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result["cases"] = len(ids)
    plan_spacing = tuple(args.plan_spacing) if args.plan_spacing else None
    strides = tuple(args.strides) if args.strides else None
    options = Options(args.largest_component, args.spatial_augment, plan_spacing, strides)
    if "full" in args.parts:
        cropped = work / f"{clinical.name}-cropped"
        if not (cropped / "dataset.json").exists():
            crop_to_structure(clinical, cropped)
        thick, thick_field = work / f"{clinical.name}-thick", work / f"{clinical.name}-thick-field"
        for name, folder, write in (
            ("thick", thick, through_clinical_spacing),
            ("thick-field", thick_field, field_image_on_source_grid),
        ):
            if name in args.sets and not folder.is_dir():  # written aside, then renamed: never half there
                write(clinical, work / f"{folder.name}.partial").rename(folder)
        full = bench_full(
            clinical,
            native,
            cropped,
            work,
            args.iterations,
            options,
            tuple(args.sets),
            thick,
            thick_field,
        )
        full |= {"paste": args.paste, "in_plane_mm": list(args.in_plane), "slices_mm": list(args.slices)}
        full |= {"first_case": args.first_case, "seed": args.seed, "cases": len(ids)}
        full["machine"] = machine()
        if args.note:
            full["note"] = args.note
        if args.label:
            result.setdefault("variants", {})[args.label] = full
        else:
            result["full"] = full
    if "ceiling" in args.parts:
        native_run = full_run_dir(work, "native", clinical, args.iterations, options)
        result["ceiling"] = bench_ceiling(clinical, native_run) | {"machine": machine()}
    if "speed" in args.parts:  # one record per kind of CPU (with and without native bf16 convolution) and allocator
        speed = bench_speed(clinical, work) | {"machine": machine()}
        result[speed_key(speed["machine"])] = speed
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
