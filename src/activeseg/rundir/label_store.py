"""The human oracle's durable state: what each round asked a person to label, and every label received.

Four tables of the run's SQLite file (see :mod:`activeseg.rundir.database`) hold it:

- ``label_requests`` (round, unit, case_id, rank, score): each acquisition round's queried units, written when
  the loop asks. A person labels a *case*: all of its units queried in the round at once (a whole volume, or the
  union of its slices or patches, the case's *region*);
- ``submissions`` (id, round, case_id, sha256, file, source, submitted_at, supersedes): every label received.
  A different label for a case already labelled in the same round is a new row that names the row it
  *supersedes*: a recorded correction, never a silent overwrite. The same label again changes nothing;
- ``partial_accepts`` (round): the user chose to start the next round with the labels that have arrived;
- ``advances`` (round, policy, requested, received, accepted): how each round's label set was closed
  (``accepted``: the unit keys that train it).

Each received label is a file ``labels/round_NNN/<sha256>.nii.gz`` on the image's native grid, named by the hash of
its voxels (no path is ever built from a case id or any other user input). Every write is one transaction, so
concurrent uploads are serialised by SQLite and a second, different label for the same case is detected as a
conflict; a label's file is written inside the transaction that records it, so a losing upload leaves no file.
Nothing is lost if the process stops while a round waits: everything lives in the run directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from activeseg.acquisition.units import case_of
from activeseg.artifacts import write_bytes_atomic
from activeseg.data.io import nifti_gz
from activeseg.rundir.database import connect, create_or_migrate, now, transaction

if TYPE_CHECKING:
    from activeseg.rundir.layout import RunLayout

ANY = "*"
"""``replaces=ANY``: a different label replaces the current one as a recorded correction (folder ingest)."""
Outcome = Literal["created", "unchanged", "corrected"]


class LabelConflict(RuntimeError):
    """A second, different label for a case whose label the uploader did not know about (or a closed round)."""


class NotQueued(KeyError):
    """A case id that is not in the current round's queue."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not queued"


