"""``activeseg benchmark`` and ``activeseg report``: the config, a real tiny grid, resume, and Ray = sequential.

The grid tests train real (tiny) models on the hippocampus subset: 2 strategies × 2 seeds × 1 acquisition round, a
round 0 per seed and a full-data bound per seed. One grid runs sequentially, the same grid on a local 2-CPU Ray
instance must give byte-identical artifacts, and an interrupted run resumes (over a process pool) to the same bytes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import ray
import yaml
from typer.testing import CliRunner

from activeseg.bench.config import benchmark_from_dict, load_benchmark
from activeseg.bench.grid import BenchmarkError, plan, ray_session, resolve_paths, run_dir
from activeseg.bench.report import blocks
from activeseg.bench.stats import aubc, seeds_for_power
from activeseg.bench.tasks import adopt_finished
from activeseg.cli import app
from activeseg.config import ConfigError

from _support import REPO, benchmark_script, requires_hippocampus, tiny_config

runner = CliRunner()
STRATEGIES = ["foreground-random", "bald"]
SEEDS = [0, 1]
DETERMINISTIC = ("metrics.json", "scores.csv", "selection.json", "seeds.json", "curve.csv", "config.yaml")


def tiny_benchmark(cache: Path, **changes: Any) -> dict[str, Any]:
    run = tiny_config(
        cache, data={"max_cases": 14, "test_size": 4}, train={"iterations": 4}, strategy={"mc_samples": 3}
    ).to_dict()
    raw: dict[str, Any] = {
        "name": "tiny",
        "strategies": STRATEGIES,
        "seeds": SEEDS,
        "settings": {"4+3x1": {"loop.initial": 4, "loop.per_round": 3, "loop.rounds": 1}},
        "full_data": {"iterations": 4},
        "stats": {"bootstrap": 1000},
        "workers": 2,
        "ray": {"num_cpus": 2},
        "run": run,
    }
    return raw | changes


# --- the config (no data needed) ------------------------------------------------------------------------------------


def test_config_round_trips_and_plans_a_paired_grid(tmp_path: Path) -> None:
    config = benchmark_from_dict(tiny_benchmark(tmp_path))
    assert benchmark_from_dict(config.to_dict()) == config
    round_zero, runs = plan(config, tmp_path / "results")
    assert [(t.kind, t.seed) for t in round_zero] == [("round0", 0), ("round0", 1)]
    assert [(t.kind, t.seed, t.strategy) for t in runs] == [
        ("full-data", 0, None),
        ("full-data", 1, None),
        ("run", 0, "foreground-random"),
        ("run", 0, "bald"),
        ("run", 1, "foreground-random"),
        ("run", 1, "bald"),
    ]
    for task in runs[2:]:
        assert task.config.seed == task.seed and task.config.strategy.name == task.strategy
        assert task.config.loop.rounds == 1 and task.config.data == config.run.data  # one split for every run
        assert task.round_zero == run_dir(tmp_path / "results", "4+3x1", task.seed, "_round0").resolve()
    assert round_zero[0].config.loop.rounds == 0 and round_zero[0].config.train == runs[2].config.train
    assert runs[0].config.train.iterations == 4 and runs[0].out_dir.name == "seed-0"


def test_a_grid_can_run_one_setting_at_a_time(tmp_path: Path) -> None:
    two = {"low": {"loop.initial": 4}, "high": {"loop.initial": 6}}
    config = benchmark_from_dict(tiny_benchmark(tmp_path, settings=two, full_data={"enabled": False}))
    whole = plan(config, tmp_path / "results")
    low = plan(config, tmp_path / "results", only=["low"])
    assert {t.setting for phase in low for t in phase} == {"low"}
    assert [t for phase in whole for t in phase if t.setting == "low"] == [t for phase in low for t in phase]
    with pytest.raises(BenchmarkError, match=r"no setting medium \(its settings: low, high\)"):
        plan(config, tmp_path / "results", only=["low", "medium"])
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    outcome = runner.invoke(app, ["benchmark", str(path), "--results-dir", str(tmp_path / "r"), "--setting", "mid"])
    assert outcome.exit_code == 2 and "no setting mid" in outcome.output
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_strategy_overrides_change_only_their_strategy(tmp_path: Path) -> None:
    schedule = {"strategy.beta_end": 100.0, "strategy.beta_schedule": "exponential"}
    config = benchmark_from_dict(tiny_benchmark(tmp_path, strategy_overrides={"bald": schedule}))
    assert benchmark_from_dict(config.to_dict()) == config
    setting = config.settings[0]
    bald, other = (config.run_config(setting, s, 0) for s in ("bald", "foreground-random"))
    assert (bald.strategy.beta_end, bald.strategy.beta_schedule) == (100.0, "exponential")
    assert (other.strategy.beta_end, other.strategy.beta_schedule) == (None, "constant")
    assert bald.strategy.beta_at(3, 4) == pytest.approx(100.0)  # the last of four acquisition rounds
    assert config.round_zero_config(setting, 0).train == bald.train  # round 0 is shared, whatever the strategy


def test_a_new_arm_runs_a_registered_strategy_with_its_own_training(tmp_path: Path) -> None:
    arm = {"strategy.name": "bald", "train.pseudo_label_threshold": 0.95}
    raw = tiny_benchmark(tmp_path, strategies=["foreground-random", "bald", "bald+pl"])
    config = benchmark_from_dict(raw | {"strategy_overrides": {"bald+pl": arm}})
    assert benchmark_from_dict(config.to_dict()) == config
    setting = config.settings[0]
    bald, with_pl = (config.run_config(setting, s, 1) for s in ("bald", "bald+pl"))
    assert with_pl.strategy == bald.strategy and with_pl.name.endswith("-bald+pl")
    assert (bald.train.pseudo_label_threshold, with_pl.train.pseudo_label_threshold) == (None, 0.95)
    assert config.round_zero_config(setting, 1).train == bald.train  # round 0 never pseudo-labels
    _, runs = plan(config, tmp_path / "results")
    assert [t.out_dir.name for t in runs if t.seed == 0 and t.strategy] == ["foreground-random", "bald", "bald+pl"]


def test_arms_whose_training_changes_round_0_share_a_round_0_of_their_own(tmp_path: Path) -> None:
    taught = {"train.mean_teacher": True}
    raw = tiny_benchmark(tmp_path, strategies=["foreground-random", "bald+mt", "bald", "foreground-random+mt"])
    arms = {
        "bald+mt": {"strategy.name": "bald"} | taught,
        "foreground-random+mt": {"strategy.name": "foreground-random"} | taught,
    }
    config = benchmark_from_dict(raw | {"strategy_overrides": arms})
    zeros, runs = plan(config, tmp_path / "results")
    assert [t.out_dir.name for t in zeros if t.seed == 0] == ["_round0", "_round0-bald+mt"]
    adopts = {t.out_dir.name: t.round_zero.name for t in runs if t.seed == 0 and t.round_zero}
    assert adopts == {
        "foreground-random": "_round0",
        "bald": "_round0",
        "bald+mt": "_round0-bald+mt",
        "foreground-random+mt": "_round0-bald+mt",
    }
    mean_teacher_zero = next(t.config for t in zeros if t.seed == 0 and t.out_dir.name == "_round0-bald+mt")
    assert mean_teacher_zero.train.mean_teacher and mean_teacher_zero.loop.rounds == 0
    assert mean_teacher_zero.name == "4+3x1-seed0-round0-bald+mt"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strategy": ["bald"]}, "unknown key 'strategy' in top level; valid keys: name, run, strategies, seeds"),
        ({"strategies": ["bald", "nope"]}, "strategies: unknown ['nope']; registered:"),
        ({"seeds": [1, 1]}, "seeds: lists a seed twice"),
        ({"settings": {"x": {"seed": 3}}}, "settings.x.seed: is fixed for the whole grid"),
        ({"settings": {"x": {"data.split_seed": 3}}}, "settings.x.data.split_seed: is fixed"),
        ({"settings": {"x": {"loop.per_rounds": 3}}}, "unknown key 'per_rounds' in loop"),
        ({"settings": {"x": {"loop.rounds": -1}}}, "loop.rounds: must be >= 0"),
        ({"settings": ["a"]}, "settings: expected a mapping"),
        ({"ray": {"adress": "auto"}}, "unknown key 'adress' in ray; valid keys: enabled, address"),
        ({"workers": 0}, "workers: must be at least 1"),
        ({"stats": {"confidence": 1.5}}, "stats.confidence: must be in"),
        ({"strategy_overrides": {"clasp-pe": {"strategy.beta": 2}}}, "'clasp-pe' is not in strategies"),
        ({"strategy_overrides": {"bald": {"loop.rounds": 2}}}, "bald.loop.rounds: only strategy.* and train.*"),
        ({"strategy_overrides": {"bald": {"strategy.name": "entropy"}}}, "bald.strategy.name: only strategy.*"),
        ({"strategy_overrides": {"foreground-random": {"train.iterations": 2}}}, "round 0 is trained with the first"),
        ({"strategies": ["bald", "bald+pl"]}, "unknown ['bald+pl']; registered:"),
        (
            {"strategies": ["bald", "bald+pl"], "strategy_overrides": {"bald+pl": {"train.iterations": 2}}},
            "strategy_overrides.bald+pl: a new arm names its strategy.name",
        ),
        ({"strategy_overrides": {"bald": {"strategy.beta": -1}}}, "strategy.beta: must be >= 0"),
    ],
)
def test_invalid_benchmark_configs_name_the_key(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        benchmark_from_dict(tiny_benchmark(tmp_path, **change))
    assert message in str(err.value)


def test_every_shipped_benchmark_config_is_valid() -> None:
    shipped = [
        p for p in sorted((REPO / "benchmarks").rglob("*.yaml")) if "strategies" in yaml.safe_load(p.read_text())
    ]
    assert len(shipped) >= 6
    for path in shipped:
        config = load_benchmark(path)
        assert config.run_config(config.settings[0], config.strategies[-1], config.seeds[0]).seed == config.seeds[0]


def test_run_config_may_be_a_path_relative_to_the_benchmark_file(tmp_path: Path) -> None:
    raw = tiny_benchmark(tmp_path)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw.pop("run")))
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(raw | {"run": "run.yaml"}))
    assert load_benchmark(tmp_path / "bench.yaml").run.model.channels == (8, 16, 32, 64)
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(raw | {"run": "missing.yaml"}))
    with pytest.raises(ConfigError, match=r"bench.yaml: run: run config .*missing.yaml not found"):
        load_benchmark(tmp_path / "bench.yaml")


def test_the_report_lists_settings_in_the_config_order_not_the_stored_jsons() -> None:
    summary = json.loads((REPO / "benchmarks/results/regimes-patch-cpu-shift-confirm.json").read_text())
    assert list(summary["settings"]) == ["high", "low", "medium"]  # stored with sorted keys

    def headings(summary: dict[str, Any]) -> list[str]:
        return [b[2] for b in blocks(summary) if b[0] == "h" and b[2].startswith("Setting")]

    assert headings(summary) == ["Setting `low`", "Setting `medium`", "Setting `high`"]
    del summary["setting_order"]  # a summary stored before the order was recorded keeps the JSON's
    assert headings(summary) == ["Setting `high`", "Setting `low`", "Setting `medium`"]


def test_report_of_a_folder_that_is_no_benchmark_fails_cleanly(tmp_path: Path) -> None:
    outcome = runner.invoke(app, ["report", str(tmp_path)])
    assert outcome.exit_code == 2 and "is not a benchmark results directory" in " ".join(outcome.output.split())


def test_without_ray_installed_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what a core install without the extra sees
    with pytest.raises(BenchmarkError, match=r"pip install 'activeseg\[distributed\]'"), ray_session():
        pass


# --- a real tiny grid -----------------------------------------------------------------------------------------------


def ledger_rows(path: Path) -> list[tuple[object, ...]]:
    """Labels, rounds, split and stop reason without wall-clock timestamps."""
    db = sqlite3.connect(path / "ledger.sqlite")
    rows = db.execute("SELECT case_id, round, strategy, score, rank FROM labels ORDER BY case_id").fetchall()
    rows += db.execute("SELECT round, n_labelled, seeds, mean_dice, dice FROM rounds ORDER BY round").fetchall()
    rows += db.execute("SELECT case_id, split FROM cases ORDER BY case_id").fetchall()
    rows += db.execute("SELECT round, reason FROM stops").fetchall()
    db.close()
    return rows


def artifacts(results: Path) -> dict[str, bytes]:
    """Every deterministic file of every run, and the full-data Dice (its JSON also holds a wall time)."""
    files = {
        str(p.relative_to(results)): p.read_bytes()
        for p in sorted((results / "runs").rglob("*"))
        if p.name in DETERMINISTIC
    }
    for path in sorted((results / "full-data").glob("seed-*/full_data.json")):
        record = json.loads(path.read_text())
        record.pop("train_seconds")
        files[str(path.relative_to(results))] = json.dumps(record, sort_keys=True).encode()
    return files


def unfinish(run: Path, *statements: str) -> None:
    """Make a finished run look interrupted: its ledger loses its stop (and whatever ``statements`` delete)."""
    db = sqlite3.connect(run / "ledger.sqlite")
    for statement in ("DELETE FROM stops", *statements):
        db.execute(statement)
    db.commit()
    db.close()


def all_ledgers(results: Path) -> dict[str, list[tuple[object, ...]]]:
    return {
        str(p.parent.relative_to(results)): ledger_rows(p.parent) for p in (results / "runs").rglob("ledger.sqlite")
    }


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny grid run once through the CLI, one run after another; returns (config file, results)."""
    root = tmp_path_factory.mktemp("bench")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_benchmark(root / "cache")))
    results = root / "sequential"
    outcome = runner.invoke(app, ["benchmark", str(config), "--results-dir", str(results), "--workers", "1"])
    assert outcome.exit_code == 0, outcome.output
    return config, results


