"""What a human annotator works on: per-case packages, export for desktop tools, and label ingest.

For each queried case of the waiting round, a *package* holds, on the image's native voxel grid and with its affine:

- ``image.nii.gz``: the image;
- ``prediction.nii.gz``: the label map of the model that chose the case (a pre-annotation to correct);
- ``uncertainty.nii.gz``: a float voxel map: the strategy's voxel score from the run's uncertainty source (MC
  dropout, test-time augmentation or the deep ensemble; predictive entropy for strategies that use no scores), the
  same seeded predictions as the round's scoring;
- ``region.nii.gz`` (slice and patch units only): 1 on the voxels to label, the union of the case's queried units
  mapped to the native grid; labels outside it are ignored, and ingest reports them.

Packages are computed once per round into ``run_dir/annotation/round_NNN/`` and shared by ``activeseg export`` and
the server. ``export`` copies them with a manifest, a README and an ITK-SNAP label description; 3D Slicer and
ITK-SNAP open NIfTI directly. ``ingest`` reads ``<case>/label.nii.gz`` (or ``<case>.nii.gz``) back, validates every
file and records them all, or none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from activeseg.artifacts import copy_atomic, write_bytes_atomic, write_json_atomic, write_text_atomic
from activeseg.config import RunConfig, load_config
from activeseg.data.io import read_volume
from activeseg.data.preprocess import CropInfo
from activeseg.human import (
    ANY,
    LabelFileError,
    LabelStore,
    Outcome,
    Queue,
    QueueItem,
    Submission,
    check_label,
    native_region,
    nifti_gz,
    read_submission_file,
    reference_for,
    safe_name,
    take_region,
)
from activeseg.loop import CONFIG_FILE, RunData, RunError, derive_seed, open_data, round_seeds
from activeseg.model import build_model
from activeseg.reporting import Reporter, SilentReporter
from activeseg.scorers import predictive_entropy
from activeseg.strategies import get_strategy
from activeseg.train import predict
from activeseg.uncertainty import Sampler, make_sampler
from activeseg.units import is_whole_volume, unit_from_key

PACKAGES_DIR = "annotation"
PACKAGE_FILES = ("image", "prediction", "uncertainty")
REGION_FILE = "region"
"""The extra package file of a slice or patch query: the voxels to label."""
LABEL_NAMES = ("label.nii.gz", "label.nii")

README = """activeseg: labels wanted for round {round}
=========================================

Each folder is one case to label, on the image's own voxel grid:

  image.nii.gz        the image
  prediction.nii.gz   the current model's segmentation: a pre-annotation to correct
  uncertainty.nii.gz  where the model is unsure (higher = less sure)
  region.nii.gz       (slices and patches only) 1 where to label; anything drawn outside is ignored
  manifest.json       case id, rank, score, label values, the queried units and their boxes

Label values: {values}

Save your label as <case folder>/label.nii.gz, on the same grid as image.nii.gz:

  ITK-SNAP:  File > Open Main Image: image.nii.gz; Segmentation > Open Segmentation: prediction.nii.gz
             (Segmentation > Import Label Descriptions: itksnap_labels.txt); correct it; Segmentation >
             Save Segmentation Image As: label.nii.gz in the same folder.
  3D Slicer: drag image.nii.gz and prediction.nii.gz in (load prediction as a Segmentation); correct it in
             Segment Editor; Export to files / right-click > Export visible segments to label map, and save the
             label map as label.nii.gz in the same folder.

Then: activeseg ingest RUN_DIR THIS_FOLDER   (checks every file; a bad file changes nothing)
      activeseg resume RUN_DIR               (starts the next round once the labels are in;
                                              `ingest --next-round` does both)
"""


@dataclass(frozen=True)
class HumanRun:
    """A run with a human oracle, opened for annotation work."""

    run_dir: Path
    config: RunConfig
    data: RunData
    store: LabelStore

    def waiting(self) -> Queue:
        """The round waiting for labels, or RunError saying why none is."""
        queue = self.store.queue()
        if queue is None:
            raise RunError(f"{self.run_dir}: no round is waiting for labels (see `activeseg status {self.run_dir}`)")
        return queue


def open_human_run(run_dir: Path, reporter: Reporter | None = None, data: RunData | None = None) -> HumanRun:
    """Open a run whose config names a human oracle (RunError otherwise)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        raise RunError(f"{run_dir} is not an activeseg run directory (no {CONFIG_FILE})")
    config = load_config(run_dir / CONFIG_FILE)
    if config.oracle.kind != "human":
        raise RunError(f"{run_dir}: the run's oracle is {config.oracle.kind!r}; annotation needs oracle.kind: human")
    data = data or open_data(config, reporter or SilentReporter())
    return HumanRun(run_dir, config, data, LabelStore(run_dir))


