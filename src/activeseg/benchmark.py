"""``activeseg benchmark``: a grid of strategies × seeds × settings on one dataset, run resumably.

A benchmark config (YAML, validated once at load like a run config) holds a base run config, the strategies, the
seeds and optional *settings*: named sets of dotted overrides of the run config (a budget schedule, later an
annotation unit). Every (setting, seed) pair shares one split (``data.split_seed`` is never overridden) and one
round 0: a ``_round0`` run trains it once, and every strategy's run of that pair adopts it
(:func:`activeseg.loop.adopt_round_zero`), so strategy comparisons are paired. The full-data upper bound is trained
once per seed.

Results directory::

    benchmark.yaml                      the validated benchmark config (the grid the report reads)
    runs/<setting>/seed-<s>/_round0/    round 0 of that pair, trained once
    runs/<setting>/seed-<s>/<strategy>/ one ordinary run directory per strategy (``activeseg status`` works)
    full-data/seed-<s>/                 full_data.json (and model.pt)
    executions.jsonl                    one line per invocation: backend, wall time, what ran and what was skipped

A run is finished when its ledger records a stop reason; rerunning the command skips finished runs and resumes
unfinished ones. Runs execute one after another, over a local process pool (``workers``), or as Ray tasks
(``--ray``). Each run uses ``threads`` torch threads whatever the backend, so CPU results are bit-identical between
backends.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import typing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import yaml

from activeseg.config import ConfigError, RunConfig, _build, _plain, _require
from activeseg.ledger import Ledger
from activeseg.reporting import Reporter, SilentReporter

BENCHMARK_FILE = "benchmark.yaml"
EXECUTIONS_FILE = "executions.jsonl"
ROUND_ZERO = "_round0"
FIXED_KEYS = ("name", "seed", "strategy.name")
"""Dotted keys a setting may not override: the grid's axes. No ``data.*`` key either: one split for the grid."""

Backend = Literal["sequential", "pool", "ray"]


class BenchmarkError(RuntimeError):
    """A benchmark that cannot be started or resumed."""


# --- the benchmark config -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayConfig:
    """Scale-out on Ray: each (strategy, seed) run becomes one Ray task."""

    enabled: bool = False
    """Run on Ray (same as ``--ray``). A local Ray instance is started unless ``address`` is set."""
    address: str | None = None
    """Attach to an existing cluster (e.g. ``auto`` or ``ray://head:10001``); implies ``enabled``."""
    cpus_per_task: float | None = None
    """CPUs each task asks for; default ``threads``."""
    gpus_per_task: float = 0.0
    """GPUs each task asks for (0 on CPU-only clusters)."""
    num_cpus: int | None = None
    """CPUs of a locally started Ray instance; default all of this machine's."""

    def __post_init__(self) -> None:
        _require(self.cpus_per_task is None or self.cpus_per_task > 0, "ray.cpus_per_task", "must be positive")
        _require(self.gpus_per_task >= 0, "ray.gpus_per_task", "must be >= 0")
        _require(self.num_cpus is None or self.num_cpus >= 1, "ray.num_cpus", "must be at least 1")

    @property
    def used(self) -> bool:
        return self.enabled or self.address is not None


@dataclass(frozen=True)
class FullDataConfig:
    """The full-data upper bound, trained once per seed with the base run config."""

    enabled: bool = True
    iterations: int | None = None
    """Training iterations of the upper bound; default the base ``train.iterations``."""

    def __post_init__(self) -> None:
        _require(self.iterations is None or self.iterations >= 1, "full_data.iterations", "must be at least 1")


@dataclass(frozen=True)
class StatsConfig:
    """How the report summarises the runs."""

    baselines: tuple[str, ...] = ("random", "foreground-random")
    """Every strategy is compared, paired by seed, with each of these that the benchmark ran."""
    bootstrap: int = 10000
    """Bootstrap resamples for each confidence interval."""
    confidence: float = 0.95
    seed: int = 0
    """Seeds the bootstrap, so a report is reproducible."""
    reach: float = 0.95
    """The report gives the budget at which each run first reaches this fraction of its seed's full-data Dice."""
    alpha: float = 0.05
    """Significance level used in the report's plain-language verdict."""

    def __post_init__(self) -> None:
        _require(self.bootstrap >= 100, "stats.bootstrap", "must be at least 100")
        _require(0.5 <= self.confidence < 1, "stats.confidence", "must be in [0.5, 1)")
        _require(0 < self.reach <= 1, "stats.reach", "must be in (0, 1]")
        _require(0 < self.alpha < 1, "stats.alpha", "must be in (0, 1)")


