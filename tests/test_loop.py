"""Real active-learning rounds on a hippocampus subset: the loop, determinism, resume after SIGKILL."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from activeseg.acquisition.registry import STRATEGIES
from activeseg.config import save_config
from activeseg.demo import run_demo
from activeseg.engine.loop import HALT_AT, RunError, Timer
from activeseg.engine.run import adopt_round_zero, create_run, resume_run, start_run
from activeseg.rundir.ledger import Ledger
from activeseg.seeds import derive_seed, round_seeds

from _support import hippocampus_root, requires_hippocampus, tiny_config

pytestmark = [requires_hippocampus, pytest.mark.slow]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    """One uninterrupted 2-round BALD run, shared by the tests below."""
    run_dir = tmp_path_factory.mktemp("runs") / "reference"
    start_run(tiny_config(cache), run_dir)
    return run_dir


def ledger_rows(run_dir: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Labels and rounds without their wall-clock timestamps."""
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    labels = db.execute("SELECT case_id, round, strategy, score, rank FROM labels ORDER BY case_id").fetchall()
    rounds = db.execute("SELECT round, n_labelled, seeds, mean_dice, dice FROM rounds ORDER BY round").fetchall()
    db.close()
    return labels, rounds


def round_artifacts(run_dir: Path) -> dict[str, str]:
    """Every deterministic per-round file (not timings, not checkpoints' bytes)."""
    names = ("metrics.json", "scores.csv", "selection.json", "seeds.json")
    files = sorted(p for p in (run_dir / "rounds").rglob("*") if p.name in names)
    return {str(p.relative_to(run_dir)): p.read_text() for p in files}


def test_two_rounds_label_the_top_scoring_pool_cases(reference_run: Path) -> None:
    with Ledger(reference_run / "ledger.sqlite") as ledger:
        pool, test = set(ledger.split("pool")), set(ledger.split("test"))
        labels = ledger.labels()
        rounds = ledger.rounds()
        assert ledger.stop_reason() == "budget reached: 2 acquisition rounds"
    assert (len(pool), len(test)) == (18, 6)
    assert [sum(1 for r in labels if r.round == i) for i in range(3)] == [4, 3, 3]
    assert {r.case_id for r in labels} <= pool
    assert [r.n_labelled for r in rounds] == [4, 7, 10]
    assert all(0.0 <= r.mean_dice <= 1.0 for r in rounds)
    assert rounds[0].seeds == round_seeds(7, 0)

    for r in (0, 1):
        round_dir = reference_run / "rounds" / f"round_{r:03d}"
        with (round_dir / "scores.csv").open() as handle:
            scores = {row["unit"]: float(row["score"]) for row in csv.DictReader(handle)}
        labelled_before = {x.case_id for x in labels if x.round <= r}
        assert set(scores) == pool - labelled_before  # only the unlabelled pool is scored
        chosen = [c["unit"] for c in json.loads((round_dir / "selection.json").read_text())]
        assert chosen == sorted(scores, key=lambda c: (-scores[c], c))[:3]
        assert {x.case_id for x in labels if x.round == r + 1} == set(chosen)
        metrics = json.loads((round_dir / "metrics.json").read_text())
        assert set(metrics["per_case"]) == test
        assert metrics["dice"]["mean_foreground"] == pytest.approx(
            np.mean([metrics["dice"]["class_1"], metrics["dice"]["class_2"]])
        )
    assert (reference_run / "curve.png").stat().st_size > 1000
    assert len((reference_run / "curve.csv").read_text().splitlines()) == 4


def test_same_config_gives_identical_selections_and_metrics(reference_run: Path, cache: Path, tmp_path: Path) -> None:
    again = start_run(tiny_config(cache), tmp_path / "again")
    assert ledger_rows(again) == ledger_rows(reference_run)
    assert round_artifacts(again) == round_artifacts(reference_run)


# What a kill at each halt point of round 1 leaves behind: round 1's artifacts that exist (the rest do not yet).
HALTS = {
    "round 1: training": ("seeds.json",),
    "round 1: scored": ("seeds.json", "model.pt", "metrics.json", "scores.csv"),
    "round 1: selected": ("seeds.json", "model.pt", "metrics.json", "scores.csv", "selection.json"),
}