# --- packages -------------------------------------------------------------------------------------------------------


def package_dir(run: HumanRun, round_index: int, case_id: str) -> Path:
    """Where a queued case's package lives (``case_id`` must be the queue's own string)."""
    return run.run_dir / PACKAGES_DIR / f"round_{round_index:03d}" / safe_name(case_id)


def package_files(item: QueueItem) -> tuple[str, ...]:
    """The volumes of a queued case's package: a slice or patch query adds its region."""
    whole = any(is_whole_volume(unit) for unit in item.units)
    return PACKAGE_FILES if whole else (*PACKAGE_FILES, REGION_FILE)


def prepare_packages(run: HumanRun, queue: Queue, reporter: Reporter | None = None) -> dict[str, Path]:
    """Compute the missing packages of the queue's cases (one model load); returns case id → package folder."""
    reporter = reporter or SilentReporter()
    folders = {i.case_id: package_dir(run, queue.round, i.case_id) for i in queue.items}
    todo = [i for i in queue.items if not all((folders[i.case_id] / f"{n}.nii.gz").exists() for n in package_files(i))]
    if not todo:
        return folders
    chooser = queue.round - 1  # the round whose model (and ensemble members) selected these cases
    sampler, model = chooser_sampler(run, chooser)
    strategy = get_strategy(run.config.strategy.name)
    seed = round_seeds(run.config.seed, chooser)["mc_dropout"]
    with reporter.progress(f"round {queue.round}: annotation packages", len(todo)) as advance:
        for item in todo:
            write_package(run, model, sampler, strategy, derive_seed(seed, item.case_id), item, folders[item.case_id])
            advance(1)
    return folders


def chooser_sampler(run: HumanRun, chooser: int) -> tuple[Sampler, torch.nn.Module]:
    """The uncertainty source that scored round ``chooser``'s pool, bound to that round's saved model(s)."""
    settings = run.config.strategy
    round_dir = run.run_dir / "rounds" / f"round_{chooser:03d}"
    names = ["model.pt"]
    if settings.uncertainty == "ensemble":
        names += [f"member_{m}.pt" for m in range(1, settings.ensemble_size)]
    models = []
    for name in names:
        model = build_model(run.config.model, run.data.num_classes)
        model.load_state_dict(torch.load(round_dir / name, map_location="cpu", weights_only=True))
        models.append(model.eval())
    train = run.config.train
    sampler = make_sampler(
        settings.uncertainty, models[0], settings.mc_samples, settings.mc_batch_size, train.flip_axes, False, models[1:]
    )
    return sampler, models[0]


def write_package(
    run: HumanRun, model: torch.nn.Module, sampler: Sampler, strategy: Any, seed: int, item: QueueItem, out: Path
) -> None:
    """image, prediction, uncertainty (and the region of a slice or patch query) of one case on its native grid,
    each file written atomically."""
    native = read_volume(run.data.pool.case(item.case_id).image)
    image_C_D_H_W = torch.from_numpy(run.data.image(item.case_id))
    prediction_D_H_W = predict(model, image_C_D_H_W[None])[0].argmax(dim=0).numpy().astype(np.uint8)
    probs_K_C_D_H_W = sampler(image_C_D_H_W, seed)
    if strategy.needs_scores:
        uncertainty_D_H_W = strategy.score_maps(probs_K_C_D_H_W)[0]
    else:
        uncertainty_D_H_W = predictive_entropy(probs_K_C_D_H_W)
    native_shape = (native.array.shape[0], native.array.shape[1], native.array.shape[2])
    crop = CropInfo.for_shapes(native_shape, run.config.data.shape)
    affine = native.affine
    write_bytes_atomic(out / "image.nii.gz", nifti_gz(native.array, affine))
    write_bytes_atomic(out / "prediction.nii.gz", nifti_gz(crop.invert(prediction_D_H_W), affine))
    uncertainty = crop.invert(uncertainty_D_H_W.numpy().astype(np.float32))
    top = float(uncertainty.max())
    display = (float(np.quantile(uncertainty, 0.9)), top) if top > 0 else None  # colour the most uncertain tenth
    write_bytes_atomic(out / "uncertainty.nii.gz", nifti_gz(uncertainty, affine, display))
    region = native_region(item.units, native_shape, run.config.data.shape)
    if region is not None:
        write_bytes_atomic(out / f"{REGION_FILE}.nii.gz", nifti_gz(region.astype(np.uint8), affine, (0.0, 1.0)))


