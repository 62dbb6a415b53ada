"""The worked example of docs/design.md ("Adding a strategy"): run as written, then held to the strategy contract."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest

import test_strategy_contract as contract
from activeseg.acquisition.registry import STRATEGIES, Strategy
from activeseg.acquisition.selectors import SelectionContext

from _support import REPO


@pytest.fixture
def documented() -> Iterator[Strategy]:
    text = (REPO / "docs" / "design.md").read_text()
    section = text.split("## Adding a strategy", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
    namespace: dict[str, object] = {}
    exec(compile(code, "docs/design.md", "exec"), namespace)  # the example, exactly as documented
    try:
        yield STRATEGIES["bald-one-per-case"]
    finally:
        del STRATEGIES["bald-one-per-case"]


def test_the_documented_strategy_meets_the_contract(documented: Strategy) -> None:
    contract.test_documented(documented)
    contract.test_rejects_bad_parameters(documented)
    contract.test_same_seed_same_selection_and_order_free(documented)
    contract.test_budget_respected_and_only_candidates_without_duplicates(documented)
    contract.test_pool_smaller_than_budget(documented)
    contract.test_all_scores_equal(documented)
    contract.test_rank_and_score_recorded(documented)


def test_the_documented_strategy_takes_one_unit_per_case_first(documented: Strategy) -> None:
    ids = ["a@patch:0-2:0-2:0-2", "a@patch:2-4:0-2:0-2", "b@patch:0-2:0-2:0-2", "c@patch:0-2:0-2:0-2"]
    scores = {ids[0]: (0.9,), ids[1]: (0.8,), ids[2]: (0.5,), ids[3]: (0.1,)}
    chosen = documented.select(ids, scores, 3, SelectionContext(np.random.default_rng(0)))
    assert [c.unit for c in chosen] == [ids[0], ids[2], ids[3]]  # the second unit of case a waits
    everything = documented.select(ids, scores, 4, SelectionContext(np.random.default_rng(0)))
    assert [c.unit for c in everything][-1] == ids[1]
