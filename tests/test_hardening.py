"""Issue 13, without the hippocampus data: header-first label checks, folder names that cannot collide, ingest that
stays inside its folder, losing uploads that leave no file, failed rounds that keep their traceback local, and a
quiet stderr."""

from __future__ import annotations

import gzip
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from activeseg.annotation.ingest import find_label_files
from activeseg.annotation.service import AnnotationService, Job
from activeseg.data.dataset import Case
from activeseg.data.errors import DatasetError
from activeseg.data.fingerprint import fingerprint_case
from activeseg.data.io import check_label_shape
from activeseg.oracles.label_files import LabelFileError, Reference, check_label, read_submission_file, safe_name
from activeseg.rundir.label_store import LabelConflict, Queue, QueueItem, Submission
from activeseg.rundir.layout import RunLayout
from activeseg.rundir.ledger import Ledger

REFERENCE = Reference((6, 7, 5), np.diag([1.5, 2.0, 2.5, 1.0]), 3)


def header_only(shape: tuple[int, ...], dtype: Any = np.uint8, **fields: Any) -> bytes:
    """A NIfTI-1 header (and extension flag) that claims ``shape`` voxels, without them."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(REFERENCE.affine, code=1)
    header["vox_offset"] = 352
    for key, value in fields.items():
        header[key] = value
    return bytes(header.binaryblock) + b"\0" * 4


def label_bytes(array: Any, slope: float | None = None, inter: float = 0.0) -> bytes:
    image = nib.Nifti1Image(np.asarray(array), REFERENCE.affine)
    image.set_sform(REFERENCE.affine, code=1)
    if slope is not None:
        image.header.set_slope_inter(slope, inter)
    return bytes(image.to_bytes())


# --- 1, 4: the header first, and nothing larger than the image allows ------------------------------------------------


@pytest.mark.parametrize("gzipped", [True, False])
def test_a_header_claiming_2000_cubed_voxels_is_refused_before_any_voxel_is_read(gzipped: bool) -> None:
    bomb = header_only((2000, 2000, 2000))
    payload = gzip.compress(bomb) if gzipped else bomb
    assert len(payload) < 400
    with pytest.raises(LabelFileError, match=r"upload: label shape \(2000, 2000, 2000\) differs from the image's"):
        check_label("upload", payload, REFERENCE)


def test_a_label_file_larger_than_its_header_describes_is_refused() -> None:
    good = label_bytes(np.ones(REFERENCE.shape, np.uint8))
    for payload in (good + b"\0" * (3 << 20), gzip.compress(good + b"\0" * (3 << 20))):
        with pytest.raises(LabelFileError, match="more than"):
            check_label("upload", payload, REFERENCE)
    assert check_label("upload", good, REFERENCE).sum() == np.prod(REFERENCE.shape)


def test_a_scaled_label_is_checked_on_its_values_and_never_held_as_float64() -> None:
    raw = np.zeros(REFERENCE.shape, np.int16)
    raw[1:3, 2:4, 1:2] = 4
    label = check_label("upload", label_bytes(raw, slope=0.5), REFERENCE)  # 4 * 0.5 = 2
    assert label.dtype == np.uint8 and sorted(np.unique(label).tolist()) == [0, 2]
    with pytest.raises(LabelFileError, match="non-integer values"):
        check_label("upload", label_bytes(raw, slope=0.3), REFERENCE)
    with pytest.raises(LabelFileError, match=r"label values \[5\] are not allowed"):
        check_label("upload", label_bytes(raw, slope=1.0, inter=1.0), REFERENCE)


def test_ingest_reads_no_file_larger_than_a_label_of_the_image_can_be(tmp_path: Path) -> None:
    huge = tmp_path / "case.nii"
    with huge.open("wb") as handle:  # sparse: 3 GiB that take no disk
        handle.truncate(3 << 30)
    with pytest.raises(LabelFileError, match=r"case.nii: the file is 3221225472 bytes, more than a label"):
        read_submission_file(huge, REFERENCE.max_file_bytes)


# --- 2: folder names ----------------------------------------------------------------------------------------------


def queue_of(*ids: str) -> Queue:
    return Queue(1, [QueueItem(c, (c,), i, None, None, None, None) for i, c in enumerate(ids)], False)


def test_case_ids_that_sanitise_alike_get_folders_of_their_own(tmp_path: Path) -> None:
    ids = ["case a", "case_a", "case/a", "case_a--0123456789ab", ".hidden", "..", "", "x" * 300]
    names = [safe_name(c) for c in ids]
    assert len(set(names)) == len(ids), names
    assert safe_name("hippocampus_001") == "hippocampus_001"  # plain ids keep their name
    assert all(n and "/" not in n and not n.startswith(".") and len(n) <= 100 for n in names)
    # ingest finds each case's label in its own folder
    for case_id in ("case a", "case_a"):
        (tmp_path / safe_name(case_id)).mkdir()
        (tmp_path / safe_name(case_id) / "label.nii.gz").write_bytes(b"x")
    found, problems = find_label_files(tmp_path, queue_of("case a", "case_a"))
    assert problems == [] and found == {c: tmp_path / safe_name(c) / "label.nii.gz" for c in ("case a", "case_a")}


# --- 4, 10: ingest stays in its folder and says why it skips a file ---------------------------------------------------


def test_ingest_follows_no_link_out_of_its_folder_and_names_what_is_not_a_file(tmp_path: Path) -> None:
    folder, outside = tmp_path / "in", tmp_path / "secret.nii.gz"
    folder.mkdir()
    outside.write_bytes(b"outside")
    (folder / "a.nii.gz").symlink_to(outside)
    (folder / "b.nii.gz").symlink_to("/dev/zero")
    os.mkfifo(folder / "c.nii")
    (folder / "d").mkdir()
    (folder / "d" / "label.nii.gz").symlink_to(folder / "missing")
    (folder / "e.nii.gz").write_bytes(b"inside")
    (folder / "f.nii.gz").symlink_to(folder / "e.nii.gz")  # a link inside the folder is fine
    found, problems = find_label_files(folder, queue_of("a", "b", "c", "d", "e", "f"))
    assert found == {"e": folder / "e.nii.gz", "f": folder / "f.nii.gz"}
    text = "\n".join(problems)
    assert f"{folder / 'a.nii.gz'}: a link to {outside}, outside {folder}" in text
    assert f"{folder / 'b.nii.gz'}: a link to /dev/zero, outside" in text
    assert f"{folder / 'c.nii'}: not a regular file" in text
    assert f"{folder / 'd' / 'label.nii.gz'}: a broken link" in text


QUIET = """
import gzip, sys
import nibabel as nib, numpy as np
from activeseg.oracles.label_files import LabelFileError, Reference, check_label
reference = Reference((6, 7, 5), np.eye(4), 3)
header = nib.Nifti1Header()
header.set_data_shape(reference.shape)
good = header.binaryblock + bytes(4 + 210)
odd = (349).to_bytes(4, "little") + good[4:]  # nibabel prints "sizeof_hdr should be 348" for this one
nifti2 = nib.Nifti2Image(np.zeros(reference.shape, np.uint8), np.eye(4)).to_bytes()
for payload in (bytes(400), odd, gzip.compress(odd), b"GIF89a" * 100, nifti2):
    try:
        check_label("upload", payload, reference)
    except LabelFileError as err:
        print(err)
