"""``activeseg export``: the waiting round's packages for 3D Slicer or ITK-SNAP, with manifests and a README.

Re-exporting refreshes the package files and leaves any ``label.nii.gz`` already saved there alone; 3D Slicer and
ITK-SNAP open NIfTI directly, and ``activeseg ingest`` reads the labels back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from activeseg.acquisition.units import labelled_mask, unit_from_key
from activeseg.annotation.packages import REGION_FILE, HumanRun, open_human_run, package_files, prepare_packages
from activeseg.artifacts import copy_atomic, write_json_atomic, write_text_atomic
from activeseg.data.splits import RunData
from activeseg.oracles.label_files import safe_name
from activeseg.progress import Reporter
from activeseg.rundir.label_store import Queue, QueueItem

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
        for name in package_files(item, run.data.plan.channels):
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
    files = package_files(item, run.data.plan.channels)
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
    """Each queried unit's bounding box on the image's native voxel grid ([start, stop) per axis): the box around
    the native voxels a person labels for it (see ``Geometry.native_region``)."""
    geometry = run.data.geometry(item.case_id)
    boxes = []
    for key in item.units:
        unit = unit_from_key(key, geometry.shape)
        assert unit.box is not None  # only slice and patch queries have a region
        region = geometry.native_region(labelled_mask([unit], geometry.shape))
        present = np.argwhere(region)
        start, stop = present.min(axis=0), present.max(axis=0) + 1
        boxes.append({"unit": key, "start": [int(v) for v in start], "stop": [int(v) for v in stop]})
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
