"""Annotation units: keys, lattices, pooled unit scores against a float64 brute force, disjointness, costs, partial
labels and the masked loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from activeseg.acquisition.costs import FOREGROUND_WEIGHT, CostContext, unit_costs
from activeseg.acquisition.pooling import unit_scores
from activeseg.acquisition.selectors import Choice
from activeseg.acquisition.units import (
    IGNORE,
    Unit,
    UnitSpec,
    best_disjoint,
    disjoint,
    partial_label,
    random_candidates,
    slice_unit,
    unit_from_key,
)
from activeseg.config import ConfigError, config_from_dict
from activeseg.engine.pool import unit_spec
from activeseg.engine.training import PartialDiceCELoss
from activeseg.oracles.base import OracleError
from activeseg.oracles.simulated import SimulatedOracle

SHAPE = (8, 12, 8)


def test_unit_keys_round_trip_and_reject_bad_input() -> None:
    units = [
        Unit("case_1"),
        slice_unit("case_1", 1, 5, SHAPE),
        Unit("case_1", "patch", ((0, 4), (6, 12), (2, 6))),
    ]
    assert [u.key for u in units] == ["case_1", "case_1@slice:1:5", "case_1@patch:0-4:6-12:2-6"]
    assert [unit_from_key(u.key, SHAPE) for u in units] == units
    assert [u.voxels(SHAPE) for u in units] == [8 * 12 * 8, 8 * 8, 4 * 6 * 4]
    with pytest.raises(ValueError, match="contains '@'"):
        Unit("a@b")
    with pytest.raises(ValueError, match="not a unit key"):
        unit_from_key("case_1@patch:0-4:6-12", SHAPE)
    with pytest.raises(ValueError, match="needs box"):
        Unit("case_1", "patch")


def test_lattices_cover_the_grid() -> None:
    grid = UnitSpec("patch", patch_size=(4, 6, 4)).lattice("c", SHAPE)
    assert len(grid) == 2 * 2 * 2
    assert all(disjoint(a, b, SHAPE) for i, a in enumerate(grid) for b in grid[i + 1 :])
    free = UnitSpec("patch", patch_size=(4, 6, 4), stride=(2, 3, 2)).lattice("c", SHAPE)
    assert len(free) == 3 * 3 * 3
    slices = UnitSpec("slice", axis=2).lattice("c", SHAPE)
    assert [u.key for u in slices] == [f"c@slice:2:{i}" for i in range(8)]


def test_shifted_edges_keep_every_patch_full_size() -> None:
    clipped = UnitSpec("patch", patch_size=(5, 7, 3))
    shifted = UnitSpec("patch", patch_size=(5, 7, 3), edge="shift")
    assert clipped.starts(SHAPE) == [[0, 5], [0, 7], [0, 3, 6]]  # the last box on each axis is cut short
    assert shifted.starts(SHAPE) == [[0, 3], [0, 5], [0, 3, 5]]  # ... or moved back inside the grid
    for spec in (clipped, shifted):
        covered = np.zeros(SHAPE, dtype=int)
        for unit in spec.lattice("c", SHAPE):
            covered[unit.region(SHAPE)] += 1
        assert covered.min() == 1  # both cover every voxel
    assert {u.voxels(SHAPE) for u in shifted.lattice("c", SHAPE)} == {5 * 7 * 3}
    assert min(u.voxels(SHAPE) for u in clipped.lattice("c", SHAPE)) == 3 * 5 * 2
    assert UnitSpec("patch", patch_size=(4, 6, 4), edge="shift").lattice("c", SHAPE) == UnitSpec(
        "patch", patch_size=(4, 6, 4)
    ).lattice("c", SHAPE)  # nothing to shift where the patches divide the grid
    assert UnitSpec("slice", edge="shift").lattice("c", SHAPE) == UnitSpec("slice").lattice("c", SHAPE)
    assert unit_spec(config_from_dict({"unit": {"kind": "patch", "edge": "shift"}})).edge == "shift"
    with pytest.raises(ConfigError, match=r"unit\.edge: 'wrap' is not one of 'clip', 'shift'"):
        config_from_dict({"unit": {"edge": "wrap"}})


def brute_force(maps: np.ndarray, weight: np.ndarray, units: list[Unit], reduction: str) -> np.ndarray:
    """Each unit's score by explicit loops over its voxels, in float64."""
    rows = []
    for unit in units:
        box = unit.region(maps.shape[1:])
        row = []
        for score in maps:
            inside, w = score[box].astype(np.float64), weight[box].astype(np.float64)
            value = {"mean": inside.mean(), "sum": inside.sum(), "foreground": (inside * w).sum() / w.sum()}
            row.append(value[reduction])
        rows.append(row)
    return np.array(rows)


