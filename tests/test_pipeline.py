"""The clinical-size pipeline end to end: planning, multi-channel input in both layouts, a dataset that would lose
foreground, and orientation-independent predictions in world space."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from activeseg.acquisition.registry import get_strategy
from activeseg.config import RunConfig, config_from_dict
from activeseg.data.clinical import make_clinical_dataset, reoriented_copy
from activeseg.data.dataset import load_dataset
from activeseg.data.errors import DatasetError
from activeseg.data.io import read_volume, write_volume
from activeseg.data.plan import read_plan
from activeseg.data.preprocess import prepare_case
from activeseg.data.splits import open_data
from activeseg.engine.inference import largest_component, predict_native_label, predict_volume
from activeseg.engine.model import build_model
from activeseg.engine.pool import Pool
from activeseg.engine.run import start_run
from activeseg.engine.training import seed_everything
from activeseg.progress import SilentReporter
from activeseg.rundir.layout import RunLayout

from _support import (
    RecordingReporter,
    half_step_windows,
    hippocampus_root,
    hippocampus_subset,
    requires_hippocampus,
    two_channel_hippocampus,
)

CASES = 10


def run_config(root: Path, cache: Path, **sections: Any) -> RunConfig:
    """A real two-round run in seconds: few cases, a small U-Net, few iterations."""
    raw: dict[str, Any] = {
        "name": "pipeline",
        "seed": 3,
        "data": {"root": str(root), "test_size": 3, "cache_dir": str(cache)},
        "model": {"channels": [4, 8, 16], "num_res_units": 1, "dropout": 0.2},
        "train": {"iterations": 6, "device": "cpu"},
        "strategy": {"name": "entropy", "mc_samples": 2, "mc_batch_size": 2},
        "loop": {"initial": 3, "per_round": 2, "rounds": 2},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def two_layouts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same two-channel hippocampus cases as nnU-Net channel files and as MSD 4D images."""
    return two_channel_hippocampus(tmp_path_factory.mktemp("channels"), CASES)


@requires_hippocampus
@pytest.mark.slow
def test_multi_channel_datasets_in_both_layouts_train_two_real_rounds_alike(
    two_layouts: tuple[Path, Path], tmp_path: Path
) -> None:
    runs = []
    for root in two_layouts:
        dataset = load_dataset(root)
        assert dataset.modality == {"0": "MRI", "1": "sqrt"}
        run_dir = start_run(run_config(root, tmp_path / "cache"), tmp_path / root.name)
        plan = read_plan(RunLayout(run_dir).plan)
        assert plan.channels == 2 and [n.scheme for n in plan.normalisation] == ["zscore", "zscore"]
        runs.append(run_dir)
    for r in (0, 1, 2):  # the same voxels in either layout: the same rounds, bit for bit
        for name in ("metrics.json", "model.pt") + (("selection.json", "scores.csv") if r < 2 else ()):
            a, b = (RunLayout(d).round_dir(r) / name for d in runs)
            assert a.read_bytes() == b.read_bytes(), (r, name)


