"""The whole human loop on clinical-size scans: plan, train, score, export, ingest and the next round, as a user
runs them from the command line, with each step's wall time and peak resident memory.

    python benchmarks/clinical_scale.py --work /tmp/cs     # about 47 min on 2 cores -> results/clinical_scale.json

It writes ``--cases`` hippocampus cases pasted into 512×512×200–300 CT-like fields (0.7–1.0 mm in-plane, 1.0–2.5 mm
slices, five orientations; ``activeseg.data.clinical``), then runs, each in its own process:

1. ``activeseg plan``;
2. ``activeseg run`` with a human oracle: preprocessing, round 0's training and evaluation, and MC-dropout BALD
   scoring of the unlabelled pool; it stops waiting for round 1's label;
3. ``activeseg export``: the queried case's image, prediction and uncertainty on its own native grid;
4. the "annotator" saves the case's true label on the image's grid, and ``activeseg ingest --next-round`` checks
   it, brings it in and trains and evaluates round 1.

It checks what a person relies on: the exported files lie on the image's own grid (shape and affine), the label the
run stored is the annotator's file voxel for voxel, and both rounds were evaluated. Peak memory is each step's own
high-water mark, read by a small process between (:data:`PEAK_RSS`). The model is the demo's U-Net trained for
``--iterations`` a round; the test scan's Dice in each round says whether it finds the structure at this size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from render_common import RESULTS
from run_benchmarks import machine  # this script's folder is on sys.path when it runs

from activeseg.data.clinical import make_clinical_dataset
from activeseg.data.io import read_volume, write_volume
from activeseg.engine.malloc import keep_freed_memory

HIPPOCAMPUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hippocampus"
FIELD = (512, 512, (200, 300))
SLICES_MM = (1.0, 2.5)


PEAK_RSS = Path(__file__).resolve().parents[1] / "tests" / "_peak_rss.py"
"""The small process each step runs under, which reads the step's own peak: a command started straight from this
(large) process would report this process's memory too (Linux keeps the high-water mark across fork and exec)."""


def timed(command: list[str], log: Path) -> dict[str, Any]:
    """Run ``command`` in its own process (output to ``log``); its wall seconds and peak RSS (GB)."""
    peak = log.with_suffix(".peak")
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call([sys.executable, str(PEAK_RSS), str(peak), *command], stdout=out, stderr=out)
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{' '.join(command)} failed ({code}); see {log}")
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(int(peak.read_text()) / 1e6, 2)}