@dataclass(frozen=True)
class Setting:
    """A named set of dotted run-config overrides, e.g. a budget schedule."""

    name: str
    overrides: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class BenchmarkConfig:
    """A grid of strategies × seeds × settings on one dataset."""

    name: str = "benchmark"
    run: RunConfig = field(default_factory=RunConfig)
    """The base run config (or, in YAML, a path to one, relative to the benchmark file)."""
    strategies: tuple[str, ...] = ("random", "foreground-random", "entropy", "bald")
    seeds: tuple[int, ...] = (0, 1, 2)
    settings: tuple[Setting, ...] = (Setting("default"),)
    """In YAML a mapping ``name: {dotted.key: value}``; default one setting without overrides."""
    full_data: FullDataConfig = field(default_factory=FullDataConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    workers: int = 1
    """Runs executed at once in a local process pool when Ray is not used (1: one after another)."""
    threads: int = 1
    """Torch CPU threads of each run, whatever the backend (keeps results bit-identical between backends)."""
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        from activeseg.strategies import STRATEGIES

        _require(bool(self.strategies), "strategies", "needs at least one strategy")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        _require(not unknown, "strategies", f"unknown {unknown}; registered: {', '.join(sorted(STRATEGIES))}")
        _require(len(set(self.strategies)) == len(self.strategies), "strategies", "lists a strategy twice")
        _require(bool(self.seeds), "seeds", "needs at least one seed")
        _require(len(set(self.seeds)) == len(self.seeds), "seeds", "lists a seed twice")
        _require(bool(self.settings), "settings", "needs at least one setting")
        names = [s.name for s in self.settings]
        _require(len(set(names)) == len(names), "settings", "names a setting twice")
        _require(self.workers >= 1, "workers", "must be at least 1")
        _require(self.threads >= 1, "threads", "must be at least 1")
        for setting in self.settings:
            _require(_safe_name(setting.name), "settings", f"{setting.name!r} must be a plain folder name")
            for key, _ in setting.overrides:
                fixed = key in FIXED_KEYS or key.startswith("data.")
                _require(not fixed, f"settings.{setting.name}.{key}", "is fixed for the whole grid (set it in run)")
            for strategy in self.strategies:  # every run config of the grid is valid, or nothing starts
                try:
                    self.run_config(setting, strategy, self.seeds[0])
                except ConfigError as err:
                    raise ConfigError(f"settings.{setting.name} with strategy {strategy}: {err}") from None

    def setting(self, name: str) -> Setting:
        return next(s for s in self.settings if s.name == name)

    def run_config(self, setting: Setting, strategy: str, seed: int) -> RunConfig:
        """The run config of one cell of the grid."""
        changes: dict[str, Any] = dict(setting.overrides)
        changes |= {"name": f"{setting.name}-seed{seed}-{strategy}", "seed": seed, "strategy.name": strategy}
        return self.run.override(changes)

    def round_zero_config(self, setting: Setting, seed: int) -> RunConfig:
        """Round 0 of a (setting, seed) pair: the first strategy's config with no acquisition round."""
        config = self.run_config(setting, self.strategies[0], seed)
        return config.override({"name": f"{setting.name}-seed{seed}-round0", "loop.rounds": 0})

    def full_data_config(self, seed: int) -> RunConfig:
        iterations = self.full_data.iterations or self.run.train.iterations
        return self.run.override({"name": f"full-data-seed{seed}", "seed": seed, "train.iterations": iterations})

    @property
    def uses_ray(self) -> bool:
        return self.ray.used

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-safe data that :func:`benchmark_from_dict` reads back to an equal config."""
        raw = typing.cast(dict[str, Any], _plain(dataclasses.asdict(self)))
        raw["settings"] = {s.name: {k: _plain(v) for k, v in s.overrides} for s in self.settings}
        return raw

    def grid_identity(self) -> dict[str, Any]:
        """What fixes the results (everything but how they are executed)."""
        raw = self.to_dict()
        for key in ("workers", "ray", "stats"):
            raw.pop(key)
        return raw


def _safe_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and not name.startswith(("_", "."))


def benchmark_from_dict(raw: Any, base_dir: Path | None = None) -> BenchmarkConfig:
    """Build and validate a :class:`BenchmarkConfig` from plain data (a YAML mapping)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"benchmark config: expected a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    run = raw.get("run", {})
    if isinstance(run, str):
        path = Path(run).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            run = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"run: run config {path} not found") from None
        raw["run"] = run
    settings = raw.pop("settings", None)
    config = typing.cast(BenchmarkConfig, _build(BenchmarkConfig, raw, ""))
    if settings is not None:
        config = dataclasses.replace(config, settings=_settings(settings))
    return config