@requires_hippocampus
@pytest.mark.slow
def test_grid_runs_paired_and_reports_from_stored_results(grid: tuple[Path, Path]) -> None:
    _, results = grid
    (execution,) = [json.loads(line) for line in (results / "executions.jsonl").read_text().splitlines()]
    assert execution["backend"] == "sequential" and execution["workers"] == 1
    assert sorted((t["kind"], t["status"]) for t in execution["tasks"]) == sorted(
        [("round0", "ran")] * 2 + [("full-data", "ran")] * 2 + [("run", "ran")] * 4
    )
    ledgers = all_ledgers(results)
    splits = {tuple(r for r in rows if len(r) == 2 and r[1] in ("pool", "test")) for rows in ledgers.values()}
    assert len(splits) == 1  # one split for every strategy and seed
    for seed in SEEDS:  # round 0 trained once per seed and adopted by every strategy: identical bytes
        zero = (run_dir(results, "4+3x1", seed, "_round0") / "rounds/round_000/metrics.json").read_bytes()
        for strategy in STRATEGIES:
            assert (run_dir(results, "4+3x1", seed, strategy) / "rounds/round_000/metrics.json").read_bytes() == zero

    summary = json.loads((results / "summary.json").read_text())
    for row in summary["runs"]:  # every number is recomputed from the stored curve.csv
        with (run_dir(results, row["setting"], row["seed"], row["strategy"]) / "curve.csv").open() as handle:
            curve = list(csv.DictReader(handle))
        n, dice = [int(r["n_labelled"]) for r in curve], [float(r["mean_dice"]) for r in curve]
        assert n == [4, 7] and row["finished"]
        assert row["aubc"] == pytest.approx((dice[0] + dice[1]) / 2) == aubc(n, dice)
        assert row["final_dice"] == dice[1]
    # AUBC over labelled voxels: each run's mean Dice over the voxel range every run covers (whole volumes differ
    # in size, so strategies label different voxel counts per round), checked by sampling the curve finely.
    # The same over foreground-weighted voxels (a foreground voxel costs 3), from the curve's own cost column.
    for metric, column, key in (
        ("aubc_voxels", "cost_voxels", "voxel_interval"),
        ("aubc_weighted", "cost_foreground_voxels", "weighted_interval"),
    ):
        curves = {}
        for row in summary["runs"]:
            with (run_dir(results, row["setting"], row["seed"], row["strategy"]) / "curve.csv").open() as handle:
                curve = list(csv.DictReader(handle))
            curves[row["strategy"], row["seed"]] = (
                [float(r[column]) for r in curve],
                [float(r["mean_dice"]) for r in curve],
            )
        low, high = max(v[0] for v, _ in curves.values()), min(v[-1] for v, _ in curves.values())
        assert summary[key]["4+3x1"] == [low, high] and low < high
        fine = np.linspace(low, high, 200_001)
        for row in summary["runs"]:
            costs, dice = curves[row["strategy"], row["seed"]]
            assert metric == "aubc_weighted" or row["voxels"] == costs
            assert row[metric] == pytest.approx(float(np.interp(fine, costs, dice).mean()), abs=1e-6)
    assert summary["run"]["unit"] == {"4+3x1": "volume"}  # the curves' budget axis: labelled volumes
    assert any(p["metric"] == "aubc_weighted" for p in summary["paired"])
    (bald,) = [p for p in summary["paired"] if p["strategy"] == "bald" and p["metric"] == "aubc"]
    assert bald["baseline"] == "foreground-random" and bald["n"] == 2 and bald["seeds"] == SEEDS
    (bald_voxels,) = [p for p in summary["paired"] if p["strategy"] == "bald" and p["metric"] == "aubc_voxels"]
    by_voxels = {(r["strategy"], r["seed"]): r["aubc_voxels"] for r in summary["runs"]}
    assert bald_voxels["mean_difference"] == pytest.approx(
        sum(by_voxels["bald", s] - by_voxels["foreground-random", s] for s in SEEDS) / 2
    )
    by = {(r["strategy"], r["seed"]): r["aubc"] for r in summary["runs"]}
    assert bald["mean_difference"] == pytest.approx(sum(by["bald", s] - by["foreground-random", s] for s in SEEDS) / 2)
    ranks = summary["ranking"]["aubc"]["mean_rank"]
    assert sorted(ranks) == sorted(STRATEGIES) and sum(ranks.values()) == pytest.approx(3.0)
    # One family per (baseline, metric): here a single comparison, so Holm leaves its p-value as it is.
    assert bald["family_size"] == 1 and bald["t_p_holm"] == bald["t_p"]
    differences = [by["bald", s] - by["foreground-random", s] for s in SEEDS]
    assert bald["sd"] == pytest.approx(float(np.std(differences, ddof=1)))
    assert bald["seeds_for_power"] == seeds_for_power(bald["mean_difference"], bald["sd"], 0.05)  # a family of 1
    # FG-Eff needs the pool's foreground (from each full-data run) and the labelled foreground per round.
    for seed in SEEDS:
        record = json.loads((results / "full-data" / f"seed-{seed}" / "full_data.json").read_text())
        assert record["pool_foreground_voxels"] > 0
        with (run_dir(results, "4+3x1", seed, "bald") / "curve.csv").open() as handle:
            labelled = [float(r["cost_foreground"]) for r in csv.DictReader(handle)]
        assert 0 < labelled[0] < labelled[1] < record["pool_foreground_voxels"]
    assert all(isinstance(r["fg_eff"], float) and math.isfinite(r["fg_eff"]) for r in summary["per_strategy"])
    # Foreground voxels per acquired unit: the labelled foreground the rounds after the first added, per unit.
    for row in summary["per_strategy"]:
        added = []
        for seed in SEEDS:
            with (run_dir(results, "4+3x1", seed, row["strategy"]) / "curve.csv").open() as handle:
                curve = list(csv.DictReader(handle))
            added.append((float(curve[1]["cost_foreground"]) - float(curve[0]["cost_foreground"])) / (7 - 4))
        assert row["acquired_foreground"]["mean"] == pytest.approx(sum(added) / 2) and min(added) > 0
    assert summary["setting_order"] == ["4+3x1"]
    pool_size = 14 - 4  # max_cases minus the test split; whole volumes, so the share is volumes / pool
    for row in summary["runs"]:
        if row["reach_budget"] is None:
            assert row["reach_share"] is None
        else:
            assert row["reach_share"] == pytest.approx(row["reach_budget"] / pool_size)

    report = (results / "report.md").read_text()
    for needle in (
        "AUBC [95% CI]",
        "AUBC over labelled voxels [95% CI]",
        "AUBC over foreground-weighted voxels [95% CI]",
        "foreground voxels per acquired unit [95% CI]",
        "where a labelled foreground voxel costs 3 background ones",
        "Wilcoxon p",
        "t p (Holm)",
        "## Ranking",
        "foreground-random",
        "Full-data upper",
    ):
        assert needle in report
    assert "![learning curves 4+3x1](./curves-4+3x1.png)" in report
    assert (results / "curves-4+3x1.png").read_bytes()[:4] == b"\x89PNG"
    page = (results / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == page.count("<img") == 1  # self-contained
    assert "<table>" in page and "Wilcoxon" in page


@requires_hippocampus
@pytest.mark.slow
def test_local_ray_gives_results_identical_to_the_sequential_run(grid: tuple[Path, Path]) -> None:

    config, results = grid
    on_ray = results.parent / "ray"
    outcome = runner.invoke(app, ["benchmark", str(config), "--results-dir", str(on_ray), "--ray", "--no-report"])
    assert outcome.exit_code == 0, outcome.output  # a Ray that cannot start fails the command, and so this test
    assert not ray.is_initialized()  # the local instance was shut down
    (execution,) = [json.loads(line) for line in (on_ray / "executions.jsonl").read_text().splitlines()]
    assert execution["backend"] == "ray" and {t["status"] for t in execution["tasks"]} == {"ran"}
    assert artifacts(on_ray) == artifacts(results) and len(artifacts(results)) == 40
    assert all_ledgers(on_ray) == all_ledgers(results)


@requires_hippocampus
@pytest.mark.slow
def test_rerun_skips_finished_runs_and_resumes_an_interrupted_one(grid: tuple[Path, Path], tmp_path: Path) -> None:
    config, results = grid
    copy = tmp_path / "copy"
    shutil.copytree(results, copy)
    interrupted = run_dir(copy, "4+3x1", 1, "bald")
    # as if killed while training round 1: no stop, no round-1 evaluation, no round-1 artifacts
    unfinish(interrupted, "DELETE FROM rounds WHERE round = 1")
    shutil.rmtree(interrupted / "rounds" / "round_001")
    outcome = runner.invoke(app, ["benchmark", str(config), "--results-dir", str(copy), "--workers", "2"])
    assert outcome.exit_code == 0, outcome.output
    last = json.loads((copy / "executions.jsonl").read_text().splitlines()[-1])
    statuses = {(t["kind"], t["seed"], t["strategy"]): t["status"] for t in last["tasks"]}
    assert last["backend"] == "pool"
    assert statuses.pop(("run", 1, "bald")) == "resumed" and set(statuses.values()) == {"skipped"}
    assert artifacts(copy) == artifacts(results) and all_ledgers(copy) == all_ledgers(results)
    assert "over 2 invocation(s)" in (copy / "report.md").read_text()


@requires_hippocampus
@pytest.mark.slow
def test_a_results_dir_refuses_a_different_grid(grid: tuple[Path, Path], tmp_path: Path) -> None:
    config, results = grid
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(yaml.safe_load(config.read_text()) | {"seeds": [0, 1, 2]}))
    outcome = runner.invoke(app, ["benchmark", str(other), "--results-dir", str(results)])
    assert outcome.exit_code == 2 and "holds a different benchmark" in " ".join(outcome.output.split())


