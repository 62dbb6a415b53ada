"""What a mean-teacher step costs against a plain one, on hippocampus with a regime's run config (one torch thread).

Both train the same network from the same seed on the same 20 labelled cases; the mean-teacher run adds the whole
remaining pool as unlabelled images (``train.mean_teacher``). Prints and writes the median seconds per step (the
first two steps left out, ``step_timing.train_step_seconds``) and their ratio.

    python benchmarks/mean_teacher_cost.py --data HIPPOCAMPUS [--config benchmarks/regimes/run-cpu.yaml]
        [--steps 40] [--out benchmarks/results/mean-teacher-cost.json]
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date
from pathlib import Path

import torch
from step_timing import train_step_seconds  # this script's folder is on sys.path when it runs

from activeseg.config import load_config
from activeseg.data.splits import open_data
from activeseg.engine.model import build_model
from activeseg.engine.patches import Example
from activeseg.engine.training import seed_everything
from activeseg.progress import SilentReporter

LABELLED = 20


def seconds_per_step(mean_teacher: bool, config_path: Path, data_root: Path, steps: int) -> float:
    config = load_config(config_path).override(
        {"data.root": str(data_root), "train.iterations": steps, "train.mean_teacher": mean_teacher}
    )
    data = open_data(config, SilentReporter())
    labelled = data.pool.ids[:LABELLED]
    examples = [Example(data.image(c), data.ground_truth(c)) for c in labelled]
    pool = [data.image(c) for c in data.pool.ids]
    seed_everything(0)
    model = build_model(config.model, data.plan)
    return train_step_seconds(model, examples, data.plan.patch_size, config.train, torch.device("cpu"), unlabelled=pool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=Path("benchmarks/regimes/run-cpu.yaml"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/mean-teacher-cost.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    plain = seconds_per_step(False, args.config, args.data, args.steps)
    taught = seconds_per_step(True, args.config, args.data, args.steps)
    record = {
        "plain_step_s": round(plain, 4),
        "mean_teacher_step_s": round(taught, 4),
        "ratio": round(taught / plain, 2),
        "steps": args.steps,
        "config": str(args.config),
        "threads": 1,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "date": date.today().isoformat(),
    }
    print(json.dumps(record, indent=2))
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