def _settings(raw: Any) -> tuple[Setting, ...]:
    if not isinstance(raw, dict):
        raise ConfigError("settings: expected a mapping of setting name to {dotted.key: value} overrides")
    out = []
    for name, overrides in raw.items():
        if overrides is None:
            overrides = {}
        if not isinstance(name, str) or not isinstance(overrides, dict):
            raise ConfigError(f"settings.{name}: expected a mapping of dotted run-config keys to values")
        bad = [k for k in overrides if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"settings.{name}: keys must be dotted strings such as loop.per_round, got {bad}")
        out.append(Setting(name, tuple(sorted((k, _frozen(v)) for k, v in overrides.items()))))
    return tuple(out)


def _frozen(value: Any) -> Any:
    """Lists as tuples, so that a setting stays hashable like the rest of the config."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list | tuple) else value


def load_benchmark(path: Path) -> BenchmarkConfig:
    """Read and validate a benchmark YAML; errors name the file and the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: benchmark config not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    try:
        return benchmark_from_dict(raw or {}, base_dir=path.parent)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def save_benchmark(config: BenchmarkConfig, path: Path) -> None:
    from activeseg.artifacts import write_text_atomic

    write_text_atomic(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))


# --- the plan -----------------------------------------------------------------------------------------------------


def run_dir(results_dir: Path, setting: str, seed: int, strategy: str) -> Path:
    """Where one (setting, seed, strategy) run lives."""
    return Path(results_dir) / "runs" / setting / f"seed-{seed}" / strategy


def full_data_dir(results_dir: Path, seed: int) -> Path:
    return Path(results_dir) / "full-data" / f"seed-{seed}"


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
    """What a task did: ``skipped`` (already finished), ``ran`` (from scratch) or ``resumed``."""

    task: Task
    status: Literal["skipped", "ran", "resumed"]
    seconds: float
    dice: float | None
    """The run's last mean foreground Dice (or the full-data Dice)."""


def plan(config: BenchmarkConfig, results_dir: Path) -> tuple[list[Task], list[Task]]:
    """The two phases: every (setting, seed) round 0, then every strategy run and full-data bound."""
    results_dir = Path(results_dir).resolve()
    first: list[Task] = []
    second: list[Task] = []
    if config.full_data.enabled:
        second += [
            Task("full-data", "-", s, None, config.full_data_config(s), full_data_dir(results_dir, s), config.threads)
            for s in config.seeds
        ]
    for setting in config.settings:
        for seed in config.seeds:
            zero = run_dir(results_dir, setting.name, seed, ROUND_ZERO)
            first.append(
                Task("round0", setting.name, seed, None, config.round_zero_config(setting, seed), zero, config.threads)
            )
            second += [
                Task(
                    "run",
                    setting.name,
                    seed,
                    strategy,
                    config.run_config(setting, strategy, seed),
                    run_dir(results_dir, setting.name, seed, strategy),
                    config.threads,
                    round_zero=zero,
                )
                for strategy in config.strategies
            ]
    return first, second


# --- executing one task (in whichever process) ----------------------------------------------------------------------

_DATA_CACHE: dict[Any, Any] = {}


def _data(config: RunConfig) -> Any:
    """The validated data of a run config, opened once per process (several tasks share one dataset)."""
    from activeseg.loop import open_data

    if config.data not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[config.data] = open_data(config, SilentReporter())
    return _DATA_CACHE[config.data]