@pytest.mark.parametrize("reduction", ["mean", "sum", "foreground"])
@pytest.mark.parametrize(
    "spec",
    [
        UnitSpec("patch", patch_size=(4, 6, 4)),
        UnitSpec("patch", patch_size=(4, 6, 4), stride=(2, 3, 2)),
        UnitSpec("patch", patch_size=(5, 7, 3)),
        UnitSpec("patch", patch_size=(5, 7, 3), edge="shift"),
        UnitSpec("patch", patch_size=(5, 7, 3), stride=(2, 3, 2), edge="shift"),
        UnitSpec("slice"),
    ],
)
def test_pooled_unit_scores_match_a_float64_brute_force(spec: UnitSpec, reduction: str) -> None:
    generator = torch.Generator().manual_seed(3)
    maps = torch.rand(2, *SHAPE, generator=generator)
    probs = torch.softmax(torch.randn(3, *SHAPE, generator=generator), dim=0)
    got = unit_scores(maps, probs, spec, reduction).numpy()  # type: ignore[arg-type]
    expected = brute_force(maps.numpy(), 1 - probs[0].numpy(), spec.lattice("c", SHAPE), reduction)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_best_disjoint_skips_labelled_voxels_and_overlaps() -> None:
    lattice = UnitSpec("patch", patch_size=(4, 6, 4), stride=(2, 3, 2)).lattice("c", SHAPE)
    labelled = np.zeros(SHAPE, dtype=bool)
    labelled[0, 0, 0] = True  # touches only boxes starting at the origin
    priority = np.arange(len(lattice), dtype=float)[::-1].copy()  # lattice order
    kept = best_disjoint(lattice, priority, labelled, keep=None)
    units = [lattice[i] for i in kept]
    assert all(not labelled[u.region(SHAPE)].any() for u in units)
    assert all(disjoint(a, b, SHAPE) for i, a in enumerate(units) for b in units[i + 1 :])
    assert lattice[0] not in units and units[0] == lattice[1]  # the best unit overlaps the labelled voxel
    assert best_disjoint(lattice, priority, labelled, keep=2) == kept[:2]
    seeds = {"a": 1, "b": 2}
    first = random_candidates(
        UnitSpec("patch", patch_size=(4, 6, 4), stride=(2, 3, 2)),
        ["a", "b"],
        lambda c: SHAPE,
        lambda c: labelled,
        seeds.__getitem__,
    )
    again = random_candidates(
        UnitSpec("patch", patch_size=(4, 6, 4), stride=(2, 3, 2)),
        ["a", "b"],
        lambda c: SHAPE,
        lambda c: labelled,
        seeds.__getitem__,
    )
    assert first == again and {u.case_id for u in first} == {"a", "b"}


def test_costs_worked_out_by_hand() -> None:
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[1:3, 2:5, 1:2] = 1  # 2 * 3 * 1 = 6 foreground voxels, all inside the patch below
    patch = Unit("c", "patch", ((0, 4), (0, 6), (0, 4)))
    # planned voxels of 1.5 mm³ on a scan whose own voxels are 0.5 mm³: a planned voxel is 3 native ones
    costs = unit_costs(CostContext(patch, SHAPE, 0, label, voxel_mm3=1.5, native_voxel_mm3=0.5))
    assert costs == {
        "volumes": 96 / 768,
        "slices": 4.0,
        "voxels": 96.0,
        "foreground_voxels": 90 + FOREGROUND_WEIGHT * 6,
        "foreground": 6.0,
        "native_voxels": 288.0,
        "mm3": 144.0,
    }
    assert unit_costs(CostContext(slice_unit("c", 1, 3, SHAPE), SHAPE, 1, label)) == {
        "volumes": 64 / 768,
        "slices": 1.0,
        "voxels": 64.0,
        "foreground_voxels": 62 + FOREGROUND_WEIGHT * 2,  # slice h=3 crosses the block at d=1..2, w=1
        "foreground": 2.0,
        "native_voxels": 64.0,
        "mm3": 64.0,
    }
    with pytest.raises(ValueError, match="needs its label"):
        unit_costs(CostContext(patch, SHAPE))