@pytest.fixture(scope="module")
def archive_results() -> Iterator[ModuleType]:
    yield from benchmark_script("archive_results")


@requires_hippocampus
@pytest.mark.slow
def test_an_archived_grid_resumes_where_it_stopped(
    grid: tuple[Path, Path], tmp_path: Path, archive_results: ModuleType
) -> None:
    """``benchmarks/archive_results.py``: weights dropped, unfinished runs (and the round 0 they adopt) left out;
    unpacked elsewhere, a rerun skips what finished and redoes the rest with the same bytes."""
    config, results = grid
    whole, again = tmp_path / "whole.tar.xz", tmp_path / "again.tar.xz"
    archive_results.pack(results, whole)
    archive_results.pack(results, again)
    assert whole.read_bytes() == again.read_bytes()  # deterministic: a grown archive is one changed file in git
    with tarfile.open(whole) as tar:
        names = tar.getnames()
    assert not any(name.endswith((".pt", ".png", "plan.json")) for name in names)
    assert "runs/4+3x1/seed-1/bald/ledger.sqlite" in names and "benchmark.yaml" in names

    partial = tmp_path / "partial"
    shutil.copytree(results, partial)
    db = sqlite3.connect(run_dir(partial, "4+3x1", 1, "bald") / "ledger.sqlite")
    db.execute("DELETE FROM stops")  # as if still running
    db.commit()
    db.close()
    shutil.rmtree(run_dir(partial, "4+3x1", 0, "bald"))  # as if not started yet
    archive_results.pack(partial, tmp_path / "partial.tar.xz")
    restored = tmp_path / "restored"
    archive_results.unpack(tmp_path / "partial.tar.xz", restored)
    for seed in SEEDS:  # a run still to come adopts its round 0, so that is retrained too
        assert not run_dir(restored, "4+3x1", seed, "bald").exists()
        assert not run_dir(restored, "4+3x1", seed, "_round0").exists()
        assert (run_dir(restored, "4+3x1", seed, "foreground-random") / "ledger.sqlite").exists()
    outcome = runner.invoke(app, ["benchmark", str(config), "--results-dir", str(restored), "--workers", "1"])
    assert outcome.exit_code == 0, outcome.output
    last = json.loads((restored / "executions.jsonl").read_text().splitlines()[-1])
    ran = sorted((t["kind"], t["seed"], t["strategy"]) for t in last["tasks"] if t["status"] != "skipped")
    assert ran == [("round0", 0, None), ("round0", 1, None), ("run", 0, "bald"), ("run", 1, "bald")]
    assert artifacts(restored) == artifacts(results) and all_ledgers(restored) == all_ledgers(results)
    other = tmp_path / "other"
    (other / "runs").mkdir(parents=True)
    (other / "benchmark.yaml").write_text("name: other\n")
    with pytest.raises(SystemExit, match="differs"):  # unpacking over other results refuses and writes nothing
        archive_results.unpack(whole, other)
    assert sorted(p.name for p in other.rglob("*")) == ["benchmark.yaml", "runs"]