def run_finished(path: Path) -> bool:
    """A run is finished when its ledger records a stop reason."""
    ledger = Path(path) / "ledger.sqlite"
    if not ledger.exists():
        return False
    with Ledger(ledger) as opened:
        return opened.stop_reason() is not None


def task_finished(task: Task) -> bool:
    if task.kind == "full-data":
        return (task.out_dir / "full_data.json").exists()
    return run_finished(task.out_dir)


def execute_task(task: Task) -> TaskResult:
    """Run one task to its end (or skip it when finished). Deterministic: the same bytes in any process."""
    import torch

    from activeseg.artifacts import read_json
    from activeseg.curves import read_curve
    from activeseg.loop import adopt_round_zero, create_run, full_data_run, resume_run

    tick = time.perf_counter()
    previous = torch.get_num_threads()
    torch.set_num_threads(task.threads)
    try:
        if task_finished(task):
            status: Literal["skipped", "ran", "resumed"] = "skipped"
        elif task.kind == "full-data":
            full_data_run(task.config, task.out_dir, data=_data(task.config))
            status = "ran"
        else:
            status = "resumed" if (task.out_dir / "ledger.sqlite").exists() else "ran"
            if status == "ran":
                create_run(task.config, task.out_dir, data=_data(task.config))
            if task.round_zero is not None:
                adopt_round_zero(task.round_zero, task.out_dir)  # a no-op unless round 0 is still untrained
            resume_run(task.out_dir, data=_data(task.config))
    finally:
        torch.set_num_threads(previous)
    if task.kind == "full-data":
        dice = float(read_json(task.out_dir / "full_data.json")["dice"]["mean_foreground"])
    else:
        dice = read_curve(task.out_dir).mean_dice[-1]
    return TaskResult(task, status, time.perf_counter() - tick, dice)


# --- backends -------------------------------------------------------------------------------------------------------


def _sequential(tasks: Sequence[Task]) -> Iterator[TaskResult]:
    for task in tasks:
        yield execute_task(task)


def _pool(tasks: Sequence[Task], pool: ProcessPoolExecutor) -> Iterator[TaskResult]:
    futures = [pool.submit(execute_task, task) for task in tasks]
    for future in as_completed(futures):
        yield future.result()


def _ray_module() -> Any:
    try:
        import ray
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
    """Absolute data and cache paths, so that tasks in other processes (or on other nodes) find them."""
    changes: dict[str, Any] = {}
    for key in ("root", "test_root", "cache_dir"):
        value = getattr(config.run.data, key)
        if value is not None:
            changes[f"data.{key}"] = Path(value).resolve()
    return dataclasses.replace(config, run=config.run.override(changes)) if changes else config


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
) -> list[TaskResult]:
    """Run (or resume) every task of the grid; returns what each task did."""
    reporter = reporter or SilentReporter()
    config = resolve_paths(config)
    results_dir = Path(results_dir).resolve()
    backend = backend or choose_backend(config)
    if config.run.data.root is None:
        raise BenchmarkError("no dataset: set run.data.root in the benchmark config or pass --data DIR")
    prepare_results_dir(config, results_dir)
    _data(config.run)  # validate and preprocess once, before anything runs (fills the shared cache)
    phases = plan(config, results_dir)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tick = time.perf_counter()
    results: list[TaskResult] = []
    try:
        with _Executor(config, backend) as execute:
            for phase, tasks in zip(("round 0", "runs"), phases, strict=True):
                with reporter.progress(f"benchmark {config.name}: {phase}", len(tasks)) as advance:
                    for result in execute(tasks):
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
                context = get_context("spawn")
                self.pool = self.stack.enter_context(ProcessPoolExecutor(self.config.workers, mp_context=context))
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


def with_overrides(config: BenchmarkConfig, changes: dict[str, Any]) -> BenchmarkConfig:
    """A copy with command-line changes applied (``run.data.root``, ``workers``, ``ray.address`` …), revalidated."""
    raw = config.to_dict()
    for dotted, value in changes.items():
        *sections, key = dotted.split(".")
        node = raw
        for section in sections:
            node = node[section]
        node[key] = _plain(value)
    return benchmark_from_dict(raw)
