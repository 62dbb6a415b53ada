"""``activeseg demo``: random vs predictive entropy vs BALD on the hippocampus data, with the full-data bound."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import yaml

from activeseg.artifacts import read_json
from activeseg.config import RunConfig, config_from_dict, load_config
from activeseg.curves import Curve, read_curve
from activeseg.loop import (
    CONFIG_FILE,
    LEDGER_FILE,
    RunData,
    adopt_round_zero,
    create_run,
    derive_seed,
    full_data_run,
    open_data,
    resume_run,
    round_seeds,
)
from activeseg.model import build_model
from activeseg.plots import plot_curves, plot_montage
from activeseg.reporting import Reporter, SilentReporter
from activeseg.strategies import get_strategy
from activeseg.train import predict
from activeseg.uncertainty import make_sampler

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
        if not (run_dir / LEDGER_FILE).exists():
            create_run(base.override({"name": name, "strategy.name": name}), run_dir, reporter, data=run_data)
    for run_dir in run_dirs:
        if run_dir != run_dirs[0] and adopt_round_zero(run_dirs[0], run_dir):
            reporter.info(
                f"{run_dir.name}: round 0 is identical to {run_dirs[0].name}'s (same seed and labels); reused"
            )
        resume_run(run_dir, reporter, data=run_data)
    full_dir = out_dir / "full-data"
    if not (full_dir / "full_data.json").exists():
        full_config = base.override({"name": "full-data", "train.iterations": full_data_iterations})
        full_data_run(full_config, full_dir, reporter, data=run_data)
    full_record = read_json(full_dir / "full_data.json")
    full = float(full_record["dice"]["mean_foreground"])
    curves = [read_curve(d) for d in run_dirs]
    curve_png = plot_curves(
        curves,
        out_dir / "curve.png",
        full_data=full,
        full_data_label=f"full data ({full_record['n_labelled']} volumes, {full_data_iterations} iterations)",
        title=f"Hippocampus (MSD Task04), {base.train.iterations} iterations per round, seed {base.seed}",
    )
    montage_png = selection_montage(out_dir / "bald", out_dir / "montage.png", reporter, data=run_data)
    return DemoResult(curves, full, int(full_record["n_labelled"]), curve_png, montage_png)


def selection_montage(
    run_dir: Path, out_png: Path, reporter: Reporter | None = None, data: RunData | None = None
) -> Path:
    """Mid slices of the last round's selected cases: image, prediction, uncertainty and ground truth."""
    reporter = reporter or SilentReporter()
    run_dir = Path(run_dir)
    config = load_config(run_dir / CONFIG_FILE)
    strategy = get_strategy(config.strategy.name)
    selections = sorted((run_dir / "rounds").glob("round_*/selection.json"))
    if not selections:
        raise FileNotFoundError(f"{run_dir}: no round has selected cases yet")
    round_dir = selections[-1].parent
    r = int(round_dir.name.split("_")[1])
    chosen = [c["case_id"] for c in read_json(selections[-1])]
    data = data or open_data(config, reporter)
    model = build_model(config.model, data.num_classes)
    model.load_state_dict(torch.load(round_dir / "model.pt", map_location="cpu", weights_only=True))
    shown = strategy if strategy.needs_scores else get_strategy("bald")  # score-free picks are shown with BALD
    rows = []
    mc_seed = round_seeds(config.seed, r)["mc_dropout"]
    s = config.strategy
    sampler = make_sampler(s.uncertainty, model, s.mc_samples, s.mc_batch_size, config.train.flip_axes, amp=False)
    for case_id in chosen:
        image = data.image(case_id)
        probs = sampler(torch.from_numpy(image), derive_seed(mc_seed, case_id))
        uncertainty = shown.score_maps(probs)[0]
        prediction = predict(model, torch.from_numpy(image[None]))[0].argmax(0)
        rows.append((case_id, image[0], prediction.numpy(), uncertainty.numpy(), data.ground_truth(case_id)))
    title = f"{config.strategy.name}: cases selected after round {r} (mid slice)"
    return plot_montage(rows, out_png, title, uncertainty_name=f"{shown.name} score ({s.uncertainty})")
