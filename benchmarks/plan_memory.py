"""Calibrate the plan's memory model: peak RSS of one training step of the network on patches of several sizes.

Each measurement runs in a fresh process (``resource.getrusage`` peak RSS minus the process's RSS before the
step), and the script prints the bytes per estimated activation that ``activeseg.data.plan.activation_gb`` assumes
(``BYTES_PER_ACTIVATION``) next to the measured ratio, and writes ``benchmarks/results/plan_memory.json``.

    python benchmarks/plan_memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from activeseg.data.plan import BYTES_PER_ACTIVATION, activation_gb

RESULTS = Path(__file__).resolve().parent / "results"
CHANNELS = (8, 16, 32, 64)
STRIDES = [(2, 2, 2), (2, 2, 2), (2, 2, 2)]
PATCHES = [(40, 56, 40), (96, 96, 48), (128, 128, 64)]

STEP = """
import resource, sys, torch
from monai.networks.nets import UNet
from activeseg.engine.training import PartialDiceCELoss
torch.set_num_threads(2)
patch = tuple(int(v) for v in sys.argv[1:4])
model = UNet(3, 1, 3, channels={channels}, strides={strides}, num_res_units=1, dropout=0.1)
loss_fn = PartialDiceCELoss()
optimiser = torch.optim.AdamW(model.parameters())
images = torch.randn(2, 1, *patch)
labels = torch.randint(0, 3, (2, 1, *patch))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
loss = loss_fn(model(images), labels)
loss.backward()
optimiser.step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def main() -> None:
    rows = []
    for patch in PATCHES:
        code = STEP.format(channels=CHANNELS, strides=STRIDES)
        out = subprocess.run([sys.executable, "-c", code, *map(str, patch)], capture_output=True, text=True, check=True)
        measured = int(out.stdout.strip().splitlines()[-1]) / 1e9
        estimated = activation_gb(patch, 2, CHANNELS, STRIDES)
        rows.append(
            {
                "patch": list(patch),
                "measured_gb": measured,
                "estimated_gb": estimated,
                "bytes_per_activation_measured": BYTES_PER_ACTIVATION * measured / estimated,
            }
        )
        print(rows[-1], flush=True)
    result: dict[str, Any] = {
        "channels": list(CHANNELS),
        "batch": 2,
        "assumed_bytes_per_activation": BYTES_PER_ACTIVATION,
    }
    result["rows"] = rows
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "plan_memory.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
