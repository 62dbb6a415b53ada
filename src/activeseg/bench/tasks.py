"""One benchmark task, run in whichever process (``execute_task``), or adopted finished from another results
directory (``adopt_finished``). Tasks are plain picklable data, so any backend of ``bench.grid`` can run them."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from activeseg.config import RunConfig, load_config
from activeseg.data.plan import read_plan, write_plan
from activeseg.data.splits import RunData, open_data
from activeseg.engine.full_data import full_data_dice, full_data_run
from activeseg.engine.malloc import keep_freed_memory
from activeseg.engine.run import run_to_end
from activeseg.progress import SilentReporter
from activeseg.rundir.curves import read_curve
from activeseg.rundir.layout import FullDataLayout, RunLayout


@dataclass(frozen=True)
class Task:
    """One unit of work: plain, picklable data, executed by :func:`execute_task` in any process."""

    kind: Literal["round0", "run", "full-data"]
    setting: str
    seed: int
    strategy: str | None
    config: RunConfig
    out_dir: Path
    threads: int
    round_zero: Path | None = None
    """A finished ``_round0`` run whose round 0 this run adopts."""

    @property
    def label(self) -> str:
        if self.kind == "full-data":
            return f"seed {self.seed} · full data"
        return f"{self.setting} · seed {self.seed} · {self.strategy or 'round 0'}"


@dataclass(frozen=True)
class TaskResult:
    """What a task did: ``skipped`` (already finished), ``ran`` (from scratch), ``resumed``, or ``adopted`` (copied,
    finished, from another results directory: :func:`adopt_finished`)."""

    task: Task
    status: Literal["skipped", "ran", "resumed", "adopted"]
    seconds: float
    dice: float | None
    """The run's last mean foreground Dice (or the full-data Dice)."""
    source: Path | None = None
    """Where an adopted task was copied from."""


_DATA_CACHE: dict[Any, RunData] = {}


def data_of(config: RunConfig) -> RunData:
    """The validated data of a run config, opened once per process (several tasks share one dataset)."""
    if config.data not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[config.data] = open_data(config, SilentReporter())
    return _DATA_CACHE[config.data]


def run_finished(path: Path) -> bool:
    """A run is finished when its ledger records a stop reason."""
    layout = RunLayout(path)
    if not layout.ledger.exists():
        return False
    with layout.open_ledger() as opened:
        return opened.stop_reason() is not None


def task_finished(task: Task) -> bool:
    if task.kind == "full-data":
        return FullDataLayout(task.out_dir).finished()
    return run_finished(task.out_dir)


def execute_task(task: Task) -> TaskResult:
    """Run one task to its end (or skip it when finished). Deterministic: the same bytes in any process."""
    tick = time.perf_counter()
    keep_freed_memory()  # a Ray worker is not forked from the CLI's process
    previous = torch.get_num_threads()
    torch.set_num_threads(task.threads)
    try:
        if task_finished(task):
            status: Literal["skipped", "ran", "resumed"] = "skipped"
        elif task.kind == "full-data":
            full_data_run(task.config, task.out_dir, data=data_of(task.config))
            status = "ran"
        else:
            status = run_to_end(task.config, task.out_dir, data_of(task.config), round_zero=task.round_zero)
    finally:
        torch.set_num_threads(previous)
    dice = full_data_dice(task.out_dir) if task.kind == "full-data" else read_curve(task.out_dir).mean_dice[-1]
    return TaskResult(task, status, time.perf_counter() - tick, dice)


# --- adopting finished work from another results directory ----------------------------------------------------------


def _same_finished(task: Task, candidate: Path) -> bool:
    """Whether ``candidate`` holds ``task`` finished: the same run config, plan and split, so resuming ``task`` would
    only replay it."""
    if not candidate.is_dir() or not task_finished(dataclasses.replace(task, out_dir=candidate)):
        return False
    layout = _layout(task, candidate)
    data = data_of(task.config)
    if load_config(layout.config) != task.config:
        return False
    if layout.plan.exists() and read_plan(layout.plan) != data.plan:  # archived runs keep no plan: the config fixes it
        return False
    if isinstance(layout, FullDataLayout):
        return True
    with layout.open_ledger() as ledger:
        splits = [ledger.split(name) for name in ("pool", "test", "validation")]
    validation = list(data.validation.ids) if data.validation else []
    return splits == [list(data.pool.ids), list(data.test.ids), validation]


def _layout(task: Task, folder: Path) -> FullDataLayout | RunLayout:
    return FullDataLayout(folder) if task.kind == "full-data" else RunLayout(folder)


def adopt_finished(task: Task, results_dir: Path, sources: Sequence[Path]) -> Path | None:
    """Copy ``task``'s finished run (or full-data bound) from the first of ``sources``, other results directories,
    that holds it at the same place with the same run config, plan and split; returns where it came from.

    Only into a folder that does not exist yet, and never a run that is unfinished there. A run unpacked from an
    archive (``benchmarks/archive_results.py``, which keeps no plan) gets the plan its config gives, as a rerun
    would write it. CPU runs replay bit for bit only on the same kind of CPU, so adopt from a results directory made
    on this kind of machine.
    """
    if task.out_dir.exists():
        return None
    relative = task.out_dir.relative_to(results_dir)
    for source in sources:
        candidate = Path(source).resolve() / relative
        if _same_finished(task, candidate):
            task.out_dir.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=task.out_dir.parent, prefix=f".{task.out_dir.name}.adopting-"))
            try:
                shutil.copytree(candidate, staging, dirs_exist_ok=True, ignore=_TRANSIENT)
                plan_file = _layout(task, staging).plan
                if not plan_file.exists():  # unpacked from benchmarks/archive_results.py: the plan a rerun writes
                    write_plan(data_of(task.config).plan, plan_file)
                staging.replace(task.out_dir)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            return candidate
    return None


_TRANSIENT = shutil.ignore_patterns("run.lock", "*-wal", "*-shm", "*-journal")
"""A run's files that belong to a process using it, not to the run."""


def adopt(tasks: Sequence[Task], results_dir: Path, sources: Sequence[Path]) -> Iterator[TaskResult]:
    for task in tasks:
        tick = time.perf_counter()
        source = adopt_finished(task, results_dir, sources)
        if source is not None:
            dice = full_data_dice(task.out_dir) if task.kind == "full-data" else read_curve(task.out_dir).mean_dice[-1]
            yield TaskResult(task, "adopted", time.perf_counter() - tick, dice, source)
