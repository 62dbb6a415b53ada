"""What every section of BENCHMARKS.md shares: where results and figures live, and how a machine is named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from activeseg.bench.report import Block

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
IMAGE_DIR = "benchmarks/results"
"""Where BENCHMARKS.md finds the figures (relative to the repository root)."""


def describe(m: dict[str, Any]) -> str:
    """One line naming the machine of a result (whether its CPU convolves bf16 natively, the allocator setting of
    ``activeseg.engine.malloc`` and the commit it ran at, where recorded)."""
    native = m.get("cpu_bf16_native")
    bf16 = "" if native is None else ", native bf16 convolution" if native else ", no native bf16 convolution"
    at = f", commit {m['commit']}" if "commit" in m else ""
    malloc = MALLOC.get(m.get("malloc", ""), "")
    where = f"{m['cpu']}{bf16}, {m['threads']} torch thread(s), GPU: {m['gpu']}, torch {m['torch']}"
    return f"{where}, {m['date']}{malloc}{at}"


MALLOC = {"system": ", glibc's allocator defaults", "freed memory kept": ", freed memory kept"}
"""How a record's allocator setting (``activeseg.engine.malloc``) reads; records from before it say nothing."""


def where_of(result: dict[str, Any]) -> str:
    """The machine of a result that may predate recording it (measured on the same 2-core VM)."""
    return describe(result["machine"]) if "machine" in result else "AMD EPYC, 2 torch threads (not recorded)"


def figure(alt: str, name: str) -> Block:
    """A figure stored in ``benchmarks/results`` by the part that measured it."""
    return ("p", f"![{alt}]({IMAGE_DIR}/{name})")