def requested(*keys: str) -> list[Choice]:
    """The loop's request: each unit key as a choice in rank order."""
    return [Choice(key, None, rank) for rank, key in enumerate(keys)]


def test_simulated_oracle_reveals_exactly_the_requested_units() -> None:
    truth = np.random.default_rng(0).integers(0, 3, size=SHAPE).astype(np.uint8)
    oracle = SimulatedOracle(lambda case_id: truth)
    with pytest.raises(OracleError, match="never requested"):
        oracle.label("c")
    patch = Unit("c", "patch", ((0, 4), (0, 6), (0, 4)))
    oracle.request(1, requested(patch.key, "c@slice:0:6"))
    revealed = oracle.label("c")
    mask = np.zeros(SHAPE, dtype=bool)
    mask[0:4, 0:6, 0:4] = True
    mask[6] = True
    np.testing.assert_array_equal(revealed[mask], truth[mask])
    assert (revealed[~mask] == IGNORE).all()
    np.testing.assert_array_equal(partial_label(truth, [patch, slice_unit("c", 0, 6, SHAPE)]), revealed)
    oracle.request(2, requested("c"))  # the whole volume
    np.testing.assert_array_equal(oracle.label("c"), truth)
    assert oracle.true_fractions([patch.key])[0][patch.key] == pytest.approx((truth[0:4, 0:6, 0:4] > 0).mean())


def test_border_fraction_counts_foreground_voxels_with_a_background_neighbour() -> None:
    truth = np.zeros(SHAPE, dtype=np.uint8)
    truth[2:5, 3:6, 2:5] = 1  # a 3x3x3 cube: 26 border voxels around 1 interior voxel
    oracle = SimulatedOracle(lambda case_id: truth)
    foreground, border = oracle.true_fractions(["c"])
    assert border["c"] == pytest.approx(26 / truth.size)
    assert foreground["c"] == pytest.approx(27 / truth.size)


def test_partial_loss_equals_dice_ce_on_full_labels_and_ignores_unlabelled_voxels() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, *SHAPE, generator=generator)
    labels = torch.randint(0, 3, (2, 1, *SHAPE), generator=generator)
    full = PartialDiceCELoss()(logits, labels)
    torch.testing.assert_close(full, DiceCELoss(to_onehot_y=True, softmax=True)(logits, labels), rtol=0, atol=0)

    partial = labels.clone()
    partial[:, :, 4:] = IGNORE
    changed = logits.clone()
    changed[:, :, 4:] = torch.randn(2, 3, 4, *SHAPE[1:], generator=generator) * 5  # only unlabelled voxels move
    loss = PartialDiceCELoss()(logits, partial)
    torch.testing.assert_close(PartialDiceCELoss()(changed, partial), loss)

    # a box-shaped labelled region: exactly DiceCELoss on that box alone (no unlabelled voxel counts as background)
    box = (slice(None), slice(None), slice(0, 4))
    on_box = DiceCELoss(to_onehot_y=True, softmax=True)(logits[box], labels[box])
    torch.testing.assert_close(loss, on_box)

    # nnU-Net's batch Dice for partial labels: foreground classes summed over the batch, still only labelled voxels
    batch_reference = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    batch_loss = PartialDiceCELoss(batch_dice=True)
    torch.testing.assert_close(batch_loss(logits, labels), batch_reference(logits, labels), rtol=0, atol=0)
    torch.testing.assert_close(batch_loss(logits, partial), batch_reference(logits[box], labels[box]))
    torch.testing.assert_close(batch_loss(changed, partial), batch_loss(logits, partial))

    # the cross-entropy term is the mean over labelled voxels only (float64 reference)
    log_p = torch.log_softmax(logits.double(), dim=1).numpy()
    lab = partial[:, 0].numpy()
    picked = [log_p[b, lab[b, d, h, w], d, h, w] for b, d, h, w in zip(*np.nonzero(lab != IGNORE), strict=True)]
    dice_only = loss - torch.nn.functional.cross_entropy(logits, partial[:, 0], ignore_index=IGNORE)
    assert float(loss - dice_only) == pytest.approx(-np.mean(picked), rel=1e-5)
