"""Slices and patches for a human annotator: the region to label in export, the server and ingest, labels kept
only inside it, and a full human cycle whose selections and training labels equal the simulated oracle's."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _human_support import (
    TOKEN,
    copy_run,
    ground_truth_nifti,
    http,
    one_torch_thread,
    prepared,
    serve_in_thread,
    simulated_twin,
    wait_for_job,
)
from activeseg.acquisition.units import IGNORE
from activeseg.annotation.export import export_queue
from activeseg.annotation.ingest import ingest_folder
from activeseg.annotation.server import create_app
from activeseg.data.geometry import Geometry
from activeseg.data.io import read_volume
from activeseg.data.splits import RunData
from activeseg.engine.loop import RunError
from activeseg.engine.run import resume_run, run_lock
from activeseg.oracles.human import HumanOracle
from activeseg.oracles.label_files import native_region, take_region
from activeseg.oracles.simulated import SimulatedOracle
from activeseg.rundir.layout import RunLayout
from activeseg.rundir.ledger import Ledger

from _support import load_nifti, requires_hippocampus


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def native_truth(data: RunData, case_id: str) -> np.ndarray:
    """A case's true label on its image's grid (what the scripted annotator draws)."""
    return np.asarray(read_volume(data.pool.case(case_id).label).array, dtype=np.uint8)


def boxes_mask(shape: tuple[int, ...], boxes: list[dict[str, list[int]]]) -> np.ndarray:
    """The union of the manifest's native boxes, built from their numbers alone."""
    mask = np.zeros(shape, dtype=bool)
    for box in boxes:
        mask[tuple(slice(a, b) for a, b in zip(box["start"], box["stop"], strict=True))] = True
    return mask


# --- small pieces -----------------------------------------------------------------------------------------------


def test_take_region_keeps_the_mask_and_counts_labels_outside_it() -> None:
    label = np.zeros((4, 5, 6), dtype=np.uint8)
    label[1:3, 1:4, 2:5] = 2
    region = np.zeros(label.shape, dtype=bool)
    region[:, :, 3] = True  # one slice along the last axis
    taken, outside = take_region(label, region)
    assert outside == int((label > 0).sum() - (label[:, :, 3] > 0).sum()) == 12
    assert (taken[:, :, 3] == label[:, :, 3]).all() and (taken[~region] == IGNORE).all()
    whole, none_outside = take_region(label, None)
    assert whole is label and none_outside == 0


def test_native_region_undoes_the_crop_and_the_flip_of_a_las_scan() -> None:
    # native 6 x 10 x 3 stored LAS (axis 0 runs right to left), cropped to native rows 1..4 of axis 0 and columns
    # 2..9 of axis 1: the planned grid is 4 x 8 x 3 in RAS order, so planned row i is native row 4 - i
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    geometry = Geometry.plan((6, 10, 3), las, (1.0, 1.0, 1.0), crop=((1, 5), (2, 10), (0, 3)))
    assert geometry.shape == (4, 8, 3) and not geometry.resampled
    region = native_region(["c@patch:0-2:0-4:0-3"], geometry)
    assert region is not None
    expected = np.zeros((6, 10, 3), dtype=bool)
    expected[3:5, 2:6, :] = True  # planned rows 0..1 are native rows 4..3; planned columns 0..3 are native 2..5
    assert np.array_equal(region, expected)
    slab = native_region(["c@slice:0:3"], geometry)  # planned row 3 is native row 1
    assert slab is not None and np.array_equal(np.argwhere(slab.any(axis=(1, 2))).ravel(), [1])
    assert native_region(["c"], geometry) is None


def test_run_lock_refuses_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    refused = pytest.raises(RunError, match=r"process \d+ is running this run's rounds now")
    with run_lock(RunLayout(tmp_path)), refused, run_lock(RunLayout(tmp_path)):
        pass
    with run_lock(RunLayout(tmp_path)):  # released: free again, and the lock file is left empty
        pass
    assert (tmp_path / "run.lock").read_text() == ""


# --- the full cycle with partial units ------------------------------------------------------------------------------