POOL_SCRIPT = """
import os, sys, time
from activeseg.bench.grid import worker_pool

if __name__ == "__main__":
    with worker_pool(2) as pool:
        pids = {future.result() for future in [pool.submit(os.getpid) for _ in range(4)]}
        pool.submit(time.sleep, 120)
        pool.submit(time.sleep, 120)
        print(" ".join(map(str, sorted(pids))), flush=True)
        time.sleep(120)
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its reaper counts as stopped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_pool_workers_stop_when_the_benchmark_process_is_killed(tmp_path: Path, signal_name: str) -> None:
    """A SIGTERM (``kill``, a batch scheduler) or SIGKILL skips the pool's shutdown; the workers must not train on."""
    script = tmp_path / "pool.py"
    script.write_text(POOL_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    workers = [int(pid) for pid in parent.stdout.readline().split()]
    assert workers and all(_running(pid) for pid in workers)
    parent.send_signal(getattr(signal, signal_name))
    parent.wait(timeout=30)
    deadline = time.monotonic() + 20
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [pid for pid in workers if _running(pid)]
    for pid in alive:  # leave nothing behind, whatever the outcome
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived the benchmark process ({signal_name})"


@requires_hippocampus
@pytest.mark.slow
def test_a_new_grid_adopts_the_finished_runs_it_shares_with_another(grid: tuple[Path, Path], tmp_path: Path) -> None:
    config_path, results = grid
    follow_up = tmp_path / "follow-up.yaml"
    follow_up.write_text(yaml.safe_dump(yaml.safe_load(config_path.read_text()) | {"name": "tiny-follow-up"}))
    copy = tmp_path / "copy"
    args = ["benchmark", str(follow_up), "--results-dir", str(copy), "--adopt-from", str(results)]
    outcome = runner.invoke(app, args)
    assert outcome.exit_code == 0, outcome.output
    assert "0 task(s) run, 8 adopted" in outcome.output.replace("\n", " ")
    assert artifacts(copy) == artifacts(results) and all_ledgers(copy) == all_ledgers(results)
    tasks = json.loads((copy / "executions.jsonl").read_text())["tasks"]
    assert {t["status"] for t in tasks} == {"adopted"} and len(tasks) == 8  # 2 round 0s, 4 runs, 2 bounds
    assert {Path(t["adopted_from"]).relative_to(results.resolve()).parts[0] for t in tasks} == {"runs", "full-data"}
    assert not list(copy.rglob("run.lock")) and not list(copy.rglob(".*adopting-*"))
    assert "8 finished run(s) adopted from other results directories" in (copy / "report.md").read_text()
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "0 task(s) run, 0 adopted, 8" in again.output.replace("\n", " ")


@requires_hippocampus
@pytest.mark.slow
def test_a_grid_adopts_from_an_unpacked_archive_which_keeps_no_plans(
    grid: tuple[Path, Path], tmp_path: Path, archive_results: ModuleType
) -> None:
    config_path, results = grid
    archive_results.pack(results, tmp_path / "grid.tar.xz")
    archive_results.unpack(tmp_path / "grid.tar.xz", tmp_path / "unpacked")
    assert not list((tmp_path / "unpacked").rglob("plan.json"))
    copy = tmp_path / "copy"
    args = ["benchmark", str(config_path), "--results-dir", str(copy), "--adopt-from", str(tmp_path / "unpacked")]
    outcome = runner.invoke(app, args)
    assert outcome.exit_code == 0, outcome.output
    assert "0 task(s) run, 8 adopted" in outcome.output.replace("\n", " ")
    plans = sorted(p.relative_to(results) for p in results.rglob("plan.json"))
    assert plans and plans == sorted(p.relative_to(copy) for p in copy.rglob("plan.json"))
    assert all((copy / p).read_bytes() == (results / p).read_bytes() for p in plans)  # the plan a rerun writes


@requires_hippocampus
@pytest.mark.slow
def test_adoption_takes_only_a_finished_run_of_the_same_config(grid: tuple[Path, Path], tmp_path: Path) -> None:
    config_path, results = grid
    source = tmp_path / "source"
    shutil.copytree(results, source)
    raw = yaml.safe_load(config_path.read_text())
    same = load_benchmark(config_path)
    _, tasks = plan(resolve_paths(same), tmp_path / "new")
    bald = next(t for t in tasks if (t.seed, t.strategy) == (1, "bald"))
    unfinish(run_dir(source, "4+3x1", 1, "bald"))
    assert adopt_finished(bald, (tmp_path / "new").resolve(), [source]) is None
    assert not bald.out_dir.exists()
    longer = benchmark_from_dict(raw | {"settings": {"4+3x1": {**raw["settings"]["4+3x1"], "train.iterations": 5}}})
    _, tasks = plan(resolve_paths(longer), tmp_path / "new")
    changed = next(t for t in tasks if (t.seed, t.strategy) == (0, "bald"))
    assert adopt_finished(changed, (tmp_path / "new").resolve(), [source]) is None  # another config at that place
    _, tasks = plan(resolve_paths(same), tmp_path / "new")
    unchanged = next(t for t in tasks if (t.seed, t.strategy) == (0, "bald"))
    assert (
        adopt_finished(unchanged, (tmp_path / "new").resolve(), [source])
        == (source / "runs" / "4+3x1" / "seed-0" / "bald").resolve()
    )
    missing = runner.invoke(
        app,
        [
            "benchmark",
            str(config_path),
            "--results-dir",
            str(tmp_path / "x"),
            "--adopt-from",
            str(tmp_path / "nowhere"),
        ],
    )
    assert missing.exit_code == 2 and "has no benchmark.yaml" in missing.output
