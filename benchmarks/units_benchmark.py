"""Annotation units at equal voxel budgets on the hippocampus split: whole volumes vs 2D slices vs 3D patches.

Every run uses the demo's model (``activeseg/configs/demo.yaml``) with the hippocampus benchmark's lighter
training (150 iterations per round, 6 MC-dropout samples; ``benchmarks/hippocampus.yaml``), one torch thread,
seed 0 (``--seed``) and the demo's 160/40 split.
Each round labels 4 volumes' worth of voxels (358,400): 4 volumes, 32 patches of 20×28×20 (1/8 volume) or 160
slices of 56×40 (axis 0); round 0 is random units of the same budget, shared by the runs of one unit kind. Runs
whose directory already holds a finished run are skipped, so the script resumes.

    python benchmarks/units_benchmark.py [--out /tmp/activeseg-units] [--data DIR]

It writes ``benchmarks/results/units.json`` (every run's curve with its cumulative costs) and
``benchmarks/results/units_curves.png`` (Dice against labelled voxels); ``run_benchmarks.py --render-only`` puts
them in BENCHMARKS.md. On a GPU machine (``benchmarks/gpu_check.sh``) the same runs train longer, with the unit
kinds split over processes, and ``--render-only --results-dir benchmarks/results/gpu-units`` summarises the
fetched run directories here:

    python benchmarks/units_benchmark.py --device cuda --iterations 400 --mc-samples 8 --kinds patch
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from run_benchmarks import machine  # this script's folder is on sys.path when it runs

from activeseg.artifacts import read_json, write_json_atomic, write_text_atomic
from activeseg.config import RunConfig
from activeseg.data.splits import open_data
from activeseg.demo import default_config, find_hippocampus
from activeseg.engine.malloc import keep_freed_memory
from activeseg.engine.run import run_to_end
from activeseg.plots import plot_curves
from activeseg.progress import RichReporter
from activeseg.rundir.curves import read_curve
from activeseg.rundir.layout import RunLayout

RESULTS = Path(__file__).resolve().parent / "results"
BENCH_SECONDS = "bench_seconds.json"
"""Beside each run: the seconds of this script's last call on it (creation, adopted round 0 and the rounds run)."""
MACHINE = "machine.json"
"""Beside the run directories: what trained them."""
VOLUME_VOXELS = 40 * 56 * 40
PER_ROUND_VOLUMES = 4
ROUNDS = 3
SETTINGS: dict[str, dict[str, Any]] = {
    "patch": {"unit.kind": "patch", "unit.patch_size": [20, 28, 20], "loop.initial": 32, "loop.per_round": 32},
    "slice": {"unit.kind": "slice", "unit.axis": 0, "loop.initial": 160, "loop.per_round": 160},
    "volume": {"unit.kind": "volume", "loop.initial": 4, "loop.per_round": 4},
}
STRATEGIES = {  # most important first: the script resumes, so a cut-short run still reports what finished
    "patch": ["random", "foreground-random", "entropy", "bald", "clasp-pe"],
    "slice": ["strided", "random"],
    "volume": ["random"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/activeseg-units"), help="run directories")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where units.json and the figure go")
    parser.add_argument("--kinds", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--iterations", type=int, default=150, help="training iterations per round")
    parser.add_argument("--strategies", nargs="+", default=None, help="only these strategies (default: all of a kind)")
    parser.add_argument("--mc-samples", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="the run seed (round 0's units, training, scoring)")
    parser.add_argument("--render-only", action="store_true", help="summarise the run directories in --out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()  # as the CLI does (activeseg.engine.malloc)
    reporter = RichReporter()
    base = default_config().override(
        {
            "data.root": find_hippocampus(args.data) if not args.render_only else Path(),
            "seed": args.seed,
            "loop.rounds": ROUNDS,
            "unit.cost": "voxels",
            "train.iterations": args.iterations,
            "train.device": args.device,
            "strategy.mc_samples": args.mc_samples,
            "strategy.mc_batch_size": args.mc_samples,
        }
    )
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.out / MACHINE).exists():  # what trained the runs, kept beside them
        write_text_atomic(args.out / MACHINE, json.dumps(machine(), indent=2) + "\n")
    if not args.render_only:
        run_kinds(base, args.kinds, args.out, args.results_dir, reporter, args.strategies)
    if write_results(base, args.out, args.results_dir):
        reporter.info(f"wrote {args.results_dir / 'units.json'} and {args.results_dir / 'units_curves.png'}")
    else:
        reporter.info(f"no finished run in {args.out}: nothing written")


def run_kinds(
    base: RunConfig,
    kinds: list[str],
    out: Path,
    results_dir: Path,
    reporter: RichReporter,
    only: list[str] | None = None,
) -> None:
    """Run (or resume) every strategy of each unit kind (or those in ``only``); the first run of a kind trains the
    round 0 that the others adopt (``engine.run.run_to_end``)."""
    data = open_data(base, reporter)
    for kind in kinds:
        overrides = SETTINGS[kind]
        first: Path | None = None
        for name in (n for n in STRATEGIES[kind] if only is None or n in only):
            config = base.override({**overrides, "strategy.name": name, "name": f"{kind}-{name}"})
            if name == "clasp-pe":
                config = config.override(
                    {"strategy.beta": 1.0, "strategy.beta_end": 10.0, "strategy.beta_schedule": "exponential"}
                )
            run_dir = out / f"{kind}-{name}"
            tick = time.perf_counter()
            run_to_end(config, run_dir, data, reporter, round_zero=first)
            first = first or run_dir
            seconds = time.perf_counter() - tick
            write_json_atomic(run_dir / BENCH_SECONDS, {"seconds_this_call": seconds})
            print(f"{kind}/{name}: Dice {[round(d, 4) for d in read_curve(run_dir).mean_dice]}", flush=True)
            write_results(base, out, results_dir)


def finished_runs(out: Path) -> list[dict[str, Any]]:
    """Every finished run under ``out``, in the order of ``SETTINGS`` and ``STRATEGIES``."""
    runs = []
    for kind in SETTINGS:
        for name in STRATEGIES[kind]:
            layout = RunLayout(out / f"{kind}-{name}")
            if not layout.ledger.exists():
                continue
            with layout.open_ledger() as ledger:
                stop = ledger.stop_reason()
            if stop is None:
                continue
            curve = read_curve(layout.root)
            timing = layout.root / BENCH_SECONDS
            seconds = read_json(timing)["seconds_this_call"] if timing.exists() else None
            runs.append(
                {
                    "unit": kind,
                    "strategy": name,
                    "n_labelled": curve.n_labelled,
                    "mean_dice": curve.mean_dice,
                    "costs": curve.costs,
                    "stop": stop,
                    "seconds_this_call": seconds,
                }
            )
    return runs


def write_results(base: RunConfig, out: Path, results_dir: Path) -> bool:
    """Store what has finished so far (the script may be cut short and resumed); False if nothing has."""
    results_dir.mkdir(parents=True, exist_ok=True)
    runs = finished_runs(out)
    if not runs:
        return False
    curves = [read_curve(out / f"{r['unit']}-{r['strategy']}") for r in runs]
    plot_curves(
        curves,
        results_dir / "units_curves.png",
        title=f"Hippocampus: patches, slices and volumes at equal voxel budgets (seed {base.seed}, "
        f"{base.train.iterations} iterations/round)",
        cost="voxels",
    )
    summary = {
        "seed": base.seed,
        "volume_voxels": VOLUME_VOXELS,
        "per_round_volumes": PER_ROUND_VOLUMES,
        "rounds": ROUNDS,
        "model": {"channels": list(base.model.channels), "iterations": base.train.iterations},
        "mc_samples": base.strategy.mc_samples,
        "runs": runs,
        "wall_s": sum(r["seconds_this_call"] or 0.0 for r in runs),
        "machine": read_json(out / MACHINE),
    }
    write_json_atomic(results_dir / "units.json", summary)
    return True


if __name__ == "__main__":
    main()
