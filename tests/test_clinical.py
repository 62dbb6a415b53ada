"""Clinical-shape datasets: hippocampus crops pasted into CT-like fields (resampled to the field's spacing, or
voxel-wise), stored in mixed orientations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest

from activeseg.data.clinical import (
    crop_to_structure,
    field_image_on_source_grid,
    make_clinical_dataset,
    paste_class_maps,
    reoriented_copy,
    through_clinical_spacing,
)
from activeseg.data.io import write_volume

from _support import hippocampus_root, requires_hippocampus

pytestmark = requires_hippocampus

FIELD = (96, 96, (40, 56))
_nib: Any = nib  # nibabel is untyped
ARGS: dict[str, Any] = {"seed": 3, "field_shape": FIELD, "oblique_fraction": 0.5}


def _load(path: Path) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64], Any]:
    img: Any = nib.load(str(path))
    return np.asarray(img.dataobj), np.asarray(img.affine, dtype=np.float64), img


def _canonical(path: Path) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64]]:
    canon: Any = _nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(canon.dataobj), np.asarray(canon.affine, dtype=np.float64)


def _world(indices: npt.NDArray[Any], affine: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    points: npt.NDArray[np.float64] = indices @ affine[:3, :3].T + affine[:3, 3]
    return points[np.lexsort(points.T[::-1].round(3))]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clinical_dataset(hippocampus_root(), tmp_path_factory.mktemp("clinical") / "a", n_cases=4, **ARGS)


@pytest.fixture(scope="module")
def meta(dataset: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def voxel_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clinical") / "voxel"
    return make_clinical_dataset(hippocampus_root(), out, n_cases=2, paste="voxel", **ARGS)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_metadata_and_mixed_cases(meta: dict[str, Any]) -> None:
    assert meta["name"] == "ClinicalHippocampus"
    assert meta["modality"] == meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {"0": "background", "1": "anterior", "2": "posterior"}
    ids = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"]
    assert meta["numTraining"] == 4 and list(meta["clinical"]) == ids
    assert [t["label"] for t in meta["training"]] == [f"./labelsTr/{c}.nii.gz" for c in ids]
    drawn = meta["clinical"].values()
    # The seed is chosen so that the fixture covers oblique and non-oblique cases and several orientations.
    assert {d["oblique_degrees"] == 0.0 for d in drawn} == {True, False}
    assert len({d["orientation"] for d in drawn}) >= 2


def test_deterministic_and_independent_of_n_cases(dataset: Path, tmp_path: Path) -> None:
    again = make_clinical_dataset(hippocampus_root(), tmp_path / "b", n_cases=4, **ARGS)
    assert _files(again) == _files(dataset)
    one = make_clinical_dataset(hippocampus_root(), tmp_path / "c", case_ids=["hippocampus_004"], **ARGS)
    for sub in ("imagesTr", "labelsTr"):
        name = f"{sub}/hippocampus_004.nii.gz"
        assert (one / name).read_bytes() == (dataset / name).read_bytes()
    first = json.loads((one / "dataset.json").read_text(encoding="utf-8"))["clinical"]["hippocampus_004"]
    assert first == json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))["clinical"]["hippocampus_004"]
    third = make_clinical_dataset(hippocampus_root(), tmp_path / "d", n_cases=1, first_case=2, **ARGS)
    assert _files(third) == {k: v for k, v in _files(dataset).items() if "hippocampus_004" in k} | {
        "dataset.json": (third / "dataset.json").read_bytes()
    }
    assert list(json.loads((third / "dataset.json").read_text())["clinical"]) == ["hippocampus_004"]


def test_labels_pasted_in_world_space_keep_their_size_and_place_in_millimetres(
    dataset: Path, meta: dict[str, Any]
) -> None:
    for case_id, drawn in meta["clinical"].items():
        assert drawn["paste"] == "world"
        source, source_affine, _ = _load(hippocampus_root() / "labelsTr" / f"{case_id}.nii.gz")
        source_mm = np.linalg.norm(source_affine[:3, :3], axis=0)
        canon, _ = _canonical(dataset / "labelsTr" / f"{case_id}.nii.gz")
        spacing = np.asarray(drawn["ras_spacing"])
        box = tuple(slice(o, o + n) for o, n in zip(drawn["offset"], drawn["crop_shape"], strict=True))
        assert int((canon[box] > 0).sum()) == int((canon > 0).sum())  # nothing outside the pasted crop
        extent_error = np.abs(np.asarray(drawn["crop_shape"]) * spacing - np.asarray(source.shape) * source_mm)
        assert np.all(extent_error <= spacing / 2 + 1e-6)  # the crop's extent in mm, rounded to whole field voxels
        for value in (1, 2):
            # Each class keeps its volume in mm³ (within 12%: a 2-4 mm slice cannot follow every boundary) ...
            volume = (canon == value).sum() * spacing.prod()
            assert volume == pytest.approx((source == value).sum() * source_mm.prod(), rel=0.12)
            # ... and its centre, in millimetres from the crop's corner, to within one field voxel.
            centre = (np.argwhere(canon[box] == value).mean(axis=0) + 0.5) * spacing
            source_centre = (np.argwhere(source == value).mean(axis=0) + 0.5) * source_mm
            assert np.all(np.abs(centre - source_centre) <= spacing)
        # the pasted label is the argmax of the class indicators carried by paste_class_maps (as a 1 mm
        # prediction's probabilities are carried into the field by pipeline_benchmark's ceiling)
        indicators = np.stack([(source == c).astype(np.float32) for c in range(3)])
        carried = paste_class_maps(indicators, source_mm / spacing)
        assert carried.shape[1:] == tuple(drawn["crop_shape"])
        np.testing.assert_array_equal(carried.argmax(axis=0), canon[box])


def test_labels_pasted_voxel_wise_at_the_recorded_offset(voxel_dataset: Path) -> None:
    meta = json.loads((voxel_dataset / "dataset.json").read_text(encoding="utf-8"))
    dataset = voxel_dataset
    for case_id, drawn in meta["clinical"].items():
        assert drawn["paste"] == "voxel"
        source, _, _ = _load(hippocampus_root() / "labelsTr" / f"{case_id}.nii.gz")
        label, affine, _ = _load(dataset / "labelsTr" / f"{case_id}.nii.gz")
        assert label.dtype == np.uint8
        counts = [int((source == v).sum()) for v in (1, 2)]
        assert [int((label == v).sum()) for v in (1, 2)] == counts
        # Back in RAS voxel order the crop at the offset is the source label, and nothing is outside it.
        canon, canon_affine = _canonical(dataset / "labelsTr" / f"{case_id}.nii.gz")
        assert list(canon.shape) == drawn["ras_shape"]
        box = tuple(slice(o, o + n) for o, n in zip(drawn["offset"], source.shape, strict=True))
        np.testing.assert_array_equal(canon[box], source)
        assert int((canon > 0).sum()) == sum(counts)
        # World placement: stored foreground voxels land where the offset source voxels land in the RAS grid.
        pasted = np.argwhere(source > 0) + np.asarray(drawn["offset"])
        np.testing.assert_allclose(_world(np.argwhere(label > 0), affine), _world(pasted, canon_affine), atol=1e-3)


def test_orientation_spacing_and_shape(dataset: Path, meta: dict[str, Any]) -> None:
    for case_id, drawn in meta["clinical"].items():
        image, affine, img = _load(dataset / "imagesTr" / f"{case_id}.nii.gz")
        _, label_affine, _ = _load(dataset / "labelsTr" / f"{case_id}.nii.gz")
        np.testing.assert_array_equal(affine, label_affine)
        assert list(image.shape) == drawn["shape"]
        np.testing.assert_allclose(img.header.get_zooms(), drawn["spacing"], rtol=1e-5)
        sx, sy, sz = drawn["ras_spacing"]
        assert sx == sy and 0.7 <= sx <= 1.0 and 2.0 <= sz <= 4.0
        x, y, z = drawn["ras_shape"]
        assert (x, y) == FIELD[:2] and FIELD[2][0] <= z <= FIELD[2][1]
        assert sorted(drawn["shape"]) == sorted(drawn["ras_shape"])
        assert "".join(_nib.aff2axcodes(affine)) == drawn["orientation"]  # also for the small oblique tilts
        rotation = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
        axis_angle = np.degrees(np.arccos(np.clip(np.abs(rotation).max(axis=0), -1.0, 1.0)))
        if drawn["oblique_degrees"] == 0.0:
            np.testing.assert_allclose(axis_angle, 0.0, atol=1e-3)
        else:
            assert 5.0 <= abs(drawn["oblique_degrees"]) <= 15.0
            assert axis_angle.max() > 1.0


def test_ct_intensities(dataset: Path, meta: dict[str, Any]) -> None:
    for case_id in meta["clinical"]:
        image, _ = _canonical(dataset / "imagesTr" / f"{case_id}.nii.gz")
        label, _ = _canonical(dataset / "labelsTr" / f"{case_id}.nii.gz")
        assert image.dtype == np.int16
        corners = np.concatenate([image[i, j, :].ravel() for i in (0, 1, -2, -1) for j in (0, 1, -2, -1)])
        assert abs(float(corners.mean()) + 1000.0) < 5.0 and corners.min() >= -1024 and corners.max() < -900
        hippocampus = image[label > 0].astype(np.float64)
        assert -10.0 < hippocampus.mean() < 90.0
        assert np.percentile(hippocampus, 1) > -40 and np.percentile(hippocampus, 99) < 120
        assert hippocampus.min() > -100 and hippocampus.max() < 200
        body = image[image > -500]
        assert np.median(body) > -50  # mostly soft tissue
        assert 0.1 < (image < -900).mean() < 0.5  # air around the body


def test_reoriented_copy_keeps_world_positions(dataset: Path, meta: dict[str, Any], tmp_path: Path) -> None:
    for case_id, codes in zip(meta["clinical"], ("LAS", "PIL", "RAS", "SRA"), strict=True):
        image, label = dataset / "imagesTr" / f"{case_id}.nii.gz", dataset / "labelsTr" / f"{case_id}.nii.gz"
        out_image, out_label = tmp_path / f"{case_id}_img.nii.gz", tmp_path / f"{case_id}_lab.nii.gz"
        reoriented_copy(image, label, out_image, out_label, codes=codes)
        copy_image, copy_affine, _ = _load(out_image)
        assert "".join(_nib.aff2axcodes(copy_affine)) == codes
        assert copy_image.dtype == np.int16 and _load(out_label)[0].dtype == np.uint8
        for original, copy in ((image, out_image), (label, out_label)):
            (a, a_affine), (b, b_affine) = _canonical(original), _canonical(copy)
            np.testing.assert_array_equal(a, b)
            np.testing.assert_allclose(a_affine, b_affine, atol=1e-4)


def test_crop_to_structure_keeps_every_labelled_voxel_at_its_world_place(
    dataset: Path, meta: dict[str, Any], tmp_path: Path
) -> None:
    cropped = crop_to_structure(dataset, tmp_path / "cropped")
    for case_id, drawn in meta["clinical"].items():
        for folder in ("imagesTr", "labelsTr"):
            cut, cut_affine, _ = _load(cropped / folder / f"{case_id}.nii.gz")
            field, field_affine = _canonical(dataset / folder / f"{case_id}.nii.gz")
            assert cut.shape == tuple(drawn["crop_shape"]) and cut.dtype == field.dtype
            assert "".join(_nib.aff2axcodes(cut_affine)) == "RAS"
            # the box's voxels, at the same world positions: voxel (i, j, k) of the cut is offset + (i, j, k)
            offset = np.asarray(drawn["offset"])
            np.testing.assert_array_equal(
                cut, field[tuple(slice(o, o + n) for o, n in zip(offset, cut.shape, strict=True))]
            )
            np.testing.assert_allclose(_world(np.zeros((1, 3)), cut_affine), _world(offset[None], field_affine))
            if folder == "labelsTr":  # nothing labelled lies outside the box
                assert np.count_nonzero(cut) == np.count_nonzero(field) > 0
    assert json.loads((cropped / "dataset.json").read_text())["clinical"] == meta["clinical"]
    with pytest.raises(FileExistsError, match="not empty"):
        crop_to_structure(dataset, tmp_path / "cropped")


def test_through_clinical_spacing_keeps_what_the_coarse_slices_keep(tmp_path: Path) -> None:
    """A 1 mm source (a ramp plus a one-voxel stripe along z) sent through 3 mm slices and back, as the generator
    samples it (a cubic spline read at the coarse voxel centres, no slab averaging): by hand, coarse slice j's centre
    lies on source slice 3j + 1 and returns there, so those slices come back exact and the slices between are
    interpolated (the stripe is lost there). Through 1 mm the image comes back as it was. Labels and geometry are
    the source's."""
    shape = (12, 14, 30)
    z = np.arange(shape[2], dtype=np.float64)
    source = np.broadcast_to(10.0 + 2.0 * z + np.where(z % 2 == 0, 5.0, -5.0), shape)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (4.0, -2.0, 7.0)
    label = np.zeros(shape, dtype=np.uint8)
    label[3:8, 4:9, 10:20] = 2
    cases = {"thin": [1.0, 1.0, 1.0], "thick": [1.0, 1.0, 3.0]}
    for folder in ("imagesTr", "labelsTr"):
        (tmp_path / "src" / folder).mkdir(parents=True)
    for case_id in cases:
        write_volume(tmp_path / "src" / "imagesTr" / f"{case_id}.nii.gz", source, affine)
        write_volume(tmp_path / "src" / "labelsTr" / f"{case_id}.nii.gz", label, affine)
    record = {
        c: {"source": str(tmp_path / "src" / "imagesTr" / f"{c}.nii.gz"), "ras_spacing": s} for c, s in cases.items()
    }
    (tmp_path / "clinical").mkdir()
    (tmp_path / "clinical" / "dataset.json").write_text(json.dumps({"clinical": record}))

    out = through_clinical_spacing(tmp_path / "clinical", tmp_path / "out")
    for case_id in cases:
        image, image_affine, _ = _load(out / "imagesTr" / f"{case_id}.nii.gz")
        saved_label, label_affine, _ = _load(out / "labelsTr" / f"{case_id}.nii.gz")
        assert image.shape == shape and image.dtype == np.float32
        np.testing.assert_allclose(image_affine, affine)
        np.testing.assert_allclose(label_affine, affine)
        np.testing.assert_array_equal(saved_label, label)
    thin, thick = (_load(out / "imagesTr" / f"{c}.nii.gz")[0].astype(np.float64) for c in cases)
    np.testing.assert_allclose(thin, source, atol=1e-3)
    sampled = np.arange(1, shape[2], 3)
    np.testing.assert_allclose(thick[:, :, sampled], source[:, :, sampled], atol=1e-3)
    between = np.setdiff1d(np.arange(3, shape[2] - 3), sampled)  # inner slices the coarse grid does not sample
    assert np.abs(thick[:, :, between] - source[:, :, between]).min() > 1.0
    with pytest.raises(FileExistsError, match="not empty"):
        through_clinical_spacing(tmp_path / "clinical", tmp_path / "out")
    with pytest.raises(ValueError, match="no such file; not a clinical-shape set"):
        through_clinical_spacing(tmp_path / "src", tmp_path / "other")
    (tmp_path / "src" / "dataset.json").write_text("{}")
    with pytest.raises(ValueError, match="no 'clinical' record"):
        crop_to_structure(tmp_path / "src", tmp_path / "other")