# --- export ---------------------------------------------------------------------------------------------------------


def label_values(run: HumanRun) -> dict[int, str]:
    """Allowed label values and their names."""
    return dict(run.data.pool.labels)


def export_queue(
    run_dir: Path, out_dir: Path, reporter: Reporter | None = None, data: RunData | None = None
) -> list[Path]:
    """Write each queued case of the waiting round to ``out_dir/<case>/`` for 3D Slicer or ITK-SNAP.

    Re-exporting refreshes the package files and leaves any ``label.nii.gz`` already saved there alone.
    """
    run = open_human_run(run_dir, reporter, data)
    queue = run.waiting()
    folders = prepare_packages(run, queue, reporter)
    out_dir = Path(out_dir)
    values = label_values(run)
    written = []
    for item in queue.items:
        target = out_dir / safe_name(item.case_id)
        for name in package_files(item):
            copy_atomic(folders[item.case_id] / f"{name}.nii.gz", target / f"{name}.nii.gz")
        write_json_atomic(target / "manifest.json", case_manifest(run, queue, item))
        written.append(target)
    summary = {
        "run": str(Path(run_dir).resolve()),
        "round": queue.round,
        "strategy": run.config.strategy.name,
        "label_values": {str(k): v for k, v in values.items()},
        "unit": run.config.unit.kind,
        "cases": [
            {"case_id": i.case_id, "folder": safe_name(i.case_id), "rank": i.rank, "score": i.score, "units": i.units}
            for i in queue.items
        ],
        "label_file": "<folder>/label.nii.gz",
    }
    write_json_atomic(out_dir / "manifest.json", summary)
    shown = ", ".join(f"{k} {v}" for k, v in values.items())
    write_text_atomic(out_dir / "README.txt", README.format(round=queue.round, values=shown))
    write_text_atomic(out_dir / "itksnap_labels.txt", itksnap_labels(values))
    return written


def case_manifest(run: HumanRun, queue: Queue, item: QueueItem) -> dict[str, Any]:
    """The per-case manifest: what to label and how."""
    files = package_files(item)
    partial = REGION_FILE in files
    manifest: dict[str, Any] = {
        "case_id": item.case_id,
        "round": queue.round,
        "rank": item.rank,
        "score": item.score,
        "strategy": run.config.strategy.name,
        "unit": run.config.unit.kind,
        "units": list(item.units),
        "files": {name: f"{name}.nii.gz" for name in files},
        "label_file": "label.nii.gz",
        "label_values": {str(k): v for k, v in label_values(run).items()},
    }
    if partial:
        manifest["region"] = {
            "file": f"{REGION_FILE}.nii.gz",
            "boxes": native_boxes(run, item),
            "note": "label every voxel where region.nii.gz is 1 (background too); labels outside it are ignored",
        }
    else:
        manifest["region"] = None
        manifest["region_note"] = "the whole volume"
    return manifest


def native_boxes(run: HumanRun, item: QueueItem) -> list[dict[str, Any]]:
    """Each queried unit's box on the image's native voxel grid ([start, stop) per axis; empty if it lies in the
    padding that the training grid added around the image)."""
    native = read_volume(run.data.pool.case(item.case_id).image).array.shape[:3]
    shape = run.config.data.shape
    crop = CropInfo.for_shapes(tuple(int(n) for n in native), shape)
    boxes = []
    for key in item.units:
        unit = unit_from_key(key, shape)
        assert unit.box is not None  # only slice and patch queries have a region
        ranges = crop.invert_box(unit.box)
        boxes.append({"unit": key, "start": [r[0] for r in ranges], "stop": [r[1] for r in ranges]})
    return boxes


