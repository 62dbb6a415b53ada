"""``activeseg benchmark``: a grid of strategies × seeds × settings on one dataset (``bench.config``), run resumably.

Every (setting, seed) pair shares one split (``data.split_seed`` is never overridden) and one round 0: a ``_round0``
run trains it once, and every strategy's run of that pair adopts it (:func:`activeseg.engine.run.run_to_end`), so
strategy comparisons are paired. Arms whose training changes round 0 (``train.mean_teacher``) share a
``_round0-<strategy>`` named after the first of them. The full-data upper bound is trained once per seed.

Results directory::

    benchmark.yaml                      the validated benchmark config (the grid the report reads)
    runs/<setting>/seed-<s>/_round0/    round 0 of that pair, trained once (``_round0-<strategy>``: trained otherwise)
    runs/<setting>/seed-<s>/<strategy>/ one ordinary run directory per strategy (``activeseg status`` works)
    full-data/seed-<s>/                 full_data.json (and model.pt)
    executions.jsonl                    one line per invocation: backend, wall time, what ran and what was skipped

A run is finished when its ledger records a stop reason; rerunning the command skips finished runs and resumes
unfinished ones. Runs execute one after another, over a local process pool (``workers``), or as Ray tasks
(``--ray``). Each run uses ``threads`` torch threads whatever the backend, so CPU results are bit-identical between
backends.
"""

from __future__ import annotations

import ctypes
import dataclasses
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

from activeseg.bench.config import BenchmarkConfig, load_benchmark, save_benchmark
from activeseg.bench.tasks import Task, TaskResult, adopt, data_of, execute_task, task_finished
from activeseg.engine.run import round_zero_inputs
from activeseg.progress import Reporter, SilentReporter

BENCHMARK_FILE = "benchmark.yaml"
EXECUTIONS_FILE = "executions.jsonl"
ROUND_ZERO = "_round0"

Backend = Literal["sequential", "pool", "ray"]


class BenchmarkError(RuntimeError):
    """A benchmark that cannot be started or resumed."""


# --- the plan -----------------------------------------------------------------------------------------------------


def run_dir(results_dir: Path, setting: str, seed: int, strategy: str) -> Path:
    """Where one (setting, seed, strategy) run lives."""
    return Path(results_dir) / "runs" / setting / f"seed-{seed}" / strategy


def full_data_dir(results_dir: Path, seed: int) -> Path:
    return Path(results_dir) / "full-data" / f"seed-{seed}"


def plan(
    config: BenchmarkConfig, results_dir: Path, only: Sequence[str] | None = None
) -> tuple[list[Task], list[Task]]:
    """The two phases: every (setting, seed) round 0, then every strategy run and full-data bound. ``only`` keeps
    the settings it names (the full-data bound belongs to every setting, so it stays)."""
    results_dir = Path(results_dir).resolve()
    unknown = sorted(set(only or ()) - {s.name for s in config.settings})
    if unknown:
        names = ", ".join(s.name for s in config.settings)
        raise BenchmarkError(f"{config.name} has no setting {', '.join(unknown)} (its settings: {names})")
    first: list[Task] = []
    second: list[Task] = []
    if config.full_data.enabled:
        second += [
            Task("full-data", "-", s, None, config.full_data_config(s), full_data_dir(results_dir, s), config.threads)
            for s in config.seeds
        ]
    for setting in config.settings:
        if only and setting.name not in only:
            continue
        for seed in config.seeds:
            zeros: dict[tuple[Any, ...], Path] = {}  # one round 0 per way of training it
            for strategy in config.strategies:
                run_config = config.run_config(setting, strategy, seed)
                key = round_zero_inputs(run_config)
                if key not in zeros:
                    zeros[key] = run_dir(results_dir, setting.name, seed, round_zero_name(strategy, not zeros))
                    zero_config = config.round_zero_config(setting, seed, strategy)
                    first.append(Task("round0", setting.name, seed, None, zero_config, zeros[key], config.threads))
                out_dir, zero = run_dir(results_dir, setting.name, seed, strategy), zeros[key]
                second.append(Task("run", setting.name, seed, strategy, run_config, out_dir, config.threads, zero))
    return first, second


