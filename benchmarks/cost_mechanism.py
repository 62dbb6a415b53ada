"""What cost-aware ClaSP PE changes in one acquisition round, with no training: the pool of a finished patch run is
scored with that round's own model, once per strategy (the round's MC-dropout and selection seeds, the labelled
voxels as they stood then), and each strategy's picks are measured on the ground truth: foreground voxels per patch
and the ``foreground_voxels`` cost they would charge.

The strategy the run itself used must pick exactly what its ``selection.json`` recorded (checked and printed).

    python benchmarks/cost_mechanism.py RUN_DIR [--round 0] [--strategies clasp-pe cost-clasp-pe] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from activeseg.acquisition.costs import COSTS
from activeseg.acquisition.registry import get_strategy
from activeseg.acquisition.units import case_of
from activeseg.config import load_config
from activeseg.data.plan import read_plan
from activeseg.data.splits import open_data
from activeseg.engine.malloc import keep_freed_memory
from activeseg.engine.model import build_model, load_weights
from activeseg.engine.pool import Pool, labelled_voxels
from activeseg.progress import SilentReporter
from activeseg.rundir.layout import RunLayout
from activeseg.rundir.ledger import Ledger
from activeseg.seeds import round_seeds


class PoolAtRound(Pool):
    """A finished run's pool as it stood when round ``r`` selected: only the units labelled by then count."""

    def __init__(self, *args: object, round_index: int) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.round_index = round_index

    def labelled_voxels(self, case_id: str) -> np.ndarray:
        return labelled_voxels(self.ledger, case_id, self.data.shape_of(case_id), up_to_round=self.round_index)


def picks(
    run_dir: Path, r: int, strategies: list[str]
) -> tuple[dict[str, list[dict[str, float | str]]], dict[str, list[float]]]:
    """Each strategy's round-r picks, with their true foreground voxels and foreground-weighted cost, and the
    coefficient of variation over the candidates of each strategy's score columns."""
    layout = RunLayout(run_dir)
    config = load_config(layout.config)
    data = open_data(config, SilentReporter(), read_plan(layout.plan))
    model = build_model(config.model, data.plan)
    load_weights(model, layout.model(r, 0))
    seeds = round_seeds(config.seed, r)
    out: dict[str, list[dict[str, float | str]]] = {}
    spread: dict[str, list[float]] = {}
    with Ledger(layout.ledger) as ledger, tempfile.TemporaryDirectory() as scratch:
        labelled = sorted({record.case_id for record in ledger.labels(r)})
        for name in strategies:
            mine = config.override({"strategy.name": name})
            pool = PoolAtRound(
                mine, RunLayout(Path(scratch) / name), data, ledger, get_strategy(name), SilentReporter(), round_index=r
            )
            candidates = pool.scored(r, model, [], pool.cases_with_candidates(), seeds["mc_dropout"])
            context = pool.context(r, model, candidates, labelled, seeds["select"], None)
            choices = pool.strategy.select(candidates.units, candidates.scores, config.loop.per_round, context)
            assert candidates.scores is not None
            score_U_M = np.array([candidates.scores[u] for u in candidates.units])
            spread[name] = (score_U_M.std(axis=0) / score_U_M.mean(axis=0)).tolist()
            out[name] = []
            for choice in choices:
                cost = pool.cost_context(choice.unit, data.ground_truth(case_of(choice.unit)))
                out[name].append(
                    {"unit": choice.unit}
                    | {model: COSTS[model](cost) for model in ("foreground", "foreground_voxels", "voxels")}
                )
    recorded = [c["unit"] for c in json.loads(layout.selection(r).read_text())]
    own = config.strategy.name
    if own in out:
        print(f"{own} reproduces the run's recorded round-{r} selection: {[p['unit'] for p in out[own]] == recorded}")
    return out, spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--round", type=int, default=0)
    parser.add_argument("--strategies", nargs="+", default=["clasp-pe", "cost-clasp-pe"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the picks as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the CLI does (activeseg.engine.malloc)
    result, spread = picks(args.run_dir, args.round, args.strategies)
    for name, chosen in result.items():
        fg = np.array([c["foreground"] for c in chosen], dtype=float)
        weighted = np.array([c["foreground_voxels"] for c in chosen], dtype=float)
        print(
            f"{name}: {len(chosen)} patches, foreground voxels per patch median {np.median(fg):.0f} "
            f"(mean {fg.mean():.0f}), foreground-weighted cost per patch {weighted.min():,.0f}-{weighted.max():,.0f}; "
            f"coefficient of variation of each score column over the candidates: "
            + ", ".join(f"{v:.2f}" for v in spread[name])
        )
    if args.out:
        args.out.write_text(json.dumps({"picks": result, "candidate_score_cv": spread}, indent=1))


if __name__ == "__main__":
    main()