def label_sha256(label: npt.NDArray[np.uint8]) -> str:
    """The content hash of a label: its shape and voxels (equal labels in any file encoding hash the same)."""
    digest = hashlib.sha256(json.dumps(list(label.shape)).encode())
    digest.update(np.ascontiguousarray(label, dtype=np.uint8).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class QueueItem:
    """One queried case of the waiting round and the label received so far (if any).

    ``units`` are the case's unit keys queried in the round (the case id itself for a whole volume); ``rank`` and
    ``score`` are those of its best-ranked unit.
    """

    case_id: str
    units: tuple[str, ...]
    rank: int
    score: float | None
    sha256: str | None
    submitted_at: str | None
    source: str | None


@dataclass(frozen=True)
class Queue:
    """The round waiting for labels: what was asked and what has arrived."""

    round: int
    items: list[QueueItem]
    partial_accepted: bool

    @property
    def ids(self) -> list[str]:
        return [item.case_id for item in self.items]

    @property
    def received(self) -> list[str]:
        return [item.case_id for item in self.items if item.sha256 is not None]

    @property
    def complete(self) -> bool:
        return len(self.received) == len(self.items)

    @property
    def received_units(self) -> list[str]:
        """The unit keys covered by the labels received so far, in rank order."""
        return [unit for item in self.items if item.sha256 is not None for unit in item.units]

    def item(self, case_id: str) -> QueueItem:
        """The queue item of a queued case (:class:`NotQueued` otherwise)."""
        queued = self.find(case_id)
        return next(i for i in self.items if i.case_id == queued)

    def find(self, case_id: str) -> str:
        """The queue's own id string equal to ``case_id`` (never the caller's), or :class:`NotQueued`."""
        for queued in self.ids:
            if queued == case_id:
                return queued
        raise NotQueued(f"{case_id!r} is not queued for labelling in round {self.round}")


@dataclass(frozen=True)
class Submission:
    """A validated label ready to be recorded."""

    case_id: str
    label: npt.NDArray[np.uint8]
    affine: npt.NDArray[np.float64]
    source: str

    @property
    def sha256(self) -> str:
        return label_sha256(self.label)


class LabelStore:
    """The human oracle's durable state in a run directory (see the module docstring)."""

    def __init__(self, layout: RunLayout) -> None:
        self.layout = layout
        if not layout.ledger.exists():
            raise FileNotFoundError(f"{layout.root} is not an activeseg run directory (no {layout.ledger.name})")
        with self._connect() as db:
            create_or_migrate(db)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection per operation: the server calls the store from several threads."""
        with closing(connect(self.layout.ledger)) as db:
            yield db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db, transaction(db):
            yield db

    # --- reading ---------------------------------------------------------------------------------------------

    def queue(self) -> Queue | None:
        """The round waiting for labels, or None when no round is waiting."""
        with self._connect() as db:
            return self._queue(db)

    def _queue(self, db: sqlite3.Connection) -> Queue | None:
        row = db.execute("SELECT MAX(round) FROM label_requests").fetchone()
        if row[0] is None:
            return None
        r = int(row[0])
        if db.execute("SELECT 1 FROM advances WHERE round = ?", (r,)).fetchone():
            return None
        by_case: dict[str, list[tuple[str, int, float | None]]] = {}
        for unit, case_id, rank, score in db.execute(
            "SELECT unit, case_id, rank, score FROM label_requests WHERE round = ? ORDER BY rank, unit", (r,)
        ).fetchall():
            by_case.setdefault(case_id, []).append((unit, rank, score))
        items = []
        for case_id, units in by_case.items():  # in the rank order of each case's best unit
            current = self._current(db, r, case_id)
            sha, when, source = (current[1], current[3], current[4]) if current else (None, None, None)
            _, rank, score = units[0]
            items.append(QueueItem(case_id, tuple(u for u, _, _ in units), rank, score, sha, when, source))
        partial = db.execute("SELECT 1 FROM partial_accepts WHERE round = ?", (r,)).fetchone() is not None
        return Queue(r, items, partial)

    @staticmethod
    def _current(db: sqlite3.Connection, r: int, case_id: str) -> tuple[Any, ...] | None:
        """(id, sha256, file, submitted_at, source) of the latest label of a case in round r."""
        return db.execute(  # type: ignore[no-any-return]
            "SELECT id, sha256, file, submitted_at, source FROM submissions WHERE round = ? AND case_id = ? "
            "ORDER BY id DESC LIMIT 1",
            (r, case_id),
        ).fetchone()

    def current_file(self, case_id: str) -> Path | None:
        """The latest label file received for a case of the waiting round."""
        with self._connect() as db:
            queue = self._queue(db)
            if queue is None:
                return None
            current = self._current(db, queue.round, queue.find(case_id))
        return None if current is None else self.layout.root / current[2]

    def submissions(self) -> list[dict[str, Any]]:
        """Every label received, in order (corrections name the row they supersede)."""
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM submissions ORDER BY id")]

    def advances(self) -> list[dict[str, Any]]:
        """How each round's label set was closed: policy, requested, received, accepted case ids."""
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute("SELECT * FROM advances ORDER BY round")]
        for row in rows:
            row["accepted"] = json.loads(row["accepted"])
        return rows

    def accepted_labels(self, case_id: str) -> list[tuple[int, list[str], Path]]:
        """What trains this case, round by round: (round, its accepted unit keys of the case, the latest label file
        received for it in that round), for every round that has advanced."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT a.round, a.accepted, s.file FROM advances a JOIN submissions s ON s.round = a.round "
                "WHERE s.case_id = ? AND s.id = (SELECT MAX(id) FROM submissions WHERE round = a.round "
                "AND case_id = s.case_id) ORDER BY a.round",
                (case_id,),
            ).fetchall()
        accepted = []
        for r, keys, file in rows:
            units = [k for k in json.loads(keys) if case_of(k) == case_id]
            if units:
                accepted.append((int(r), units, self.layout.root / file))
        return accepted

    # --- writing ---------------------------------------------------------------------------------------------

    def submit(self, submissions: Sequence[Submission], replaces: str | None = None) -> list[Outcome]:
        """Record labels for cases of the waiting round: all of them, or none.

        ``replaces`` says what the sender believes is the current label: None (no label yet), a sha256 (that
        label), or :data:`ANY` (replace whatever is there, as a recorded correction). A different label whose
        sender did not know the current one raises :class:`LabelConflict` and records nothing; the same label
        again is ``unchanged``.
        """
        queue = self.queue()
        if queue is None:
            raise NotQueued("no round is waiting for labels")
        encoded = {}  # compressed outside the transaction; written only once the transaction has decided
        for item in submissions:
            queue.find(item.case_id)
            relative = self.layout.label_file(queue.round, item.sha256)
            encoded[item.case_id] = (relative, nifti_gz(item.label, item.affine))
        outcomes: list[Outcome] = []
        written: list[Path] = []
        try:
            with self._transaction() as db:
                waiting = self._queue(db)
                if waiting is None or waiting.round != queue.round:
                    raise LabelConflict(f"round {queue.round} is no longer waiting for labels: its next round started")
                for item in submissions:
                    case_id = waiting.find(item.case_id)
                    current = self._current(db, waiting.round, case_id)
                    if current is not None and current[1] == item.sha256:
                        outcomes.append("unchanged")
                        continue
                    known = current[1] if current is not None else None
                    if replaces not in (ANY, known):
                        raise LabelConflict(
                            f"{case_id}: a different label was already received ({str(known)[:12]}, "
                            f"{current[3] if current else ''}); resend with that label's sha256 to correct it"
                            if known
                            else f"{case_id}: no label has been received yet, so there is nothing to replace"
                        )
                    relative, data = encoded[item.case_id]
                    target = self.layout.root / relative
                    if not target.exists():  # content-addressed: an existing file already holds these voxels
                        write_bytes_atomic(target, data)
                        written.append(target)
                    db.execute(
                        "INSERT INTO submissions (round, case_id, sha256, file, source, submitted_at, supersedes) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (waiting.round, case_id, item.sha256, relative, item.source, now(), current and current[0]),
                    )
                    outcomes.append("corrected" if current is not None else "created")
        except BaseException:
            # Rolled back: the files this call wrote are referenced by no row. Writers hold the transaction's lock
            # while they write, so no other submission can have come to rely on them meanwhile.
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return outcomes

    def accept_partial(self) -> Queue:
        """Record the user's choice to start the next round with the labels that have arrived."""
        with self._transaction() as db:
            queue = self._queue(db)
            if queue is None:
                raise NotQueued("no round is waiting for labels")
            if not queue.received:
                raise LabelConflict(f"no label of round {queue.round} has arrived yet; nothing to start with")
            db.execute("INSERT OR IGNORE INTO partial_accepts VALUES (?, ?)", (queue.round, now()))
        return Queue(queue.round, queue.items, True)

    def close_round(
        self, round_index: int, requested: Sequence[tuple[str, int, float | None]], policy: str
    ) -> tuple[list[str], Queue]:
        """The loop asks for round ``round_index``'s labels: record the queried units (``(key, rank, score)``), and
        close the round if it may start.

        Returns the unit keys whose labels train the round (empty while it must wait) and the queue as it stands.
        A round closes when every label is in, or with what has arrived when the policy is ``manual`` or the user
        accepted a partial set. Once closed, the answer is the recorded one (a resumed round asks again).
        """
        with self._transaction() as db:
            closed = db.execute("SELECT accepted FROM advances WHERE round = ?", (round_index,)).fetchone()
            if closed is not None:
                self._drop_packages(round_index)
                return list(json.loads(closed[0])), Queue(round_index, [], False)
            when = now()
            db.executemany(
                "INSERT OR IGNORE INTO label_requests (round, unit, case_id, rank, score, requested_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(round_index, key, case_of(key), rank, score, when) for key, rank, score in requested],
            )
            queue = self._queue(db)
            assert queue is not None and queue.round == round_index
            received = queue.received
            may_start = queue.complete or (bool(received) and (policy == "manual" or queue.partial_accepted))
            if not may_start:
                return [], queue
            accepted = queue.received_units
            db.execute(
                "INSERT INTO advances VALUES (?, ?, ?, ?, ?, ?)",
                (round_index, policy, len(queue.items), len(received), json.dumps(accepted), when),
            )
        self._drop_packages(round_index)
        return accepted, queue

    def _drop_packages(self, round_index: int) -> None:
        """A closed round's annotation packages: derived from its model (hundreds of MB a case at clinical size),
        and served by no command once it has closed."""
        shutil.rmtree(self.layout.packages(round_index), ignore_errors=True)
