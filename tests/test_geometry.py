"""Geometry between a case's native grid and its planned grid: exact where no voxel is interpolated, consistent
where one is, for RAS, LAS, permuted, oblique and anisotropic affines."""

from __future__ import annotations

import itertools
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from activeseg.data.geometry import Geometry

SHAPE = (14, 11, 9)


def affine(codes: str = "RAS", spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), degrees: float = 0.0) -> Any:
    """A voxel-to-world affine storing axes in the order and direction ``codes`` says, optionally rotated."""
    ornt = nib.orientations.axcodes2ornt(codes)
    base = np.zeros((4, 4))
    base[3, 3] = 1.0
    for voxel_axis, (world_axis, flip) in enumerate(ornt):
        base[int(world_axis), voxel_axis] = flip * spacing[voxel_axis]
    base[:3, 3] = [3.0, -5.0, 7.0]
    theta = np.radians(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    return rotation @ base


def labels(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> Any:
    return np.random.default_rng(seed).integers(0, 4, size=shape).astype(np.uint8)


GRIDS = {
    "RAS": affine("RAS"),
    "LAS": affine("LAS"),
    "LPS": affine("LPS"),
    "ASR (permuted)": affine("ASR"),
    "oblique 12°": affine("RAS", degrees=12.0),
    "anisotropic LAS": affine("LAS", spacing=(0.7, 0.7, 3.0)),
}


@pytest.mark.parametrize("name", list(GRIDS))
def test_without_resampling_native_planned_native_is_voxel_exact(name: str) -> None:
    grid, native = GRIDS[name], labels()
    # the plan's spacing, along RAS, equals the native spacing: no interpolation anywhere
    reoriented = grid @ nib.orientations.inv_ornt_aff(nib.orientations.io_orientation(grid), SHAPE)
    ras_spacing = tuple(float(s) for s in np.linalg.norm(reoriented[:3, :3], axis=0))
    geometry = Geometry.plan(SHAPE, grid, ras_spacing)  # type: ignore[arg-type]
    assert not geometry.resampled
    planned = geometry.label_to_planned(native)
    assert np.array_equal(geometry.to_native(planned[None], label=True)[0], native)
    assert sorted(np.unique(planned, return_counts=True)[1]) == sorted(np.unique(native, return_counts=True)[1])
    # every planned voxel sits at the world position of the native voxel it came from
    planned_N_3 = np.argwhere(np.ones(geometry.shape, dtype=bool))
    source_N_3 = geometry.source_voxels(planned_N_3)
    world_planned = (geometry.affine @ np.c_[planned_N_3, np.ones(len(planned_N_3))].T)[:3]
    world_native = (grid @ np.c_[source_N_3, np.ones(len(source_N_3))].T)[:3]
    np.testing.assert_allclose(world_planned, world_native, atol=1e-6)
    assert np.array_equal(native[tuple(source_N_3.T)].reshape(geometry.shape), planned)


@pytest.mark.parametrize("name", list(GRIDS))
def test_a_reoriented_copy_plans_to_the_same_grid_and_voxels(name: str) -> None:
    """The same image stored in another orientation (array flipped/transposed, affine adjusted) plans identically."""
    grid, native = GRIDS[name], labels()
    for codes in ("RAS", "LAS", "PSL"):
        transform = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(grid), nib.orientations.axcodes2ornt(codes)
        )
        stored = nib.orientations.apply_orientation(native, transform)
        stored_affine = grid @ nib.orientations.inv_ornt_aff(transform, SHAPE)
        a = Geometry.plan(SHAPE, grid, (1.0, 1.0, 1.0))
        b = Geometry.plan(stored.shape, stored_affine, (1.0, 1.0, 1.0))
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-9)
        assert a.shape == b.shape
        assert np.array_equal(a.label_to_planned(native), b.label_to_planned(stored))


