"""Cold start: a representative round-0 set covers the pool better than random ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from activeseg.acquisition.cold_start import initial_selection, intensity_features, representative_subset
from activeseg.config import config_from_dict
from activeseg.data.phantom import make_phantom_dataset
from activeseg.engine.run import create_run
from activeseg.rundir.ledger import Ledger

from _support import phantom_raw


def coverage_radius(features_N_F: np.ndarray, chosen: list[int]) -> float:
    """The largest distance from any unit to its nearest chosen unit (lower = better coverage)."""
    return float(cdist(features_N_F, features_N_F[chosen]).min(axis=1).max())


def test_intensity_features_by_hand() -> None:
    image = np.zeros((1, 4, 4, 4), np.float32)
    image[0, :2] = 1.0  # half the voxels at 1, half at 0; octants with i = 0 are all 1
    features = intensity_features(image)
    assert features.shape == (24,)
    assert features[:16].sum() == pytest.approx(1.0)
    assert features[np.digitize(0.0, np.linspace(-3, 3, 17)) - 1] == pytest.approx(0.5)
    np.testing.assert_allclose(features[16:], [1, 1, 1, 1, 0, 0, 0, 0])


def test_representative_subset_covers_better_than_random() -> None:
    rng = np.random.default_rng(0)
    common = rng.normal(size=(40, 5))
    rare = rng.normal(loc=8.0, size=(4, 5))  # a rare, far-away sub-population
    features = np.vstack([common, rare])
    chosen = representative_subset(features, 5).tolist()
    assert any(i >= 40 for i in chosen)  # the rare group is represented
    standardised = (features - features.mean(axis=0)) / features.std(axis=0)
    random_radii = [coverage_radius(standardised, rng.choice(44, 5, replace=False).tolist()) for _ in range(50)]
    assert coverage_radius(standardised, chosen) <= np.percentile(random_radii, 10)


def test_representative_cold_start_in_a_run(tmp_path: Path) -> None:
    root = make_phantom_dataset(tmp_path / "phantoms", 14, seed=4)
    raw = phantom_raw(root, tmp_path / "cache")
    raw["loop"] = {**raw["loop"], "initial": 3, "initial_strategy": "representative"}
    run_dir, data = create_run(config_from_dict(raw), tmp_path / "run")
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        labels = ledger.labels()
        pool = ledger.split("pool")
    assert {r.strategy for r in labels} == {"initial-representative"}
    expected = initial_selection("representative", pool, 3, np.random.default_rng(0), data.image)
    assert sorted(r.case_id for r in labels) == expected  # deterministic: no randomness involved