def test_field_image_on_source_grid_is_the_pasted_box_on_the_source_grid(voxel_dataset: Path, tmp_path: Path) -> None:
    """Pasted voxel-wise, the box holds one field voxel per source voxel: the image comes back as the field's box
    voxels (CT intensities, noise, faded border) exactly, read in another way (``nib.as_closest_canonical``), for
    every orientation; label and affine are the source's."""
    out = field_image_on_source_grid(voxel_dataset, tmp_path / "out")
    drawn_cases = json.loads((voxel_dataset / "dataset.json").read_text())["clinical"]
    for case_id, drawn in drawn_cases.items():
        image, affine, _ = _load(out / "imagesTr" / f"{case_id}.nii.gz")
        label, label_affine, _ = _load(out / "labelsTr" / f"{case_id}.nii.gz")
        source, source_affine, _ = _load(Path(drawn["source"]))
        source_label, _, _ = _load(hippocampus_root() / "labelsTr" / f"{case_id}.nii.gz")
        field, _ = _canonical(voxel_dataset / "imagesTr" / f"{case_id}.nii.gz")
        box = tuple(slice(o, o + n) for o, n in zip(drawn["offset"], source.shape, strict=True))
        assert image.shape == source.shape and image.dtype == np.float32
        np.testing.assert_allclose(image, field[box], atol=1e-3)
        np.testing.assert_array_equal(label, source_label)
        np.testing.assert_allclose(affine, source_affine)
        np.testing.assert_allclose(label_affine, source_affine)


