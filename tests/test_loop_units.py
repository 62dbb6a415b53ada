"""Real hippocampus runs with slice and patch queries: partial labels, disjoint units, costs, and no leakage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from activeseg.acquisition.moments import Moments
from activeseg.acquisition.registry import STRATEGIES
from activeseg.acquisition.scorers import strategy_maps
from activeseg.acquisition.units import IGNORE, disjoint, unit_from_key
from activeseg.config import ConfigError, RunConfig
from activeseg.data.splits import RunData, open_data
from activeseg.engine import loop as loop_module
from activeseg.engine.inference import predict_volume
from activeseg.engine.loop import ActiveLearningLoop, RunError
from activeseg.engine.model import build_model, load_weights
from activeseg.engine.pool import Pool, labelled_voxels
from activeseg.engine.pseudo import threshold_ladder
from activeseg.engine.run import adopt_round_zero, create_run, make_oracle, resume_run, start_run
from activeseg.engine.training import train
from activeseg.plots import plot_curves
from activeseg.progress import SilentReporter
from activeseg.rundir.curves import read_curve
from activeseg.rundir.layout import RunLayout
from activeseg.rundir.ledger import Ledger

from _support import requires_hippocampus, tiny_config

pytestmark = [requires_hippocampus, pytest.mark.slow]

PATCH = {"kind": "patch", "patch_size": [20, 28, 20]}  # 1/8 of a volume: a 2x2x2 grid


def patch_config(cache: Path, **sections: Any) -> RunConfig:
    base: dict[str, dict[str, Any]] = {
        "data": {"max_cases": 16, "test_size": 4},
        "train": {"iterations": 6},
        "strategy": {"name": "entropy", "mc_samples": 3, "mc_batch_size": 3},
        "unit": PATCH,
        "loop": {"initial": 6, "per_round": 6, "rounds": 2},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return tiny_config(cache, **base)


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    return start_run(patch_config(cache), tmp_path_factory.mktemp("runs") / "patches")


def units_by_case(run_dir: Path) -> dict[str, list[str]]:
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        keys = ledger.labelled_units()
    grouped: dict[str, list[str]] = {}
    for key in keys:
        grouped.setdefault(key.split("@")[0], []).append(key)
    return grouped


def test_patch_queries_label_disjoint_patches_and_record_their_cost(patch_run: Path, cache: Path) -> None:
    with Ledger(patch_run / "ledger.sqlite") as ledger:
        labels = ledger.labels()
        assert ledger.stop_reason() == "budget reached: 2 acquisition rounds"
    assert [sum(1 for x in labels if x.round == r) for r in range(3)] == [6, 6, 6]
    assert all("@patch:" in x.unit for x in labels)
    data = open_data(patch_config(cache), SilentReporter())
    for case_id, keys in units_by_case(patch_run).items():
        shape = data.shape_of(case_id)
        units = [unit_from_key(k, shape) for k in keys]
        assert all(disjoint(a, b, shape) for i, a in enumerate(units) for b in units[i + 1 :])
    for x in labels:  # a patch clipped at the grid's end costs its own voxels
        shape = data.shape_of(x.case_id)
        voxels = unit_from_key(x.unit, shape).voxels(shape)
        assert 0 < voxels <= 20 * 28 * 20 and x.cost["voxels"] == voxels
        assert x.cost["volumes"] == voxels / np.prod(shape) and x.cost["mm3"] == voxels  # 1 mm voxels
        assert x.cost["foreground_voxels"] >= x.cost["voxels"]
    with Ledger(patch_run / "ledger.sqlite") as ledger:  # the labelled voxels of any round, from the ledger alone
        for r in range(3):
            count = sum(int(labelled_voxels(ledger, c, data.shape_of(c), r).sum()) for c in ledger.labelled_ids(r))
            assert count == sum(x.cost["voxels"] for x in labels if x.round <= r)
    curve = read_curve(patch_run)
    assert curve.unit == "patch" and curve.n_labelled == [6, 12, 18]
    assert curve.budget("voxels") == [sum(x.cost["voxels"] for x in labels if x.round <= r) for r in range(3)]
    # each round's scores name only candidate patches that overlap nothing labelled before that round
    for r in (0, 1):
        scores = (patch_run / "rounds" / f"round_{r:03d}" / "scores.csv").read_text().splitlines()[1:]
        earlier = [unit_from_key(x.unit, data.shape_of(x.case_id)) for x in labels if x.round <= r]
        for row in scores:
            key = row.split(",")[0]
            shape = data.shape_of(key.split("@")[0])
            unit = unit_from_key(key, shape)
            assert all(disjoint(unit, e, shape) for e in earlier if e.case_id == unit.case_id)


class CorruptedOutsideQueries(RunData):
    """The same data, but every pool label is scrambled outside the units a reference run queried."""

    def __init__(self, data: RunData, queried: dict[str, list[str]]) -> None:
        super().__init__(data.pool, data.test, data.cache, data.plan, data.validation)
        object.__setattr__(self, "queried", queried)

    def ground_truth(self, case_id: str) -> np.ndarray:
        truth = super().ground_truth(case_id)
        if case_id not in self.pool.ids:
            return truth  # the test split stays clean: evaluation must be comparable
        keep = np.zeros(truth.shape, dtype=bool)
        for key in self.queried.get(case_id, []):  # type: ignore[attr-defined]
            keep[unit_from_key(key, truth.shape).region(truth.shape)] = True
        noise = np.random.default_rng(abs(hash(case_id)) % 2**32).integers(0, 3, truth.shape).astype(truth.dtype)
        return np.where(keep, truth, noise)


def test_no_label_outside_the_queried_units_reaches_training(patch_run: Path, cache: Path, tmp_path: Path) -> None:
    config = patch_config(cache)
    corrupted = CorruptedOutsideQueries(open_data(config, SilentReporter()), units_by_case(patch_run))
    assert not np.array_equal(
        corrupted.ground_truth(corrupted.pool.ids[0]), RunData.ground_truth(corrupted, corrupted.pool.ids[0])
    )
    run_dir, _ = create_run(config, tmp_path / "corrupted", data=corrupted)
    resume_run(run_dir, data=corrupted)
    for r in range(3):
        name = f"rounds/round_{r:03d}"
        for artifact in ("metrics.json", "scores.csv", "selection.json"):
            if (patch_run / name / artifact).exists():
                assert (run_dir / name / artifact).read_bytes() == (patch_run / name / artifact).read_bytes()
        clean = torch.load(patch_run / name / "model.pt", weights_only=True)
        dirty = torch.load(run_dir / name / "model.pt", weights_only=True)
        assert all(torch.equal(clean[k], dirty[k]) for k in clean)


def test_pseudo_labels_change_only_the_rounds_after_round_0(patch_run: Path, cache: Path, tmp_path: Path) -> None:
    config = patch_config(cache, train={"pseudo_label_threshold": 0.5})
    run_dir, _ = create_run(config, tmp_path / "pseudo")
    assert adopt_round_zero(patch_run, run_dir)  # the threshold cannot change round 0, so its model is shared
    resume_run(run_dir)
    layout, data = RunLayout(run_dir), open_data(config, SilentReporter())
    with layout.open_ledger() as ledger:
        loop = ActiveLearningLoop(
            config, layout, data, ledger, make_oracle(config, layout, data, ledger), SilentReporter()
        )
        labelled = ledger.labelled_ids()
        given = [loop.example(c) for c in labelled]
        trained = loop.training_examples(2, labelled)  # taught by round 1's model
        before_round_1 = loop.training_examples(0, labelled)
    assert not layout.teacher_votes(2).exists()  # read once per case, so not kept
    added = 0
    for g, t, zero in zip(given, trained, before_round_1, strict=True):
        known = g.label_D_H_W != IGNORE
        np.testing.assert_array_equal(t.label_D_H_W[known], g.label_D_H_W[known])  # the annotator's voxels kept
        np.testing.assert_array_equal(zero.label_D_H_W, g.label_D_H_W)  # no teacher in round 0
        added += int((t.label_D_H_W != IGNORE).sum() - known.sum())
    assert added > 0  # the teacher is at least half sure somewhere
    assert (run_dir / "rounds/round_000/metrics.json").read_bytes() == (
        patch_run / "rounds/round_000/metrics.json"
    ).read_bytes()
    clean = torch.load(patch_run / "rounds/round_001/model.pt", weights_only=True)
    pseudo = torch.load(run_dir / "rounds/round_001/model.pt", weights_only=True)
    assert not all(torch.equal(clean[k], pseudo[k]) for k in clean)


def test_pool_pseudo_labels_add_every_unlabelled_case_from_round_1(
    patch_run: Path, cache: Path, tmp_path: Path
) -> None:
    config = patch_config(cache, train={"pseudo_label_threshold": 0.5, "pseudo_label_pool": True})
    run_dir, _ = create_run(config, tmp_path / "pool")
    assert adopt_round_zero(patch_run, run_dir)  # the pool's pseudo-labels cannot change round 0 either
    resume_run(run_dir)
    assert not list(run_dir.glob("rounds/*/pseudo-labels"))  # removed once each round has trained
    layout, data = RunLayout(run_dir), open_data(config, SilentReporter())
    with layout.open_ledger() as ledger:
        loop = ActiveLearningLoop(
            config, layout, data, ledger, make_oracle(config, layout, data, ledger), SilentReporter()
        )
        labelled = ledger.labelled_ids()
        trained = loop.training_examples(2, labelled)  # taught by round 1's model
        assert len(loop.training_examples(0, labelled)) == len(labelled)  # no teacher in round 0
    unlabelled = [c for c in data.pool.ids if c not in labelled]
    assert unlabelled and len(trained) == len(labelled) + len(unlabelled)
    teacher = build_model(config.model, data.plan)
    load_weights(teacher, layout.model(1))
    for case_id, example in zip(unlabelled, trained[len(labelled) :], strict=True):
        assert isinstance(example.label_D_H_W, np.memmap)  # read from disk, not held in memory
        probs = predict_volume(teacher, data.image(case_id), data.plan.patch_size, config.inference).numpy()
        expected = np.where(probs.max(axis=0) >= 0.5, probs.argmax(axis=0), IGNORE)
        np.testing.assert_array_equal(example.label_D_H_W, expected)  # the teacher's confident voxels, nothing else
    with pytest.raises(ConfigError, match="pseudo_label_threshold"):
        patch_config(cache, train={"pseudo_label_pool": True})


def test_a_mean_teacher_run_trains_its_own_round_0_on_the_whole_pool(
    patch_run: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pools: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        pools.append(len(kwargs["unlabelled"]))
        return train(*args, **kwargs)

    monkeypatch.setattr("activeseg.engine.loop.train", counted)
    config = patch_config(cache, train={"mean_teacher": True})
    run_dir, _ = create_run(config, tmp_path / "mean-teacher")
    assert config.train.round_zero().mean_teacher
    assert not adopt_round_zero(patch_run, run_dir)  # round 0 trains with the teacher: not the plain run's round 0
    resume_run(run_dir)
    layout = RunLayout(run_dir)
    with layout.open_ledger() as ledger:
        assert [record.round for record in ledger.rounds()] == [0, 1, 2]
        pool = len(ledger.split("pool"))
    assert pools == [pool] * 3  # every pool case, labelled or not, in every round
    clean = torch.load(patch_run / "rounds/round_000/model.pt", weights_only=True)
    taught = torch.load(layout.model(0), weights_only=True)
    assert not all(torch.equal(clean[k], taught[k]) for k in clean)


def new_voxels(ledger: Ledger, case_id: str, shape: tuple[int, ...], r: int) -> np.ndarray:
    """The voxels of ``case_id`` labelled in round r."""
    new: np.ndarray = labelled_voxels(ledger, case_id, shape, r) & ~labelled_voxels(ledger, case_id, shape, r - 1)
    return new


def test_calibrated_pseudo_labels_are_checked_against_the_units_each_round_labels(
    patch_run: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = patch_config(cache, train={"pseudo_label_threshold": 0.5, "pseudo_label_calibrate": True})
    run_dir, _ = create_run(config, tmp_path / "calibrated")
    assert adopt_round_zero(patch_run, run_dir)
    teacher_calls = []

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        teacher_calls.append(1)
        return predict_volume(*args, **kwargs)

    monkeypatch.setattr(loop_module, "predict_volume", counted)
    resume_run(run_dir)
    assert not list(run_dir.glob("rounds/*/teacher-votes"))  # scratch, removed once each round is done
    layout, data = RunLayout(run_dir), open_data(config, SilentReporter())
    predictions_needed = 0
    for r in (1, 2):
        check = json.loads(layout.calibration(r).read_text())
        assert check["thresholds"] == pytest.approx(threshold_ladder(0.5))
        with layout.open_ledger() as ledger:
            new = [record for record in ledger.labels(r) if record.round == r]
            checked = {c: new_voxels(ledger, c, data.shape_of(c), r) for c in {record.case_id for record in new}}
            labelled = {record.case_id for record in ledger.labels(r)}
        assert check["units"] == len(new) == 6
        # the check's cases are labelled cases too: each is predicted once, for the check and its pseudo-labels
        predictions_needed += len(checked) if check["threshold"] is None else len(labelled)
        teacher = build_model(config.model, data.plan)
        load_weights(teacher, layout.model(r - 1))
        sure, said, truth = [], [], []  # the teacher's confidence and class, and the annotator's, on the new units
        for case_id, mask in sorted(checked.items()):
            probs = predict_volume(teacher, data.image(case_id), data.plan.patch_size, config.inference).double()
            sure.append(probs.numpy().max(axis=0)[mask])
            said.append(probs.numpy().argmax(axis=0)[mask])
            truth.append(np.asarray(data.ground_truth(case_id))[mask])
        top, teacher_class, annotator_class = (np.concatenate(v) for v in (sure, said, truth))
        for t, threshold in enumerate(check["thresholds"]):
            keep = top >= threshold
            for c in (1, 2):
                a, b = teacher_class[keep] == c, annotator_class[keep] == c
                recorded = check["dice"][t][c]
                if a.sum() + b.sum() == 0:
                    assert recorded is None
                else:
                    assert recorded == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), abs=1e-9)
        passing = [
            threshold
            for t, threshold in enumerate(check["thresholds"])
            if all(d is None or d >= 0.5 for d in check["dice"][t][1:])
        ]
        has_foreground = bool((annotator_class[top >= 0.5] > 0).any())
        assert check["threshold"] == (min(passing) if passing and has_foreground else None)
    assert len(teacher_calls) == predictions_needed
    clean = torch.load(patch_run / "rounds/round_001/model.pt", weights_only=True)
    calibrated = torch.load(run_dir / "rounds/round_001/model.pt", weights_only=True)
    round_1 = json.loads(layout.calibration(1).read_text())["threshold"]
    assert all(torch.equal(clean[k], calibrated[k]) for k in clean) == (round_1 is None)  # no check passed: no labels
    with pytest.raises(ConfigError, match="pseudo_label_calibrate"):
        patch_config(cache, train={"pseudo_label_calibrate": True})


def test_slice_queries_with_a_multi_map_strategy_and_a_voxel_budget(cache: Path, tmp_path: Path) -> None:
    config = patch_config(
        cache,
        strategy={"name": "clasp-pe", "beta": 2.0},
        unit={"kind": "slice", "axis": 0, "cost": "voxels", "keep": 4},
        loop={"initial": 8, "per_round": 50, "rounds": 1, "round_budget": 5 * 50 * 36},  # about 5 slices' voxels
    )
    run_dir = start_run(config, tmp_path / "slices")
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        labels = ledger.labels()
    new = [x for x in labels if x.round == 1]
    assert sum(1 for x in labels if x.round == 0) == 8
    assert 3 <= len(new) < 50 and sum(x.cost["voxels"] for x in new) <= 5 * 50 * 36  # the budget, not per_round
    assert all("@slice:0:" in x.unit and x.cost["slices"] == 1.0 for x in labels)
    selection = json.loads((run_dir / "rounds" / "round_000" / "selection.json").read_text())
    assert [c["rank"] for c in selection] == list(range(len(new)))
    scores = (run_dir / "rounds" / "round_000" / "scores.csv").read_text().splitlines()
    assert scores[0] == "unit,score,score_1,score_2"  # PE, then PE·p̄ per foreground class
    per_case: dict[str, int] = {}
    for row in scores[1:]:
        per_case[row.split("@")[0]] = per_case.get(row.split("@")[0], 0) + 1
    assert max(per_case.values()) <= 4  # unit.keep candidates per volume
    png = plot_curves([read_curve(run_dir)], tmp_path / "curve.png", cost="voxels")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_foreground_weighted_budget_caps_a_simulated_round(cache: Path, tmp_path: Path) -> None:
    budget = 3.5 * 11200  # three and a half patches of pure background; foreground voxels cost 3x
    config = patch_config(
        cache,
        train={"iterations": 2},
        unit={"cost": "foreground_voxels"},
        loop={"initial": 4, "per_round": 8, "rounds": 1, "round_budget": budget},
    )
    run_dir = start_run(config, tmp_path / "weighted")
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        new = [x for x in ledger.labels() if x.round == 1]
    spent = sum(x.cost["foreground_voxels"] for x in new)
    assert 1 <= len(new) < 8 and spent <= budget
    scores = (run_dir / "rounds" / "round_000" / "scores.csv").read_text().splitlines()[1:]
    ranked = sorted((-float(row.split(",")[1]), row.split(",")[0]) for row in scores)
    assert [key for _, key in ranked[: len(new)]] == [x.unit for x in sorted(new, key=lambda x: x.rank)]


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"strategy": {"reduction": "top_q"}}, "top_q applies to whole volumes"),
        ({"loop": {"initial_strategy": "representative"}}, "representative cold start chooses whole volumes"),
        (
            {
                "unit": {"kind": "volume", "cost": "foreground_voxels"},
                "loop": {"round_budget": 1e5},
                "oracle": {"kind": "human"},
            },
            "cannot cap a human round",
        ),
        ({"unit": {"stride": [30, 5, 5]}}, "unit.stride"),
        ({"unit": {"cost": "hours"}}, "unknown cost 'hours'; registered: volumes, slices, voxels"),
    ],
)
def test_unit_configs_are_validated(cache: Path, sections: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        patch_config(cache, **sections)


@requires_hippocampus
def test_initial_units_are_counted_against_the_pools_units_not_its_volumes(cache: Path, tmp_path: Path) -> None:
    # 12 pool volumes, each a 2x2x2 grid of patches: 96 patches, far more than the 12 volumes
    create_run(patch_config(cache, loop={"initial": 96}), tmp_path / "all")
    with pytest.raises(RunError, match=r"loop.initial=97 but the pool holds only 96 units"):
        create_run(patch_config(cache, loop={"initial": 97}), tmp_path / "too-many")
    assert not (tmp_path / "too-many").exists()


class _NothingLabelled(Pool):
    """A pool whose cases have no labelled voxel yet: ``unit_candidates`` reads nothing else of the run."""

    def labelled_voxels(self, case_id: str) -> np.ndarray:
        return np.zeros((3, 2, 2), dtype=bool)


@pytest.mark.parametrize(("name", "kept"), [("clasp-pe", "0-2"), ("cost-clasp-pe", "1-3")])
def test_a_volumes_overlapping_candidates_are_kept_by_the_strategys_priority(name: str, kept: str) -> None:
    """Two patches of a 3×2×2 volume share its middle slice (confident background). The first also holds slice 0:
    one voxel at p̄₁ = 0.5 and three of confident foreground; the second slice 2: one voxel at p̄₁ = 0.3 and three of
    confident background. By mean PE the first leads (0.087 against 0.076); per expected foreground-weighted voxel
    the second (0.611 / 8.6 against 0.693 / 15). Overlapping, only one is kept."""
    p1_D_H_W = torch.full((3, 2, 2), 1e-6)
    p1_D_H_W[0] = 1 - 1e-6
    p1_D_H_W[0, 0, 0], p1_D_H_W[2, 0, 0] = 0.5, 0.3
    mean_probs_C_D_H_W = torch.stack([1 - p1_D_H_W, p1_D_H_W])
    config = RunConfig().override(
        {"strategy.name": name, "unit.kind": "patch", "unit.patch_size": [2, 2, 2], "unit.stride": [1, 2, 2]}
    )
    strategy = STRATEGIES[name]
    pool = _NothingLabelled(config, None, None, None, strategy, SilentReporter())  # type: ignore[arg-type]
    assert strategy.scorer is not None
    maps = strategy_maps(strategy.scorer, Moments.of(mean_probs_C_D_H_W[None]))
    (candidate,) = pool.unit_candidates("a", maps, mean_probs_C_D_H_W)
    assert candidate[0] == f"a@patch:{kept}:0-2:0-2"
