"""How a case's native voxel grid maps to its planned grid, and back.

A case is planned in three exact steps and one interpolation:

1. **crop** to a box of native voxels (its non-zero region, always including every labelled voxel);
2. **reorient** the box to RAS by transposing and flipping axes (nibabel's closest canonical orientation): no
   voxel is interpolated, so this step is exactly invertible;
3. **resample** to the plan's spacing, keeping the reoriented grid's directions (an oblique scan stays oblique in
   world space) and its field of view.

:class:`Geometry` records the result: the native grid (shape, affine) and the planned grid (shape, affine), both
mapping voxel indices to RAS world millimetres. Every mapping of an array between the two grids goes through it:
images forward with third-order splines (first order along an anisotropic axis, as nnU-Net does), labels with
nearest neighbours (the dataset's labels and a person's alike, so both land on the same voxels), and predictions or
uncertainty maps back to the native grid. :meth:`Geometry.native_region` gives the native voxels a person must
label for a box of planned voxels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage

orientations: Any = nib.orientations  # nibabel's orientation helpers (untyped)
Shape3 = tuple[int, int, int]
ANISOTROPY = 3.0
"""An axis whose spacing exceeds this multiple of the finest one is resampled with first-order interpolation."""


def spacing_of(affine: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Voxel spacing (mm) of each array axis of a voxel-to-world affine."""
    return np.asarray(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0), dtype=np.float64)