@requires_hippocampus
@pytest.mark.slow
@pytest.mark.parametrize("unit", ["patch", "slice"])
def test_human_cycle_with_partial_units_trains_on_what_the_simulated_oracle_reveals(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, unit: str
) -> None:
    shared = prepared(tmp_path_factory, unit)
    human = copy_run(shared.template, tmp_path / "human")
    queue = RunLayout(human).label_store().queue()
    assert queue is not None and sum(len(i.units) for i in queue.items) == 3
    assert all("@" in key for item in queue.items for key in item.units)

    # export: each case's region, as a mask file and as native boxes in the manifest (two computations agree)
    out = tmp_path / "export"
    folders = export_queue(human, out, data=shared.data)
    outside_expected = {}
    for folder in folders:
        manifest = json.loads((folder / "manifest.json").read_text())
        case_id = manifest["case_id"]
        assert manifest["unit"] == unit and manifest["units"] == list(queue.item(case_id).units)
        region = np.asarray(load_nifti(folder / "region.nii.gz").dataobj) > 0
        image = load_nifti(folder / "image.nii.gz")
        assert region.shape == image.shape and np.allclose(load_nifti(folder / "region.nii.gz").affine, image.affine)
        assert np.array_equal(region, boxes_mask(region.shape, manifest["region"]["boxes"]))
        assert region.any() and not region.all()
        truth = native_truth(shared.data, case_id)
        outside_expected[folder / "label.nii.gz"] = int(np.count_nonzero(truth[~region]))
        # the scripted annotator labels the whole volume; only the region may be kept
        (folder / "label.nii.gz").write_bytes(ground_truth_nifti(shared.data, case_id))

    report = ingest_folder(human, out, data=shared.data)
    assert report.missing == [] and set(report.outcomes.values()) == {"created"}
    for path, count in outside_expected.items():  # each file's voxels outside its region are reported by name
        note = f"{path}: {count} labelled voxels outside the queried region were ignored"
        assert (note in report.notes) == (count > 0), (note, report.notes)
    for row in RunLayout(human).label_store().submissions():  # stored: the region's labels, the ignore value elsewhere
        stored = np.asarray(read_volume(human / row["file"]).array)
        case_id = row["case_id"]
        folder = out / case_id
        region = np.asarray(load_nifti(folder / "region.nii.gz").dataobj) > 0
        assert (stored[~region] == IGNORE).all()
        assert np.array_equal(stored[region], native_truth(shared.data, case_id)[region])

    waiting = resume_run(human, data=shared.data)
    assert waiting.startswith("waiting for labels: round 2 has 0 of "), waiting

    # the same seed with the simulated oracle: identical rounds 0 and 1, and identical training labels
    simulated = simulated_twin(shared, human, tmp_path / "sim")
    with Ledger(human / "ledger.sqlite") as a, Ledger(simulated / "ledger.sqlite") as b:
        assert a.labelled_units(1) == b.labelled_units(1)
        labelled_cases = sorted({record.case_id for record in a.labels(1)})
        seed_units = a.labelled_units(0)
        revealed = SimulatedOracle(shared.data.ground_truth, revealed=a.labelled_units(1))
        round_two = [record.unit for record in b.labels() if record.round == 2]
    person = HumanOracle(RunLayout(human).label_store(), shared.data, "all", seed_units)
    for case_id in labelled_cases:
        mine, truth = person.label(case_id), revealed.label(case_id)
        assert np.array_equal(mine, truth), case_id
        assert (mine == IGNORE).any()  # partial: most of each case stays unlabelled
    next_queue = RunLayout(human).label_store().queue()
    assert next_queue is not None
    assert sorted(k for i in next_queue.items for k in i.units) == sorted(round_two)


# --- the server with partial units ----------------------------------------------------------------------------------


@requires_hippocampus
@pytest.mark.slow
def test_server_serves_the_region_and_keeps_only_it_from_an_upload(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:

    shared = prepared(tmp_path_factory, "patch")
    run = copy_run(shared.template, tmp_path / "run")
    app = create_app(run, TOKEN, data=shared.data, max_upload_bytes=1 << 20)
    with serve_in_thread(app) as base:
        queue = http("GET", f"{base}/api/queue", token=TOKEN).json()
        assert queue["unit"] == "patch"
        item = queue["cases"][0]
        case_id = item["case_id"]
        assert item["units"] and all(u.startswith(f"{case_id}@patch:") for u in item["units"])
        reply = http("GET", f"{base}/api/cases/{case_id}/region.nii.gz", token=TOKEN)
        assert reply.status == 200
        region = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(reply.body)).dataobj) > 0
        truth = native_truth(shared.data, case_id)
        assert region.shape == truth.shape and region.any()

        # a resume elsewhere holds the run's lock: the background round fails with that reason and changes nothing
        with run_lock(RunLayout(run)):
            upload = ground_truth_nifti(shared.data, case_id)  # the whole volume: only the region may be kept
            saved = http("PUT", f"{base}/api/cases/{case_id}/label", upload, token=TOKEN)
            assert saved.status == 201, saved.body
            assert saved.json()["ignored_outside_region"] == int(np.count_nonzero(truth[~region]))
            stored = RunLayout(run).label_store().current_file(case_id)
            assert stored is not None
            kept = np.asarray(read_volume(stored).array)
            assert np.array_equal(kept[region], truth[region]) and (kept[~region] == IGNORE).all()
            if "next_round" not in saved.json():  # other cases still wait: start with what has arrived
                started = http("POST", f"{base}/api/next-round?accept_partial=true", token=TOKEN)
                assert started.status == 202, started.body
            job = wait_for_job(base)
        assert job["state"] == "failed" and "is running this run's rounds now" in job["error"]
        with Ledger(run / "ledger.sqlite") as ledger:
            assert ledger.current_round() == 0