@pytest.mark.parametrize("target", [(0.7, 0.7, 1.5), (0.7, 0.7, 2.2), (0.5, 0.6, 1.0)])
def test_upsampling_an_anisotropic_scan_round_trips_labels_exactly(target: tuple[float, float, float]) -> None:
    """A planned grid at least as fine as the native one loses nothing: native → planned → native is exact."""
    grid = affine("LAS", spacing=(0.7, 0.7, 3.0))
    native = labels()
    geometry = Geometry.plan(SHAPE, grid, target)
    assert geometry.resampled
    back = geometry.to_native(geometry.label_to_planned(native)[None], label=True)[0]
    assert np.array_equal(back, native)


def test_downsampling_is_consistent_and_images_use_first_order_along_the_coarse_axis() -> None:
    grid = affine("RAS", spacing=(0.5, 0.5, 3.0))
    geometry = Geometry.plan((20, 20, 6), grid, (1.0, 1.0, 1.5))
    assert geometry.shape == (10, 10, 12)
    native = labels((20, 20, 6), seed=3)
    planned = geometry.label_to_planned(native)
    source = geometry.source_voxels(np.argwhere(np.ones(geometry.shape, dtype=bool)))
    assert np.array_equal(native[tuple(source.T)].reshape(geometry.shape), planned)
    # a linear ramp along the coarse axis stays exactly linear (first order there); in-plane splines keep a
    # constant-in-plane image constant
    ramp = np.broadcast_to(np.arange(6, dtype=np.float32)[None, None, :], (20, 20, 6))
    resampled = geometry.to_planned(ramp[None])[0]
    expected = np.clip((np.arange(12) + 0.5) * 0.5 - 0.5, 0, 5)
    np.testing.assert_allclose(resampled[5, 5], expected, atol=1e-5)


def test_crop_is_undone_with_the_fill_value_outside() -> None:
    grid = affine("LPS")
    native = labels()
    geometry = Geometry.plan(SHAPE, grid, (1.0, 1.0, 1.0), crop=((2, 12), (1, 9), (3, 9)))
    assert sorted(geometry.shape) == sorted((10, 8, 6))
    back = geometry.to_native(geometry.label_to_planned(native)[None], label=True, fill=0)[0]
    inside = np.zeros(SHAPE, dtype=bool)
    inside[2:12, 1:9, 3:9] = True
    assert np.array_equal(back[inside], native[inside])
    assert not back[~inside].any()


@pytest.mark.parametrize(
    ("grid", "target"),
    [(affine("LAS"), (1.0, 1.0, 1.0)), (affine("ASR", spacing=(0.7, 0.7, 3.0)), (1.4, 1.4, 1.0))],
)
def test_a_label_drawn_on_the_native_region_of_a_box_fills_the_box_exactly(grid: Any, target: Any) -> None:
    """What the human loop relies on: a person labels the native region of a unit; the label, kept only there and
    brought to the planned grid, equals the planned ground truth on every voxel of the unit."""
    native = labels()
    geometry = Geometry.plan(SHAPE, grid, target)
    planned_truth = geometry.label_to_planned(native)
    d, h, w = geometry.shape
    for box in itertools.islice(
        itertools.product(((0, d // 2), (d // 3, d)), ((1, h - 1),), ((0, max(1, w // 2)), (w // 2, w))), 4
    ):
        mask = np.zeros(geometry.shape, dtype=bool)
        mask[tuple(slice(a, b) for a, b in box)] = True
        region = geometry.native_region(mask)
        drawn = np.where(region, native, 255).astype(np.uint8)  # the person labels the region only
        received = geometry.label_to_planned(drawn)
        assert np.array_equal(received[mask], planned_truth[mask])
        forward = geometry.to_native(mask[None].astype(np.uint8), label=True)[0] > 0
        assert (region >= forward).all() and region.sum() <= forward.sum() + mask.sum()


def test_geometry_survives_json() -> None:
    geometry = Geometry.plan(SHAPE, affine("LAS", spacing=(0.7, 0.7, 3.0), degrees=5), (0.7, 0.7, 1.5))
    again = Geometry.from_json(geometry.to_json())
    assert again == geometry
    assert np.array_equal(again.label_to_planned(labels()), geometry.label_to_planned(labels()))
