"""``activeseg demo``: random vs predictive entropy vs BALD on the hippocampus data, with the full-data bound."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from activeseg.acquisition.registry import get_strategy
from activeseg.acquisition.scorers import moments_needed, strategy_maps
from activeseg.acquisition.sliding import sliding_moments
from activeseg.acquisition.uncertainty import make_window_sampler
from activeseg.acquisition.units import case_of
from activeseg.artifacts import read_json
from activeseg.config import RunConfig, config_from_dict, load_config
from activeseg.data.splits import RunData, open_data
from activeseg.engine.full_data import full_data_run
from activeseg.engine.inference import predict_label
from activeseg.engine.loop import load_round_model
from activeseg.engine.run import run_to_end
from activeseg.plots import plot_curves, plot_montage
from activeseg.progress import Reporter, SilentReporter
from activeseg.rundir.curves import Curve, read_curve
from activeseg.rundir.layout import FullDataLayout, RunLayout
from activeseg.seeds import derive_seed, round_seeds

DATA_ENV = "ACTIVESEG_HIPPOCAMPUS"
DEMO_STRATEGIES = ("random", "entropy", "bald")
FULL_DATA_ITERATIONS = 500
"""The demo's upper bound trains longer than one AL round (160 volumes need more steps than 20); the plot says so."""
HOW_TO_GET_DATA = (
    "activeseg needs the Medical Segmentation Decathlon Task04 Hippocampus data (MRI, CC-BY-SA 4.0) in MSD layout "
    "(imagesTr/, labelsTr/). Download Task04_Hippocampus.tar from the official Decathlon distribution "
    "(medicaldecathlon.com), unpack it, and pass --data PATH/Task04_Hippocampus or set "
    f"{DATA_ENV}=PATH/Task04_Hippocampus."
)


class DataNotFoundError(FileNotFoundError):
    """The demo data is not where it was looked for."""


def default_config() -> RunConfig:
    """The packaged demo config (``activeseg/configs/demo.yaml``)."""
    text = resources.files("activeseg").joinpath("configs/demo.yaml").read_text()
    return config_from_dict(yaml.safe_load(text))


def find_hippocampus(explicit: Path | None = None) -> Path:
    """``--data``, then ``$ACTIVESEG_HIPPOCAMPUS``, then ``../shared/data/hippocampus`` (from here or the checkout)."""
    candidates: list[tuple[str, Path]] = []
    if explicit is not None:
        candidates.append(("--data", Path(explicit)))
    elif os.environ.get(DATA_ENV):
        candidates.append((f"${DATA_ENV}", Path(os.environ[DATA_ENV])))
    else:
        checkout = Path(__file__).resolve().parents[2]
        candidates += [
            ("../shared/data/hippocampus", Path.cwd().parent / "shared" / "data" / "hippocampus"),
            ("beside the checkout", checkout.parent / "shared" / "data" / "hippocampus"),
        ]
    for _, path in candidates:
        if (path / "imagesTr").is_dir() and (path / "labelsTr").is_dir():
            return path
    looked = "; ".join(f"{how}: {path}" for how, path in candidates)
    raise DataNotFoundError(f"hippocampus data not found (looked at {looked}).\n{HOW_TO_GET_DATA}")


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its outputs, and what it measured."""

    curves: list[Curve]
    full_data_dice: float
    full_data_volumes: int
    curve_png: Path
    montage_png: Path


def run_demo(
    out_dir: Path,
    data: Path | None = None,
    config: RunConfig | None = None,
    reporter: Reporter | None = None,
    full_data_iterations: int = FULL_DATA_ITERATIONS,
) -> DemoResult:
    """Run (or resume) the three strategies and the full-data bound; write the curve and the montage."""
    reporter = reporter or SilentReporter()
    root = find_hippocampus(data)
    base = config or default_config()
    base = base.override({"data.root": root})
    out_dir = Path(out_dir)
    run_data = open_data(base, reporter)  # validated once; every run below shares this data section
    run_dirs = [out_dir / name for name in DEMO_STRATEGIES]
    for name, run_dir in zip(DEMO_STRATEGIES, run_dirs, strict=True):
        config = base.override({"name": name, "strategy.name": name})
        shared = None if run_dir == run_dirs[0] else run_dirs[0]  # the first run trains round 0 for all three
        run_to_end(config, run_dir, run_data, reporter, round_zero=shared)
    full = FullDataLayout(out_dir / "full-data")
    if not full.finished():
        full_config = base.override({"name": "full-data", "train.iterations": full_data_iterations})
        full_data_run(full_config, full.root, reporter, data=run_data)
    full_record = read_json(full.record)
    bound = float(full_record["dice"]["mean_foreground"])
    curves = [read_curve(d) for d in run_dirs]
    curve_png = plot_curves(
        curves,
        out_dir / "curve.png",
        full_data=bound,
        full_data_label=f"full data ({full_record['n_labelled']} volumes, {full_data_iterations} iterations)",
        title=f"Hippocampus (MSD Task04), {base.train.iterations} iterations per round, seed {base.seed}",
    )
    montage_png = selection_montage(out_dir / "bald", out_dir / "montage.png", reporter, data=run_data)
    return DemoResult(curves, bound, int(full_record["n_labelled"]), curve_png, montage_png)


def selection_montage(
    run_dir: Path, out_png: Path, reporter: Reporter | None = None, data: RunData | None = None
) -> Path:
    """Mid slices of the last round's selected cases: image, prediction, uncertainty and ground truth."""
    reporter = reporter or SilentReporter()
    layout = RunLayout(run_dir)
    config = load_config(layout.config)
    strategy = get_strategy(config.strategy.name)
    selections = layout.selections()
    if not selections:
        raise FileNotFoundError(f"{run_dir}: no round has selected cases yet")
    r = int(selections[-1].parent.name.split("_")[1])
    chosen = [case_of(c["unit"]) for c in read_json(selections[-1])]
    data = data or open_data(config, reporter)
    model = load_round_model(config, layout, data, r)
    shown = strategy if strategy.needs_scores else get_strategy("bald")  # score-free picks are shown with BALD
    assert shown.scorer is not None
    rows = []
    mc_seed = round_seeds(config.seed, r)["mc_dropout"]
    s = config.strategy
    sampler = make_window_sampler(
        s.uncertainty, model, s.mc_samples, s.mc_batch_size, config.train.flip_indices, amp=False
    )
    roi, inference, needs = data.plan.patch_size, config.inference, moments_needed(shown.scorer)
    for case_id in chosen:
        image = data.image(case_id)
        seed = derive_seed(mc_seed, case_id)
        moments = sliding_moments(image, sampler, roi, inference.overlap, inference.windows_per_batch, seed, needs)
        uncertainty = strategy_maps(shown.scorer, moments)[0]
        prediction = predict_label(model, image, roi, inference)
        rows.append((case_id, image[0], prediction, uncertainty.numpy(), data.ground_truth(case_id)))
    title = f"{config.strategy.name}: cases selected after round {r} (mid slice)"
    return plot_montage(rows, out_png, title, uncertainty_name=f"{shown.name} score ({s.uncertainty})")
