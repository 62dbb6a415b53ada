"""The benchmark config: a grid of strategies × seeds × settings on one dataset, validated once at load like a run
config.

A benchmark config (YAML) holds a base run config, the strategies, the seeds and optional *settings*: named sets of
dotted overrides of the run config (a budget schedule, an annotation unit). ``data.*`` keys and the grid's axes
(name, seed, strategy) are fixed for the whole grid, so every (setting, seed) pair shares one split.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from activeseg.acquisition.registry import STRATEGIES
from activeseg.artifacts import write_text_atomic
from activeseg.config import RunConfig
from activeseg.validation import ConfigError, build, plain, require

FIXED_KEYS = ("name", "seed", "strategy.name")
"""Dotted keys a setting may not override: the grid's axes. No ``data.*`` key either: one split for the grid."""
ARM_KEYS = "only strategy.* and train.* keys may differ (and strategy.name, in an arm with a new name)"
FIRST_ARM = "round 0 is trained with the first arm's config, so it takes no train.* key; list another arm first"


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
        require(self.cpus_per_task is None or self.cpus_per_task > 0, "ray.cpus_per_task", "must be positive")
        require(self.gpus_per_task >= 0, "ray.gpus_per_task", "must be >= 0")
        require(self.num_cpus is None or self.num_cpus >= 1, "ray.num_cpus", "must be at least 1")

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
        require(self.iterations is None or self.iterations >= 1, "full_data.iterations", "must be at least 1")


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
        require(self.bootstrap >= 100, "stats.bootstrap", "must be at least 100")
        require(0.5 <= self.confidence < 1, "stats.confidence", "must be in [0.5, 1)")
        require(0 < self.reach <= 1, "stats.reach", "must be in (0, 1]")
        require(0 < self.alpha < 1, "stats.alpha", "must be in (0, 1)")


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
    strategy_overrides: tuple[Setting, ...] = ()
    """Per-arm overrides, in YAML a mapping ``arm: {dotted.key: value}``. An arm named after a registered strategy
    takes ``strategy.*`` keys (e.g. ClaSP PE's β schedule beside PowerBALD's constant β); an arm with a new name
    also sets its ``strategy.name`` and may set ``train.*`` keys (e.g. ClaSP PE trained with pseudo-labels).
    Round 0, which every arm shares, is trained with the first arm's config, so that arm takes no ``train.*`` key."""
    full_data: FullDataConfig = field(default_factory=FullDataConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    workers: int = 1
    """Runs executed at once in a local process pool when Ray is not used (1: one after another)."""
    threads: int = 1
    """Torch CPU threads of each run, whatever the backend (keeps results bit-identical between backends)."""
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        require(bool(self.strategies), "strategies", "needs at least one strategy")
        arms = {variant.name: dict(variant.overrides) for variant in self.strategy_overrides}
        unknown = [s for s in self.strategies if s not in STRATEGIES and s not in arms]
        require(
            not unknown,
            "strategies",
            f"unknown {unknown}; registered: {', '.join(sorted(STRATEGIES))} (or an arm in strategy_overrides)",
        )
        require(len(set(self.strategies)) == len(self.strategies), "strategies", "lists a strategy twice")
        require(bool(self.seeds), "seeds", "needs at least one seed")
        require(len(set(self.seeds)) == len(self.seeds), "seeds", "lists a seed twice")
        require(bool(self.settings), "settings", "needs at least one setting")
        names = [s.name for s in self.settings]
        require(len(set(names)) == len(names), "settings", "names a setting twice")
        require(self.workers >= 1, "workers", "must be at least 1")
        require(self.threads >= 1, "threads", "must be at least 1")
        for name, overrides in arms.items():
            where = f"strategy_overrides.{name}"
            require(name in self.strategies, "strategy_overrides", f"{name!r} is not in strategies")
            registered = name in STRATEGIES
            require(_safe_name(name), where, "must be a plain folder name")
            require(registered or "strategy.name" in overrides, where, "a new arm names its strategy.name")
            for key in overrides:
                allowed = key.startswith("train.") or (key.startswith("strategy.") and key != "strategy.name")
                require(allowed or (key == "strategy.name" and not registered), f"{where}.{key}", ARM_KEYS)
            first = name == self.strategies[0]
            require(not (first and any(k.startswith("train.") for k in overrides)), where, FIRST_ARM)
        for setting in self.settings:
            require(_safe_name(setting.name), "settings", f"{setting.name!r} must be a plain folder name")
            for key, _ in setting.overrides:
                fixed = key in FIXED_KEYS or key.startswith("data.")
                require(not fixed, f"settings.{setting.name}.{key}", "is fixed for the whole grid (set it in run)")
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
        arm = next((dict(v.overrides) for v in self.strategy_overrides if v.name == strategy), {})
        changes |= {"strategy.name": strategy} | arm
        changes |= {"name": f"{setting.name}-seed{seed}-{strategy}", "seed": seed}
        return self.run.override(changes)

    def round_zero_config(self, setting: Setting, seed: int, strategy: str | None = None) -> RunConfig:
        """Round 0 of a (setting, seed) pair as ``strategy`` (default: the first) trains it: its config with no
        acquisition round."""
        config = self.run_config(setting, strategy or self.strategies[0], seed)
        suffix = "" if strategy in (None, self.strategies[0]) else f"-{strategy}"
        return config.override({"name": f"{setting.name}-seed{seed}-round0{suffix}", "loop.rounds": 0})

    def full_data_config(self, seed: int) -> RunConfig:
        iterations = self.full_data.iterations or self.run.train.iterations
        return self.run.override({"name": f"full-data-seed{seed}", "seed": seed, "train.iterations": iterations})

    @property
    def uses_ray(self) -> bool:
        return self.ray.used

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-safe data that :func:`benchmark_from_dict` reads back to an equal config."""
        raw = typing.cast(dict[str, Any], plain(dataclasses.asdict(self)))
        raw["settings"] = {s.name: {k: plain(v) for k, v in s.overrides} for s in self.settings}
        raw["strategy_overrides"] = {s.name: {k: plain(v) for k, v in s.overrides} for s in self.strategy_overrides}
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
    variants = raw.pop("strategy_overrides", None)
    strategies = raw.pop("strategies", None)  # may name arms of strategy_overrides: checked with them, below
    config = typing.cast(BenchmarkConfig, build(BenchmarkConfig, raw, ""))
    if strategies is not None and not (
        isinstance(strategies, list | tuple) and all(isinstance(s, str) for s in strategies)
    ):
        raise ConfigError(f"strategies: expected a list of strategy names, got {strategies!r}")
    if settings is not None or variants or strategies is not None:
        config = dataclasses.replace(
            config,
            strategies=config.strategies if strategies is None else tuple(strategies),
            settings=config.settings if settings is None else _settings(settings, "settings"),
            strategy_overrides=_settings(variants or {}, "strategy_overrides"),
        )
    return config


def _settings(raw: Any, section: str) -> tuple[Setting, ...]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{section}: expected a mapping of a name to {{dotted.key: value}} overrides")
    out = []
    for name, overrides in raw.items():
        if overrides is None:
            overrides = {}
        if not isinstance(name, str) or not isinstance(overrides, dict):
            raise ConfigError(f"{section}.{name}: expected a mapping of dotted run-config keys to values")
        bad = [k for k in overrides if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"{section}.{name}: keys must be dotted strings such as loop.per_round, got {bad}")
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
    """Write the validated benchmark config as YAML."""
    write_text_atomic(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))


def with_overrides(config: BenchmarkConfig, changes: dict[str, Any]) -> BenchmarkConfig:
    """A copy with command-line changes applied (``run.data.root``, ``workers``, ``ray.address`` …), revalidated."""
    raw = config.to_dict()
    for dotted, value in changes.items():
        *sections, key = dotted.split(".")
        node = raw
        for section in sections:
            node = node[section]
        node[key] = plain(value)
    return benchmark_from_dict(raw)