"""


def test_an_unreadable_header_prints_nothing_to_stderr() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run([sys.executable, "-c", QUIET], capture_output=True, text=True, env=env, check=True)
    assert child.stderr == ""
    assert child.stdout.count("not a readable NIfTI") == 4, child.stdout


# --- 9: losing uploads -------------------------------------------------------------------------------------------


def test_the_losers_of_an_upload_race_leave_no_label_file(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path / "run")
    layout.root.mkdir()
    with Ledger(layout.ledger) as ledger:
        ledger.initialise(["c1", "c2"], ["t1"], {"seed": 0})
    store = layout.label_store()
    store.close_round(1, [("c1", 0, None)], "all")
    barrier = threading.Barrier(10)
    outcomes: list[str] = []

    def upload(i: int) -> None:
        label = np.zeros((4, 4, 4), np.uint8)
        label.flat[i] = 1  # ten different labels for one case
        barrier.wait()
        try:
            outcomes.extend(store.submit([Submission("c1", label, np.eye(4), "upload")]))
        except LabelConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict"] * 9 + ["created"]
    (row,) = store.submissions()
    assert sorted(p.relative_to(layout.root).as_posix() for p in layout.root.rglob("*.nii.gz")) == [row["file"]]


# --- 5: a failed round ------------------------------------------------------------------------------------------


def test_a_failed_round_reports_a_message_and_an_error_id_and_logs_the_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "deep" / "run"

    def fail(*args: object, **kwargs: object) -> str:
        raise RuntimeError(f"{run_dir}/rounds/round_001/model.pt: corrupt; see {tmp_path}/elsewhere/notes.txt")

    monkeypatch.setattr("activeseg.annotation.service.resume_run", fail)
    service = AnnotationService.__new__(AnnotationService)
    service.run = SimpleNamespace(layout=RunLayout(run_dir), data=None)  # type: ignore[assignment]
    job = Job(1, "user")
    with caplog.at_level(logging.ERROR, logger="activeseg.annotation.service"):
        service._run_job(job)
    public = job.as_dict()
    text = repr(public)
    assert public["state"] == "failed" and public["error_id"] and len(public["error_id"]) >= 8
    assert public["error"] == "RuntimeError: RUN_DIR/rounds/round_001/model.pt: corrupt; see …/notes.txt"
    assert str(tmp_path) not in text and "Traceback" not in text and "File " not in text
    (record,) = caplog.records
    assert public["error_id"] in record.getMessage() and record.exc_info is not None


def test_a_dataset_label_whose_header_disagrees_with_its_image_is_refused_before_its_voxels_are_read(
    tmp_path: Path,
) -> None:
    image = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 10), np.float32), np.eye(4)), str(image))
    label = tmp_path / "case_label.nii"
    label.write_bytes(header_only((600, 600, 600)))  # declares 216 M voxels, holds none: reading it would fail
    with pytest.raises(DatasetError, match=r"case_label\.nii: label shape \(600, 600, 600\) does not match"):
        fingerprint_case(Case("case", image, label), "nonzero", seed=0)
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 10), np.uint8), np.eye(4)), str(label))
    check_label_shape(Case("case", image, label))  # a label of the image's shape passes
