"""A benchmark's stored results → one plain JSON summary (``summary.json``) with every statistic of the report.

Every number comes from files the benchmark stored: each run's ``curve.csv`` and ledger stop reason, each seed's
``full_data.json``, and ``benchmark.yaml`` for the grid and the statistics settings. The renderers (``report``)
read only the summary, so BENCHMARKS.md can be regenerated from a stored summary without the run directories.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from activeseg.bench.config import BenchmarkConfig, load_benchmark
from activeseg.bench.grid import BENCHMARK_FILE, full_data_dir, read_executions, run_dir
from activeseg.bench.stats import (
    aubc,
    bootstrap_ci,
    budget_to_reach,
    curve_band,
    foreground_efficiency,
    holm,
    mean_over,
    mean_ranks,
    paired_test,
    seeds_for_power,
)
from activeseg.engine.full_data import full_data_dice, pool_foreground
from activeseg.rundir.curves import read_curve
from activeseg.rundir.layout import FullDataLayout, RunLayout

SUMMARY_FILE = "summary.json"
METRICS = (
    ("aubc", "AUBC"),
    ("aubc_voxels", "AUBC over labelled voxels"),
    ("aubc_weighted", "AUBC over foreground-weighted voxels"),
    ("final_dice", "final Dice"),
)
"""The per-run metrics compared between strategies. ``aubc`` is over rounds (units), as nnActive's; ``aubc_voxels``
is the mean Dice over the labelled voxels that every finished run of the setting covers, so a strategy that picks
bigger units (whole lattice boxes rather than ones clipped at a volume's edge) gains nothing from their size;
``aubc_weighted`` is the same over the ``foreground_voxels`` cost (a foreground voxel costs 3 to draw), so a strategy
whose units hold more foreground pays for it."""

COST_AXES = (("aubc_voxels", "voxels"), ("aubc_weighted", "weighted"))
"""(metric, the RunResult cost curve it is the mean Dice over)"""


@dataclass(frozen=True)
class RunResult:
    """One run's stored curve."""

    setting: str
    strategy: str
    seed: int
    finished: bool
    stop_reason: str | None
    n_labelled: list[int]
    mean_dice: list[float]
    foreground: list[float] | None = None
    """Labelled foreground voxels at each round (the ``foreground`` cost; None in runs that predate it)."""
    pool_share: list[float] | None = None
    """The labelled share of the pool at each round: Σ (unit voxels / its volume's voxels) over the pool's volumes."""
    voxels: list[float] | None = None
    """Labelled voxels at each round (the ``voxels`` cost)."""
    aubc_voxels: float | None = None
    """Mean Dice over the setting's shared interval of labelled voxels (:func:`with_cost_aubc`)."""
    weighted: list[float] | None = None
    """Labelled foreground-weighted voxels at each round (the ``foreground_voxels`` cost)."""
    aubc_weighted: float | None = None
    """Mean Dice over the setting's shared interval of foreground-weighted voxels (:func:`with_cost_aubc`)."""

    @property
    def aubc(self) -> float:
        return aubc(self.n_labelled, self.mean_dice)

    @property
    def final_dice(self) -> float:
        return self.mean_dice[-1]

    @property
    def acquired_foreground(self) -> float | None:
        """Foreground voxels per unit acquired after the first round (None without that cost or acquisitions)."""
        if self.foreground is None or self.n_labelled[-1] == self.n_labelled[0]:
            return None
        return (self.foreground[-1] - self.foreground[0]) / (self.n_labelled[-1] - self.n_labelled[0])


def collect(results_dir: Path) -> tuple[BenchmarkConfig, list[RunResult], dict[int, float], dict[int, int]]:
    """The benchmark config, every run that has evaluated a round, and the full-data Dice and pool foreground
    voxels of each finished seed (the latter where the full-data run recorded it)."""
    results_dir = Path(results_dir)
    if not (results_dir / BENCHMARK_FILE).exists():
        raise FileNotFoundError(f"{results_dir} is not a benchmark results directory (no {BENCHMARK_FILE})")
    config = load_benchmark(results_dir / BENCHMARK_FILE)
    runs = []
    for setting in config.settings:
        for seed in config.seeds:
            for strategy in config.strategies:
                path = run_dir(results_dir, setting.name, seed, strategy)
                layout = RunLayout(path)
                if not layout.curve_csv.exists():
                    continue
                with layout.open_ledger() as ledger:
                    reason = ledger.stop_reason()
                    pool_size = len(ledger.split("pool"))
                curve = read_curve(path)
                volumes = curve.costs.get("volumes")
                share = [v / pool_size for v in volumes] if volumes and pool_size else None
                finished = reason is not None
                foreground = curve.costs.get("foreground")
                runs.append(
                    RunResult(
                        setting.name,
                        strategy,
                        seed,
                        finished,
                        reason,
                        curve.n_labelled,
                        curve.mean_dice,
                        foreground,
                        share,
                        voxels=curve.costs.get("voxels"),
                        weighted=curve.costs.get("foreground_voxels"),
                    )
                )
    full: dict[int, float] = {}
    pool: dict[int, int] = {}
    for seed in config.seeds:
        folder = full_data_dir(results_dir, seed)
        if FullDataLayout(folder).finished():
            full[seed] = full_data_dice(folder)
            foreground_voxels = pool_foreground(folder)
            if foreground_voxels:
                pool[seed] = foreground_voxels
    return config, runs, full, pool


def cost_interval(runs: Sequence[RunResult], axis: str = "voxels") -> tuple[float, float] | None:
    """The interval of the ``axis`` cost curve (``voxels`` or ``weighted``) every finished run covers: [largest
    first budget, smallest last budget]; None when a run lacks that cost or the runs share no interval."""
    curves = [getattr(r, axis) for r in runs if r.finished]
    if not curves or any(c is None or len(c) < 2 for c in curves):
        return None
    low, high = max(c[0] for c in curves), min(c[-1] for c in curves)
    return (low, high) if low < high else None


def with_cost_aubc(
    runs: Sequence[RunResult], interval: tuple[float, float] | None, metric: str = "aubc_voxels", axis: str = "voxels"
) -> list[RunResult]:
    """The runs with ``metric`` set: each finished run's mean Dice over ``interval`` of its ``axis`` cost."""
    if interval is None:
        return list(runs)
    out = []
    for r in runs:
        costs = getattr(r, axis)
        value: dict[str, Any] = {metric: mean_over(costs, r.mean_dice, *interval)} if r.finished and costs else {}
        out.append(replace(r, **value))
    return out


def _estimate(values: Sequence[float], config: BenchmarkConfig) -> dict[str, float]:
    s = config.stats
    return asdict(bootstrap_ci(values, resamples=s.bootstrap, confidence=s.confidence, seed=s.seed))


def summarise(results_dir: Path) -> dict[str, Any]:
    """Every statistic of the report, as plain JSON-able data computed from the stored results."""
    config, runs, full, pool = collect(results_dir)
    intervals: dict[str, dict[str, tuple[float, float] | None]] = {}
    for metric, axis in COST_AXES:
        intervals[metric] = {
            st.name: cost_interval([r for r in runs if r.setting == st.name], axis) for st in config.settings
        }
        runs = [
            r
            for st in config.settings
            for r in with_cost_aubc([r for r in runs if r.setting == st.name], intervals[metric][st.name], metric, axis)
        ]
    s = config.stats
    finished = [r for r in runs if r.finished]
    present = sorted({r.strategy for r in finished}, key=config.strategies.index)
    baselines = [b for b in s.baselines if b in present]
    by_key = {(r.setting, r.strategy, r.seed): r for r in finished}

    run_rows = []
    for r in runs:
        target = s.reach * full[r.seed] if r.seed in full else None
        run_rows.append(
            {
                "setting": r.setting,
                "strategy": r.strategy,
                "seed": r.seed,
                "finished": r.finished,
                "stop_reason": r.stop_reason,
                "n_labelled": r.n_labelled,
                "voxels": r.voxels,
                "mean_dice": r.mean_dice,
                "aubc": r.aubc,
                "aubc_voxels": r.aubc_voxels,
                "aubc_weighted": r.aubc_weighted,
                "final_dice": r.final_dice,
                "reach_budget": None if target is None else budget_to_reach(r.n_labelled, r.mean_dice, target),
                "reach_share": None if target is None else _share_at_reach(r, target),
            }
        )
    row_of = {(row["setting"], row["strategy"], row["seed"]): row for row in run_rows}

    per_strategy = []
    paired = []
    bands: dict[str, dict[str, Any]] = {}
    for setting in config.settings:
        bands[setting.name] = {}
        fg_eff = _foreground_efficiencies([r for r in finished if r.setting == setting.name], full, pool)
        for strategy in present:
            mine = [by_key[k] for k in sorted(by_key) if k[0] == setting.name and k[1] == strategy]
            if not mine:
                continue
            acquired = [a for r in mine if (a := r.acquired_foreground) is not None]  # all, or None in the summary
            per_strategy.append(
                {
                    "setting": setting.name,
                    "strategy": strategy,
                    "n": len(mine),
                    "seeds": [r.seed for r in mine],
                    "aubc": _estimate([r.aubc for r in mine], config),
                    **{
                        metric: (
                            _estimate([getattr(r, metric) for r in mine if getattr(r, metric) is not None], config)
                            if intervals[metric][setting.name]
                            else None
                        )
                        for metric, _ in COST_AXES
                    },
                    "final_dice": _estimate([r.final_dice for r in mine], config),
                    "reach_budget": {
                        str(r.seed): row_of[(setting.name, strategy, r.seed)]["reach_budget"]
                        for r in mine
                        if r.seed in full
                    },
                    "fg_eff": fg_eff.get(strategy),
                    "acquired_foreground": _estimate(acquired, config) if len(acquired) == len(mine) else None,
                    "reach_share": {
                        str(r.seed): row_of[(setting.name, strategy, r.seed)]["reach_share"]
                        for r in mine
                        if r.seed in full
                    },
                }
            )
            band = curve_band(
                [(r.n_labelled, r.mean_dice) for r in mine],
                resamples=s.bootstrap,
                confidence=s.confidence,
                seed=s.seed,
            )
            bands[setting.name][strategy] = asdict(band)
            for baseline in baselines:
                if baseline == strategy or (
                    strategy in baselines and baselines.index(strategy) < baselines.index(baseline)
                ):
                    continue  # itself, or the mirror image of a baseline-vs-baseline comparison listed once
                seeds = [x.seed for x in mine if (setting.name, baseline, x.seed) in by_key]
                if not seeds:
                    continue
                ours = [by_key[(setting.name, strategy, x)] for x in seeds]
                theirs = [by_key[(setting.name, baseline, x)] for x in seeds]
                for metric, _ in METRICS:
                    if any(getattr(r, metric) is None for r in ours + theirs):
                        continue  # runs that predate the voxels cost
                    test = paired_test(
                        [getattr(r, metric) for r in ours],
                        [getattr(r, metric) for r in theirs],
                        resamples=s.bootstrap,
                        confidence=s.confidence,
                        seed=s.seed,
                    )
                    paired.append(
                        {"setting": setting.name, "strategy": strategy, "baseline": baseline, "metric": metric}
                        | asdict(test)
                        | {"seeds": seeds}
                    )

    add_holm(paired)
    add_power(paired, s.alpha)
    ranking: dict[str, Any] = {}
    for metric, _ in METRICS:
        table = {
            strategy: {
                (r.setting, r.seed): getattr(r, metric)
                for r in finished
                if r.strategy == strategy and getattr(r, metric) is not None
            }
            for strategy in present
        }
        ranks, blocks = mean_ranks(table)
        ranking[metric] = {"mean_rank": ranks, "blocks": blocks}

    executions = read_executions(results_dir)
    return {
        "name": config.name,
        "strategies": list(config.strategies),
        "seeds": list(config.seeds),
        "settings": {st.name: dict(st.overrides) for st in config.settings},
        "setting_order": [st.name for st in config.settings],  # the stored JSON's keys are sorted
        "baselines": baselines,
        "voxel_interval": {name: list(span) if span else None for name, span in intervals["aubc_voxels"].items()},
        "weighted_interval": {name: list(span) if span else None for name, span in intervals["aubc_weighted"].items()},
        "run": _describe_run(config),
        "stats": asdict(s),
        "progress": {
            "finished": len(finished),
            "planned": len(config.strategies) * len(config.seeds) * len(config.settings),
        },
        "full_data": {
            "iterations": config.full_data.iterations or config.run.train.iterations,
            "per_seed": {str(k): v for k, v in sorted(full.items())},
            "estimate": _estimate(list(full.values()), config) if full else None,
        },
        "runs": run_rows,
        "per_strategy": per_strategy,
        "paired": paired,
        "ranking": ranking,
        "bands": bands,
        "executions": {
            "invocations": len(executions),
            "wall_s": sum(e["wall_s"] for e in executions),
            "adopted": sum(t["status"] == "adopted" for e in executions for t in e["tasks"]),
            "backends": sorted({e["backend"] for e in executions}),
            "workers": max((e["workers"] for e in executions), default=1),
            "threads": config.threads,
        },
    }


def _share_at_reach(run: RunResult, target: float) -> float | None:
    """The labelled share of the pool at the first round whose Dice reaches ``target`` (None: never, or unknown)."""
    if run.pool_share is None:
        return None
    return next((x for x, d in zip(run.pool_share, run.mean_dice, strict=True) if d >= target), None)


def add_holm(paired: list[dict[str, Any]]) -> None:
    """Add ``t_p_holm`` and ``wilcoxon_p_holm`` to every paired row: Holm-adjusted over its family, all the rows
    with the same baseline and metric (every strategy × setting compared with that baseline)."""
    families: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in paired:
        families.setdefault((row["baseline"], row["metric"]), []).append(row)
    for rows in families.values():
        for test in ("t_p", "wilcoxon_p"):
            for row, adjusted in zip(rows, holm([r[test] for r in rows]), strict=True):
                row[f"{test}_holm"] = adjusted
        for row in rows:
            row["family_size"] = len(rows)


def add_power(paired: list[dict[str, Any]], alpha: float, power: float = 0.8) -> None:
    """Add ``seeds_for_power`` to every paired row with a spread: the seeds a paired t-test at the family's
    Bonferroni level (alpha / family size, Holm's strictest step) needs to detect its mean difference with
    probability ``power`` (:func:`~activeseg.bench.stats.seeds_for_power`)."""
    for row in paired:
        if row.get("sd") is not None:
            level = alpha / row["family_size"]
            row["seeds_for_power"] = seeds_for_power(row["mean_difference"], row["sd"], level, power)


def _foreground_efficiencies(
    runs: Sequence[RunResult], full: dict[int, float], pool: dict[int, int]
) -> dict[str, float | None]:
    """nnActive's FG-Eff of each strategy in one setting (``stats.foreground_efficiency``); empty without the pool's
    foreground, the full-data Dice or the runs' foreground counts.

    x is the labelled share of the pool's foreground (percent, per seed); the curve's start (x₀, mean Dice there)
    is the mean over runs of their first evaluated round, shared by every strategy.
    """
    usable = [r for r in runs if r.foreground is not None and r.seed in pool and r.seed in full]
    if not usable:
        return {}
    pct = {id(r): [100.0 * f / pool[r.seed] for f in r.foreground or []] for r in usable}
    start_pct = float(np.mean([pct[id(r)][0] for r in usable]))
    start_dice = float(np.mean([r.mean_dice[0] for r in usable]))
    full_dice = float(np.mean([full[s] for s in {r.seed for r in usable}]))
    out: dict[str, float | None] = {}
    for strategy in sorted({r.strategy for r in usable}):
        mine = [r for r in usable if r.strategy == strategy]
        xs = [x for r in mine for x in pct[id(r)]]
        ys = [y for r in mine for y in r.mean_dice]
        out[strategy] = foreground_efficiency(xs, ys, full_dice, start_dice, start_pct)
    return out


def _describe_run(config: BenchmarkConfig) -> dict[str, Any]:
    run = config.run
    first = {st.name: config.run_config(st, config.strategies[0], config.seeds[0]) for st in config.settings}
    iterations = {name: c.train.iterations for name, c in first.items()}  # settings may override the run's
    distinct = set(iterations.values())
    return {
        "dataset": str(run.data.root.name) if run.data.root else None,
        "test_size": run.data.test_size if run.data.test_root is None else None,
        "max_cases": run.data.max_cases,
        "patch": list(run.plan.patch_size) if run.plan.patch_size else "planned",
        "channels": list(run.model.channels),
        "iterations": distinct.pop() if len(distinct) == 1 else iterations,
        "mc_samples": run.strategy.mc_samples,
        "uncertainty": run.strategy.uncertainty,
        "reduction": run.strategy.reduction,
        "strategy_overrides": {v.name: dict(v.overrides) for v in config.strategy_overrides},
        "loop": {
            name: {k: getattr(c.loop, k) for k in ("initial", "per_round", "rounds")} for name, c in first.items()
        },
        "unit": {name: c.unit.kind for name, c in first.items()},
    }
