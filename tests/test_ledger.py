"""The SQLite ledger: labelled units keyed by stable ids with their round and cost; all-or-nothing transactions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from activeseg.rundir.ledger import Ledger, LedgerError


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.initialise(["a", "b", "c", "d"], ["t1", "t2"], {"seed": 4})
    return ledger


def test_split_meta_and_rounds_of_labels(ledger: Ledger) -> None:
    assert ledger.split("pool") == ["a", "b", "c", "d"]
    assert ledger.split("test") == ["t1", "t2"]
    assert ledger.meta() == {"seed": 4}
    assert ledger.current_round() == -1
    ledger.add_labels(0, "initial-random", [("c", None, 0)])
    ledger.add_labels(1, "bald", [("a", 0.9, 0), ("d", 0.5, 1)])
    assert ledger.current_round() == 1
    assert ledger.labelled_ids(up_to_round=0) == ["c"]
    assert ledger.labelled_ids() == ["a", "c", "d"]
    assert ledger.unlabelled_ids() == ["b"]
    records = {r.case_id: r for r in ledger.labels()}
    assert (records["a"].round, records["a"].strategy, records["a"].score, records["a"].rank) == (1, "bald", 0.9, 0)
    assert records["c"].score is None


def test_a_failing_batch_writes_nothing(ledger: Ledger) -> None:
    ledger.add_labels(0, "initial-random", [("a", None, 0)])
    with pytest.raises(LedgerError, match="'a' is already labelled"):
        ledger.add_labels(1, "bald", [("b", 0.1, 0), ("a", 0.2, 1)])
    with pytest.raises(LedgerError, match="'t1' is not a pool case"):
        ledger.add_labels(1, "bald", [("c", 0.1, 0), ("t1", 0.2, 1)])
    assert ledger.labelled_ids() == ["a"]


def test_partial_units_are_recorded_with_their_case_and_cost(ledger: Ledger) -> None:
    ledger.add_labels(0, "initial-random", [("b@slice:0:3", None, 0)], [{"slices": 1.0, "voxels": 20.0}])
    ledger.add_labels(1, "entropy", [("b@slice:0:5", 0.4, 0), ("c", 0.2, 1)], [{"slices": 1.0}, {"slices": 8.0}])
    assert ledger.labelled_ids() == ["b", "c"]
    assert ledger.labelled_units() == ["b@slice:0:3", "b@slice:0:5", "c"]
    assert ledger.labelled_units(up_to_round=0) == ["b@slice:0:3"]
    assert ledger.unlabelled_ids() == ["a", "d"]
    first = ledger.labels()[0]
    assert (first.unit, first.case_id, first.cost) == ("b@slice:0:3", "b", {"slices": 1.0, "voxels": 20.0})
    with pytest.raises(LedgerError, match="'b@slice:0:5' is already labelled"):
        ledger.add_labels(2, "entropy", [("b@slice:0:5", 0.1, 0)])
    with pytest.raises(LedgerError, match="overlaps labels of 'b'"):
        ledger.add_labels(2, "entropy", [("b", 0.1, 0)])  # the whole volume over its labelled slices
    with pytest.raises(LedgerError, match="overlaps labels of 'c'"):
        ledger.add_labels(2, "entropy", [("c@slice:0:1", 0.1, 0)])  # a slice of a fully labelled volume
    with pytest.raises(LedgerError, match="2 units but 1 costs"):
        ledger.add_labels(2, "entropy", [("a", 0.1, 0), ("d", 0.1, 1)], [{}])
    assert ledger.current_round() == 1


def test_refuses_second_initialisation(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="already initialised"):
        ledger.initialise(["x"], ["y"], {})


def test_rounds_and_stop_reason_persist(tmp_path: Path, ledger: Ledger) -> None:
    ledger.record_round(0, 1, {"train": 5}, {"class_1": 0.5, "mean_foreground": 0.5})
    ledger.record_round(0, 1, {"train": 5}, {"class_1": 0.6, "mean_foreground": 0.6})  # a retried round replaces
    assert ledger.stop_reason() is None
    ledger.stop(0, "budget reached")
    ledger.close()
    with Ledger(tmp_path / "ledger.sqlite") as again:
        (record,) = again.rounds()
        assert (record.round, record.mean_dice, record.seeds) == (0, 0.6, {"train": 5})
        assert again.stop_reason() == "budget reached"


def test_transaction_rolls_back_on_error(ledger: Ledger, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ledger.transaction() as db:
        db.execute("INSERT INTO labels VALUES ('b', 'b', 0, 'x', NULL, 0, '{}', 'now')")
        raise RuntimeError("killed mid-transaction")
    assert ledger.labelled_ids() == []
    # another connection sees the same committed state
    other = sqlite3.connect(tmp_path / "ledger.sqlite")
    assert other.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 0