@requires_hippocampus
def test_a_dataset_that_would_lose_foreground_fails_naming_the_case_before_anything_is_written(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case_id in hippocampus_subset(6):
        image = read_volume(hippocampus_root() / "imagesTr" / f"{case_id}.nii.gz")
        label = np.asarray(read_volume(hippocampus_root() / "labelsTr" / f"{case_id}.nii.gz").array)
        if case_id == hippocampus_subset(6)[2]:  # this case's class 2 is one voxel: a 3 mm grid misses it
            label = np.where(label == 2, 1, label)
            label[10, 11, 12] = 2
        write_volume(root / "imagesTr" / f"{case_id}.nii.gz", image.array, image.affine)
        write_volume(root / "labelsTr" / f"{case_id}.nii.gz", label.astype(np.uint8), image.affine)
    odd = hippocampus_subset(6)[2]
    config = run_config(root, tmp_path / "cache", data={"test_size": 2}, plan={"target_spacing": [3.0, 3.0, 3.0]})
    with pytest.raises(DatasetError, match=rf"{odd}: planning at \[3.0, 3.0, 3.0\] mm would drop labelled voxels"):
        start_run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def clinical(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six clinical-shape cases: hippocampus crops pasted into anisotropic CT-like fields in mixed orientations."""
    out = tmp_path_factory.mktemp("clinical") / "data"
    return make_clinical_dataset(
        hippocampus_root(),
        out,
        n_cases=6,
        seed=1,
        field_shape=(80, 80, (24, 32)),
        in_plane_spacing=(0.9, 1.0),
        slice_spacing=(3.0, 4.0),
    )


@requires_hippocampus
def test_the_plan_of_clinical_scans_is_anisotropic_ct_and_keeps_every_labelled_voxel(
    clinical: Path, tmp_path: Path
) -> None:
    config = run_config(clinical, tmp_path / "cache", data={"test_size": 2})
    data = open_data(config, SilentReporter())
    plan = data.plan
    assert plan.normalisation[0].scheme == "ct" and plan.normalisation[0].clip is not None
    spacings = np.array([c.spacing for c in plan.fingerprint.cases])  # type: ignore[union-attr]
    assert plan.target_spacing[2] == pytest.approx(np.percentile(spacings[:, 2], 10))  # the anisotropic axis
    assert plan.target_spacing[0] == pytest.approx(np.median(spacings[:, 0]))
    meta = json.loads((clinical / "dataset.json").read_text())["clinical"]
    for case_id in data.pool.ids:
        native = data.native_label(case_id)
        planned = np.asarray(data.ground_truth(case_id))
        assert set(np.unique(planned)) == set(np.unique(native))
        assert "".join(nib.aff2axcodes(read_volume(data.case(case_id).image).affine)) == meta[case_id]["orientation"]
        # the crop follows the body, never the array centre: every labelled voxel is on the planned grid
        volume_native = np.count_nonzero(native) * data.geometry(case_id).native_voxel_mm3
        volume_planned = np.count_nonzero(planned) * data.geometry(case_id).voxel_mm3
        assert volume_planned == pytest.approx(volume_native, rel=0.25)


@requires_hippocampus
def test_plan_strides_override_the_planned_ones_and_the_network_follows_them(clinical: Path, tmp_path: Path) -> None:
    planned = open_data(run_config(clinical, tmp_path / "cache", data={"test_size": 2}), SilentReporter()).plan
    assert planned.strides[0][2] == 1  # the coarse slice axis waits at the first level
    fixed = [[2, 2, 2], [1, 2, 2]]
    config = run_config(clinical, tmp_path / "cache", data={"test_size": 2}, plan={"strides": fixed})
    plan = open_data(config, SilentReporter()).plan
    assert [list(s) for s in plan.strides] == fixed
    assert [p % d for p, d in zip(plan.patch_size, (2, 4, 4), strict=True)] == [0, 0, 0]
    assert plan.target_spacing == planned.target_spacing
    model = build_model(config.model, plan).eval()
    features: list[tuple[int, ...]] = []
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv3d))
    first.register_forward_hook(lambda _m, _i, out: features.append(tuple(out.shape[2:])))
    with torch.no_grad():
        out = model(torch.zeros(1, plan.channels, *plan.patch_size))
    assert tuple(out.shape[2:]) == plan.patch_size
    assert features == [tuple(p // 2 for p in plan.patch_size)]  # the first level halves every axis


@requires_hippocampus
def test_a_las_copy_predicts_the_same_in_world_space_as_its_ras_original(clinical: Path, tmp_path: Path) -> None:
    config = run_config(clinical, tmp_path / "cache", data={"test_size": 2})
    data = open_data(config, SilentReporter())
    case = data.pool.case(data.pool.ids[0])
    copies = tmp_path / "copies"
    copies.mkdir()
    for codes in ("LAS", "PSL"):
        reoriented_copy(case.image, case.label, copies / f"{codes}.nii.gz", copies / f"{codes}-label.nii.gz", codes)
    seed_everything(0)
    model = build_model(config.model, data.plan).eval()
    torch.nn.init.normal_(next(model.parameters()), std=0.5)  # any fixed weights will do: the test is geometry

    def predicted_world(image: Path, label: Path) -> tuple[Any, Any]:
        prepared = prepare_case(type(case)(case.case_id, image, label), data.plan)
        native = predict_native_label(
            model, prepared.image_C_D_H_W, prepared.geometry, data.plan.patch_size, config.inference
        )
        canonical = nib.as_closest_canonical(nib.Nifti1Image(native, read_volume(image).affine))
        return np.asarray(canonical.dataobj), canonical.affine

    original, affine = predicted_world(case.image, case.label)
    assert original.any()  # the model predicts some foreground somewhere, so equality means something
    for codes in ("LAS", "PSL"):
        copy, copy_affine = predicted_world(copies / f"{codes}.nii.gz", copies / f"{codes}-label.nii.gz")
        np.testing.assert_allclose(copy_affine, affine, atol=1e-5)
        assert np.array_equal(copy, original), codes


@requires_hippocampus
def test_pool_scoring_moves_its_progress_bar_window_by_window(clinical: Path, tmp_path: Path) -> None:
    roi = (32, 32, 8)
    config = run_config(
        clinical, tmp_path / "cache", data={"test_size": 2}, plan={"patch_size": list(roi)}, inference={"overlap": 0.5}
    )
    data = open_data(config, SilentReporter())
    cases = list(data.pool.ids)
    reporter = RecordingReporter()
    pool = Pool(config, RunLayout(tmp_path / "run"), data, None, get_strategy("entropy"), reporter)  # type: ignore[arg-type]
    scored = pool.scored(0, build_model(config.model, data.plan), [], cases, seed=0)
    assert scored.units == sorted(cases)
    ((description, total, advances),) = reporter.bars
    expected = sum(half_step_windows(data.shape_of(c), roi) for c in cases)
    assert description == f"round 0: scoring {len(cases)} pool volumes (windows)"
    assert total == sum(advances) == expected > 4 * len(cases)  # several windows per volume
    assert max(advances) <= config.inference.windows_per_batch


def test_native_predictions_are_the_argmax_of_probabilities_resampled_to_the_native_grid(
    clinical: Path, tmp_path: Path
) -> None:
    config = run_config(clinical, tmp_path / "cache", data={"test_size": 2})
    data = open_data(config, SilentReporter())
    seed_everything(0)
    model = build_model(config.model, data.plan).eval()
    torch.nn.init.normal_(next(model.parameters()), std=0.5)
    roi = data.plan.patch_size
    case_id = next(c for c in data.pool.ids if data.geometry(c).resampled)
    image, geometry = data.image(case_id), data.geometry(case_id)
    probs = predict_volume(model, image, roi, config.inference).numpy()
    native_probs = np.stack([geometry.to_native(p[None])[0] for p in probs])  # all classes at once, float32
    inside = native_probs.sum(axis=0) > 0
    expected = np.where(inside, native_probs.argmax(axis=0), 0)
    got = predict_native_label(model, image, geometry, roi, config.inference)
    assert got.shape == geometry.native_shape and got.dtype == np.uint8
    assert 0 < np.count_nonzero(got) < got.size
    np.testing.assert_array_equal(got, expected)
    nearest = geometry.to_native(probs.argmax(axis=0).astype(np.uint8)[None], label=True)[0]
    assert not np.array_equal(got, nearest)  # interpolating probabilities is not copying labels


def test_largest_component_keeps_the_biggest_foreground_region_with_its_classes() -> None:
    label = np.zeros((6, 6, 6), dtype=np.uint8)
    label[0:2, 0:2, 0:2] = 1  # 8 voxels of class 1 ...
    label[2, 0:2, 0:2] = 2  # ... touching 4 of class 2 by faces: one region of 12
    label[4:6, 4:6, 5] = 1  # a region of 4
    label[3, 2, 2] = 2  # touches the first region only by a corner: a region of its own
    kept = largest_component(label)
    expected = np.zeros_like(label)
    expected[0:3, 0:2, 0:2] = label[0:3, 0:2, 0:2]
    np.testing.assert_array_equal(kept, expected)
    assert largest_component(np.zeros((3, 3, 3), dtype=np.uint8)).sum() == 0
    assert config_from_dict({"inference": {"largest_component": True}}).inference.largest_component