def itksnap_labels(values: dict[int, str]) -> str:
    """An ITK-SNAP label description file for the dataset's classes."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File (written by activeseg)",
        "# Fields: IDX -R- -G- -B- -A-- VIS MSH  LABEL",
        "################################################",
        '    0     0    0    0        0  0  0    "Clear Label"',
    ]
    for value, name in sorted(values.items()):
        if value == 0:
            continue
        r, g, b = colours[(value - 1) % len(colours)]
        lines.append(f'{value:5d} {r:5d} {g:4d} {b:4d}        1  1  1    "{name}"')
    return "\n".join(lines) + "\n"


# --- ingest ---------------------------------------------------------------------------------------------------------


class IngestError(ValueError):
    """Label files that cannot be ingested; nothing was recorded. The message names each file."""


@dataclass
class IngestReport:
    """What an ingest recorded: an outcome per case, the cases still missing, and notes."""

    round: int
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def find_label_files(in_dir: Path, queue: Queue) -> tuple[dict[str, Path], list[str]]:
    """Map queued case ids to the label files in ``in_dir`` (``<case>/label.nii.gz`` or ``<case>.nii.gz``).

    Folder and file names are matched against the queue's case ids (through :func:`safe_name`), never used to
    build a path elsewhere. Returns the files found and the problems (unknown cases, duplicates).
    """
    by_name = {safe_name(c): c for c in queue.ids}
    found: dict[str, Path] = {}
    problems: list[str] = []
    for entry in sorted(Path(in_dir).iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            labels = [entry / n for n in LABEL_NAMES if (entry / n).is_file()]
            if not labels:
                continue  # a case folder not labelled yet
            if len(labels) > 1:
                problems.append(f"{labels[0]} and {labels[1]}: two label files for one case; keep one")
                continue
            name, path = entry.name, labels[0]
        elif entry.is_file() and entry.name.lower().endswith((".nii.gz", ".nii")):
            suffix = ".nii.gz" if entry.name.lower().endswith(".nii.gz") else ".nii"
            name, path = entry.name[: -len(suffix)], entry
        else:
            continue
        case_id = by_name.get(name)
        if case_id is None:
            problems.append(
                f"{path}: {name!r} is not a case queried in round {queue.round} (queried: {', '.join(sorted(by_name))})"
            )
        elif case_id in found:
            problems.append(f"{found[case_id]} and {path}: two label files for case {case_id!r}; keep one")
        else:
            found[case_id] = path
    return found, problems


def ingest_folder(
    run_dir: Path, in_dir: Path, reporter: Reporter | None = None, data: RunData | None = None
) -> IngestReport:
    """Validate every label file in ``in_dir`` and record them all in one transaction, or none.

    Idempotent: the same labels again are ``unchanged``. A different label for a case that already has one is a
    recorded ``corrected`` row that supersedes the earlier one.
    """
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise IngestError(f"{in_dir}: not a folder")
    run = open_human_run(run_dir, reporter, data)
    queue = run.waiting()
    found, problems = find_label_files(in_dir, queue)
    if not found and not problems:
        raise IngestError(f"{in_dir}: no label files (expected <case>/label.nii.gz or <case>.nii.gz)")
    submissions, notes = [], []
    for case_id, path in found.items():
        try:
            reference = reference_for(run.data, case_id)
            label = check_label(str(path), read_submission_file(path), reference)
        except LabelFileError as err:
            problems.append(str(err))
            continue
        item = queue.item(case_id)
        region = native_region(item.units, reference.shape, run.config.data.shape)
        label, outside = take_region(label, region)
        if outside:
            notes.append(f"{path}: {outside} labelled voxels outside the queried region were ignored")
        submissions.append(Submission(case_id, label, reference.affine, "ingest"))
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise IngestError("\n".join([f"nothing ingested from {in_dir}: {count}:", *(f"  - {p}" for p in problems)]))
    outcomes = run.store.submit(submissions, replaces=ANY)
    report = IngestReport(queue.round, dict(zip([s.case_id for s in submissions], outcomes, strict=True)))
    after = run.waiting() if run.store.queue() is not None else None
    report.missing = [i.case_id for i in after.items if i.sha256 is None] if after else []
    report.notes = notes
    return report


def describe(report: IngestReport) -> str:
    """A short human summary of an ingest."""
    lines = [f"round {report.round}: " + ", ".join(f"{c} {o}" for c, o in sorted(report.outcomes.items()))]
    lines += report.notes
    if report.missing:
        lines.append(f"still missing: {', '.join(report.missing)}")
    else:
        lines.append("all labels are in: `activeseg resume RUN_DIR` (or `ingest --next-round`) starts the next round")
    return "\n".join(lines)
