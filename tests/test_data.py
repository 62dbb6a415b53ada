"""Tests for activeseg.data: volume I/O, dataset validation, preprocessing cache and phantoms."""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from activeseg.data.dataset import Case, Dataset, load_dataset
from activeseg.data.errors import DatasetError
from activeseg.data.io import MAX_VOLUME_BYTES, case_id_from_path, read_image, read_volume, write_volume
from activeseg.data.phantom import make_phantom_dataset
from activeseg.data.plan import Normalisation, Plan
from activeseg.data.preprocess import PlannedCache, default_cache_dir, normalise, prepare_case
from activeseg.data.splits import validated

from _support import RecordingReporter

SHAPE = (12, 12, 12)


def _hippocampus_root() -> Path:
    env = os.environ.get("ACTIVESEG_HIPPOCAMPUS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "hippocampus"


def _listing(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def _write_pair(
    root: Path,
    case_id: str,
    image: Any = None,
    label: Any = None,
    *,
    affine: Any = None,
    label_affine: Any = None,
    suffix: str = ".nii.gz",
) -> tuple[Path, Path]:
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    image = rng.normal(size=SHAPE).astype(np.float32) if image is None else image
    label = (rng.random(SHAPE) * 3).astype(np.uint8) if label is None else label
    affine = np.eye(4) if affine is None else affine
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    img_path, lbl_path = root / "imagesTr" / f"{case_id}{suffix}", root / "labelsTr" / f"{case_id}{suffix}"
    write_volume(img_path, image, affine)
    write_volume(lbl_path, label, affine if label_affine is None else label_affine)
    return img_path, lbl_path


@pytest.fixture
def good_root(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    for i in range(3):
        _write_pair(root, f"case_{i}")
    return root


def test_validation_moves_its_progress_bar_case_by_case(good_root: Path) -> None:
    reporter = RecordingReporter()
    dataset = validated(good_root, reporter)
    ((description, total, advances),) = reporter.bars
    assert (description, total, advances) == ("validating ds (3 cases)", 3, [1, 1, 1]) and len(dataset) == 3


def assert_invalid(root: Path, *patterns: str, labels: dict[int, str] | None = None) -> str:
    """load_dataset raises a DatasetError matching every pattern and writes nothing."""
    top = root.parent
    before = _listing(top)
    with pytest.raises(DatasetError, match=patterns[0]) as info:
        load_dataset(root, labels)
    message = str(info.value)
    for pattern in patterns[1:]:
        assert re.search(pattern, message), f"{pattern!r} not in:\n{message}"
    assert _listing(top) == before, "validation wrote to disk"
    return message


def esc(path: Path) -> str:
    return re.escape(str(path))


# --------------------------------------------------------------------------- io


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii"])
def test_itk_round_trip_matches_nifti(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    array = rng.normal(size=(7, 9, 5)).astype(np.float32)
    theta = 0.3
    rotation = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 1.2, 2.5])
    affine[:3, 3] = [10.0, -20.0, 5.5]
    write_volume(tmp_path / "a.nii.gz", array, affine)
    write_volume(tmp_path / f"a{suffix}", array, affine)
    ref, other = read_volume(tmp_path / "a.nii.gz"), read_volume(tmp_path / f"a{suffix}")
    assert other.array.shape == ref.array.shape == (7, 9, 5)
    assert other.array.dtype == ref.array.dtype == np.float32
    np.testing.assert_array_equal(other.array, ref.array)
    np.testing.assert_allclose(other.affine, ref.affine, atol=1e-6)
    np.testing.assert_allclose(ref.affine, affine, atol=1e-6)


def test_read_volume_keeps_dtype_and_squeezes_trailing_singleton(tmp_path: Path) -> None:
    write_volume(tmp_path / "u8.nii.gz", np.arange(60, dtype=np.uint8).reshape(3, 4, 5), np.eye(4))
    assert read_volume(tmp_path / "u8.nii.gz").array.dtype == np.uint8
    write_volume(tmp_path / "4d.nii.gz", np.zeros((3, 4, 5, 1), np.float32), np.eye(4))
    assert read_volume(tmp_path / "4d.nii.gz").array.shape == (3, 4, 5)


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("missing.nii.gz", None, "does not exist"),
        ("garbage.nii.gz", b"this is not an image" * 50, "corrupt|not"),
        ("garbage.nrrd", b"\x00\x01garbage" * 50, "SimpleITK could not read"),
        ("image.png", b"\x89PNG", "unsupported file type"),
    ],
)
def test_read_volume_errors_name_file(tmp_path: Path, name: str, content: bytes | None, problem: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DatasetError, match=esc(path) + ".*(" + problem + ")"):
        read_volume(path)