@pytest.mark.parametrize("halt", list(HALTS))
def test_resume_after_sigkill_mid_round_matches_uninterrupted(
    halt: str, reference_run: Path, cache: Path, tmp_path: Path
) -> None:
    config_path = tmp_path / "config.yaml"
    save_config(tiny_config(cache), config_path)
    run_dir, halted, log = tmp_path / "killed", tmp_path / "halted", tmp_path / "stderr.txt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", HALT_AT: halt, "ACTIVESEG_HALT_FILE": str(halted)}
    command = [sys.executable, "-m", "activeseg.cli", "run", str(config_path), "--run-dir", str(run_dir)]
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.monotonic() + 240
            while not halted.exists():  # the run waits at the halt point once the file is there
                assert process.poll() is None, f"the run ended before {halt!r}: {log.read_text()}"
                assert time.monotonic() < deadline, f"the run never reached {halt!r}"
                time.sleep(0.05)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL

    round_one = run_dir / "rounds" / "round_001"
    everything = HALTS["round 1: selected"]
    assert sorted(p.name for p in round_one.iterdir() if p.name in everything) == sorted(HALTS[halt])
    assert not (run_dir / "rounds" / "round_002").exists()
    assert len(ledger_rows(run_dir)[0]) == 7  # round 1's labels are in, round 2's are not

    assert resume_run(run_dir) == "budget reached: 2 acquisition rounds"
    assert ledger_rows(run_dir) == ledger_rows(reference_run)
    assert round_artifacts(run_dir) == round_artifacts(reference_run)


def test_seeds_are_named_and_stable() -> None:
    assert derive_seed(0, "train", 1) == derive_seed(0, "train", 1)
    assert len({derive_seed(0, "train", 1), derive_seed(0, "train", 2), derive_seed(1, "train", 1)}) == 3
    assert 0 <= derive_seed(123, "x") < 2**63


def test_stage_times_survive_a_resume_that_only_reads_their_artifacts(tmp_path: Path) -> None:
    path, model, scores = tmp_path / "timings.json", tmp_path / "model.pt", tmp_path / "scores.csv"
    first = Timer(path)
    with first("train_s", model):
        model.write_bytes(b"weights")
    with first("select_s"):
        pass
    measured = json.loads(path.read_text())  # written as each stage ends, not at the end of the round
    assert set(measured) == {"train_s", "select_s"} and measured["train_s"] >= 0
    again = Timer(path)  # the round entered again: training only loads model.pt; scoring was never finished
    with again("train_s", model):
        time.sleep(0.01)
    with again("score_s", scores):
        scores.write_text("score")
    kept = json.loads(path.read_text())
    assert kept["train_s"] == measured["train_s"] and kept["select_s"] == measured["select_s"] and "score_s" in kept
    with Timer(tmp_path / "other.json")("evaluate_s", model):  # made by an attempt that recorded no time: none
        pass
    assert not (tmp_path / "other.json").exists()


def test_refuses_to_overwrite_or_resume_a_non_run(reference_run: Path, cache: Path, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="already exists"):
        start_run(tiny_config(cache), reference_run)
    with pytest.raises(RunError, match="not an activeseg run directory"):
        resume_run(tmp_path)


def test_round_zero_is_shared_only_between_equivalent_runs(reference_run: Path, cache: Path, tmp_path: Path) -> None:
    random_run, _ = create_run(tiny_config(cache, strategy={"name": "random"}), tmp_path / "random")
    other_seed, _ = create_run(tiny_config(cache, seed=8), tmp_path / "seed8")
    warm, _ = create_run(tiny_config(cache, train={"warm_start": True}), tmp_path / "warm")
    assert not adopt_round_zero(reference_run, other_seed)
    assert adopt_round_zero(reference_run, warm)  # warm start acts from round 1
    assert adopt_round_zero(reference_run, random_run)
    assert not adopt_round_zero(reference_run, random_run)  # only into a fresh run
    resume_run(random_run)
    zero = "rounds/round_000/metrics.json"
    assert (random_run / zero).read_text() == (reference_run / zero).read_text()
    assert ledger_rows(random_run)[1][0] == ledger_rows(reference_run)[1][0]
    with Ledger(random_run / "ledger.sqlite") as ledger:
        assert {r.strategy for r in ledger.labels() if r.round > 0} == {"random"}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_registered_strategy_runs_two_real_rounds(name: str, cache: Path, tmp_path: Path) -> None:
    config = tiny_config(
        cache,
        data={"max_cases": 16, "test_size": 4},
        train={"iterations": 4},
        strategy={"name": name, "mc_samples": 3, "mc_batch_size": 3, "beta": 2.0, "sketch_sites": 5},
    )
    run_dir = start_run(config, tmp_path / name)
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert [r.n_labelled for r in ledger.rounds()] == [4, 7, 10]
        new = [r for r in ledger.labels() if r.round > 0]
        assert {r.strategy for r in new} == {name}
        assert all((r.score is None) == (not STRATEGIES[name].needs_scores) for r in new)
    if STRATEGIES[name].sketch is not None:  # strategy.sketch_sites reaches the sketch: K=3, 5 sites, C=3
        with np.load(run_dir / "rounds" / "round_000" / "sketches.npz") as saved:
            assert saved["sketches"].shape == (8, 3, 5, 3)