@dataclass(frozen=True)
class Geometry:
    """A case's native grid, the crop box on it, and its planned grid (see the module docstring)."""

    native_shape: Shape3
    native_affine: npt.NDArray[np.float64]
    crop_start: Shape3
    """First native voxel of the crop box (the box ends ``crop_start + cropped_shape``)."""
    cropped_shape: Shape3
    orientation: npt.NDArray[np.float64]
    """nibabel orientation (3×2: target axis, flip) that takes the cropped native array to RAS."""
    shape: Shape3
    """The planned grid."""
    affine: npt.NDArray[np.float64]
    """The planned grid's voxel-to-world affine."""

    # --- construction --------------------------------------------------------------------------------------

    @classmethod
    def plan(
        cls,
        native_shape: tuple[int, ...],
        native_affine: npt.NDArray[np.float64],
        target_spacing: tuple[float, float, float],
        crop: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None,
    ) -> Geometry:
        """The planned grid of a native grid: crop to ``crop`` (native [start, stop) per axis; None keeps all),
        reorient to RAS, resample to ``target_spacing`` (RAS axis order) over the same field of view."""
        native = _shape3(native_shape)
        box = crop or tuple((0, s) for s in native)
        start = _shape3(tuple(int(a) for a, _ in box))
        cropped = _shape3(tuple(int(b - a) for a, b in box))
        if min(cropped) < 1:
            raise ValueError(f"empty crop {box} of a grid of shape {native}")
        affine_n = np.asarray(native_affine, dtype=np.float64)
        cropped_affine = affine_n @ _translation(start)
        orientation = orientations.io_orientation(cropped_affine)
        reoriented_affine = cropped_affine @ orientations.inv_ornt_aff(orientation, cropped)
        reoriented_shape = reorient_shape(cropped, orientation)
        source = spacing_of(reoriented_affine)
        target = np.asarray(target_spacing, dtype=np.float64)
        shape = _shape3(
            tuple(max(1, round(n * s / t)) for n, s, t in zip(reoriented_shape, source, target, strict=True))
        )
        # the same field of view: the first voxel's outer corner stays where it was
        scale = np.asarray(reoriented_shape, dtype=np.float64) / np.asarray(shape)  # old voxels per new voxel
        resample = np.eye(4)
        resample[:3, :3] = np.diag(scale)
        resample[:3, 3] = 0.5 * (scale - 1.0)
        return cls(native, affine_n, start, cropped, orientation, shape, reoriented_affine @ resample)

    # --- derived --------------------------------------------------------------------------------------------

    @property
    def spacing(self) -> npt.NDArray[np.float64]:
        return spacing_of(self.affine)

    @property
    def native_spacing(self) -> npt.NDArray[np.float64]:
        return spacing_of(self.native_affine)

    @property
    def voxel_mm3(self) -> float:
        """Volume of one planned voxel in mm³."""
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    @property
    def native_voxel_mm3(self) -> float:
        return float(abs(np.linalg.det(self.native_affine[:3, :3])))

    @property
    def _reoriented_shape(self) -> Shape3:
        return reorient_shape(self.cropped_shape, self.orientation)

    @property
    def _scale(self) -> npt.NDArray[np.float64]:
        """Reoriented (native-spacing) voxels per planned voxel, per RAS axis."""
        reoriented_affine = self.native_affine @ _translation(self.crop_start)
        reoriented_affine = reoriented_affine @ orientations.inv_ornt_aff(self.orientation, self.cropped_shape)
        return np.asarray(self.spacing / spacing_of(reoriented_affine))

    @property
    def resampled(self) -> bool:
        """Whether the planned grid differs from the reoriented native voxels (any interpolation at all)."""
        return self.shape != self._reoriented_shape or not np.allclose(self._scale, 1.0)

    # --- arrays: native → planned ---------------------------------------------------------------------------

    def to_planned(self, native_C_X_Y_Z: npt.NDArray[Any], label: bool = False) -> npt.NDArray[Any]:
        """Channels-first native array → channels-first planned array: splines for images (first order along an
        anisotropic axis), nearest neighbours for labels (``label``)."""
        out = [self._forward(channel, label) for channel in np.asarray(native_C_X_Y_Z)]
        return np.stack(out)

    def label_to_planned(self, label_X_Y_Z: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
        """A native label (the dataset's or a person's) on the planned grid."""
        return np.asarray(self.to_planned(np.asarray(label_X_Y_Z)[None], label=True)[0], dtype=np.uint8)

    def _forward(self, native_X_Y_Z: npt.NDArray[Any], label: bool) -> npt.NDArray[Any]:
        box = tuple(slice(a, a + n) for a, n in zip(self.crop_start, self.cropped_shape, strict=True))
        reoriented = orientations.apply_orientation(np.asarray(native_X_Y_Z)[box], self.orientation)
        if not self.resampled:
            return np.ascontiguousarray(reoriented)
        return self._zoom(reoriented, self._scale, self.shape, label)

    # --- arrays: planned → native ---------------------------------------------------------------------------

    def to_native(self, planned_C_D_H_W: npt.NDArray[Any], label: bool = False, fill: float = 0) -> npt.NDArray[Any]:
        """Channels-first planned array → channels-first native array (nearest neighbours for labels, linear for
        maps); native voxels outside the crop box get ``fill``."""
        return np.stack([self._backward(channel, label, fill) for channel in np.asarray(planned_C_D_H_W)])

    def _backward(self, planned_D_H_W: npt.NDArray[Any], label: bool, fill: float) -> npt.NDArray[Any]:
        reoriented = planned_D_H_W
        if self.resampled:
            reoriented = self._zoom(planned_D_H_W, 1.0 / self._scale, self._reoriented_shape, label, linear=True)
        inverse = orientations.ornt_transform(orientations.axcodes2ornt("RAS"), self.orientation)
        cropped = orientations.apply_orientation(reoriented, inverse)
        out = np.full(self.native_shape, fill, dtype=np.asarray(planned_D_H_W).dtype)
        box = tuple(slice(a, a + n) for a, n in zip(self.crop_start, self.cropped_shape, strict=True))
        out[box] = cropped
        return out

    @property
    def _coarse_axis(self) -> int | None:
        """The reoriented axis resampled with first-order interpolation: the native grid's anisotropic one."""
        native = self.spacing / self._scale  # the reoriented native spacing
        coarsest = int(np.argmax(native))
        return coarsest if native[coarsest] > ANISOTROPY * native.min() else None

    def _zoom(
        self, array: npt.NDArray[Any], scale: npt.NDArray[np.float64], shape: Shape3, label: bool, linear: bool = False
    ) -> npt.NDArray[Any]:
        """Resample an axis-aligned grid: output voxel i samples input position (i + 0.5) * scale - 0.5."""
        offset = 0.5 * (scale - 1.0)
        if label:
            return np.asarray(
                ndimage.affine_transform(array, scale, offset, output_shape=shape, order=0, mode="nearest")
            )
        data = np.asarray(array, dtype=np.float32)
        coarse = None if linear else self._coarse_axis
        if coarse is None:
            order = 1 if linear else 3
            return np.asarray(
                ndimage.affine_transform(data, scale, offset, output_shape=shape, order=order, mode="nearest")
            )
        in_plane, along = scale.copy(), np.ones(3)  # splines in-plane first, then linear along the coarse axis
        in_plane[coarse], along[coarse] = 1.0, scale[coarse]
        first_shape = tuple(data.shape[a] if a == coarse else shape[a] for a in range(3))
        first = ndimage.affine_transform(
            data, in_plane, 0.5 * (in_plane - 1.0), output_shape=first_shape, order=3, mode="nearest"
        )
        return np.asarray(
            ndimage.affine_transform(first, along, 0.5 * (along - 1.0), output_shape=shape, order=1, mode="nearest")
        )

    # --- regions and boxes ----------------------------------------------------------------------------------

    def native_region(self, mask_D_H_W: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """The native voxels a person labels for a set of planned voxels: those that fall in the set, plus every
        native voxel that a planned voxel of the set samples its label from (so a label drawn on this region and
        brought to the planned grid fills the whole set)."""
        forward = self.to_native(np.asarray(mask_D_H_W, dtype=np.uint8)[None], label=True)[0] > 0
        sources = np.zeros(self.native_shape, dtype=bool)
        sources[tuple(self.source_voxels(np.argwhere(mask_D_H_W)).T)] = True
        return np.asarray(forward | sources)

    def source_voxels(self, planned_N_3: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.int64]:
        """The native voxel each planned voxel takes its label from (nearest neighbour), N×3."""
        points = np.asarray(planned_N_3, dtype=np.int64).reshape(-1, 3)
        reoriented = np.stack([self._axis_sources(a)[points[:, a]] for a in range(3)], axis=1)
        cropped = np.empty_like(reoriented)
        for axis, (ras_axis, flip) in enumerate(self.orientation):  # native axis → the RAS axis it became
            values = reoriented[:, int(ras_axis)]
            cropped[:, axis] = (self.cropped_shape[axis] - 1 - values) if flip < 0 else values
        return np.asarray(cropped + np.asarray(self.crop_start), dtype=np.int64)

    def _axis_sources(self, axis: int) -> npt.NDArray[np.int64]:
        """For each planned index along a RAS axis, the reoriented native index it samples (as ``_zoom`` does)."""
        size = self._reoriented_shape[axis]
        if not self.resampled:
            return np.arange(size, dtype=np.int64)
        scale = self._scale[axis]
        indices = np.arange(size, dtype=np.float64)
        picked = ndimage.affine_transform(
            indices, [scale], [0.5 * (scale - 1.0)], output_shape=(self.shape[axis],), order=0, mode="nearest"
        )
        return np.asarray(np.rint(picked), dtype=np.int64)

    # --- storage --------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "native_shape": list(self.native_shape),
            "native_affine": np.asarray(self.native_affine).tolist(),
            "crop_start": list(self.crop_start),
            "cropped_shape": list(self.cropped_shape),
            "orientation": np.asarray(self.orientation).tolist(),
            "shape": list(self.shape),
            "affine": np.asarray(self.affine).tolist(),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Geometry:
        return cls(
            _shape3(tuple(raw["native_shape"])),
            np.asarray(raw["native_affine"], dtype=np.float64),
            _shape3(tuple(raw["crop_start"])),
            _shape3(tuple(raw["cropped_shape"])),
            np.asarray(raw["orientation"], dtype=np.float64),
            _shape3(tuple(raw["shape"])),
            np.asarray(raw["affine"], dtype=np.float64),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Geometry) and json.dumps(self.to_json()) == json.dumps(other.to_json())

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_json()))


def reorient_shape(shape: tuple[int, ...], orientation: npt.NDArray[np.float64]) -> Shape3:
    """The shape of an array after nibabel's ``apply_orientation(array, orientation)``."""
    out = [0, 0, 0]
    for axis, (ras_axis, _) in enumerate(orientation):
        out[int(ras_axis)] = int(shape[axis])
    return _shape3(tuple(out))


def _translation(start: Shape3) -> npt.NDArray[np.float64]:
    out = np.eye(4)
    out[:3, 3] = start
    return out


def _shape3(shape: tuple[int, ...]) -> Shape3:
    if len(shape) != 3:
        raise ValueError(f"expected a 3D shape, got {shape}")
    return int(shape[0]), int(shape[1]), int(shape[2])
