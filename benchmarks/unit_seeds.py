"""The units benchmark over seeds (the GPU runs of ``units_benchmark.py``): one ``units.json`` per seed → a summary
with bootstrap CIs and paired tests (``benchmarks/results/gpu-units/summary.json``), its figure, and its section of
BENCHMARKS.md. The statistics are ``activeseg.bench.stats``; the figure is ``activeseg.plots.band_png``.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Any

from activeseg.bench.report import Block
from activeseg.bench.stats import aubc, bootstrap_ci, curve_band, paired_test
from activeseg.plots import band_png

UNIT_COMPARISONS = [
    *((f"patch/{s}", "patch/random") for s in ("foreground-random", "entropy", "bald", "clasp-pe")),
    *((f"patch/{s}", "patch/foreground-random") for s in ("entropy", "bald", "clasp-pe")),
    ("slice/strided", "slice/random"),
    *(
        (run, "volume/random")
        for run in ("slice/strided", "slice/random", "patch/random", "patch/foreground-random", "patch/entropy")
    ),
    *((run, "volume/random") for run in ("patch/bald", "patch/clasp-pe")),
]
"""(a, b) pairs compared on AUBC, paired by seed (one split; a unit kind's strategies share round 0)."""

UNIT_LINESTYLES = {"volume": "-", "slice": "--", "patch": ":"}
"""The figure's line style of each unit kind."""


def summarise_unit_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Every (unit, strategy) over seeds: AUBC and final Dice with bootstrap CIs, the mean curve with its band on
    the labelled-voxel axis, and the paired comparisons of ``UNIT_COMPARISONS``."""
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for result in per_seed:
        for run in result["runs"]:
            voxels = [int(v) for v in run["costs"]["voxels"]]
            runs.setdefault(f"{run['unit']}/{run['strategy']}", {})[result["seed"]] = {
                "voxels": voxels,
                "mean_dice": run["mean_dice"],
                "aubc": aubc(voxels, run["mean_dice"]),
            }
    estimates = {}
    for key, by_seed in runs.items():
        seeds = sorted(by_seed)
        estimates[key] = {
            "seeds": seeds,
            "aubc_per_seed": [by_seed[s]["aubc"] for s in seeds],
            "mean_dice_per_seed": [by_seed[s]["mean_dice"] for s in seeds],
            "aubc": asdict(bootstrap_ci([by_seed[s]["aubc"] for s in seeds])),
            "final_dice": asdict(bootstrap_ci([by_seed[s]["mean_dice"][-1] for s in seeds])),
            "band": asdict(curve_band([(by_seed[s]["voxels"], by_seed[s]["mean_dice"]) for s in seeds])),
        }
    paired = []
    for a, b in UNIT_COMPARISONS:
        if a in runs and b in runs:
            common = sorted(set(runs[a]) & set(runs[b]))
            test = paired_test([runs[a][s]["aubc"] for s in common], [runs[b][s]["aubc"] for s in common])
            paired.append({"a": a, "b": b, "seeds": common, **asdict(test)})
    first = per_seed[0]
    return {
        "seeds": sorted(r["seed"] for r in per_seed),
        "iterations": first["model"]["iterations"],
        "channels": first["model"]["channels"],
        "mc_samples": first["mc_samples"],
        "rounds": first["rounds"],
        "per_round_voxels": first["per_round_volumes"] * first["volume_voxels"],
        "machine": first["machine"],
        "runs": estimates,
        "paired": paired,
    }


def unit_bands_png(summary: dict[str, Any]) -> bytes:
    """Mean Dice against labelled voxels per (unit, strategy) with its bootstrap band, as PNG bytes."""
    return band_png(
        {key: estimate["band"] for key, estimate in summary["runs"].items()},
        None,
        title=f"Units at equal voxel budgets: mean over {len(summary['seeds'])} seeds, 95% CI",
        xlabel="labelled voxels (millions)",
        x_scale=1e6,
        linestyles={key: UNIT_LINESTYLES[key.split("/")[0]] for key in summary["runs"]},
        legend_beside=True,
    )


PROVENANCE = {
    "gpu": (
        "on a GPU",
        "(a lent device machine). Produced by `benchmarks/gpu_check.sh` (seed 0) and `benchmarks/gpu_units.sh` (the "
        "other seeds): `units_benchmark.py --device cuda --iterations 400 --mc-samples 8 --seed N`, patches in one "
        "process and slices and volumes in another per seed; summarised by `python benchmarks/run_benchmarks.py "
        "--render-only --gpu-results DIR` into `benchmarks/results/gpu-units/` (one `seed-N/units.json` per seed and "
        "`summary.json`).",
    ),
    "cpu": (
        "on CPU",
        "(two seeds at a time, one torch thread each, about 20 minutes per seed). Produced by `bash "
        "benchmarks/cpu_units.sh 0 1 2 3 4` (`units_benchmark.py --seed N --iterations 400 --strategies random "
        "foreground-random bald`: the GPU runs' training length; at the default 150 iterations random patches "
        "underfit); summarised by `python benchmarks/run_benchmarks.py --render-only` into "
        "`benchmarks/results/cpu-units/` (one `seed-N/units.json` per seed and `summary.json`). Runs with the "
        "planned pipeline: partial labels train with batch Dice and a forced-foreground share drawn from labelled "
        "units (the GPU section below predates both).",
    ),
}
"""Per device: the section title's suffix and how its runs were produced."""


def render_unit_seeds(summary: dict[str, Any], where: str, device: str = "gpu") -> list[Block]:
    """The units benchmark over seeds: estimates, paired comparisons and a reading stated from the numbers."""
    seeds = summary["seeds"]
    ranked = sorted(summary["runs"].items(), key=lambda kv: -kv[1]["aubc"]["mean"])
    estimates = [
        [
            f"`{key}`",
            str(len(e["seeds"])),
            f"{e['aubc']['mean']:.3f} [{e['aubc']['low']:.3f}, {e['aubc']['high']:.3f}]",
            f"{e['final_dice']['mean']:.3f} [{e['final_dice']['low']:.3f}, {e['final_dice']['high']:.3f}]",
            ", ".join(f"{v:.3f}" for v in e["aubc_per_seed"]),
        ]
        for key, e in ranked
    ]
    tests = [
        [
            f"`{t['a']}`",
            f"`{t['b']}`",
            str(t["n"]),
            f"{t['mean_difference']:+.4f} [{t['low']:+.4f}, {t['high']:+.4f}]",
            f"{t['wins']}/{t['n']}",
            f"{t['wilcoxon_p']:.3f}",
            "—" if t["t_p"] is None else f"{t['t_p']:.3f}",
        ]
        for t in summary["paired"]
    ]
    significant = [t for t in summary["paired"] if t["t_p"] is not None and t["t_p"] < 0.05]
    better = [f"`{t['a']}` over `{t['b']}`" for t in significant if t["mean_difference"] > 0]
    worse = [f"`{t['a']}` under `{t['b']}`" for t in significant if t["mean_difference"] < 0]
    best_key, best = ranked[0]

    def points(kinds: tuple[str, ...]) -> list[float]:
        """Every (strategy, seed, round) Dice of the given unit kinds, round 0 excluded (it is shared)."""
        return [
            d
            for key, e in summary["runs"].items()
            if key.split("/")[0] in kinds
            for curve in e["mean_dice_per_seed"]
            for d in curve[1:]
        ]

    def round_zero(kind: str) -> float:
        curves = next(e["mean_dice_per_seed"] for key, e in summary["runs"].items() if key.startswith(kind + "/"))
        return float(statistics.mean(curve[0] for curve in curves))

    partial, whole = points(("patch", "slice")), points(("volume",))
    low = 0.5
    return [
        ("h", 2, f"Annotation units at equal voxel budgets {PROVENANCE[device][0]}, {len(seeds)} seeds"),
        ("p", f"Machine: {where} {PROVENANCE[device][1]}"),
        (
            "p",
            f"Every round labels {summary['per_round_voxels']:,} voxels (4 volumes' worth): whole volumes, patches of "
            "20×28×20 (1/8 volume) or slices of 56×40 along axis 0; round 0 is random units of the same budget, "
            f"shared by the strategies of one unit kind and seed. U-Net channels {summary['channels']}, "
            f"{summary['iterations']} iterations per round from scratch, {summary['mc_samples']} MC-dropout samples, "
            f"{summary['rounds']} acquisition rounds, the demo's 160/40 split, seeds {seeds}. AUBC is on the "
            "labelled-voxel axis, normalised to [0, 1]; intervals are 95% percentile-bootstrap CIs over seeds.",
        ),
        (
            "table",
            ["unit / strategy", "seeds", "AUBC [95% CI]", "final Dice [95% CI]", "AUBC per seed"],
            estimates,
        ),
        (
            "p",
            "Paired differences in AUBC (a − b, same seed and split), mean with 95% bootstrap CI; with "
            f"{len(seeds)} pairs the exact two-sided Wilcoxon test cannot go below p = {2 / 2 ** len(seeds):.4f}, "
            "and p-values are not corrected for multiple comparisons:",
        ),
        ("table", ["a", "b", "n", "difference [CI]", "wins", "Wilcoxon p", "paired t p"], tests),
        (
            "p",
            f"**Reading.** The highest mean AUBC is `{best_key}` ({best['aubc']['mean']:.3f}). At p < 0.05 (paired "
            "t, uncorrected): " + ("; ".join(better + worse) if better or worse else "no difference") + ". "
            f"Round 0 (random units of the same budget) starts at a mean Dice of {round_zero('volume'):.3f} for "
            f"volumes, {round_zero('slice'):.3f} for slices and {round_zero('patch'):.3f} for patches, which weighs "
            "on the patch AUBC. "
            f"{sum(d < low for d in partial)} of {len(partial)} later-round results of slice and patch runs fall "
            f"below {low} Dice, against {sum(d < low for d in whole)} of {len(whole)} for whole volumes.",
        ),
        ("p", f"![Dice against labelled voxels over seeds](benchmarks/results/{device}-units/curves.png)"),
    ]