def test_read_volume_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "t.nii.gz"
    write_volume(path, np.random.default_rng(0).normal(size=(20, 20, 20)), np.eye(4))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=esc(path) + ".*truncated"):
        read_volume(path)


def test_case_id_from_path() -> None:
    assert case_id_from_path(Path("x/hippocampus_001_0000.nii.gz")) == "hippocampus_001"
    assert case_id_from_path(Path("hippocampus_001.nii.gz")) == "hippocampus_001"
    assert case_id_from_path(Path("a.b.nii")) == "a.b"
    assert case_id_from_path(Path("scan_0001.mha")) == "scan_0001"
    assert case_id_from_path(Path("c.nrrd")) == "c"
    with pytest.raises(DatasetError, match="unsupported"):
        case_id_from_path(Path("c.nii.bz2"))


# ---------------------------------------------------------------- dataset: good


def test_load_dataset_infers_labels_and_api(good_root: Path) -> None:
    calls: list[tuple[int, int]] = []
    before = _listing(good_root)
    ds = load_dataset(good_root, progress=lambda i, n: calls.append((i, n)))
    assert _listing(good_root) == before
    assert ds.ids == ("case_0", "case_1", "case_2")
    assert ds.labels == {0: "background", 1: "class_1", 2: "class_2"}
    assert ds.num_classes == 3
    assert calls[-1] == (3, 3)
    assert ds.case("case_1").image == good_root / "imagesTr" / "case_1.nii.gz"
    with pytest.raises(KeyError, match=r"case_9.*did you mean"):
        ds.case("case_9")
    sub = ds.subset(["case_2", "case_0"])
    assert sub.ids == ("case_0", "case_2")
    assert sub.labels == ds.labels
    with pytest.raises(KeyError, match="nope"):
        ds.subset(["nope"])


@pytest.mark.parametrize(
    "labels_json",
    [
        {"0": "background", "1": "Anterior", "2": "Posterior"},
        {"background": 0, "Anterior": 1, "Posterior": 2},
    ],
)
def test_dataset_json_msd_and_nnunet_styles(good_root: Path, labels_json: dict[str, Any]) -> None:
    (good_root / "dataset.json").write_text(json.dumps({"labels": labels_json}))
    ds = load_dataset(good_root)
    assert ds.labels == {0: "background", 1: "Anterior", 2: "Posterior"}


def test_labels_argument_used_without_dataset_json(good_root: Path) -> None:
    ds = load_dataset(good_root, {0: "bg", 1: "a", 2: "b", 3: "c"})
    assert ds.labels == {0: "bg", 1: "a", 2: "b", 3: "c"}
    assert ds.num_classes == 4


