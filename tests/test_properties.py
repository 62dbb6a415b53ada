"""Hypothesis properties: unit keys, greedy disjoint selection, the pad/crop inverse and the config round trip.

Each property is checked against an independent computation (string parts, voxel sets, arrays), never against the
function under test itself.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from activeseg.acquisition.costs import COSTS, LABEL_FREE_COSTS
from activeseg.acquisition.registry import STRATEGIES
from activeseg.acquisition.units import (
    Box,
    Unit,
    best_disjoint,
    case_of,
    is_whole_volume,
    parse_key,
    slice_unit,
    unit_from_key,
)
from activeseg.config import AXES, RunConfig, config_from_dict, load_config, save_config
from activeseg.data.geometry import Geometry

FAST = settings(max_examples=150, deadline=None)

case_ids = st.text(st.characters(codec="utf-8", exclude_characters="@"), min_size=1, max_size=24)
shapes = st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40))


@st.composite
def boxes(draw: st.DrawFn, shape: tuple[int, ...]) -> Box:
    """A non-empty half-open box inside ``shape``."""
    ranges = []
    for size in shape:
        start = draw(st.integers(0, size - 1))
        ranges.append((start, draw(st.integers(start + 1, size))))
    return (ranges[0], ranges[1], ranges[2])


# --- unit keys -------------------------------------------------------------------------------------------------------


@FAST
@given(case_id=case_ids, shape=shapes, data=st.data())
def test_unit_keys_round_trip(case_id: str, shape: tuple[int, int, int], data: st.DataObject) -> None:
    volume = Unit(case_id)
    assert volume.key == case_id
    assert is_whole_volume(volume.key) and case_of(volume.key) == case_id
    assert parse_key(volume.key).kind == "volume" and parse_key(volume.key).case_id == case_id
    assert unit_from_key(volume.key, shape) == volume

    axis = data.draw(st.integers(0, 2), label="axis")
    index = data.draw(st.integers(0, shape[axis] - 1), label="index")
    piece = slice_unit(case_id, axis, index, shape)
    parts = parse_key(piece.key)
    assert (parts.case_id, parts.kind, parts.axis, parts.index) == (case_id, "slice", axis, index)
    assert not is_whole_volume(piece.key) and case_of(piece.key) == case_id
    assert unit_from_key(piece.key, shape) == piece
    region = piece.region(shape)  # one index along the axis, everything along the others
    assert [(s.start, s.stop) for s in region] == [(index, index + 1) if a == axis else (0, shape[a]) for a in range(3)]

    box = data.draw(boxes(shape), label="box")
    patch = Unit(case_id, "patch", box)
    parts = parse_key(patch.key)
    assert (parts.case_id, parts.kind, parts.box) == (case_id, "patch", box)
    assert not is_whole_volume(patch.key) and case_of(patch.key) == case_id
    assert unit_from_key(patch.key, shape) == patch
    assert patch.voxels(shape) == int(np.prod([b - a for a, b in box]))
    assert "," not in patch.key.removeprefix(case_id) and "," not in piece.key.removeprefix(case_id)  # CSV-safe


# --- greedy disjoint selection ---------------------------------------------------------------------------------------


def voxels_of(unit: Unit, shape: tuple[int, ...]) -> frozenset[tuple[int, ...]]:
    box = unit.box or tuple((0, s) for s in shape)
    return frozenset(itertools.product(*(range(a, b) for a, b in box)))


def greedy_reference(units: list[Unit], priority: list[float], labelled: np.ndarray, keep: int | None) -> list[int]:
    """Greedy non-maximum suppression on explicit voxel sets: best priority first, ties by position."""
    shape = labelled.shape
    taken = {tuple(int(i) for i in v) for v in np.argwhere(labelled)}
    kept: list[int] = []
    for i in sorted(range(len(units)), key=lambda i: (-priority[i], i)):
        cells = voxels_of(units[i], shape)
        if cells & taken:
            continue
        kept.append(i)
        taken |= cells
        if keep is not None and len(kept) == keep:
            break
    return kept


@st.composite
def disjoint_problems(draw: st.DrawFn) -> tuple[list[Unit], list[float], np.ndarray, int | None]:
    shape = draw(st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)))
    n = draw(st.integers(0, 12))
    units = []
    for _ in range(n):
        if draw(st.booleans()):
            units.append(Unit("c", "patch", draw(boxes(shape))))
        else:
            axis = draw(st.integers(0, 2))
            units.append(slice_unit("c", axis, draw(st.integers(0, shape[axis] - 1)), shape))
    values = st.integers(0, 3).map(float) | st.floats(-10.0, 10.0, allow_nan=False)  # ties are common
    priority = draw(st.lists(values, min_size=n, max_size=n))
    labelled = np.zeros(shape, dtype=bool)
    for _ in range(draw(st.integers(0, 4))):  # a few labelled voxels, or none
        labelled[tuple(draw(st.integers(0, s - 1)) for s in shape)] = True
    keep = draw(st.none() | st.integers(1, max(n, 1)))
    return units, priority, labelled, keep


@FAST
@given(disjoint_problems())
def test_best_disjoint_is_the_greedy_maximal_disjoint_set(
    problem: tuple[list[Unit], list[float], np.ndarray, int | None],
) -> None:
    units, priority, labelled, keep = problem
    shape = labelled.shape
    kept = best_disjoint(units, np.array(priority, dtype=float), labelled, keep)

    assert kept == greedy_reference(units, priority, labelled, keep)
    assert len(set(kept)) == len(kept) and (keep is None or len(kept) <= keep)
    cover = np.zeros(shape, dtype=int)
    for i in kept:
        cover[units[i].region(shape)] += 1
    assert cover.max(initial=0) <= 1  # pairwise disjoint
    assert not (cover.astype(bool) & labelled).any()  # nothing labelled
    ordered = [(-priority[i], i) for i in kept]
    assert ordered == sorted(ordered)  # priority order, ties by position
    if keep is None:  # maximal: every other unit touches a kept unit or a labelled voxel
        blocked = cover.astype(bool) | labelled
        assert all(blocked[u.region(shape)].any() for i, u in enumerate(units) if i not in kept)
    else:
        assert kept == best_disjoint(units, np.array(priority, dtype=float), labelled, None)[:keep]


# --- the geometry between native and planned grids --------------------------------------------------------------------

orientation_codes = st.sampled_from(["RAS", "LAS", "LPS", "RPI", "ASR", "PSL", "SLA", "IRP"])
small_shapes = st.tuples(st.integers(2, 9), st.integers(2, 9), st.integers(2, 9))


def stored_affine(codes: str, spacing: tuple[float, float, float], degrees: float) -> Any:
    """A voxel-to-world affine whose voxel axes run along ``codes``, with ``spacing`` and a small rotation."""
    base = np.zeros((4, 4))
    base[3, 3] = 1.0
    for axis, (world, flip) in enumerate(nib.orientations.axcodes2ornt(codes)):
        base[int(world), axis] = flip * spacing[axis]
    rotation = np.eye(4)
    theta = np.radians(degrees)
    rotation[1:3, 1:3] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    return rotation @ base


@FAST
@given(
    shape=small_shapes,
    codes=orientation_codes,
    spacing=st.tuples(*[st.sampled_from([0.5, 0.8, 1.0, 3.0])] * 3),
    degrees=st.floats(-20, 20),
    seed=st.integers(0, 2**32 - 1),
)
def test_planning_at_the_native_spacing_round_trips_labels_exactly(
    shape: tuple[int, int, int], codes: str, spacing: tuple[float, float, float], degrees: float, seed: int
) -> None:
    affine = stored_affine(codes, spacing, degrees)
    reoriented = affine @ nib.orientations.inv_ornt_aff(nib.orientations.io_orientation(affine), shape)
    native_spacing = tuple(float(v) for v in np.linalg.norm(reoriented[:3, :3], axis=0))
    geometry = Geometry.plan(shape, affine, native_spacing)  # type: ignore[arg-type]
    label = np.random.default_rng(seed).integers(0, 5, size=shape).astype(np.uint8)
    planned = geometry.label_to_planned(label)
    assert not geometry.resampled and sorted(planned.shape) == sorted(shape)
    np.testing.assert_array_equal(geometry.to_native(planned[None], label=True)[0], label)


@FAST
@given(
    shape=small_shapes, codes=orientation_codes, factors=st.tuples(*[st.floats(0.3, 1.0)] * 3), seed=st.integers(0, 99)
)
def test_a_finer_planned_grid_round_trips_labels_and_sources_agree(
    shape: tuple[int, int, int], codes: str, factors: tuple[float, float, float], seed: int
) -> None:
    """Up-sampling loses nothing; every planned voxel holds the label of the native voxel ``source_voxels`` names."""
    affine = stored_affine(codes, (1.0, 1.0, 2.0), 0.0)
    geometry = Geometry.plan(shape, affine, factors)
    label = np.random.default_rng(seed).integers(0, 5, size=shape).astype(np.uint8)
    planned = geometry.label_to_planned(label)
    sources = geometry.source_voxels(np.argwhere(np.ones(geometry.shape, dtype=bool)))
    np.testing.assert_array_equal(label[tuple(sources.T)].reshape(geometry.shape), planned)
    np.testing.assert_array_equal(geometry.to_native(planned[None], label=True)[0], label)


# --- config round trip -----------------------------------------------------------------------------------------------

positive_floats = st.floats(min_value=1e-9, max_value=1e9, allow_nan=False)
non_negative_floats = st.floats(min_value=0.0, max_value=1e9, allow_nan=False)
path_parts = st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=8)
paths = st.lists(path_parts.filter(lambda p: p not in (".", "..")), min_size=1, max_size=3).map(
    lambda parts: Path("/", *parts)
)


@st.composite
def run_overrides(draw: st.DrawFn) -> dict[str, Any]:
    """A dotted-key override of every config field, valid as a whole (the cross-field rules are respected)."""
    name = draw(st.sampled_from(sorted(STRATEGIES)))
    strategy = STRATEGIES[name]
    oracle = "simulated" if strategy.simulation_only else draw(st.sampled_from(["simulated", "human"]))
    unit = draw(st.sampled_from(["volume", "slice", "patch"]))
    levels = draw(st.integers(2, 5))
    strides = draw(st.none() | st.lists(st.sampled_from([1, 2]), min_size=levels - 1, max_size=levels - 1).map(tuple))
    validation = draw(st.integers(0, 5))
    test_root = draw(st.none() | paths)
    test_size = draw(st.integers(1, 50))
    held_out = validation + (0 if test_root else test_size)
    patch = tuple(draw(st.lists(st.integers(1, 64), min_size=3, max_size=3)))
    schedule = draw(st.sampled_from(["constant", "exponential", "sigmoid"]))
    budget = draw(st.none() | positive_floats)
    costs = sorted(COSTS) if budget is None or oracle == "simulated" else list(LABEL_FREE_COSTS)
    return {
        "name": draw(
            st.text(
                st.characters(codec="utf-8", exclude_characters="/\\\x7f", min_codepoint=32), min_size=1, max_size=30
            ).filter(lambda n: n not in (".", ".."))
        ),
        "seed": draw(st.integers(-(2**63), 2**63 - 1)),
        "data.root": draw(st.none() | paths),
        "data.test_root": test_root,
        "data.test_size": test_size,
        "data.validation_size": validation,
        "data.split_seed": draw(st.integers(0, 2**32)),
        "data.max_cases": draw(st.none() | st.integers(max(held_out + 1, 2), held_out + 500)),
        "data.cache_dir": draw(st.none() | paths),
        "plan.file": draw(st.none() | paths),
        "plan.target_spacing": draw(st.none() | st.tuples(*[st.floats(0.1, 10.0)] * 3)),
        "plan.patch_size": draw(st.none() | st.tuples(*[st.integers(4, 512)] * 3)),
        "plan.memory_gb": draw(st.none() | st.floats(0.01, 80.0)),
        "plan.normalisation": draw(st.sampled_from(["auto", "ct", "zscore"])),
        "plan.crop": draw(st.sampled_from(["nonzero", "none"])),
        "model.name": draw(st.sampled_from(["unet", "dynunet"])),
        "model.channels": tuple(draw(st.lists(st.integers(1, 512), min_size=levels, max_size=levels))),
        "model.strides": strides,
        "model.num_res_units": draw(st.integers(0, 4)),
        "model.dropout": draw(st.floats(0.0, 1.0, exclude_min=True, exclude_max=True)),
        "train.iterations": draw(st.integers(1, 10**6)),
        "train.batch_size": draw(st.integers(2, 64)),
        "train.learning_rate": draw(st.floats(1e-9, 10.0)),
        "train.weight_decay": draw(non_negative_floats),
        "train.augment": draw(st.booleans()),
        "train.flip_axes": tuple(draw(st.lists(st.sampled_from(AXES), max_size=3))),
        "train.oversample_foreground": draw(st.floats(0.0, 1.0)),
        "train.workers": draw(st.integers(0, 8)),
        "train.warm_start": draw(st.booleans()),
        "train.device": draw(st.sampled_from(["auto", "cpu", "cuda"])),
        "train.amp": draw(st.booleans()),
        "inference.overlap": draw(st.floats(0.0, 0.9)),
        "inference.windows_per_batch": draw(st.integers(1, 64)),
        "strategy.name": name,
        "strategy.reduction": draw(st.sampled_from(["mean", "foreground", "sum"] + (["top_q"] * (unit == "volume")))),
        "strategy.top_q": draw(st.floats(0.0, 1.0, exclude_min=True)),
        "strategy.uncertainty": draw(st.sampled_from(["mc_dropout", "tta", "ensemble"])),
        "strategy.mc_samples": draw(st.integers(2, 64)),
        "strategy.ensemble_size": draw(st.integers(2, 16)),
        "strategy.mc_batch_size": draw(st.integers(1, 64)),
        "strategy.beta": draw(positive_floats if schedule != "constant" else non_negative_floats),
        "strategy.beta_end": draw(positive_floats if schedule != "constant" else st.none() | positive_floats),
        "strategy.beta_schedule": schedule,
        "strategy.sketch_sites": draw(st.integers(1, 64)),
        "strategy.joint_configurations": draw(st.integers(10, 10**5)),
        "unit.kind": unit,
        "unit.axis": draw(st.integers(0, 2)),
        "unit.patch_size": patch,
        "unit.stride": draw(st.none() | st.tuples(*(st.integers(1, p) for p in patch))),
        "unit.keep": draw(st.integers(1, 100)),
        "unit.cost": draw(st.sampled_from(costs)),
        "loop.initial": draw(st.integers(1, 100)),
        "loop.initial_strategy": draw(
            st.sampled_from(["random", "representative"] if unit == "volume" else ["random"])
        ),
        "loop.per_round": draw(st.integers(1, 100)),
        "loop.round_budget": budget,
        "loop.rounds": draw(st.integers(0, 50)),
        "loop.stop_below_uncertainty": draw(st.none() | non_negative_floats) if strategy.needs_scores else None,
        "loop.plateau_patience": draw(st.none() | st.integers(1, 10)) if validation else None,
        "loop.plateau_min_delta": draw(non_negative_floats),
        "oracle.kind": oracle,
        "oracle.advance": draw(st.sampled_from(["all", "manual"])),
        "oracle.token_sha256": draw(st.none() | st.text("0123456789abcdef", min_size=64, max_size=64)),
        "oracle.max_upload_mb": draw(st.floats(1e-9, 4096.0)),
    }


@settings(max_examples=60, deadline=None)
@given(changes=run_overrides(), subset=st.randoms(use_true_random=False))
def test_config_overrides_survive_yaml_and_back(
    changes: dict[str, Any], subset: random.Random, tmp_path_factory: pytest.TempPathFactory
) -> None:
    config = RunConfig().override(changes)
    for dotted, value in changes.items():  # every override landed where its key says, with its type
        node: Any = config
        for part in dotted.split("."):
            node = getattr(node, part)
        assert node == value and type(node) is type(value), dotted

    path = tmp_path_factory.mktemp("config") / "config.yaml"
    save_config(config, path)
    assert yaml.safe_load(path.read_text()) == config.to_dict()
    assert load_config(path) == config
    assert config_from_dict(config.to_dict()) == config
    # overriding with the values it already has changes nothing; neither does a part of them
    keys = sorted(changes)
    some = subset.sample(keys, subset.randint(0, len(keys)))
    assert config.override({k: changes[k] for k in some}) == config