def config(data: Path, cache: Path, iterations: int) -> dict[str, Any]:
    """One acquisition round of one volume after two labelled ones, with a person labelling it."""
    return {
        "name": "clinical-scale",
        "seed": 0,
        "data": {"root": str(data), "test_size": 1, "cache_dir": str(cache)},
        "model": {"channels": [8, 16, 32, 64], "num_res_units": 1, "dropout": 0.1},
        "train": {"iterations": iterations, "batch_size": 2, "device": "cpu"},
        "strategy": {"name": "bald", "mc_samples": 8},
        "loop": {"initial": 2, "per_round": 1, "rounds": 1},
        "oracle": {"kind": "human"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (emptied first)")
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--source", type=Path, default=HIPPOCAMPUS)
    parser.add_argument("--out", type=Path, default=RESULTS / "clinical_scale.json")
    args = parser.parse_args()
    keep_freed_memory()  # what each `activeseg` process does, so the recorded machine says what the steps ran with
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cli = [sys.executable, "-m", "activeseg.cli"]  # the installed `activeseg`
    steps: dict[str, dict[str, Any]] = {}

    start = time.perf_counter()
    data = make_clinical_dataset(
        args.source, work / "data", n_cases=args.cases, seed=0, field_shape=FIELD, slice_spacing=SLICES_MM
    )
    steps["generate"] = {"seconds": round(time.perf_counter() - start, 1)}
    drawn = json.loads((data / "dataset.json").read_text())["clinical"]
    run_config = config(data, work / "cache", args.iterations)
    (work / "config.yaml").write_text(yaml.safe_dump(run_config))
    run = work / "run"

    steps["plan"] = timed(
        [*cli, "plan", str(data), "--config", str(work / "config.yaml"), "-o", str(work / "plan.json")],
        work / "plan.log",
    )
    steps["run: preprocess, round 0, score the pool"] = timed(
        [*cli, "run", str(work / "config.yaml"), "--run-dir", str(run)], work / "run.log"
    )
    steps["export"] = timed([*cli, "export", str(run), str(work / "export")], work / "export.log")
    queued = sorted(p.name for p in (work / "export").iterdir() if p.is_dir())
    checks = check_export(work / "export", data, queued)
    for case_id in queued:  # the annotator's label: the truth, on the image's own grid
        truth = read_volume(data / "labelsTr" / f"{case_id}.nii.gz")
        write_volume(work / "export" / case_id / "label.nii.gz", np.asarray(truth.array, np.uint8), truth.affine)
    steps["ingest, round 1"] = timed(
        [*cli, "ingest", str(run), str(work / "export"), "--next-round"], work / "ingest.log"
    )
    checks |= check_run(run, data, queued)

    plan = json.loads((work / "plan.json").read_text())
    result = {
        "machine": machine(),
        "command": f"python benchmarks/clinical_scale.py --work DIR --cases {args.cases} "
        f"--iterations {args.iterations}",
        "cases": {c: {k: drawn[c][k] for k in ("shape", "spacing", "orientation", "oblique_degrees")} for c in drawn},
        "plan": {
            k: plan[k] for k in ("target_spacing", "patch_size", "batch_size", "strides", "estimated_gb") if k in plan
        },
        "iterations": args.iterations,
        "strategy": run_config["strategy"],
        "loop": run_config["loop"],
        "queried": queued,
        "steps": steps,
        "checks": checks,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def check_export(export: Path, data: Path, queued: list[str]) -> dict[str, Any]:
    """Every exported volume of each queried case lies on the image's own grid."""
    checked = []
    for case_id in queued:
        image = read_volume(data / "imagesTr" / f"{case_id}.nii.gz")
        for path in sorted((export / case_id).glob("*.nii.gz")):
            exported = read_volume(path)
            shape = exported.array.shape[-3:]
            if shape != image.array.shape[-3:] or not np.allclose(exported.affine, image.affine, atol=1e-4):
                raise SystemExit(f"{path}: {shape} off the image's grid {image.array.shape}")
            checked.append(path.name)
    return {"exported_on_native_grid": sorted(set(checked))}


def check_run(run: Path, data: Path, queued: list[str]) -> dict[str, Any]:
    """Both rounds were evaluated, and each label the run stored is the annotator's file voxel for voxel, on the
    image's grid."""
    metrics = sorted(run.glob("rounds/round_*/metrics.json"))
    if len(metrics) != 2:
        raise SystemExit(f"{run}: {len(metrics)} evaluated rounds, expected 2")
    stored = sorted((run / "labels").rglob("*.nii.gz"))
    truths = {c: read_volume(data / "labelsTr" / f"{c}.nii.gz") for c in queued}
    matched = []
    for path in stored:
        label = read_volume(path)
        matched += [
            c
            for c, truth in truths.items()
            if label.array.shape == truth.array.shape
            and np.allclose(label.affine, truth.affine, atol=1e-4)
            and np.array_equal(label.array, truth.array)
        ]
    if sorted(matched) != sorted(queued):
        raise SystemExit(f"{run}: stored labels {[p.name for p in stored]} do not match the annotator's {queued}")
    return {
        "stored_labels_equal_the_annotators": sorted(matched),
        "metrics": [json.loads(m.read_text()) for m in metrics],
    }


if __name__ == "__main__":
    main()
