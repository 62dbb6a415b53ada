"""Keeping freed memory (glibc): repeated large tensors stop faulting in fresh pages; the opt-out keeps glibc's
defaults. Each case runs in a fresh process, since the thresholds are process-wide."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")
PROBE = """
import json, resource, sys
import torch
from activeseg.engine.malloc import freed_memory_kept, keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
for _ in range(20):  # 32 MiB, written, freed: a layer's activation in a CPU training step
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensor = torch.ones(8 << 20)
    del tensor
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "kept": freed_memory_kept(), "late_faults": sum(faults[10:])}))
"""


def probe(mode: str, **env: str) -> dict[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env=os.environ | {"PYTHONPATH": SRC} | env,
        capture_output=True,
        text=True,
        check=True,
    )
    out: dict[str, int] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_kept_memory_is_reused_instead_of_faulted_in_again() -> None:
    kept, system = probe("keep"), probe("system")
    assert kept["applied"] and kept["kept"]
    assert not system["applied"] and not system["kept"]
    pages = (32 << 20) // 4096
    assert system["late_faults"] >= 5 * pages  # glibc's defaults: fresh pages for every tensor
    assert kept["late_faults"] < pages  # kept: the freed pages come back (one tensor's worth of slack)


def test_the_opt_out_keeps_the_system_defaults() -> None:
    out = probe("keep", ACTIVESEG_MALLOC="system")
    assert not out["applied"] and not out["kept"]