def test_test_time_augmentation_source_in_a_real_run(cache: Path, tmp_path: Path) -> None:
    config = tiny_config(
        cache, data={"max_cases": 16, "test_size": 4}, train={"iterations": 4}, strategy={"uncertainty": "tta"}
    )
    run_dir = start_run(config, tmp_path / "tta")
    with (run_dir / "rounds" / "round_000" / "scores.csv").open() as handle:
        scores = [float(row["score"]) for row in csv.DictReader(handle)]
    assert len(scores) == 12 - 4 and all(s >= 0 for s in scores) and len(set(scores)) > 1


def test_deep_ensemble_trains_seeded_members_and_accounts_for_them(
    reference_run: Path, cache: Path, tmp_path: Path
) -> None:

    config = tiny_config(cache, strategy={"uncertainty": "ensemble", "ensemble_size": 3}, loop={"rounds": 1})
    run_dir = start_run(config, tmp_path / "ensemble")
    zero, last = run_dir / "rounds" / "round_000", run_dir / "rounds" / "round_001"
    assert sorted(p.name for p in zero.glob("*.pt")) == ["member_1.pt", "member_2.pt", "model.pt"]
    assert sorted(p.name for p in last.glob("*.pt")) == ["model.pt"]  # no scoring after the last round
    # member 0 is the round model every other source would train: same metrics as the MC-dropout reference
    assert (zero / "metrics.json").read_text() == (reference_run / "rounds/round_000/metrics.json").read_text()
    weights = [torch.load(zero / n, weights_only=True) for n in ("model.pt", "member_1.pt", "member_2.pt")]
    first = next(iter(weights[0]))
    assert not torch.equal(weights[0][first], weights[1][first])
    assert not torch.equal(weights[1][first], weights[2][first])
    timings = json.loads((zero / "timings.json").read_text())
    assert timings["ensemble_train_s"] > 0 and "ensemble_train_s" not in json.loads((last / "timings.json").read_text())
    with (zero / "scores.csv").open() as handle:
        scores = [float(row["score"]) for row in csv.DictReader(handle)]
    assert len(scores) == 14 and all(s >= 0 for s in scores) and len(set(scores)) > 1


def test_validation_plateau_stops_the_run_and_is_recorded(cache: Path, tmp_path: Path) -> None:
    config = tiny_config(
        cache,
        data={"max_cases": 20, "test_size": 4, "validation_size": 4},
        train={"iterations": 4},
        loop={"rounds": 3, "plateau_patience": 1, "plateau_min_delta": 1.0},  # no round can gain 1.0 Dice
    )
    run_dir = start_run(config, tmp_path / "plateau")
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        reason = ledger.stop_reason()
        rounds = ledger.rounds()
        pool, test, validation = (set(ledger.split(s)) for s in ("pool", "test", "validation"))
        labelled = set(ledger.labelled_ids())
    assert reason is not None and reason.startswith("validation plateau: best validation Dice of the last 1 round")
    assert len(rounds) == 2  # stopped after round 1, before spending the remaining budget
    assert (len(pool), len(test), len(validation)) == (12, 4, 4)
    assert not (validation & pool) and not (validation & test) and labelled <= pool
    for record in rounds:
        metrics = json.loads((run_dir / "rounds" / f"round_{record.round:03d}" / "metrics.json").read_text())
        assert record.dice["validation_mean_foreground"] == metrics["validation_dice"]
        assert set(metrics["per_case"]) == test  # the test metrics stay on the test split


def test_demo_end_to_end_on_a_tiny_config(cache: Path, tmp_path: Path) -> None:

    config = tiny_config(cache, data={"max_cases": 16, "test_size": 4}, train={"iterations": 4})
    result = run_demo(tmp_path / "demo", hippocampus_root(), config=config, full_data_iterations=4)
    assert [c.label for c in result.curves] == ["random", "entropy", "bald"]
    assert all(c.n_labelled == [4, 7, 10] for c in result.curves)
    assert len({c.mean_dice[0] for c in result.curves}) == 1  # round 0 is shared, so identical
    assert 0.0 <= result.full_data_dice <= 1.0 and result.full_data_volumes == 12
    for png in (result.curve_png, result.montage_png):
        assert png.read_bytes()[:4] == b"\x89PNG"
