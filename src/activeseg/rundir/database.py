"""The run's SQLite file: one schema for every table, one migration path, one connection recipe, one transaction
helper and one clock.

The engine's tables (``meta``, ``cases``, ``labels``, ``rounds``, ``stops``) and the human oracle's
(``label_requests``, ``submissions``, ``partial_accepts``, ``advances``) live in one file, ``ledger.sqlite``, so
that a round's labels and the requests that produced them commit together. Every write is one ``BEGIN IMMEDIATE``
transaction: a process killed at any moment leaves the file before or after a change, never half-way, and
concurrent writers (the server's threads, a second process) are serialised by SQLite.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
    case_id TEXT PRIMARY KEY,
    split TEXT NOT NULL CHECK (split IN ('pool', 'test', 'validation'))
);
CREATE TABLE IF NOT EXISTS labels (
    unit TEXT PRIMARY KEY,
    case_id TEXT NOT NULL REFERENCES cases(case_id),
    round INTEGER NOT NULL CHECK (round >= 0),
    strategy TEXT NOT NULL,
    score REAL,
    rank INTEGER NOT NULL,
    cost TEXT NOT NULL,
    labelled_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    n_labelled INTEGER NOT NULL,
    seeds TEXT NOT NULL,
    mean_dice REAL NOT NULL,
    dice TEXT NOT NULL,
    evaluated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stops (
    round INTEGER PRIMARY KEY,
    reason TEXT NOT NULL,
    stopped_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS label_requests (
    round INTEGER NOT NULL,
    unit TEXT NOT NULL,
    case_id TEXT NOT NULL REFERENCES cases(case_id),
    rank INTEGER NOT NULL,
    score REAL,
    requested_at TEXT NOT NULL,
    PRIMARY KEY (round, unit)
);
CREATE TABLE IF NOT EXISTS submissions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    round INTEGER NOT NULL,
    case_id TEXT NOT NULL REFERENCES cases(case_id),
    sha256 TEXT NOT NULL,
    file TEXT NOT NULL,
    source TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    supersedes INTEGER REFERENCES submissions(id)
);
CREATE TABLE IF NOT EXISTS partial_accepts (round INTEGER PRIMARY KEY, accepted_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS advances (
    round INTEGER PRIMARY KEY,
    policy TEXT NOT NULL,
    requested INTEGER NOT NULL,
    received INTEGER NOT NULL,
    accepted TEXT NOT NULL,
    decided_at TEXT NOT NULL
)
"""


def now() -> str:
    """The time stamp of every row: UTC, ISO 8601, milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), with foreign keys, WAL and full sync."""
    db = sqlite3.connect(Path(path), isolation_level=None, timeout=30.0)
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` on any exception."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def create_or_migrate(db: sqlite3.Connection) -> None:
    """Create the missing tables, and bring tables of older runs up to date (the only migration path)."""
    with transaction(db):
        for statement in filter(str.strip, SCHEMA.split(";")):
            db.execute(statement)
        columns = [row[1] for row in db.execute("PRAGMA table_info(label_requests)")]
        if "unit" not in columns:  # a run made before units could be served: its requests are whole volumes
            db.execute("ALTER TABLE label_requests ADD COLUMN unit TEXT")
            db.execute("UPDATE label_requests SET unit = case_id")
