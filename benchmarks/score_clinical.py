"""Seconds the engine's CPU scoring path takes on the clinical-shape set, to compare two versions of the code.

One process times MC-dropout scoring (K = 8, channels-last, the plan's window, overlap 0.5, p̄ only) of the first
``--volumes`` volumes of a clinical-shape set made by ``pipeline_benchmark.py --work DIR``, in float32 and (where
oneDNN convolves it) under bf16 autocast, ``--rounds`` times after one untimed call, and prints the summed seconds
per path as one JSON line. A shared VM's speed drifts by about 10% within minutes, so compare versions by running
this script against each checkout's ``src`` alternately, several times, and read the medians:

    python benchmarks/pipeline_benchmark.py --parts speed --work /tmp/pb   # makes /tmp/pb/clinical-world
    for i in 1 2 3; do PYTHONPATH=OLD/src python benchmarks/score_clinical.py /tmp/pb old; \\
                       PYTHONPATH=src python benchmarks/score_clinical.py /tmp/pb new; done
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from activeseg.acquisition.sliding import sliding_moments
from activeseg.acquisition.uncertainty import make_window_sampler
from activeseg.config import config_from_dict
from activeseg.data.splits import open_data
from activeseg.engine.malloc import keep_freed_memory
from activeseg.engine.model import build_model, cpu_bf16_native
from activeseg.progress import SilentReporter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path, help="pipeline_benchmark.py's --work folder")
    parser.add_argument("label", help="a name for this version, printed with its times")
    parser.add_argument("--volumes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    keep_freed_memory()  # as the CLI does
    run_config = config_from_dict(  # pipeline_benchmark.config's data and model, without importing it (an older
        {  # checkout may lack what it imports)
            "data": {"root": str(args.work / "clinical-world"), "test_size": 10, "cache_dir": str(args.work / "cache")},
            "model": {"channels": [8, 16, 32, 64], "num_res_units": 1, "dropout": 0.1},
        }
    )
    data = open_data(run_config, SilentReporter())
    plan = data.plan
    torch.manual_seed(0)
    model = build_model(run_config.model, plan)
    images = [data.image(c) for c in list(data.pool.ids)[: args.volumes]]
    amps = (False, True) if cpu_bf16_native() else (False,)
    paths = {}
    for amp in amps:
        sampler = make_window_sampler("mc_dropout", model, 8, None, (), amp, channels_last=True)
        paths["bf16" if amp else "float32"] = sampler
    seconds = dict.fromkeys(paths, 0.0)
    for sampler in paths.values():
        sliding_moments(images[0], sampler, plan.patch_size, 0.5, 1, seed=0, needs=frozenset())  # untimed
    for _ in range(args.rounds):
        for image in images:
            for name, sampler in paths.items():
                start = time.perf_counter()
                sliding_moments(image, sampler, plan.patch_size, 0.5, 1, seed=0, needs=frozenset())
                seconds[name] += time.perf_counter() - start
    print(json.dumps({"label": args.label, "volumes": len(images), "rounds": args.rounds, "seconds": seconds}))


if __name__ == "__main__":
    main()