def test_integral_float_labels_and_nnunet_channel_suffix_ok(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _write_pair(root, "a", label=np.ones(SHAPE, np.float32) * 2)
    img, _ = _write_pair(root, "b")
    img.rename(img.with_name("b_0000.nii.gz"))
    assert load_dataset(root).ids == ("a", "b")


def test_hidden_and_unsupported_files_ignored(good_root: Path) -> None:
    (good_root / "imagesTr" / "._case_0.nii.gz").write_bytes(b"AppleDouble")
    (good_root / "labelsTr" / "notes.txt").write_text("hello")
    assert len(load_dataset(good_root).cases) == 3


# ----------------------------------------------------------------- dataset: bad


def test_root_missing(tmp_path: Path) -> None:
    assert_invalid(tmp_path / "nope", esc(tmp_path / "nope") + ": dataset folder does not exist")


def test_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert_invalid(tmp_path / "file", esc(tmp_path / "file") + ": not a directory")


@pytest.mark.parametrize("missing", ["imagesTr", "labelsTr"])
def test_subfolder_missing(good_root: Path, missing: str) -> None:
    for p in (good_root / missing).iterdir():
        p.unlink()
    (good_root / missing).rmdir()
    assert_invalid(good_root, esc(good_root / missing) + ": folder is missing")


def test_empty_folders(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTr" / "readme.txt").write_text("no images here")
    assert_invalid(
        root,
        esc(root / "imagesTr") + ": no image files found",
        esc(root / "labelsTr") + ": no label files found",
    )


def test_image_without_label(good_root: Path) -> None:
    (good_root / "labelsTr" / "case_1.nii.gz").unlink()
    assert_invalid(good_root, esc(good_root / "imagesTr" / "case_1.nii.gz") + ": image has no label")


def test_label_without_image(good_root: Path) -> None:
    (good_root / "imagesTr" / "case_2.nii.gz").unlink()
    assert_invalid(good_root, esc(good_root / "labelsTr" / "case_2.nii.gz") + ": label has no image")


def test_duplicate_ids_nii_and_niigz(good_root: Path) -> None:
    extra = good_root / "imagesTr" / "case_0.nii"
    write_volume(extra, np.zeros(SHAPE, np.float32), np.eye(4))
    assert_invalid(good_root, "duplicate image files for case id 'case_0'", esc(extra))


def test_duplicate_ids_channel_suffix(good_root: Path) -> None:
    extra = good_root / "imagesTr" / "case_1_0000.nii.gz"
    write_volume(extra, np.zeros(SHAPE, np.float32), np.eye(4))
    assert_invalid(good_root, esc(extra) + ".*duplicate image files for case id 'case_1'")


@pytest.mark.parametrize("kind", ["imagesTr", "labelsTr"])
def test_truncated_file(good_root: Path, kind: str) -> None:
    path = good_root / kind / "case_1.nii.gz"
    path.write_bytes(path.read_bytes()[:-200])
    assert_invalid(good_root, esc(path) + ": cannot read: the file is truncated")


def test_garbage_file(good_root: Path) -> None:
    path = good_root / "imagesTr" / "case_0.nii.gz"
    path.write_bytes(gzip.compress(b"garbage" * 100))
    assert_invalid(good_root, esc(path) + ": cannot read")


def test_shape_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    img, lbl = _write_pair(root, "a", label=np.zeros((12, 12, 11), np.uint8))
    assert_invalid(root, esc(img) + " and " + esc(lbl) + r": image shape \(12, 12, 12\) differs from label shape")


def test_affine_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    img, lbl = _write_pair(root, "a", label_affine=shifted)
    assert_invalid(root, esc(img) + " and " + esc(lbl) + ": image and label affines differ")


def test_image_not_3d(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    img, _ = _write_pair(root, "a", image=np.zeros((*SHAPE, 2, 3), np.float32))
    assert_invalid(root, esc(img) + r": image is 5D with shape \(12, 12, 12, 2, 3\); expected a 3D volume")


def test_a_4d_image_holds_channels_and_nnunet_channel_files_join_their_case(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _write_pair(root, "a", image=np.ones((*SHAPE, 2), np.float32))
    _write_pair(root, "b", image=np.ones((*SHAPE, 2), np.float32))
    assert [len(read_image(c).array) for c in load_dataset(root).cases] == [2, 2]
    files = tmp_path / "files"
    for case_id in ("a", "b"):
        _, label = _write_pair(files, f"{case_id}_0000")
        write_volume(files / "imagesTr" / f"{case_id}_0001.nii.gz", np.zeros(SHAPE, np.float32), np.eye(4))
        label.rename(files / "labelsTr" / f"{case_id}.nii.gz")
    dataset = load_dataset(files)
    assert dataset.ids == ("a", "b")
    assert [c.channels for c in dataset.cases] == [(files / "imagesTr" / f"{c}_0001.nii.gz",) for c in ("a", "b")]
    (files / "imagesTr" / "b_0001.nii.gz").unlink()
    assert_invalid(files, r"cases differ in their number of input channels")


def test_trailing_singleton_4th_dim_allowed(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _write_pair(root, "a", image=np.zeros((*SHAPE, 1), np.float32))
    assert load_dataset(root).ids == ("a",)


def test_non_integer_labels(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _, lbl = _write_pair(root, "a", label=np.full(SHAPE, 0.5, np.float32))
    assert_invalid(root, esc(lbl) + r": label has non-integer values \(e.g. 0.5\)")


def test_label_values_outside_declared_set(good_root: Path) -> None:
    meta = good_root / "dataset.json"
    meta.write_text(json.dumps({"labels": {"0": "background", "1": "one"}}))
    lbl = good_root / "labelsTr" / "case_0.nii.gz"
    assert_invalid(good_root, esc(lbl) + r": label values \[2\] are not among the declared labels \[0, 1\]")


def test_label_values_outside_labels_argument(good_root: Path) -> None:
    lbl = good_root / "labelsTr" / "case_2.nii.gz"
    assert_invalid(good_root, esc(lbl) + r": label values \[2\] are not among", labels={0: "bg", 1: "fg"})


def test_nan_in_image(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    image = np.zeros(SHAPE, np.float32)
    image[1, 2, 3], image[4, 5, 6] = np.nan, np.inf
    img, _ = _write_pair(root, "a", image=image)
    assert_invalid(root, esc(img) + ": image has 2 NaN or infinite voxel value")


def test_bad_dataset_json(good_root: Path) -> None:
    meta = good_root / "dataset.json"
    meta.write_text("{not json")
    assert_invalid(good_root, esc(meta) + ": cannot parse dataset.json")


def test_all_problems_collected_and_capped(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _write_pair(root, "ok")
    for i in range(25):
        write_volume(root / "imagesTr" / f"orphan_{i:02d}.nii.gz", np.zeros(SHAPE, np.float32), np.eye(4))
    message = assert_invalid(root, "25 problems", "orphan_00.nii.gz: image has no label", "and 5 more")
    assert len(message.splitlines()) == 1 + 20 + 1


# ------------------------------------------------------------------ preprocess


def test_normalise_zscore_per_volume_and_ct_window() -> None:
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 113, size=(20, 30, 25), dtype=np.uint8)
    big = (rng.gamma(2.0, size=(20, 30, 25)) * 3e5).astype(np.float32)
    big[0, 0, 0] = 1.7e6
    for image in (u8, big):
        out = normalise(image, Normalisation("zscore"))
        assert out.dtype == np.float32 and out.shape == image.shape
        assert abs(float(out.mean())) < 1e-4
        assert abs(float(out.std()) - 1.0) < 1e-3
    assert not normalise(np.full((4, 4, 4), 7, np.uint8), Normalisation("zscore")).any()
    hu = np.array([-1000.0, -50.0, 40.0, 90.0, 1500.0])
    ct = normalise(hu, Normalisation("ct", (-100.0, 100.0), 20.0, 40.0))
    np.testing.assert_allclose(ct, (np.clip(hu, -100, 100) - 20) / 40, rtol=1e-6)


@pytest.fixture
def phantom_root(tmp_path: Path) -> Path:
    return make_phantom_dataset(tmp_path / "phantom", 6, shape=(16, 16, 16), seed=3)


def phantom_plan(spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Plan:
    return Plan(spacing, (16, 16, 16), 2, [(2, 2, 2)], [Normalisation("zscore")], "nonzero", 1, 3, 1.0, 0.1)


def test_cache_reuse_change_and_corruption(phantom_root: Path, tmp_path: Path) -> None:
    ds = load_dataset(phantom_root)
    cache_dir = tmp_path / "cache"
    cache = PlannedCache(cache_dir, phantom_plan())
    calls: list[tuple[int, int]] = []
    cache.prepare(ds, progress=lambda i, n: calls.append((i, n)))
    assert calls[-1] == (6, 6)
    entries = sorted((cache_dir / "planned").iterdir())
    assert len(entries) == 6
    stamps = {e: (e / "image.npy").stat().st_mtime_ns for e in entries}
    PlannedCache(cache_dir, phantom_plan()).prepare(ds)  # reused: nothing rewritten
    assert {e: (e / "image.npy").stat().st_mtime_ns for e in entries} == stamps

    case = ds.cases[0]
    prepared = cache.load(case)
    expected = prepare_case(case, phantom_plan())
    assert isinstance(prepared.image_C_D_H_W, np.memmap)  # a patch reads only its own voxels
    assert prepared.image_C_D_H_W.dtype == np.float32 and prepared.label_D_H_W.dtype == np.uint8
    assert prepared.geometry == expected.geometry
    np.testing.assert_array_equal(prepared.image_C_D_H_W, expected.image_C_D_H_W)
    np.testing.assert_array_equal(prepared.label_D_H_W, expected.label_D_H_W)

    # A changed input file is recomputed, also by load() on the same cache object.
    label = read_volume(case.label)
    write_volume(case.label, np.zeros_like(label.array), label.affine)
    assert not cache.load(case).label_D_H_W.any()
    write_volume(case.label, label.array, label.affine)
    np.testing.assert_array_equal(cache.load(case).label_D_H_W, expected.label_D_H_W)

    # Truncated or garbage entries are recomputed, never trusted.
    (truncated,) = (cache_dir / "planned").glob("phantom_001-*")
    (garbage,) = (cache_dir / "planned").glob("phantom_002-*")
    (truncated / "image.npy").write_bytes((truncated / "image.npy").read_bytes()[:-100])
    (garbage / "label.npy").write_bytes(b"\0" * 1000)
    again = PlannedCache(cache_dir, phantom_plan())
    again.prepare(ds)
    for case_id in ("phantom_001", "phantom_002"):
        fresh = prepare_case(ds.case(case_id), phantom_plan())
        np.testing.assert_array_equal(again.load(ds.case(case_id)).image_C_D_H_W, fresh.image_C_D_H_W)
    # A different plan (spacing) is a different entry; nothing half-written is left. (6 entries, one for the
    # zeroed label's content, and 6 for the new plan.)
    PlannedCache(cache_dir, phantom_plan((0.8, 0.8, 0.8))).prepare(ds)
    assert len(list((cache_dir / "planned").iterdir())) == 13
    assert not list((cache_dir / "planned").glob(".*"))


def test_planning_that_drops_a_class_names_every_such_case(phantom_root: Path, tmp_path: Path) -> None:
    ds = load_dataset(phantom_root)
    with pytest.raises(DatasetError, match=r"case\(s\) of .* cannot be planned") as raised:
        PlannedCache(tmp_path / "cache", phantom_plan((16.0, 16.0, 16.0))).prepare(ds)
    assert re.search(r"phantom_\d+: planning at \[16.0, 16.0, 16.0\] mm would drop labelled voxels", str(raised.value))


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ACTIVESEG_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ACTIVESEG_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "activeseg"


# --------------------------------------------------------------------- phantom


def test_phantom_deterministic_and_has_rare_cases(tmp_path: Path) -> None:
    a = make_phantom_dataset(tmp_path / "a", 7, shape=(16, 16, 16), seed=11)
    b = make_phantom_dataset(tmp_path / "b", 7, shape=(16, 16, 16), seed=11)
    c = make_phantom_dataset(tmp_path / "c", 7, shape=(16, 16, 16), seed=12)
    ds = load_dataset(a)
    assert ds.ids == tuple(f"phantom_{i:03d}" for i in range(7))
    assert ds.num_classes == 3
    for case in ds.cases:
        for kind, name in (("imagesTr", case.image.name), ("labelsTr", case.label.name)):
            va, vb = read_volume(a / kind / name).array, read_volume(b / kind / name).array
            assert va.dtype == vb.dtype and va.tobytes() == vb.tobytes()
        labels = np.unique(read_volume(case.label).array)
        assert set(labels.tolist()) == {0, 1, 2}
    assert read_volume(a / "imagesTr" / "phantom_000.nii.gz").array.tobytes() != (
        read_volume(c / "imagesTr" / "phantom_000.nii.gz").array.tobytes()
    )
    rare = json.loads((a / "dataset.json").read_text())["rare_cases"]
    assert len(rare) >= 1 and set(rare) <= set(ds.ids)
    sizes = {i: int(np.count_nonzero(read_volume(ds.case(i).label).array)) for i in ds.ids}
    common = [s for i, s in sizes.items() if i not in rare]
    assert max(sizes[i] for i in rare) < np.median(common)
    with pytest.raises(FileExistsError):
        make_phantom_dataset(a, 3)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_phantom_other_formats(tmp_path: Path, suffix: str) -> None:
    root = make_phantom_dataset(tmp_path / "p", 2, shape=(10, 12, 14), suffix=suffix)
    ds = load_dataset(root)
    assert ds.case("phantom_001").image.name == f"phantom_001{suffix}"
    assert read_volume(ds.case("phantom_001").image).array.shape == (10, 12, 14)


# ------------------------------------------------------------------- real data


def test_real_hippocampus_dataset() -> None:
    root = _hippocampus_root()
    if not (root / "imagesTr").is_dir():
        pytest.skip(f"hippocampus data not found at {root} (set ACTIVESEG_HIPPOCAMPUS)")
    ds = load_dataset(root)
    assert len(ds.cases) == 200
    assert ds.num_classes == 3
    assert ds.ids[0] == "hippocampus_001"


def test_dataset_constructor_rejects_duplicate_ids(tmp_path: Path) -> None:
    case = Case("x", tmp_path / "a.nii.gz", tmp_path / "b.nii.gz")
    with pytest.raises(ValueError, match="duplicate"):
        Dataset(tmp_path, (case, case), {0: "background"})


def test_label_value_gaps_are_refused_naming_the_file(good_root: Path) -> None:
    stray = np.zeros(SHAPE, np.uint8)
    stray[0, 0, 0] = 7  # one stray voxel: inferring classes 0..7 would make five empty ones
    _, lbl = _write_pair(good_root, "case_9", label=stray)
    assert_invalid(
        good_root,
        esc(lbl) + r": label value 7 leaves a gap in the label values found \(0, 1, 2, 7; no 3\.\.6\)",
        "dataset.json",
    )
    (good_root / "dataset.json").write_text(json.dumps({"labels": {str(v): f"c{v}" for v in range(8)}}))
    assert load_dataset(good_root).num_classes == 8  # declared: fine


def test_a_header_bomb_is_refused_before_its_voxels_are_read(tmp_path: Path) -> None:
    header = nib_header((1000, 1000, 500))
    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(gzip.compress(header))
    with pytest.raises(DatasetError, match=r"bomb.nii.gz: the file is truncated or its header is corrupt: its header"):
        read_volume(bomb)
    bomb.write_bytes(gzip.compress(nib_header((2000, 2000, 2000))))
    with pytest.raises(DatasetError, match=f"more than the limit of {MAX_VOLUME_BYTES}"):
        read_volume(bomb)
    raw = tmp_path / "bomb.nii"
    raw.write_bytes(header)
    with pytest.raises(DatasetError, match=r"bomb.nii: the file is truncated or its header is corrupt"):
        read_volume(raw)


def nib_header(shape: tuple[int, ...]) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    return bytes(header.binaryblock) + bytes(4)
