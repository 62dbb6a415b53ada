"""A run's life cycle: create it (validated, atomically), resume it under a lock, and share round 0 between runs.

Round 0 depends only on the seed, the data, the model and training settings and the initial labelled set, never on
the strategy. :func:`run_to_end` is the one place that lets a run adopt another run's round 0: the demo, the
benchmark grid and the units benchmark all go through it, so strategy comparisons are paired.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from activeseg.acquisition.cold_start import initial_selection
from activeseg.acquisition.costs import CostContext, unit_costs
from activeseg.acquisition.registry import get_strategy
from activeseg.acquisition.units import case_of, random_candidates, unit_from_key
from activeseg.artifacts import copy_atomic
from activeseg.config import RunConfig, load_config, save_config
from activeseg.data.plan import read_plan, write_plan
from activeseg.data.splits import RunData, open_data
from activeseg.engine.loop import ActiveLearningLoop, RunError
from activeseg.engine.pool import unit_spec
from activeseg.oracles.base import Oracle
from activeseg.oracles.human import HumanOracle
from activeseg.oracles.simulated import SimulatedOracle
from activeseg.progress import Reporter, SilentReporter
from activeseg.rundir.layout import RunLayout
from activeseg.rundir.ledger import Ledger
from activeseg.seeds import derive_seed

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "RunError",
    "adopt_round_zero",
    "create_run",
    "resume_run",
    "round_zero_inputs",
    "run_lock",
    "run_to_end",
    "start_run",
]


def start_run(
    config: RunConfig, run_dir: Path, reporter: Reporter | None = None, data_root: Path | None = None
) -> Path:
    """Validate everything, create ``run_dir`` with its round-0 labelled set, then run the loop to its end."""
    run_dir, data = create_run(config, run_dir, reporter, data_root)
    resume_run(run_dir, reporter, data=data)
    return run_dir


def create_run(
    config: RunConfig,
    run_dir: Path,
    reporter: Reporter | None = None,
    data_root: Path | None = None,
    data: RunData | None = None,
) -> tuple[Path, RunData]:
    """Validate everything, then create ``run_dir`` atomically (config, ledger, round-0 labels); trains nothing.

    ``data``, when given, is the already validated data of ``config`` (several runs on one dataset open it once).
    """
    reporter = reporter or SilentReporter()
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir} already exists and is not empty; use `activeseg resume {run_dir}`")
    if data_root is not None:
        config = config.override({"data.root": data_root})
    config = config.with_absolute_paths()
    get_strategy(config.strategy.name)
    data = data or open_data(config, reporter)
    pool, test = list(data.pool.ids), list(data.test.ids)
    config.check_budget(len(pool))
    initial = initial_units(config, data, pool)
    costs = [unit_costs(seed_cost(config, data, k)) for k in initial]

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = RunLayout(Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}.creating-")))
    try:
        save_config(config, staging.config)
        write_plan(data.plan, staging.plan)
        with staging.open_ledger() as ledger:
            ledger.initialise(
                pool,
                test,
                {"seed": config.seed, "strategy": config.strategy.name},
                validation=list(data.validation.ids) if data.validation else [],
            )
            ledger.add_labels(
                0, f"initial-{config.loop.initial_strategy}", [(c, None, i) for i, c in enumerate(initial)], costs
            )
        if run_dir.exists():
            run_dir.rmdir()
        staging.root.replace(run_dir)
    except BaseException:
        shutil.rmtree(staging.root, ignore_errors=True)
        raise
    reporter.info(f"run directory: {run_dir} ({len(pool)} pool, {len(test)} test, {len(initial)} labelled)")
    return run_dir, data


def seed_cost(config: RunConfig, data: RunData, key: str) -> CostContext:
    """What a round-0 unit cost: its labels come with the dataset (simulated or human runs alike)."""
    geometry = data.geometry(case_of(key))
    unit = unit_from_key(key, geometry.shape)
    truth = data.ground_truth(case_of(key))
    return CostContext(unit, geometry.shape, config.unit.axis, truth, geometry.voxel_mm3, geometry.native_voxel_mm3)


def initial_units(config: RunConfig, data: RunData, pool: list[str]) -> list[str]:
    """Round 0's unit keys: the cold-start volumes, or seeded random slices or patches over the whole pool."""
    rng = np.random.default_rng(derive_seed(config.seed, "initial"))
    spec = unit_spec(config)
    if spec.kind == "volume":
        return initial_selection(config.loop.initial_strategy, pool, config.loop.initial, rng, data.image)
    lattice = random_candidates(
        spec,
        pool,
        data.shape_of,
        lambda c: np.zeros(data.shape_of(c), dtype=bool),
        lambda c: derive_seed(config.seed, c),
    )
    if config.loop.initial > len(lattice):
        raise RunError(f"loop.initial={config.loop.initial} but the pool holds only {len(lattice)} units")
    picked = rng.choice(len(lattice), size=config.loop.initial, replace=False)
    return sorted(lattice[int(i)].key for i in picked)


