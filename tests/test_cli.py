"""The command line end to end on phantoms: bad input fails cleanly and writes nothing; a good run works."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from activeseg.cli import app
from activeseg.engine.full_data import full_data_dice

from _support import phantom_raw

runner = CliRunner()


def write_config(path: Path, root: Path, cache: Path, **sections: dict[str, object]) -> Path:
    raw = phantom_raw(root, cache)
    for key, values in sections.items():
        raw[key] = {**raw[key], **values}
    path.write_text(yaml.safe_dump(raw))
    return path


def snapshot(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def broken_copy(phantoms: Path, tmp_path: Path) -> Path:
    root = tmp_path / "broken"
    shutil.copytree(phantoms, root)
    (root / "labelsTr" / "phantom_005.nii.gz").unlink()
    (root / "imagesTr" / "phantom_007.nii.gz").write_bytes(b"\x1f\x8b truncated")
    return root


def test_invalid_dataset_names_files_and_writes_nothing(phantoms: Path, tmp_path: Path) -> None:
    root = broken_copy(phantoms, tmp_path)
    config = write_config(tmp_path / "c.yaml", root, tmp_path / "cache")
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["run", str(config), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "phantom_005" in result.output and "label" in result.output
    assert "phantom_007.nii.gz" in result.output
    assert snapshot(tmp_path) == before  # no run directory, no cache entries


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"loop": {"initial": 9}}, "loop.initial: asks for 9 initial volumes but the pool holds only 8"),
        ({"data": {"test_size": 12}}, "has 12 cases; hold out fewer (data.test_size in the run config, e.g. 2)"),
        ({"train": {"iterationz": 3}}, "unknown key 'iterationz' in train; valid keys: iterations"),
    ],
)
def test_config_problems_fail_before_any_work(
    phantoms: Path, tmp_path: Path, sections: dict[str, dict[str, object]], message: str
) -> None:
    config = write_config(tmp_path / "c.yaml", phantoms, tmp_path / "cache", **sections)
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["run", str(config), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()
    assert [p for p in snapshot(tmp_path) if p not in before and not p.startswith("cache")] == []


@pytest.mark.slow
def test_run_status_plot_full_data_with_external_test_set(phantoms: Path, tmp_path: Path) -> None:
    test_root = tmp_path / "external"
    for kind in ("imagesTr", "labelsTr"):
        (test_root / kind).mkdir(parents=True)
        for i in (0, 1, 2):
            shutil.copy(phantoms / kind / f"phantom_00{i}.nii.gz", test_root / kind / f"external_00{i}.nii.gz")
    pool_root = tmp_path / "pool"
    shutil.copytree(phantoms, pool_root)
    for kind in ("imagesTr", "labelsTr"):
        for i in (0, 1, 2):
            (pool_root / kind / f"phantom_00{i}.nii.gz").unlink()
    config = write_config(tmp_path / "c.yaml", pool_root, tmp_path / "cache")
    run_dir = tmp_path / "run"

    result = runner.invoke(app, ["run", str(config), "--run-dir", str(run_dir), "--test-data", str(test_root)])
    assert result.exit_code == 0, result.output
    status = runner.invoke(app, ["status", str(run_dir)])
    assert status.exit_code == 0
    assert "pool 9 · labelled units 6 in 6 cases · untouched cases 3 · test 3" in status.output
    assert "budget reached" in status.output

    full = runner.invoke(app, ["full-data", str(config), "--out-dir", str(tmp_path / "full"), "--test-data",
                               str(test_root), "--iterations", "4"])  # fmt: skip
    assert full.exit_code == 0, full.output
    plotted = runner.invoke(app, ["plot", str(run_dir), "--full-data", str(tmp_path / "full"), "-o",
                                  str(tmp_path / "c.png")])  # fmt: skip
    assert plotted.exit_code == 0, plotted.output
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"

    again = runner.invoke(app, ["resume", str(run_dir)])
    assert again.exit_code == 0 and "budget reached" in again.output


def test_test_set_sharing_ids_with_the_pool_is_rejected(phantoms: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", phantoms, tmp_path / "cache")
    result = runner.invoke(app, ["run", str(config), "--run-dir", str(tmp_path / "r"), "--test-data", str(phantoms)])
    assert result.exit_code == 2
    assert "share ids" in result.output
    assert not (tmp_path / "r").exists()


def test_demo_without_data_says_how_to_get_it(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "hippocampus data not found" in result.output
    assert "Task04" in result.output and "Decathlon" in result.output
    assert not (tmp_path / "o").exists()


def test_strategies_lists_every_registered_strategy() -> None:
    result = runner.invoke(app, ["strategies"])
    assert result.exit_code == 0
    for name in ("random", "entropy", "bald"):
        assert name in result.output


@pytest.mark.slow
def test_full_data_without_out_dir_writes_under_runs_in_the_current_directory(
    phantoms: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path / "c.yaml", phantoms, cache, train={"iterations": 2})
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["full-data", str(config)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "phantom-full-data"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "full_data.json", "model.pt", "plan.json"]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["iterations"] == 2
    assert 0.0 <= full_data_dice(out) <= 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "runs"]


def test_a_run_started_with_relative_paths_resumes_from_any_folder(
    phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    shutil.copytree(phantoms, work / "data")
    elsewhere.mkdir()
    write_config(work / "c.yaml", Path("data"), Path("cache"), loop={"rounds": 1})
    monkeypatch.chdir(work)
    started = runner.invoke(app, ["run", "c.yaml", "--data", "data", "--run-dir", "runs/r"])
    assert started.exit_code == 0, started.output
    saved = yaml.safe_load((work / "runs" / "r" / "config.yaml").read_text())["data"]
    assert (saved["root"], saved["cache_dir"]) == (str((work / "data").resolve()), str((work / "cache").resolve()))

    monkeypatch.chdir(elsewhere)
    resumed = runner.invoke(app, ["resume", str(work / "runs" / "r")])
    assert resumed.exit_code == 0, resumed.output
    assert "stopped" in resumed.output
    assert list(elsewhere.iterdir()) == []  # no stray cache or data folder made here


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"train": {"learning_rate": float("inf")}}, "train.learning_rate: expected a finite number, got inf"),
        ({"train": {"batch_size": 100000}}, "train.batch_size: must be between 2 and 256"),
    ],
)
def test_hostile_config_values_fail_before_anything_is_written(
    phantoms: Path, tmp_path: Path, sections: dict[str, dict[str, object]], message: str
) -> None:
    config = write_config(tmp_path / "c.yaml", phantoms, tmp_path / "cache", **sections)
    result = runner.invoke(app, ["run", str(config), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert snapshot(tmp_path) == ["c.yaml"]


def test_a_run_name_cannot_leave_runs_and_bad_paths_are_clean_errors(
    phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    raw = phantom_raw(phantoms, tmp_path / "cache")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**raw, "name": "../escaped"}))
    result = runner.invoke(app, ["run", "c.yaml"])
    assert result.exit_code == 2 and "name: '../escaped' must be a plain folder name" in result.output
    assert snapshot(tmp_path) == ["c.yaml"]

    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    result = runner.invoke(app, ["run", "binary.yaml"])
    assert result.exit_code == 2 and "binary.yaml: not a text file" in result.output, result.output

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "a-file").write_text("not a folder")
    for run_dir in ("a-file", "a-file/run"):
        result = runner.invoke(app, ["run", "c.yaml", "--run-dir", run_dir])
        assert result.exit_code == 2 and (result.exception is None or isinstance(result.exception, SystemExit))
        assert f"--run-dir {run_dir}:" in result.output and "Traceback" not in result.output, result.output
    assert snapshot(tmp_path) == ["a-file", "binary.yaml", "c.yaml"]
