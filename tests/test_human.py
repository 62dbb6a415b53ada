"""The human oracle: waiting rounds, export for desktop tools, validated ingest, corrections, partial rounds, and a
full human cycle whose selections equal the simulated oracle's."""

from __future__ import annotations

import gzip
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _human_support import (
    TOKEN,
    copy_run,
    ground_truth_nifti,
    http,
    one_torch_thread,
    prepared,
    prepared_two_channel,
    serve_in_thread,
    simulated_twin,
)
from activeseg.acquisition.scorers import bald
from activeseg.acquisition.sliding import sliding_moments
from activeseg.acquisition.uncertainty import Source, make_window_sampler
from activeseg.annotation.export import export_queue
from activeseg.annotation.ingest import IngestError, ingest_folder
from activeseg.annotation.server import create_app
from activeseg.cli import app
from activeseg.config import ConfigError
from activeseg.data.io import nifti_gz, read_volume
from activeseg.engine.loop import RunError
from activeseg.engine.model import build_model
from activeseg.engine.run import create_run, resume_run
from activeseg.oracles.human import waiting_message
from activeseg.oracles.label_files import LabelFileError, Reference, check_label, reference_for
from activeseg.rundir.layout import RunLayout
from activeseg.rundir.ledger import Ledger
from activeseg.seeds import derive_seed, round_seeds

from _support import RecordingReporter, half_step_windows, load_nifti, requires_hippocampus, tiny_config


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def queue_ids(run_dir: Path) -> list[str]:
    queue = RunLayout(run_dir).label_store().queue()
    assert queue is not None
    return queue.ids


def pool_case_not_queued(run_dir: Path) -> str:
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        return next(c for c in ledger.unlabelled_ids() if c not in queue_ids(run_dir))


def submissions_and_files(run_dir: Path) -> tuple[list[tuple[object, ...]], list[Path]]:
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    rows = db.execute("SELECT case_id, sha256, source, supersedes FROM submissions ORDER BY id").fetchall()
    db.close()
    return rows, sorted((run_dir / "labels").rglob("*.nii.gz")) if (run_dir / "labels").exists() else []


# --- a run that waits -----------------------------------------------------------------------------------------------


