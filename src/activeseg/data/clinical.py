"""Clinical-shape datasets: real hippocampus cases pasted into large, anisotropic CT-like fields.

Each source case (an MSD-layout image/label pair) is pasted into a field of CT-like intensities. With
``paste="world"`` (the default) the crop is first resampled from its own voxel size to the field's, so the
structure keeps its size in millimetres, as anatomy does: the image with cubic splines, the label by linear
interpolation of each class's indicator (the class covering most of a coarse voxel wins). Both are read at the
field's voxel centres: point samples, not the slab average over a slice's thickness that a scanner records, so
detail thinner than a slice aliases rather than blurs. With
``paste="voxel"`` it is copied voxel-wise, so its size in millimetres scales with the drawn spacing (up to 2×
between cases along the slice axis): a shape no scanner produces, kept for tests of exact placement. The field
holds (Hounsfield units, int16): air around an elliptical body of soft tissue
with a subcutaneous fat rim, fat pockets and a few bone-like structures. The field is generated in
RAS voxel order, then stored in a drawn orientation (array transposed/flipped, affine adjusted, so
every voxel keeps its world position); a fraction of the cases also get a small oblique rotation in
the affine only. All draws come from a generator seeded by ``seed`` and the case id, so a case's
files do not depend on ``n_cases`` and the same arguments give byte-identical files (nibabel writes
gzip with mtime 0).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import nibabel.orientations
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from activeseg.data.io import case_id_from_path, read_volume, supported_suffix, write_volume

CLINICAL_LABELS = {0: "background", 1: "anterior", 2: "posterior"}
_MARGIN = 4  # voxels kept between the pasted crop and the field's faces / the body's fat rim
_BLEND = 3  # voxels over which the crop's border fades into the surrounding tissue
_AXIS = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}

FloatArray = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]
_nio: Any = nibabel.orientations  # untyped


def make_clinical_dataset(
    source: Path,
    out: Path,
    n_cases: int | None = None,
    seed: int = 0,
    field_shape: tuple[int, int, tuple[int, int]] = (192, 192, (48, 80)),
    in_plane_spacing: tuple[float, float] = (0.7, 1.0),
    slice_spacing: tuple[float, float] = (2.0, 4.0),
    orientations: Sequence[str] = ("RAS", "LAS", "LPS", "RPI", "ASR"),
    oblique_fraction: float = 0.1,
    case_ids: Sequence[str] | None = None,
    paste: Literal["world", "voxel"] = "world",
    first_case: int = 0,
) -> Path:
    """Write CT-like cases to ``out/imagesTr``, ``out/labelsTr`` and ``out/dataset.json``; returns ``out``.

    Cases are the sorted source ids (``n_cases`` of them, after skipping the first ``first_case``) or
    ``case_ids``. The field depth is drawn in ``field_shape[2]`` but raised to fit the crop's depth plus margins.
    dataset.json's ``"clinical"`` maps each id to what was drawn: ``offset`` (of the crop in the RAS-ordered
    field, i.e. the ``as_closest_canonical`` grid), ``ras_shape``/``ras_spacing`` (that grid), ``orientation``,
    ``shape``/``spacing`` (as stored), ``oblique_degrees`` (0.0 if none), ``oblique_axis``, ``source``, and
    ``crop_shape`` (the pasted crop, in field voxels; the source's shape with ``paste="voxel"``).
    """
    source, out = Path(source), Path(out)
    if not 0.0 <= oblique_fraction <= 1.0:
        raise ValueError(f"oblique_fraction must lie in [0, 1], got {oblique_fraction}")
    if not orientations:
        raise ValueError("orientations must name at least one axis code")
    if paste not in ("world", "voxel"):
        raise ValueError(f"paste must be 'world' or 'voxel', got {paste!r}")
    codes = [_check_code(code) for code in orientations]
    images, labels = _index(source / "imagesTr"), _index(source / "labelsTr")
    if case_ids is None:
        ids = sorted(set(images) & set(labels))
        ids = ids[first_case:] if n_cases is None else ids[first_case : first_case + n_cases]
    else:
        ids = list(case_ids)
    if not ids:
        raise ValueError(f"{source}: no cases to convert")
    missing = [c for c in ids if c not in images or c not in labels]
    if missing:
        raise ValueError(f"{source}: no image/label pair for {', '.join(missing[:5])}")
    _empty_folders(out)

    record: dict[str, dict[str, Any]] = {}
    for case_id in ids:
        rng = np.random.default_rng(np.random.SeedSequence([seed, _id_entropy(case_id)]))
        src_image, src_label = read_volume(images[case_id]), read_volume(labels[case_id])
        if src_image.array.shape != src_label.array.shape or src_image.array.ndim != 3:
            raise ValueError(f"{case_id}: image {src_image.array.shape} and label {src_label.array.shape} differ")
        label = np.asarray(src_label.array)
        if not np.array_equal(label, label.astype(np.uint8)):
            raise ValueError(f"{case_id}: label values must be integers in 0..255")
        source_spacing = np.linalg.norm(np.asarray(src_image.affine)[:3, :3], axis=0)
        crop = tuple(int(n) for n in label.shape)
        if paste == "world":  # the deepest the crop can get, at the finest slice spacing that may be drawn
            crop = (*crop[:2], int(np.ceil(crop[2] * source_spacing[2] / slice_spacing[0])))
        lo = max(field_shape[2][0], crop[2] + 2 * _MARGIN)
        shape = (field_shape[0], field_shape[1], int(rng.integers(lo, max(field_shape[2][1], lo) + 1)))
        pixel = round(float(rng.uniform(*in_plane_spacing)), 3)
        spacing = np.array([pixel, pixel, round(float(rng.uniform(*slice_spacing)), 1)])
        code = codes[int(rng.integers(len(codes)))]
        oblique = bool(rng.random() < oblique_fraction)
        degrees = round(float(rng.uniform(5.0, 15.0) * rng.choice([-1.0, 1.0])), 2) if oblique else 0.0
        axis = rng.normal(size=3)
        axis = axis / np.linalg.norm(axis)

        crop_image, label = np.asarray(src_image.array, dtype=np.float64), label.astype(np.uint8)
        if paste == "world":
            crop_image, label = _resample_crop(crop_image, label, source_spacing / spacing)
            crop = tuple(int(n) for n in label.shape)
        if min(shape[0] - crop[0], shape[1] - crop[1]) < 2 * _MARGIN:
            raise ValueError(f"{case_id}: field {shape} too small for crop {crop} plus {_MARGIN}-voxel margins")
        image, offset = _ct_field(rng, shape, spacing, crop_image)
        field_label = np.zeros(shape, dtype=np.uint8)
        field_label[tuple(slice(o, o + n) for o, n in zip(offset, crop, strict=True))] = label

        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * spacing  # the field's centre at the world origin
        affine[:3, :] = _rotation(axis, degrees) @ affine[:3, :]
        stored_image, stored_affine = _reorient(image, affine, code, ras=True)
        stored_label, _ = _reorient(field_label, affine, code, ras=True)
        write_volume(out / "imagesTr" / f"{case_id}.nii.gz", stored_image, stored_affine)
        write_volume(out / "labelsTr" / f"{case_id}.nii.gz", stored_label, stored_affine)
        record[case_id] = {
            "offset": [int(o) for o in offset],
            "orientation": code,
            "spacing": [float(s) for s in np.linalg.norm(stored_affine[:3, :3], axis=0).round(6)],
            "shape": [int(n) for n in stored_image.shape],
            "ras_spacing": [float(s) for s in spacing],
            "ras_shape": list(shape),
            "oblique_degrees": degrees,
            "oblique_axis": [round(float(a), 6) for a in axis] if oblique else None,
            "source": str(images[case_id]),
            "paste": paste,
            "crop_shape": list(crop),
        }

    meta = {
        "name": "ClinicalHippocampus",
        "description": f"MSD hippocampus crops pasted into CT-like fields, {paste}-wise (activeseg.data.clinical)",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "channel_names": {"0": "CT"},
        "labels": {str(v): n for v, n in CLINICAL_LABELS.items()},
        "numTraining": len(ids),
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ids],
        "seed": seed,
        "clinical": record,
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def crop_to_structure(clinical: Path, out: Path) -> Path:
    """The same clinical cases cut to the box their crop was pasted into: same voxels, intensities, noise and
    affine (translated), without the field around them. A reference for what the large field itself costs.

    Each stored case is read back in RAS voxel order (the grid ``offset`` refers to), cut to ``offset`` +
    ``crop_shape`` and written in RAS order; dataset.json is copied with those ids. Returns ``out``.
    """
    clinical, out = Path(clinical), Path(out)
    meta = _clinical_meta(clinical)
    _empty_folders(out)
    for case_id, drawn in meta["clinical"].items():
        box = tuple(slice(o, o + n) for o, n in zip(drawn["offset"], drawn["crop_shape"], strict=True))
        shift = np.eye(4)
        shift[:3, 3] = drawn["offset"]
        for folder in ("imagesTr", "labelsTr"):
            stored = read_volume(clinical / folder / f"{case_id}.nii.gz")
            ras, ras_affine = _reorient(stored.array, stored.affine, "RAS")
            write_volume(out / folder / f"{case_id}.nii.gz", ras[box], ras_affine @ shift)
    meta["description"] = f"{meta['description']}, cut to the pasted boxes (activeseg.data.clinical.crop_to_structure)"
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def through_clinical_spacing(clinical: Path, out: Path) -> Path:
    """The clinical set's source cases on their own grid, each image sent to its field's spacing the way
    ``paste="world"`` resamples it (cubic splines) and back: the information the clinical image keeps of the
    structure, on the native grid, beside the native label. A reference that tells what the coarse slices take
    from the image apart from what planning and training on their coarse grid cost.

    Writes ``out/imagesTr`` (float32, the source's affine) and ``out/labelsTr`` (the source labels, unchanged);
    returns ``out``.
    """

    def coarse(_: str, drawn: dict[str, Any], source: Float64Array, affine: Float64Array) -> Float64Array:
        zoom = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0) / np.asarray(drawn["ras_spacing"])
        return _resample_image(source, _paste_factors(source.shape, zoom))

    return _back_on_source_grid(clinical, out, coarse)


def field_image_on_source_grid(clinical: Path, out: Path) -> Path:
    """The clinical set's source cases on their own grid, each image taken from its clinical field: the voxels of
    the box its crop was pasted into (CT intensities, the field's noise and the faded border), resampled back as
    :func:`through_clinical_spacing` resamples. Beside that function's images, it tells what the field's intensities
    and noise take from the thick slices, apart from what planning and training on their grid cost.

    Writes ``out/imagesTr`` (float32 HU, the source's affine) and ``out/labelsTr`` (the source labels, unchanged);
    returns ``out``.
    """

    def coarse(case_id: str, drawn: dict[str, Any], _: Float64Array, __: Float64Array) -> Float64Array:
        stored = read_volume(clinical / "imagesTr" / f"{case_id}.nii.gz")
        ras, _affine = _reorient(stored.array, stored.affine, "RAS")
        box = tuple(slice(o, o + n) for o, n in zip(drawn["offset"], drawn["crop_shape"], strict=True))
        return np.asarray(ras[box], dtype=np.float64)

    return _back_on_source_grid(clinical, out, coarse)


def _back_on_source_grid(
    clinical: Path,
    out: Path,
    coarse_of: Callable[[str, dict[str, Any], Float64Array, Float64Array], Float64Array],
) -> Path:
    """Each source case's image as ``coarse_of(case_id, drawn, source image, source affine)`` gives it on the field's
    grid, resampled back to the source's grid with the source's label: :func:`through_clinical_spacing` and
    :func:`field_image_on_source_grid`."""
    clinical, out = Path(clinical), Path(out)
    meta = _clinical_meta(clinical)
    _empty_folders(out)
    roots = {Path(drawn["source"]).parent.parent for drawn in meta["clinical"].values()}
    label_files = {case_id: path for root in roots for case_id, path in _index(root / "labelsTr").items()}
    for case_id, drawn in meta["clinical"].items():
        image, label = read_volume(Path(drawn["source"])), read_volume(label_files[case_id])
        array = np.asarray(image.array, dtype=np.float64)
        coarse = coarse_of(case_id, drawn, array, np.asarray(image.affine, dtype=np.float64))
        fine = _resample_image(coarse, [n / m for n, m in zip(array.shape, coarse.shape, strict=True)])
        if fine.shape != array.shape:  # ndimage rounds each output length; n / m * m must give n back
            raise RuntimeError(f"{case_id}: resampled back to {fine.shape}, not {array.shape}")
        write_volume(out / "imagesTr" / f"{case_id}.nii.gz", fine.astype(np.float32), image.affine)
        write_volume(out / "labelsTr" / f"{case_id}.nii.gz", label.array, label.affine)
    return out


def reoriented_copy(image: Path, label: Path, out_image: Path, out_label: Path, codes: str = "LAS") -> None:
    """Write ``image`` and ``label`` stored in orientation ``codes``: same voxels at the same world places."""
    img, lab = read_volume(Path(image)), read_volume(Path(label))
    if img.array.shape != lab.array.shape or not np.allclose(img.affine, lab.affine, atol=1e-4):
        raise ValueError(f"{image} and {label} differ in shape or affine")
    array, affine = _reorient(img.array, img.affine, _check_code(codes))
    write_volume(Path(out_image), array, affine)
    write_volume(Path(out_label), _reorient(lab.array, img.affine, _check_code(codes))[0], affine)


def _empty_folders(out: Path) -> None:
    """Make ``out/imagesTr`` and ``out/labelsTr``; cases are only ever written to empty folders."""
    for folder in (out / "imagesTr", out / "labelsTr"):
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} is not empty; cases are only written to empty folders")
        folder.mkdir(parents=True, exist_ok=True)


def _clinical_meta(clinical: Path) -> dict[str, Any]:
    """dataset.json of a clinical-shape set, checked to hold the generator's ``clinical`` record."""
    path = clinical / "dataset.json"
    if not path.is_file():
        raise ValueError(f"{path}: no such file; not a clinical-shape set")
    meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if "clinical" not in meta:
        raise ValueError(f"{path}: not a clinical-shape set (no 'clinical' record)")
    return meta


def _reorient(
    array: npt.NDArray[Any], affine: npt.NDArray[np.float64], code: str, *, ras: bool = False
) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64]]:
    """``array`` stored in orientation ``code`` and its affine (every voxel keeps its world position).

    ``ras``: the array is in RAS voxel order (else its order is read from the affine's closest axes).
    """
    start = _nio.axcodes2ornt("RAS") if ras else _nio.io_orientation(affine)
    ornt = _nio.ornt_transform(start, _nio.axcodes2ornt(code))
    moved: npt.NDArray[np.float64] = affine @ _nio.inv_ornt_aff(ornt, array.shape)
    return np.asarray(_nio.apply_orientation(array, ornt)), moved


def _ct_field(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: npt.NDArray[np.float64], crop: npt.NDArray[Any]
) -> tuple[npt.NDArray[np.int16], tuple[int, int, int]]:
    """A CT-like int16 field (RAS voxel order) with ``crop`` blended in, and the crop's voxel offset."""
    nx, ny, nz = shape
    cx, cy, cz = crop.shape
    # Body: an elliptical cylinder along z; the crop box (plus margins) lies inside its fat rim.
    centre = np.array([nx, ny]) / 2 - 0.5 + rng.uniform(-0.04, 0.04, 2) * np.array([nx, ny])
    semi = rng.uniform([0.40, 0.34], [0.47, 0.44]) * np.array([nx, ny])
    rim = float(rng.uniform(3.0, 8.0)) / spacing[0]
    half = np.array([cx, cy]) / 2 + _MARGIN
    ox, oy = np.meshgrid(np.arange(_MARGIN, nx - cx - _MARGIN + 1), np.arange(_MARGIN, ny - cy - _MARGIN + 1))
    box_centre = np.stack([ox + (cx - 1) / 2, oy + (cy - 1) / 2], axis=-1)
    far = np.abs(box_centre - centre) + half  # the box corner farthest from the body's centre
    reach = np.sqrt(((far / (semi - rim)) ** 2).sum(axis=-1))  # <= 1: inside the rim
    if reach.min() > 1.0:  # widen the body until the crop fits
        semi = (semi - rim) * float(reach.min()) * 1.02 + rim
        reach = np.sqrt(((far / (semi - rim)) ** 2).sum(axis=-1))
    fits = reach <= 1.0
    pick = int(rng.choice(np.flatnonzero(fits)))
    offset = (int(ox.ravel()[pick]), int(oy.ravel()[pick]), int(rng.integers(_MARGIN, nz - cz - _MARGIN + 1)))

    xx, yy = np.meshgrid(np.arange(nx, dtype=np.float64), np.arange(ny, dtype=np.float64), indexing="ij")
    radius = np.sqrt(((xx - centre[0]) / semi[0]) ** 2 + ((yy - centre[1]) / semi[1]) ** 2)
    inner2d = np.sqrt(((xx - centre[0]) / (semi[0] - rim)) ** 2 + ((yy - centre[1]) / (semi[1] - rim)) ** 2) <= 1
    body2d = radius <= 1.0
    keep_lo = [max(o - _MARGIN, 0) for o in offset]  # no bone in the crop's box plus margins
    keep_hi = [min(o + n + _MARGIN, s) for o, n, s in zip(offset, crop.shape, shape, strict=True)]
    gaps = [  # millimetres from the crop's box along each axis, for fat that thins out smoothly near it
        np.maximum(np.maximum(o - np.arange(s), np.arange(s) - (o + n - 1)), 0) * h
        for o, n, s, h in zip(offset, crop.shape, shape, spacing, strict=True)
    ]
    near = np.exp(-np.sqrt(gaps[0][:, None, None] ** 2 + gaps[1][None, :, None] ** 2 + gaps[2][None, None, :] ** 2) / 8)

    field = np.full(shape, -1000.0, dtype=np.float32)
    tissue = float(rng.uniform(32.0, 48.0)) + 9.0 * _smooth_noise(rng, shape, spacing, 6.0)
    body = np.broadcast_to(body2d[..., None], shape)
    field[body] = tissue[body]
    fat = (np.broadcast_to(~inner2d[..., None], shape) & body) | (
        (_smooth_noise(rng, shape, spacing, 14.0) - 4.0 * near > 1.3) & np.broadcast_to(inner2d[..., None], shape)
    )
    field[fat] = -100.0 + 12.0 * _smooth_noise(rng, shape, spacing, 4.0)[fat]

    for _ in range(int(rng.integers(3, 6))):  # bone-like structures: elliptical rods with a bright cortex
        radii = rng.uniform(4.0, 11.0, 2) / spacing[0]
        value = float(rng.uniform(400.0, 1000.0))
        z0 = int(rng.integers(0, nz // 2))
        z1 = int(rng.integers(z0 + nz // 3, nz + 1))
        for _try in range(20):
            angle, frac = rng.uniform(0.0, 2 * np.pi), rng.uniform(0.15, 0.75)
            at = centre + frac * (semi - rim) * np.array([np.cos(angle), np.sin(angle)])
            clear_xy = np.any(at + radii + 1 < keep_lo[:2]) or np.any(at - radii - 1 > np.array(keep_hi[:2]) - 1)
            if clear_xy or z1 <= keep_lo[2] or z0 >= keep_hi[2]:
                q = ((xx - at[0]) / radii[0]) ** 2 + ((yy - at[1]) / radii[1]) ** 2
                bone2d = (q <= 1.0) & inner2d
                hu = np.where(q > 0.45, value, 0.45 * value + 90.0).astype(np.float32)
                field[:, :, z0:z1][bone2d] = hu[bone2d][:, None]
                break

    # The crop: MRI intensities mapped (1st-99th percentile -> 0-80 HU) and faded in at its border.
    p1, p99 = np.percentile(crop, [1.0, 99.0])
    hu_crop = np.clip((crop - p1) / max(float(p99 - p1), 1e-6), 0.0, 1.0) * 80.0
    box = tuple(slice(o, o + n) for o, n in zip(offset, crop.shape, strict=True))
    weight = _blend_weight(crop.shape)
    field[box] = (1.0 - weight) * field[box] + weight * hu_crop
    field += rng.normal(0.0, 8.0, shape).astype(np.float32)
    return np.clip(np.rint(field), -1024, 3071).astype(np.int16), offset


def _resample_crop(
    image: npt.NDArray[np.float64], label: npt.NDArray[np.uint8], zoom: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.uint8]]:
    """``image`` and ``label`` resampled by ``zoom`` (source voxel size / field voxel size), voxel areas aligned."""
    resampled = _resample_image(image, _paste_factors(image.shape, zoom))
    indicators_C = np.stack([(label == c).astype(np.float32) for c in range(int(label.max()) + 1)])
    return resampled, np.argmax(paste_class_maps(indicators_C, zoom), axis=0).astype(np.uint8)


def _resample_image(image: npt.NDArray[np.float64], factors: Sequence[float]) -> npt.NDArray[np.float64]:
    """``image`` zoomed by ``factors`` with cubic splines read at the new voxel centres (voxel areas aligned)."""
    return np.asarray(ndimage.zoom(image, factors, order=3, mode="nearest", grid_mode=True))


def paste_class_maps(maps_C_X_Y_Z: npt.NDArray[Any], zoom: npt.ArrayLike) -> FloatArray:
    """Per-class maps (indicators or probabilities) of a source crop resampled by ``zoom`` (source voxel size /
    field voxel size) the way ``paste="world"`` resamples the crop's label: linear, voxel areas aligned. The argmax
    of the result is the pasted label (of indicators) or a 1 mm prediction carried into the field (of
    probabilities)."""
    factors = _paste_factors(maps_C_X_Y_Z.shape[1:], np.asarray(zoom, dtype=np.float64))
    return np.stack(
        [ndimage.zoom(m.astype(np.float32), factors, order=1, mode="nearest", grid_mode=True) for m in maps_C_X_Y_Z]
    )


def _paste_factors(shape: tuple[int, ...], zoom: npt.NDArray[np.float64]) -> list[float]:
    pasted = tuple(max(1, round(n * z)) for n, z in zip(shape, zoom, strict=True))
    return [m / n for m, n in zip(pasted, shape, strict=True)]


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: npt.NDArray[np.float64], scale_mm: float
) -> FloatArray:
    """Zero-mean, unit-variance noise varying over about ``scale_mm`` (coarse noise, linearly upsampled)."""
    coarse = [max(4, int(np.ceil(3 * n * s / scale_mm)) + 1) for n, s in zip(shape, spacing, strict=True)]
    noise = ndimage.gaussian_filter(rng.standard_normal(coarse), 1.5, mode="wrap")
    fine = ndimage.zoom(noise, [n / c for n, c in zip(shape, coarse, strict=True)], order=1, mode="nearest")
    fine = fine[: shape[0], : shape[1], : shape[2]]
    out: FloatArray = ((fine - fine.mean()) / max(float(fine.std()), 1e-6)).astype(np.float32)
    return out


def _blend_weight(shape: tuple[int, ...]) -> FloatArray:
    """1 inside, falling smoothly to near 0 over ``_BLEND`` voxels at the box's faces."""
    weight = np.ones(shape, dtype=np.float32)
    for axis, n in enumerate(shape):
        index = np.arange(n)
        t = np.clip((np.minimum(index, n - 1 - index) + 1) / (_BLEND + 1), 0.0, 1.0)
        ramp = (t * t * (3.0 - 2.0 * t)).astype(np.float32)
        weight *= ramp.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    return weight


def _rotation(axis: npt.NDArray[np.float64], degrees: float) -> npt.NDArray[np.float64]:
    """Rotation matrix about a unit ``axis`` (Rodrigues)."""
    theta = np.deg2rad(degrees)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    rot: npt.NDArray[np.float64] = np.eye(3) + np.sin(theta) * k + (1.0 - np.cos(theta)) * (k @ k)
    return rot


def _check_code(code: str) -> str:
    code = code.upper()
    if len(code) != 3 or any(c not in _AXIS for c in code) or {_AXIS[c] for c in code} != {0, 1, 2}:
        raise ValueError(f"{code!r} is not an axis code such as 'RAS' or 'LPS'")
    return code


def _id_entropy(case_id: str) -> int:
    return int.from_bytes(hashlib.sha256(case_id.encode("utf-8")).digest()[:8], "little")


def _index(folder: Path) -> dict[str, Path]:
    """Case id -> file for the supported volumes in ``folder`` (hidden files skipped)."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and supported_suffix(p) is not None)
    return {case_id_from_path(p): p for p in files}