def round_zero_inputs(config: RunConfig) -> tuple[Any, ...]:
    """What round 0 of a run depends on in its config (the plan file, split and initial labels aside): runs that
    agree here train the same round 0 (options acting only from round 1 are left out, ``TrainConfig.round_zero``)."""
    return (config.seed, config.data, config.plan, config.model, config.train.round_zero(), config.inference)


def adopt_round_zero(source: Path, target: Path) -> bool:
    """Copy round 0's model and metrics from ``source`` to ``target`` when round 0 is provably the same there.

    Returns whether it copied. Resuming ``target`` then reloads these artifacts exactly as after an interrupted
    round.
    """
    source_layout, target_layout = RunLayout(source), RunLayout(target)
    configs = [load_config(layout.config) for layout in (source_layout, target_layout)]
    inputs = [round_zero_inputs(c) for c in configs]
    same_inputs = len(set(inputs)) == 1
    same_inputs = same_inputs and source_layout.plan.read_bytes() == target_layout.plan.read_bytes()
    with source_layout.open_ledger() as a, target_layout.open_ledger() as b:
        same_labels = a.labelled_units(0) == b.labelled_units(0) and a.split("test") == b.split("test")
        untrained = b.current_round() == 0 and not b.rounds()
    artifacts = [source_layout.model(0), source_layout.metrics(0)]
    target_fresh = untrained and not target_layout.model(0).exists()
    if not (same_inputs and same_labels and target_fresh and all(p.exists() for p in artifacts)):
        return False
    for path, destination in zip(artifacts, [target_layout.model(0), target_layout.metrics(0)], strict=True):
        copy_atomic(path, destination)
    return True


def run_to_end(
    config: RunConfig,
    run_dir: Path,
    data: RunData,
    reporter: Reporter | None = None,
    round_zero: Path | None = None,
) -> Literal["ran", "resumed"]:
    """Create ``run_dir`` if it is new, adopt ``round_zero``'s round 0 when it is provably the same, and resume the
    run to its end. Returns whether it started the run or resumed one."""
    reporter = reporter or SilentReporter()
    status: Literal["ran", "resumed"] = "resumed" if RunLayout(run_dir).ledger.exists() else "ran"
    if status == "ran":
        create_run(config, run_dir, reporter, data=data)
    if round_zero is not None and adopt_round_zero(round_zero, run_dir):  # a no-op unless round 0 is untrained
        reporter.info(f"{Path(run_dir).name}: round 0 is identical to {Path(round_zero).name}'s; reused")
    resume_run(run_dir, reporter, data=data)
    return status


def resume_run(run_dir: Path, reporter: Reporter | None = None, data: RunData | None = None) -> str:
    """Continue a run from its ledger until it stops; returns the stop reason (or the waiting status)."""
    reporter = reporter or SilentReporter()
    layout = RunLayout(run_dir)
    if not layout.is_run():
        raise RunError(f"{run_dir} is not an activeseg run directory (no {layout.ledger.name} / {layout.config.name})")
    config = load_config(layout.config)
    data = data or open_data(config, reporter, read_plan(layout.plan))
    if read_plan(layout.plan) != data.plan:
        raise RunError(f"{run_dir}: the data was planned differently from the run's plan ({layout.plan})")
    with layout.open_ledger() as ledger:
        recorded = [ledger.split(name) for name in ("pool", "test", "validation")]
        validation = list(data.validation.ids) if data.validation else []
        if recorded != [list(data.pool.ids), list(data.test.ids), validation]:
            raise RunError(f"{run_dir}: the dataset no longer matches the split recorded in the ledger")
        oracle = make_oracle(config, layout, data, ledger)
        with run_lock(layout):
            return ActiveLearningLoop(config, layout, data, ledger, oracle, reporter).run()


def make_oracle(config: RunConfig, layout: RunLayout, data: RunData, ledger: Ledger) -> Oracle:
    """The oracle a run's config names: simulated (ground truth on request) or human (labels that arrive)."""
    if config.oracle.kind == "human":
        seed_units = ledger.labelled_units(up_to_round=0)
        return HumanOracle(layout.label_store(), data, config.oracle.advance, seed_units)
    return SimulatedOracle(data.ground_truth, revealed=ledger.labelled_units())


@contextmanager
def run_lock(layout: RunLayout) -> Iterator[None]:
    """Hold the run's lock while its rounds run, so that a second process (``activeseg resume`` beside the
    server's background round, say) gets a clear :class:`RunError` instead of racing on the same artifacts.

    An advisory ``flock`` on ``run.lock``: the operating system releases it when the holder exits or is killed, so
    a crash never leaves a stale lock. Without ``fcntl`` (Windows) nothing is locked.
    """
    if fcntl is None:  # pragma: no cover - not on POSIX
        yield
        return
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RunError(
                f"{layout.root}: {holder} is running this run's rounds now; wait for it to finish (or stop it) and "
                "try again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