def round_zero_name(strategy: str, first: bool) -> str:
    """The folder of a shared round 0: ``_round0`` for the one the first strategy trains, ``_round0-<strategy>``
    for a round 0 trained otherwise (by ``strategy`` and every later strategy that trains it alike)."""
    return ROUND_ZERO if first else f"{ROUND_ZERO}-{strategy}"


# --- backends -------------------------------------------------------------------------------------------------------


def _sequential(tasks: Sequence[Task]) -> Iterator[TaskResult]:
    for task in tasks:
        yield execute_task(task)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(parent: int) -> None:
    """Pool initializer: on Linux, the kernel sends this worker SIGTERM when the benchmark process dies, however it
    dies (a SIGTERM or SIGKILL skips the pool's shutdown, and an orphaned worker would train its run to the end)."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` spawned processes (CUDA-safe) that stop when this process does; the runs they leave unfinished
    resume on the next invocation."""
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_die_with, initargs=(os.getpid(),))


def _pool(tasks: Sequence[Task], pool: ProcessPoolExecutor) -> Iterator[TaskResult]:
    futures = [pool.submit(execute_task, task) for task in tasks]
    for future in as_completed(futures):
        yield future.result()


def _ray_module() -> Any:
    try:
        import ray  # noqa: PLC0415 - an optional extra (activeseg[distributed]), imported only when asked for
    except ImportError:
        raise BenchmarkError(
            "Ray is not installed: install the distributed extra, pip install 'activeseg[distributed]'"
        ) from None
    return ray


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Attach to ``address``, or start a light local Ray instance; shut down on exit if this call started it."""
    ray = _ray_module()
    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env = {k: os.environ[k] for k in ("ACTIVESEG_CACHE", "ACTIVESEG_HIPPOCAMPUS") if k in os.environ}
    options: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
    if env:
        options["runtime_env"] = {"env_vars": env}
    try:
        if address is not None:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=num_cpus, **options)
    except Exception as err:
        raise BenchmarkError(f"Ray could not start{f' at {address}' if address else ''}: {err}") from err
    try:
        yield ray
    finally:
        ray.shutdown()


def _ray(tasks: Sequence[Task], ray: Any, cpus: float, gpus: float) -> Iterator[TaskResult]:
    remote = ray.remote(execute_task)
    pending = [remote.options(num_cpus=cpus, num_gpus=gpus, max_retries=0).remote(t) for t in tasks]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])


# --- the benchmark --------------------------------------------------------------------------------------------------


def prepare_results_dir(config: BenchmarkConfig, results_dir: Path) -> None:
    """Write ``benchmark.yaml``, or check that an existing one describes the same grid."""
    results_dir = Path(results_dir)
    stored = results_dir / BENCHMARK_FILE
    if stored.exists():
        previous = load_benchmark(stored)
        if previous.grid_identity() != config.grid_identity():
            raise BenchmarkError(
                f"{results_dir} holds a different benchmark ({stored} differs from this config in more than "
                "workers, ray or stats); use a new results directory"
            )
    results_dir.mkdir(parents=True, exist_ok=True)
    save_benchmark(config, stored)


def resolve_paths(config: BenchmarkConfig) -> BenchmarkConfig:
    """Absolute data, cache and plan paths, so that tasks in other processes (or on other nodes) find them."""
    return dataclasses.replace(config, run=config.run.with_absolute_paths())


def choose_backend(config: BenchmarkConfig) -> Backend:
    if config.uses_ray:
        return "ray"
    return "pool" if config.workers > 1 else "sequential"


def run_benchmark(
    config: BenchmarkConfig,
    results_dir: Path,
    reporter: Reporter | None = None,
    backend: Backend | None = None,
    on_result: Callable[[TaskResult], None] | None = None,
    only: Sequence[str] | None = None,
    adopt_from: Sequence[Path] = (),
) -> list[TaskResult]:
    """Run (or resume) every task of the grid, or of the settings ``only`` names; returns what each task did.
    ``adopt_from`` names other results directories whose finished runs of the same config are copied rather than
    run again (:func:`adopt_finished`)."""
    reporter = reporter or SilentReporter()
    config = resolve_paths(config)
    results_dir = Path(results_dir).resolve()
    backend = backend or choose_backend(config)
    if config.run.data.root is None:
        raise BenchmarkError("no dataset: set run.data.root in the benchmark config or pass --data DIR")
    sources = [Path(source).resolve() for source in adopt_from]
    for source in sources:
        if source == results_dir or not (source / BENCHMARK_FILE).is_file():
            why = "is this results directory" if source == results_dir else f"has no {BENCHMARK_FILE}"
            raise BenchmarkError(f"--adopt-from {source}: {why}; name another benchmark's results directory")
    phases = plan(config, results_dir, only)  # an unknown setting fails before anything is written
    prepare_results_dir(config, results_dir)
    data_of(config.run)  # validate and preprocess once, before anything runs (fills the shared cache)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tick = time.perf_counter()
    results: list[TaskResult] = []
    try:
        with _Executor(config, backend) as execute:
            for phase, tasks in zip(("round 0", "runs"), phases, strict=True):
                adopted = list(adopt(tasks, results_dir, sources))  # before the executor looks for finished runs
                rest = [t for t in tasks if all(t is not r.task for r in adopted)]
                with reporter.progress(f"benchmark {config.name}: {phase}", len(tasks)) as advance:
                    for result in itertools.chain(adopted, execute(rest)):
                        results.append(result)
                        advance(1)
                        dice = "" if result.dice is None else f", mean foreground Dice {result.dice:.4f}"
                        reporter.info(f"{result.task.label}: {result.status} ({result.seconds:.0f} s{dice})")
                        if on_result is not None:
                            on_result(result)
    finally:  # logged even when interrupted: what ran before the interruption counts towards the wall time
        _log_execution(results_dir, started, time.perf_counter() - tick, backend, config, results)
    return results


def _log_execution(
    results_dir: Path, started: str, wall_s: float, backend: Backend, config: BenchmarkConfig, results: list[TaskResult]
) -> None:
    record = {
        "started": started,
        "wall_s": wall_s,
        "backend": backend,
        "workers": config.workers if backend == "pool" else 1,
        "threads": config.threads,
        "tasks": [
            {
                "kind": r.task.kind,
                "setting": r.task.setting,
                "seed": r.task.seed,
                "strategy": r.task.strategy,
                "status": r.status,
                "seconds": r.seconds,
            }
            | ({"adopted_from": str(r.source)} if r.source else {})
            for r in results
        ],
    }
    with (results_dir / EXECUTIONS_FILE).open("a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


class _Executor:
    """Runs unfinished tasks on the chosen backend, started on first use (a finished grid starts no pool, no Ray)."""

    def __init__(self, config: BenchmarkConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.stack = ExitStack()
        self.pool: ProcessPoolExecutor | None = None
        self.ray: Any = None

    def __enter__(self) -> _Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def __call__(self, tasks: Sequence[Task]) -> Iterator[TaskResult]:
        finished = [t for t in tasks if task_finished(t)]
        yield from (execute_task(t) for t in finished)  # in this process: a quick check and a read
        todo = [t for t in tasks if t not in finished]
        if not todo:
            return
        if self.backend == "sequential":
            yield from _sequential(todo)
        elif self.backend == "pool":
            if self.pool is None:  # one pool for both phases: workers import torch once
                self.pool = self.stack.enter_context(worker_pool(self.config.workers))
            yield from _pool(todo, self.pool)
        else:
            ray_config = self.config.ray
            if self.ray is None:
                self.ray = self.stack.enter_context(ray_session(ray_config.address, ray_config.num_cpus))
            cpus = ray_config.cpus_per_task or float(self.config.threads)
            yield from _ray(todo, self.ray, cpus, ray_config.gpus_per_task)


def read_executions(results_dir: Path) -> list[dict[str, Any]]:
    """Every invocation recorded in ``executions.jsonl``."""
    path = Path(results_dir) / EXECUTIONS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
