"""BENCHMARKS.md's pooled pipeline comparisons (``benchmarks/render_pipeline.py``) on hand-made per-case records."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from _support import benchmark_script


@pytest.fixture(scope="module")
def render() -> Iterator[ModuleType]:
    yield from benchmark_script("render_pipeline")


def run(**sets: dict[str, list[float | None]]) -> dict[str, Any]:
    return {name: {"per_case": per_case} for name, per_case in sets.items()}


def test_pooled_pairs_each_case_with_itself_across_runs(render: ModuleType) -> None:
    # Case order differs between the two sets of one run; a class absent from a case (None) is left out of its mean.
    first = run(
        clinical={"b": [0.6, 0.8], "a": [0.5, None]},
        native={"a": [0.9, 0.7], "b": [0.6, 0.6]},
    )
    second = run(clinical={"c": [0.7, 0.7]}, native={"c": [0.8, 0.6]})
    test = render.pooled([(first, "clinical", first, "native"), (second, "clinical", second, "native")])
    # By hand: a 0.5 - 0.8 = -0.3, b 0.7 - 0.6 = +0.1, c 0.7 - 0.7 = 0.0 (paired by position: b - a and a - b, -0.1
    # each, no win; the mean alone cannot tell, the wins and the spread can)
    assert test.n == 3
    assert test.mean_difference == pytest.approx(-0.2 / 3)
    assert test.wins == 1
    assert test.sd == pytest.approx(float(np.std([-0.3, 0.1, 0.0], ddof=1)))


def test_pooled_refuses_runs_without_the_same_cases(render: ModuleType) -> None:
    older: dict[str, Any] = {"clinical": {"dice": {}}, "native": {"dice": {}}}  # recorded before per-case Dice was kept
    assert render.pooled([(older, "clinical", older, "native")]) is None
    mismatched = run(clinical={"a": [0.5, 0.5]}, native={"b": [0.5, 0.5]})
    assert render.pooled([(mismatched, "clinical", mismatched, "native")]) is None