def test_field_image_on_source_grid_shows_the_structure_where_the_source_has_it(dataset: Path, tmp_path: Path) -> None:
    """Pasted at the field's spacing, the box comes back on the source's grid: in HU it follows the thick-slice
    image of :func:`through_clinical_spacing` (the same structure, the field's noise aside) voxel by voxel, and the
    mirrored image does not."""
    field_images = field_image_on_source_grid(dataset, tmp_path / "field")
    thick = through_clinical_spacing(dataset, tmp_path / "thick")
    for path in sorted((field_images / "imagesTr").iterdir()):
        hu, _, _ = _load(path)
        mri, _, _ = _load(thick / "imagesTr" / path.name)
        assert hu.shape == mri.shape
        inner = tuple(slice(4, n - 4) for n in hu.shape)  # clear of the faded border
        same = np.corrcoef(hu[inner].ravel(), mri[inner].ravel())[0, 1]
        mirrored = np.corrcoef(hu[inner][::-1, ::-1].ravel(), mri[inner].ravel())[0, 1]
        assert same > 0.8 and abs(mirrored) < 0.5, (path.name, same, mirrored)


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="axis code"):
        make_clinical_dataset(hippocampus_root(), tmp_path / "x", n_cases=1, orientations=("RAR",))
    with pytest.raises(ValueError, match="no image/label pair"):
        make_clinical_dataset(hippocampus_root(), tmp_path / "y", case_ids=["nope"])
    with pytest.raises(ValueError, match="too small"):
        make_clinical_dataset(hippocampus_root(), tmp_path / "z", n_cases=1, field_shape=(40, 40, (40, 56)))
    with pytest.raises(ValueError, match="paste must be 'world' or 'voxel'"):
        make_clinical_dataset(hippocampus_root(), tmp_path / "w", n_cases=1, paste="pixel")  # type: ignore[arg-type]
