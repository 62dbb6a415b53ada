"""The browser viewer on a clinical-size case: how long it takes to open and to save, and what the save sends.

    python benchmarks/viewer_scale.py --work /tmp/vs     # about 15 min on 2 cores -> results/viewer_scale.json

It writes four hippocampus cases pasted into 512×512×200–300 CT-like fields (as ``clinical_scale.py`` does) and
runs ``activeseg run`` with a human oracle, as that script does but with round 0 trained only briefly (the viewer's
times do not depend on the model): MC-dropout BALD queries one case. Then headless Chromium (the tests' driver,
``tests/_human_support.py``) opens that case from the annotation server's app on loopback, twice:

1. **at start**: as soon as the server is up, while it computes the case's package (image, prediction and
   uncertainty on the native grid) in the background;
2. **ready**: from a second server on the same run, its package made; then "Accept prediction" saves the drawing
   (``oracle.advance: manual``, so that the saved label starts no round).

It records each wait, the package files' sizes and the bytes the save sent against the drawing's raw size, and
checks that the label the run stored is the prediction voxel for voxel. The times are those of a headless browser
that draws in software (no GPU); a person's browser draws on its GPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from clinical_scale import FIELD, HIPPOCAMPUS, SLICES_MM, config, timed
from render_common import RESULTS
from run_benchmarks import machine  # this script's folder is on sys.path when it runs

from activeseg.annotation.server import create_app
from activeseg.data.clinical import make_clinical_dataset
from activeseg.data.io import read_volume
from activeseg.engine.malloc import keep_freed_memory
from activeseg.rundir.layout import RunLayout

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _human_support import FIRST, TOKEN, Browser, browser_on, http, open_viewer  # the tests' Chromium driver


def open_first_case(browser: Browser, base: str) -> tuple[str, dict[str, float]]:
    """Load the page and open the first queued case; its id, and the seconds from the click until the server
    reports the case's package made (``package``) and until the viewer shows the case (``shown``)."""
    case_id = open_viewer(browser, base, timeout=300)
    start = time.perf_counter()
    browser.evaluate(f"{FIRST}.click()")
    waits: dict[str, float] = {}
    while not browser.evaluate(f"window.viewerState.loaded === {json.dumps(case_id)} || window.viewerState.error"):
        packages = http("GET", f"{base}/api/status", token=TOKEN).json()["packages"]
        if "package" not in waits and packages["done"] >= packages["total"]:
            waits["package"] = round(time.perf_counter() - start, 1)
        if time.perf_counter() - start > 3600:
            raise SystemExit(f"the viewer did not open {case_id} within an hour")
        time.sleep(1.0)
    if error := browser.evaluate("window.viewerState.error"):
        raise SystemExit(f"the viewer failed to open {case_id}: {error}")
    waits["shown"] = round(time.perf_counter() - start, 1)
    waits.setdefault("package", 0.0)  # made before the click
    return case_id, waits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (emptied first)")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--source", type=Path, default=HIPPOCAMPUS)
    parser.add_argument("--out", type=Path, default=RESULTS / "viewer_scale.json")
    args = parser.parse_args()
    keep_freed_memory()
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = make_clinical_dataset(
        args.source, work / "data", n_cases=4, seed=0, field_shape=FIELD, slice_spacing=SLICES_MM
    )
    run_config = config(data, work / "cache", args.iterations)
    run_config["oracle"]["advance"] = "manual"  # the saved label starts no round: the package stays to compare with
    (work / "config.yaml").write_text(yaml.safe_dump(run_config))
    run = work / "run"
    cli = [sys.executable, "-m", "activeseg.cli"]
    made = timed([*cli, "run", str(work / "config.yaml"), "--run-dir", str(run)], work / "run.log")

    seconds: dict[str, float] = {}
    with browser_on(create_app(run, TOKEN), work / "profile-start") as (browser, base):
        case_id, at_start = open_first_case(browser, base)
    with browser_on(create_app(run, TOKEN), work / "profile-ready") as (browser, base):
        _, ready = open_first_case(browser, base)
        seconds |= {
            "open at start": at_start["shown"],
            "package made, at start": at_start["package"],
            "open ready": ready["shown"],
        }
        start = time.perf_counter()
        browser.evaluate("document.getElementById('accept').click()")
        browser.wait_for("window.viewerState.saved || window.viewerState.error", timeout=1800)
        seconds["save"] = round(time.perf_counter() - start, 1)
        if error := browser.evaluate("window.viewerState.error"):
            raise SystemExit(f"the viewer failed to save {case_id}: {error}")
        sent = browser.evaluate("window.viewerState.sent")

    (row,) = RunLayout(run).label_store().submissions()
    package = run / "annotation" / "round_001" / case_id  # the round still waits (advance: manual)
    prediction = read_volume(package / "prediction.nii.gz").array
    stored = read_volume(run / row["file"]).array
    result: dict[str, Any] = {
        "machine": machine(),
        "command": f"python benchmarks/viewer_scale.py --work DIR --iterations {args.iterations}",
        "case": {"id": case_id, "shape": list(prediction.shape)},
        "strategy": run_config["strategy"],
        "run_seconds": made["seconds"],
        "seconds": seconds,
        "package_mb": {p.name: round(p.stat().st_size / 1e6, 1) for p in sorted(package.glob("*.nii.gz"))},
        "sent": sent,
        "checks": {"stored_label_is_the_prediction": bool(np.array_equal(stored, prediction))},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
