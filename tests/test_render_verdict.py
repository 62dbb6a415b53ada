"""BENCHMARKS.md's issue-14 verdict (``benchmarks/render_regimes.py``) read from hand-made paired rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from _support import REPO, benchmark_script


@pytest.fixture(scope="module")
def render() -> Iterator[ModuleType]:
    yield from benchmark_script("render_regimes")


ARM, FAIR = "clasp-pe+cal-pl+warm", "foreground-random+cal-pl+warm"
BASELINES = ("foreground-random", "clasp-pe")


def row(baseline: str, setting: str, difference: float, p_holm: float, metric: str = "aubc") -> dict[str, Any]:
    return {
        "strategy": ARM,
        "baseline": baseline,
        "setting": setting,
        "metric": metric,
        "mean_difference": difference,
        "t_p_holm": p_holm,
    }


def winning_rows() -> list[dict[str, Any]]:
    """Beats both baselines in low and high; in medium it beats foreground-random only; beats its fair baseline in
    low alone."""
    return [
        row("foreground-random", "low", 0.03, 0.01),
        row("clasp-pe", "low", 0.02, 0.04),
        row(FAIR, "low", 0.01, 0.03),
        row("foreground-random", "medium", 0.03, 0.01),
        row("clasp-pe", "medium", 0.02, 0.20),
        row(FAIR, "medium", 0.01, 0.50),
        row("foreground-random", "high", 0.02, 0.02),
        row("clasp-pe", "high", 0.01, 0.049),
        row(FAIR, "high", -0.01, 0.70),
    ]


def verdict(render: ModuleType, rows: list[dict[str, Any]]) -> tuple[str, list[str], list[list[str]]]:
    """The verdict's headline, table header and table rows for ``ARM`` against ``BASELINES``."""
    (_, headline), (_, header, cells) = render.verdict({"paired": rows}, (ARM,), BASELINES)
    return headline, header, cells


def test_two_significant_wins_over_both_baselines_and_no_loss_meet_the_acceptance(render: ModuleType) -> None:
    headline, header, rows = verdict(render, winning_rows())
    assert "met on AUBC over rounds" in headline and "not met" not in headline
    assert header == ["arm", "beats both (rounds)", "worse than one (rounds)", "beats the same training (rounds)"]
    assert rows == [[f"`{ARM}`", "2 of 3 (high, low)", "0 of 3", f"1 of 3 (low) (`{FAIR}`)"]]


def test_the_fair_comparison_names_the_seeds_it_would_need(render: ModuleType) -> None:
    needed = {"low": 6, "medium": 40, "high": None}
    rows = [r | {"seeds_for_power": needed[r["setting"]]} if r["baseline"] == FAIR else r for r in winning_rows()]
    _, _, cells = verdict(render, rows)
    assert cells[0][3] == f"1 of 3 (low) (`{FAIR}`; seeds for 80% power: high —, low 6, medium 40)"


def test_a_significant_loss_anywhere_fails_the_acceptance(render: ModuleType) -> None:
    rows = winning_rows()
    rows[4] = row("clasp-pe", "medium", -0.02, 0.03)
    headline, _, cells = verdict(render, rows)
    assert "not met on AUBC over rounds" in headline
    assert cells[0][1:3] == ["2 of 3 (high, low)", "1 of 3 (medium)"]


def test_p_at_the_threshold_is_not_significant_and_each_budget_axis_is_read_alone(render: ModuleType) -> None:
    rows = winning_rows() + [
        {**r, "metric": "aubc_voxels", "t_p_holm": 0.05 if r["setting"] == "high" else r["t_p_holm"]}
        for r in winning_rows()
    ]
    headline, header, cells = verdict(render, rows)
    assert "met on AUBC over rounds; not met on AUBC over labelled voxels" in headline
    assert len(header) == 7
    assert cells[0][4] == "1 of 3 (low)"


def test_a_grid_still_running_reads_its_settings_in_order_and_says_how_many_were_tested(render: ModuleType) -> None:
    rows = [r for r in winning_rows() if r["setting"] != "medium"]
    summary = {
        "paired": rows,
        "settings": {"high": {}, "low": {}, "medium": {}},  # stored with sorted keys
        "setting_order": ["low", "medium", "high"],
        "run": {"unit": {"high": "slice", "low": "slice", "medium": "slice"}},
    }
    (_, headline), (_, _, cells) = render.verdict(summary, (ARM,), BASELINES)
    assert "in at least 2 of the 3 slice regimes (2 tested so far)" in headline
    assert "met on AUBC over rounds" in headline and "not met" not in headline  # two wins are enough already
    assert cells == [[f"`{ARM}`", "2 of 2 (low, high)", "0 of 2", f"1 of 2 (low) (`{FAIR}`)"]]
    (_, headline), _ = render.verdict(summary | {"paired": rows[:3]}, (ARM,), BASELINES)
    assert "(1 tested so far)" in headline and "not met yet on AUBC over rounds" in headline


