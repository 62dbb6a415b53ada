"""The SQLite ledger: labels keyed by case id with their round, transactions that are all-or-nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from activeseg.ledger import Ledger, LedgerError


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
        db.execute("INSERT INTO labels VALUES ('b', 0, 'x', NULL, 0, 'now')")
        raise RuntimeError("killed mid-transaction")
    assert ledger.labelled_ids() == []
    # another connection sees the same committed state
    other = sqlite3.connect(tmp_path / "ledger.sqlite")
    assert other.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 0
