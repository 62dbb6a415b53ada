"""The full-data upper bound: the same model trained once on every pool case, evaluated on the same test split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from activeseg.artifacts import read_json, write_json_atomic
from activeseg.config import RunConfig, save_config
from activeseg.data.plan import write_plan
from activeseg.data.splits import RunData, open_data
from activeseg.engine.evaluation import evaluate_on, metrics_record
from activeseg.engine.model import build_model, save_model, select_device, use_amp
from activeseg.engine.patches import Example
from activeseg.engine.training import seed_everything, train
from activeseg.progress import Reporter, SilentReporter
from activeseg.rundir.layout import FullDataLayout
from activeseg.seeds import derive_seed


def full_data_run(
    config: RunConfig,
    out_dir: Path,
    reporter: Reporter | None = None,
    data_root: Path | None = None,
    data: RunData | None = None,
) -> dict[str, Any]:
    """Train once on every pool case (all labels) and evaluate on the same test split: the upper bound."""
    reporter = reporter or SilentReporter()
    if data_root is not None:
        config = config.override({"data.root": data_root})
    config = config.with_absolute_paths()
    data = data or open_data(config, reporter)
    layout = FullDataLayout(out_dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    save_config(config, layout.config)
    write_plan(data.plan, layout.plan)
    device = select_device(config.train)
    amp = use_amp(config.train, device)
    seed = derive_seed(config.seed, "train", "full-data")
    seed_everything(seed)
    model = build_model(config.model, data.plan).to(device)
    examples = [Example(data.image(c), data.ground_truth(c)) for c in data.pool.ids]
    tick = time.perf_counter()
    with reporter.progress("full data: training", config.train.iterations) as advance:
        train(model, examples, data.plan.patch_size, config.train, device, seed, amp, advance)
    seconds = time.perf_counter() - tick
    save_model(model, layout.model)
    result = evaluate_on(model, data, config.inference, amp, reporter, "full data")
    record = metrics_record(result, n_labelled=len(examples), round_index=None)
    record["train_seconds"] = seconds
    record["pool_foreground_voxels"] = sum(sum(len(v) for v in e.foreground.values()) for e in examples)
    write_json_atomic(layout.record, record)
    reporter.info(f"full data ({len(examples)} volumes): mean foreground Dice {result.mean_foreground_dice:.4f}")
    return record


def pool_foreground(path: Path) -> int | None:
    """The pool's labelled foreground voxels on the planned grid, from a full-data run (None if not recorded)."""
    record = FullDataLayout(path).record if path.is_dir() else path
    value = read_json(record).get("pool_foreground_voxels")
    return None if value is None else int(value)


def full_data_dice(path: Path) -> float:
    """The mean foreground Dice stored by a full-data run (its folder or its ``full_data.json``)."""
    path = Path(path)
    record = FullDataLayout(path).record if path.is_dir() else path
    return float(read_json(record)["dice"]["mean_foreground"])