CONFIRM = "regimes-patch-cpu-shift-confirm"


def confirm_row(setting: str, difference: float, p_holm: float) -> dict[str, Any]:
    return row(FAIR, setting, difference, p_holm) | {"n": 20}


def finished(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"progress": {"finished": 120, "planned": 120}, "paired": rows}


def test_the_preregistered_decision_needs_two_significant_leads(render: ModuleType) -> None:
    decide = render.confirmatory_verdict
    two = [confirm_row("low", 0.008, 0.01), confirm_row("medium", 0.004, 0.04), confirm_row("high", 0.003, 0.3)]
    ((_, text),) = decide(finished(two), ARM, FAIR, 2)
    assert f"`{ARM}` leads `{FAIR}`" in text and "found in 2: low, medium" in text
    assert "high +0.0030 (Holm p 0.3, 20 seeds)" in text
    one = [two[0], confirm_row("medium", 0.004, 0.06), two[2]]
    ((_, text),) = decide(finished(one), ARM, FAIR, 2)
    assert "does not lead" in text and "found in 1: low" in text
    backwards = [confirm_row(s, -0.01, 0.001) for s in ("low", "medium", "high")]  # significant, the other way
    ((_, text),) = decide(finished(backwards), ARM, FAIR, 2)
    assert "does not lead" in text and "found in 0)" in text
    other_metric = [r | {"metric": "aubc_voxels"} for r in two]  # the decision reads AUBC over rounds only
    ((_, text),) = decide(finished(other_metric), ARM, FAIR, 2)
    assert "found in 0)" in text


@pytest.mark.parametrize("name", [CONFIRM, "regimes-patch-cpu-plateau"])  # the second has an acceptance verdict too
def test_an_unfinished_confirmatory_grid_shows_progress_and_no_result(render: ModuleType, name: str) -> None:
    assert name in render.CONFIRMATORY
    stored = json.loads((REPO / "benchmarks/results/regimes-patch-cpu-shift.json").read_text())
    partial = stored | {"name": name, "progress": {"finished": 31, "planned": 120}}
    before = sorted(p.name for p in (REPO / "benchmarks/results").iterdir())
    blocks = render.render_regimes(name, partial, "a machine")
    assert blocks[0][0] == "h" and all(kind == "p" for kind, *_ in blocks[1:])  # no tables, no figures
    assert "in progress: 31 of 120 runs finished" in blocks[-1][1] and "+0." not in " ".join(b[1] for b in blocks[1:])
    assert not any("Acceptance" in b[1] for b in blocks[1:])
    assert sorted(p.name for p in (REPO / "benchmarks/results").iterdir()) == before  # nothing written


def test_the_summary_reads_every_finished_regime_benchmark_and_skips_unfinished_ones(render: ModuleType) -> None:
    arm = "clasp-pe+mt"
    name, unfinished_name = "regimes-patch-cpu-plateau-mt", "regimes-patch-cpu-plateau"
    assert render.VERDICTS[name] == ((arm,), BASELINES) and render.VERDICTS[unfinished_name][1] == BASELINES
    losing = [r | {"strategy": arm} for r in winning_rows() if r["baseline"] != FAIR]
    losing[3] = losing[3] | {"mean_difference": -0.02, "t_p_holm": 0.01}  # worse than clasp-pe in medium
    grid = {"settings": {"high": {}, "low": {}, "medium": {}}, "setting_order": ["low", "medium", "high"]}
    results = {
        name: grid
        | {"paired": losing, "run": {"iterations": {"high": 2000, "low": 2000, "medium": 2000}}}
        | {"progress": {"finished": 60, "planned": 60}},
        unfinished_name: grid
        | {"paired": winning_rows(), "run": {"iterations": 2000}}
        | {"progress": {"finished": 59, "planned": 60}},
    }
    heading, _, (_, header, cells) = render.acceptance_summary(results)
    assert heading[0] == "h" and header[-1] == "acceptance"
    # two wins over both baselines, but a significant loss in medium: not met; the unfinished grid is not read
    assert cells == [[f"`{name}`", "2000", f"`{arm}`", "2 of 3 (low, high)", "1 of 3 (medium)", "not met"]]
    winning = [r | {"strategy": arm} for r in winning_rows()]
    (_, _, (_, _, cells)) = render.acceptance_summary({name: results[name] | {"paired": winning}})
    assert cells[0][-1] == "**met**"