@requires_hippocampus
@pytest.mark.slow
def test_a_human_run_waits_for_labels_and_records_nothing_until_they_arrive(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    shared = prepared(tmp_path_factory)
    run = copy_run(shared.template, tmp_path / "run")
    selection = [c["unit"] for c in json.loads((run / "rounds/round_000/selection.json").read_text())]
    assert queue_ids(run) == selection and len(selection) == 3
    assert waiting_message(RunLayout(run)) == "waiting for labels: round 1 has 0 of 3"
    # resuming without labels: still waiting, nothing recorded (no stop reason, no round-1 labels)
    assert resume_run(run, data=shared.data) == "waiting for labels: round 1 has 0 of 3"
    with Ledger(run / "ledger.sqlite") as ledger:
        assert ledger.stop_reason() is None
        assert ledger.current_round() == 0
        assert [r.round for r in ledger.rounds()] == [0]
    assert RunLayout(run).label_store().advances() == []


# --- export, ingest, resume: the full cycle --------------------------------------------------------------------------


@requires_hippocampus
@pytest.mark.slow
def test_full_human_cycle_selects_what_the_simulated_oracle_selects(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    shared = prepared(tmp_path_factory)
    human = copy_run(shared.template, tmp_path / "human")

    # export: one folder per queried case, in a layout Slicer and ITK-SNAP open directly
    out = tmp_path / "export"
    reporter = RecordingReporter()
    folders = export_queue(human, out, reporter, data=shared.data)
    queued = queue_ids(human)
    assert sorted(f.name for f in folders) == sorted(queued)
    ((description, total, advances),) = reporter.bars
    windows = [half_step_windows(shared.data.shape_of(c), shared.data.plan.patch_size) for c in queued]
    assert description == "round 1: 3 annotation packages (windows)" and total == sum(advances) == sum(windows)
    assert {p.name for p in out.iterdir()} == {*queued, "manifest.json", "README.txt", "itksnap_labels.txt"}
    for folder in folders:
        manifest = json.loads((folder / "manifest.json").read_text())
        case_id = manifest["case_id"]
        assert manifest["round"] == 1 and manifest["label_file"] == "label.nii.gz"
        native = read_volume(shared.data.pool.case(case_id).image)
        volumes = {n: load_nifti(folder / f"{n}.nii.gz") for n in ("image", "prediction", "uncertainty")}
        for image in volumes.values():
            assert image.shape == native.array.shape
            assert np.allclose(image.affine, native.affine, atol=1e-5)
        assert np.array_equal(np.asarray(volumes["image"].dataobj), native.array)
        assert set(np.unique(np.asarray(volumes["prediction"].dataobj))) <= {0, 1, 2}
        uncertainty = np.asarray(volumes["uncertainty"].dataobj)
        assert uncertainty.dtype == np.float32 and uncertainty.min() >= 0 and uncertainty.max() > 0

    # a script plays the annotator: the ground truth goes into each exported folder as label.nii.gz
    for folder in folders:
        case_id = json.loads((folder / "manifest.json").read_text())["case_id"]
        (folder / "label.nii.gz").write_bytes(ground_truth_nifti(shared.data, case_id))
    report = ingest_folder(human, out, data=shared.data)
    assert report.outcomes == dict.fromkeys(queued, "created") and report.missing == []
    again = ingest_folder(human, out, data=shared.data)  # idempotent
    assert again.outcomes == dict.fromkeys(queued, "unchanged")
    assert len(RunLayout(human).label_store().submissions()) == 3

    assert (human / "annotation" / "round_001").is_dir()
    assert resume_run(human, data=shared.data) == "waiting for labels: round 2 has 0 of 3"
    assert not (human / "annotation" / "round_001").exists()  # a closed round's packages are gone; its labels stay
    (advance,) = RunLayout(human).label_store().advances()
    assert (advance["round"], advance["policy"], advance["requested"], advance["received"]) == (1, "all", 3, 3)

    # the same config and seed with the simulated oracle: rounds 0 and 1 (round 0's model adopted, as the demo does)
    simulated = simulated_twin(shared, human, tmp_path / "sim")
    with Ledger(human / "ledger.sqlite") as a, Ledger(simulated / "ledger.sqlite") as b:
        for r in (0, 1):
            assert a.labelled_ids(r) == b.labelled_ids(r)
        assert a.labelled_ids() == b.labelled_ids(1)
        # the human run now waits for exactly what the simulated oracle was asked for in round 2
        assert queue_ids(human) == [r.case_id for r in b.labels() if r.round == 2]


@requires_hippocampus
def test_a_two_channel_case_comes_as_one_3d_file_per_channel_and_takes_a_3d_label(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    shared = prepared_two_channel(tmp_path_factory)  # MSD 4D images: x, y, z, channel in one file
    human = copy_run(shared.template, tmp_path / "human")
    out = tmp_path / "export"
    folders = export_queue(human, out, data=shared.data)
    channels = {}
    for folder in folders:
        manifest = json.loads((folder / "manifest.json").read_text())
        assert list(manifest["files"]) == ["image", "image_0001", "prediction", "uncertainty"]
        stored = read_volume(shared.data.pool.case(manifest["case_id"]).image)
        assert stored.array.ndim == 4 and stored.array.shape[-1] == 2
        for c, name in enumerate(("image", "image_0001")):
            channel = load_nifti(folder / f"{name}.nii.gz")
            assert channel.shape == stored.array.shape[:3] == load_nifti(folder / "prediction.nii.gz").shape
            assert np.allclose(channel.affine, stored.affine, atol=1e-5)
            assert np.array_equal(np.asarray(channel.dataobj), stored.array[..., c])
        channels[manifest["case_id"]] = (folder / "image_0001.nii.gz").read_bytes()
        (folder / "label.nii.gz").write_bytes(ground_truth_nifti(shared.data, manifest["case_id"]))

    with serve_in_thread(create_app(human, TOKEN, data=shared.data)) as base:  # the viewer's view of the same
        queue = http("GET", f"{base}/api/queue", token=TOKEN).json()
        assert queue["channels"] == [{"volume": "image", "name": "MRI"}, {"volume": "image_0001", "name": "sqrt"}]
        case_id = queue["cases"][0]["case_id"]
        served = http("GET", f"{base}/api/cases/{case_id}/image_0001.nii.gz", token=TOKEN)
        assert served.status == 200 and served.body == channels[case_id]
        missing = http("GET", f"{base}/api/cases/{case_id}/image_0002.nii.gz", token=TOKEN)
        assert missing.status == 404 and "has 2 channel(s)" in missing.json()["detail"]

    report = ingest_folder(human, out, data=shared.data)
    assert report.outcomes == dict.fromkeys(queue_ids(human), "created") and report.missing == []


@requires_hippocampus
@pytest.mark.slow
@pytest.mark.parametrize("source", ["tta", "ensemble"])
def test_exported_uncertainty_comes_from_the_runs_own_source(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, source: str
) -> None:
    shared = prepared(tmp_path_factory)
    config = shared.config.override({"strategy.uncertainty": source, "strategy.ensemble_size": 2})
    run, _ = create_run(config, tmp_path / "run", data=shared.data)
    assert resume_run(run, data=shared.data).startswith("waiting for labels: round 1")
    (folder, *_) = export_queue(run, tmp_path / "out", data=shared.data)
    case_id = json.loads((folder / "manifest.json").read_text())["case_id"]
    exported = np.asarray(load_nifti(folder / "uncertainty.nii.gz").dataobj)

    # the same predictions computed directly: round 0's model(s) and round 0's scoring seed for this case
    models = []
    for name in ["model.pt", "member_1.pt"] if source == "ensemble" else ["model.pt"]:
        model = build_model(config.model, shared.data.plan)
        model.load_state_dict(torch.load(run / "rounds/round_000" / name, weights_only=True))
        models.append(model.eval())
    image = shared.data.image(case_id)
    seed = derive_seed(round_seeds(config.seed, 0)["mc_dropout"], case_id)
    settings = config.strategy
    roi, inference = shared.data.plan.patch_size, config.inference  # the windows the round's scoring used

    def windowed_bald(kind: Source) -> np.ndarray:
        k, batch, flips = settings.mc_samples, settings.mc_batch_size, config.train.flip_indices
        sampler = make_window_sampler(kind, models[0], k, batch, flips, False, models[1:], channels_last=True)  # CPU
        moments = sliding_moments(image, sampler, roi, inference.overlap, inference.windows_per_batch, seed)
        return bald(moments).numpy().astype(np.float32)

    geometry = shared.data.geometry(case_id)
    expected = geometry.to_native(windowed_bald("tta" if source == "tta" else "ensemble")[None])[0]
    assert np.allclose(exported, expected, atol=1e-6)
    dropout = windowed_bald("mc_dropout")
    assert not np.allclose(exported, geometry.to_native(dropout[None])[0], atol=1e-4)


# --- ingest validation ----------------------------------------------------------------------------------------------


def _bad_variants(reference: Reference) -> dict[str, bytes]:
    label = np.zeros(reference.shape, dtype=np.uint8)
    whole = nifti_gz(np.random.default_rng(0).integers(0, 3, reference.shape, dtype=np.uint8), reference.affine)
    shifted = reference.affine.copy()
    shifted[0, 3] += 2.0
    non_integer = label.astype(np.float32)
    non_integer[0, 0, 0] = 0.5
    return {
        "shape": nifti_gz(np.zeros((5, 5, 5), dtype=np.uint8), reference.affine),
        "affine": nifti_gz(label, shifted),
        "values": nifti_gz(np.full(reference.shape, 3, dtype=np.uint8), reference.affine),
        "non-integer": nifti_gz(non_integer, reference.affine),
        "unreadable": b"this is not a NIfTI file at all" * 20,
        "truncated": whole[: len(whole) // 2],
        "4d": nifti_gz(np.zeros((*reference.shape, 2), dtype=np.uint8), reference.affine),
    }


EXPECTED = {
    "shape": "differs from the image's",
    "affine": "affine differs",
    "values": "label values [3] are not allowed",
    "non-integer": "non-integer values",
    "unreadable": "not a readable NIfTI",
    "truncated": "truncated",
    "4d": "4D",
}


@requires_hippocampus
@pytest.mark.slow
def test_ingest_refuses_each_bad_file_by_name_and_changes_nothing(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    shared = prepared(tmp_path_factory)
    run = copy_run(shared.template, tmp_path / "run")
    good_case, bad_case = queue_ids(run)[:2]
    reference = reference_for(shared.data, bad_case)
    for problem, payload in _bad_variants(reference).items():
        folder = tmp_path / f"in-{problem}"
        (folder / good_case).mkdir(parents=True)
        (folder / good_case / "label.nii.gz").write_bytes(ground_truth_nifti(shared.data, good_case))
        (folder / f"{bad_case}.nii.gz").write_bytes(payload)
        with pytest.raises(IngestError) as caught:
            ingest_folder(run, folder, data=shared.data)
        message = str(caught.value)
        assert f"{folder / bad_case}.nii.gz" in message and EXPECTED[problem] in message, (problem, message)
        assert submissions_and_files(run) == ([], []), problem  # the good file was not recorded either

    # a label for a case that was not queried, and a folder with two label files
    other = pool_case_not_queued(run)
    folder = tmp_path / "in-unqueried"
    folder.mkdir()
    (folder / f"{other}.nii.gz").write_bytes(ground_truth_nifti(shared.data, other))
    with pytest.raises(IngestError, match=f"{other}.nii.gz: '{other}' is not a case queried in round 1"):
        ingest_folder(run, folder, data=shared.data)
    folder = tmp_path / "in-twice"
    (folder / good_case).mkdir(parents=True)
    (folder / good_case / "label.nii.gz").write_bytes(ground_truth_nifti(shared.data, good_case))
    (folder / f"{good_case}.nii.gz").write_bytes(ground_truth_nifti(shared.data, good_case))
    with pytest.raises(IngestError, match="two label files"):
        ingest_folder(run, folder, data=shared.data)
    assert submissions_and_files(run) == ([], [])


@requires_hippocampus
@pytest.mark.slow
def test_a_different_label_is_a_recorded_correction_not_an_overwrite(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    shared = prepared(tmp_path_factory)
    run = copy_run(shared.template, tmp_path / "run")
    case_id = queue_ids(run)[0]
    folder = tmp_path / "in"
    folder.mkdir()
    truth = ground_truth_nifti(shared.data, case_id)
    (folder / f"{case_id}.nii.gz").write_bytes(truth)
    assert ingest_folder(run, folder, data=shared.data).outcomes == {case_id: "created"}
    image = load_nifti(folder / f"{case_id}.nii.gz")
    edited = np.asarray(image.dataobj).copy()
    edited[edited == 2] = 1
    (folder / f"{case_id}.nii.gz").write_bytes(nifti_gz(edited, image.affine))
    report = ingest_folder(run, folder, data=shared.data)
    assert report.outcomes == {case_id: "corrected"} and len(report.missing) == 2
    rows, files = submissions_and_files(run)
    first, second = RunLayout(run).label_store().submissions()
    assert [r[0] for r in rows] == [case_id, case_id] and second["supersedes"] == first["id"]
    assert len(files) == 2  # both labels are kept, each under its own hash
    assert np.array_equal(read_volume(run / second["file"]).array, edited)


@requires_hippocampus
@pytest.mark.slow
def test_a_round_closes_by_policy_all_waits_manual_starts_with_what_arrived(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    shared = prepared(tmp_path_factory)
    run = copy_run(shared.template, tmp_path / "run")
    store = RunLayout(run).label_store()
    queue = store.queue()
    assert queue is not None
    requested = [(item.case_id, item.rank, item.score) for item in queue.items]
    first = queue.ids[0]
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / f"{first}.nii.gz").write_bytes(ground_truth_nifti(shared.data, first))
    ingest_folder(run, folder, data=shared.data)
    assert store.close_round(1, requested, "all")[0] == []  # waits: 1 of 3
    assert store.advances() == []
    accepted, _ = store.close_round(1, requested, "manual")  # the user's `resume` / button is the signal
    assert accepted == [first]
    assert store.close_round(1, requested, "all")[0] == [first]  # once closed, the recorded answer stands
    assert [(a["policy"], a["received"]) for a in store.advances()] == [("manual", 1)]
    assert store.queue() is None
    with pytest.raises(RunError, match="no round is waiting for labels"):  # a closed round takes no more labels
        ingest_folder(run, folder, data=shared.data)


# --- small pieces ---------------------------------------------------------------------------------------------------


def test_check_label_refuses_a_decompression_bomb_and_names_the_upload() -> None:
    reference = Reference((4, 4, 4), np.eye(4), 3)
    header = nifti_gz(np.zeros((4, 4, 4), np.uint8), np.eye(4))  # a valid label, then a sea of zeros
    bomb = gzip.compress(gzip.decompress(header) + b"\0" * (reference.max_nifti_bytes + 10))
    with pytest.raises(LabelFileError, match="upload x: decompresses to more than"):
        check_label("upload x", bomb, reference)
    good = check_label("upload y", nifti_gz(np.ones((4, 4, 4), dtype=np.int16), np.eye(4)), reference)
    assert good.dtype == np.uint8 and good.sum() == 64


def test_config_oracle_section_is_validated(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, oracle={"kind": "human", "advance": "manual"})
    assert (config.oracle.kind, config.oracle.advance, config.oracle.token) == ("human", "manual", None)
    with pytest.raises(ConfigError, match=r"oracle\.advance"):
        tiny_config(tmp_path, oracle={"advance": "sometimes"})
    with pytest.raises(ConfigError, match=r"oracle\.token: must be at least 16"):
        tiny_config(tmp_path, oracle={"token": "short"})
    with pytest.raises(ConfigError, match="simulation-only"):
        tiny_config(tmp_path, oracle={"kind": "human"}, strategy={"name": "foreground-random"})
    sliced = tiny_config(tmp_path, oracle={"kind": "human"}, unit={"kind": "slice"})  # served with their region
    assert (sliced.oracle.kind, sliced.unit.kind) == ("human", "slice")


# --- the command line -----------------------------------------------------------------------------------------------


@requires_hippocampus
@pytest.mark.slow
def test_command_line_export_ingest_status_and_resume(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:

    shared = prepared(tmp_path_factory)
    run = copy_run(shared.template, tmp_path / "run")
    runner = CliRunner()
    status = runner.invoke(app, ["status", str(run)])
    assert status.exit_code == 0 and "waiting for labels: round 1 has 0 of 3" in status.output
    refused = runner.invoke(app, ["resume", str(run), "--accept-partial"])
    assert refused.exit_code == 2 and "no label of round 1 has arrived yet" in refused.output

    out = tmp_path / "out"
    exported = runner.invoke(app, ["export", str(run), str(out)])
    assert exported.exit_code == 0, exported.output
    case_id = queue_ids(run)[0]
    (out / case_id / "label.nii.gz").write_bytes(b"not a label")
    bad = runner.invoke(app, ["ingest", str(run), str(out)])
    assert bad.exit_code == 2 and "label.nii.gz" in bad.output and "not a readable NIfTI" in bad.output
    (out / case_id / "label.nii.gz").write_bytes(ground_truth_nifti(shared.data, case_id))
    good = runner.invoke(app, ["ingest", str(run), str(out)])
    assert good.exit_code == 0 and f"{case_id} created" in good.output and "still missing" in good.output
    assert "round 1 has 1 of 3" in runner.invoke(app, ["status", str(run)]).output

    # the last labels in, and the next round started from the same command
    for case_id in queue_ids(run)[1:]:
        (out / case_id / "label.nii.gz").write_bytes(ground_truth_nifti(shared.data, case_id))
    timings = (run / "rounds" / "round_000" / "timings.json").read_text()
    both = runner.invoke(app, ["ingest", str(run), str(out), "--next-round"])
    assert both.exit_code == 0, both.output
    # round 0 is entered again and reads its model, metrics and scores back: its stage times stay the measured ones
    assert (run / "rounds" / "round_000" / "timings.json").read_text() == timings
    assert "all labels are in" in both.output and "waiting for labels: round 2 has 0 of 3" in both.output
    assert "activeseg resume" not in both.output  # no hint to do what the command just did
