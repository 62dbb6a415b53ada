"""The human oracle: labels that arrive over time, by upload or by folder ingest, kept durably in the run.

The loop asks for a round's labels and, if they are not all in, stops with a *waiting* status; nothing is lost if
the process stops while waiting, because everything lives in the run directory:

- ``ledger.sqlite`` gains four tables (created here, beside the engine's own):

  - ``label_requests`` (round, unit, case_id, rank, score): each acquisition round's queried units, written when
    the loop asks. A person labels a *case*: all of its units queried in the round at once (a whole volume, or the
    union of its slices or patches, the case's *region*);
  - ``submissions`` (id, round, case_id, sha256, file, source, submitted_at, supersedes): every label received.
    A different label for a case already labelled in the same round is a new row that names the row it
    *supersedes*: a recorded correction, never a silent overwrite. The same label again changes nothing;
  - ``partial_accepts`` (round): the user chose to start the next round with the labels that have arrived;
  - ``advances`` (round, policy, requested, received, accepted): how each round's label set was closed
    (``accepted``: the unit keys that train it).

- ``labels/round_NNN/<sha256>.nii.gz``: each received label, on the image's native grid, written atomically and
  named by the hash of its voxels (no path is ever built from a case id or any other user input). For slice and
  patch units only the case's region is kept (:func:`take_region`); the rest is the ignore value 255.

Every write is one ``BEGIN IMMEDIATE`` transaction, so concurrent uploads are serialised by SQLite and a second,
different label for the same case is detected as a conflict. Validation (:func:`check_label`) is shared by
``activeseg ingest`` and the server's PUT and happens before anything is written: a bad file changes nothing.

Units are boxes on the training grid (``units.py``); :func:`native_region` maps a case's queried units to its
image's native grid, where the annotator works, and the oracle maps received labels back exactly as the dataset's
labels are mapped, so a person who draws the ground truth gives the training what the simulated oracle gives.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sqlite3
import zlib
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import nibabel as nib
import numpy as np
import numpy.typing as npt

from activeseg.artifacts import read_json, write_bytes_atomic
from activeseg.data.io import read_volume
from activeseg.data.preprocess import CropInfo, center_pad_or_crop
from activeseg.oracle import LabelsPending, Oracle, OracleError, SimulatedOracle
from activeseg.units import IGNORE, case_of, is_whole_volume, labelled_mask, unit_from_key

if TYPE_CHECKING:
    from activeseg.config import RunConfig
    from activeseg.loop import RunData

LEDGER_FILE = "ledger.sqlite"
LABELS_DIR = "labels"
AFFINE_ATOL = 1e-4
"""Largest allowed difference between a label's affine and its image's (the dataset check uses the same)."""

SCHEMA = """
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

ANY = "*"
"""``replaces=ANY``: a different label replaces the current one as a recorded correction (folder ingest)."""
Outcome = Literal["created", "unchanged", "corrected"]


class LabelFileError(ValueError):
    """A label file that cannot be accepted; the message names the file."""


class LabelConflict(RuntimeError):
    """A second, different label for a case whose label the uploader did not know about (or a closed round)."""


class NotQueued(KeyError):
    """A case id that is not in the current round's queue."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not queued"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def safe_name(case_id: str) -> str:
    """A file-system-safe folder name for a case (export folders); ingest maps it back through the queue."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", case_id)
    return "_" + name if name.startswith(".") or not name else name


# --- validation ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """What a case's label must match: its image's native shape and affine, and the number of classes."""

    shape: tuple[int, int, int]
    affine: npt.NDArray[np.float64]
    num_classes: int

    @property
    def max_nifti_bytes(self) -> int:
        """The largest uncompressed NIfTI a label of this shape can be (8 bytes a voxel, generous header room)."""
        return int(np.prod(self.shape)) * 8 + (1 << 20)


def reference_for(data: RunData, case_id: str) -> Reference:
    """The native grid of a pool case, read from the dataset."""
    volume = read_volume(data.pool.case(case_id).image)
    shape = tuple(int(s) for s in volume.array.shape[:3])
    return Reference((shape[0], shape[1], shape[2]), volume.affine, data.num_classes)


def check_label(name: str, payload: bytes, reference: Reference) -> npt.NDArray[np.uint8]:
    """Parse and validate a label NIfTI (``.nii`` or ``.nii.gz`` bytes); ``name`` is used in every error.

    Checks: readable NIfTI (decompressed size bounded), a 3D volume, the image's shape and affine, finite integer
    values in ``0 .. num_classes - 1``. Returns the label as uint8 on the native grid.
    """
    try:
        raw = _gunzip(payload, reference.max_nifti_bytes) if payload[:2] == b"\x1f\x8b" else payload
        image = _nifti_from_bytes(raw)
        array = np.asarray(image.dataobj)
    except LabelFileError as err:
        raise LabelFileError(f"{name}: {err}") from None
    except Exception as err:
        raise LabelFileError(f"{name}: not a readable NIfTI file ({type(err).__name__}: {err})") from None
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise LabelFileError(f"{name}: label is {array.ndim}D with shape {array.shape}; expected a 3D volume")
    if tuple(array.shape) != reference.shape:
        raise LabelFileError(f"{name}: label shape {tuple(array.shape)} differs from the image's {reference.shape}")
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.allclose(affine, reference.affine, atol=AFFINE_ATOL):
        worst = float(np.abs(affine - reference.affine).max())
        raise LabelFileError(
            f"{name}: label affine differs from the image's (largest difference {worst:.3g}); "
            "save the label on the image's voxel grid"
        )
    if array.dtype.kind not in "biuf":
        raise LabelFileError(f"{name}: unsupported voxel type {array.dtype}")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise LabelFileError(f"{name}: label has NaN or infinite values")
        if (array != np.round(array)).any():
            raise LabelFileError(f"{name}: label has non-integer values")
    values = np.unique(array).tolist()
    bad = [v for v in values if not 0 <= v < reference.num_classes]
    if bad:
        allowed = f"0..{reference.num_classes - 1}"
        raise LabelFileError(f"{name}: label values {[int(v) for v in bad[:10]]} are not allowed (allowed: {allowed})")
    return np.ascontiguousarray(array, dtype=np.uint8)


def _gunzip(payload: bytes, limit: int) -> bytes:
    """Decompress gzip bytes, refusing more than ``limit`` bytes of output (a decompression bomb)."""
    out = bytearray()
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    data = payload
    while data:
        out += decompressor.decompress(data, limit + 1 - len(out))
        if len(out) > limit:
            raise LabelFileError(f"decompresses to more than {limit} bytes, too large for this image")
        data = decompressor.unconsumed_tail
        if decompressor.eof:
            break
    if not decompressor.eof:
        raise LabelFileError("the gzip data is truncated")
    return bytes(out)


def _nifti_from_bytes(raw: bytes) -> Any:
    errors = []
    for kind in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            return kind.from_bytes(raw)
        except Exception as err:
            errors.append(f"{type(err).__name__}: {err}")
    raise LabelFileError(f"not a readable NIfTI file ({errors[0][:200]})")


def take_region(
    label: npt.NDArray[np.uint8], region: npt.NDArray[np.bool_] | None, ignore: int = IGNORE
) -> tuple[npt.NDArray[np.uint8], int]:
    """The part of ``label`` inside the queried region (``ignore`` elsewhere) and how many labelled (non-zero)
    voxels lay outside it. ``region`` is a boolean mask of the label's shape, or None for a whole volume."""
    if region is None:
        return label, 0
    outside = int(np.count_nonzero(label[~region]))
    return np.where(region, label, np.uint8(ignore)).astype(np.uint8), outside


def native_region(
    units: Sequence[str], native_shape: tuple[int, int, int], shape: tuple[int, int, int]
) -> npt.NDArray[np.bool_] | None:
    """The voxels of a case's image (``native_shape``) that its queried units cover, or None for a whole volume.

    Units are boxes on the training grid (``shape``), which is the image centre-padded or -cropped; the region is
    that mapping inverted, so a box that reaches into padding covers only the image voxels inside it.
    """
    if any(is_whole_volume(key) for key in units):
        return None
    mask_D_H_W = labelled_mask([unit_from_key(key, shape) for key in units], shape).astype(np.uint8)
    return np.asarray(CropInfo.for_shapes(native_shape, shape).invert(mask_D_H_W) > 0)


def label_sha256(label: npt.NDArray[np.uint8]) -> str:
    """The content hash of a label: its shape and voxels (equal labels in any file encoding hash the same)."""
    digest = hashlib.sha256(json.dumps(list(label.shape)).encode())
    digest.update(np.ascontiguousarray(label, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def nifti_gz(
    array: npt.NDArray[Any], affine: npt.NDArray[np.float64], display: tuple[float, float] | None = None
) -> bytes:
    """A NIfTI-1 volume as deterministic gzip bytes (sform and qform set to ``affine``, opened by Slicer/ITK-SNAP);
    ``display`` sets the header's cal_min/cal_max, the range viewers colour."""
    nifti1: Any = nib.Nifti1Image  # nibabel is untyped
    image = nifti1(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    if display is not None:
        image.header["cal_min"], image.header["cal_max"] = display
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


# --- the store ----------------------------------------------------------------------------------------------------


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

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LEDGER_FILE
        if not self.path.exists():
            raise FileNotFoundError(f"{self.run_dir} is not an activeseg run directory (no {LEDGER_FILE})")
        with self._transaction() as db:
            for statement in filter(str.strip, SCHEMA.split(";")):
                db.execute(statement)
            columns = [row[1] for row in db.execute("PRAGMA table_info(label_requests)")]
            if "unit" not in columns:  # a run made before units could be served: its requests are whole volumes
                db.execute("ALTER TABLE label_requests ADD COLUMN unit TEXT")
                db.execute("UPDATE label_requests SET unit = case_id")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        try:
            db.execute("PRAGMA foreign_keys = ON")
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

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
        return None if current is None else self.run_dir / current[2]

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
                accepted.append((int(r), units, self.run_dir / file))
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
        files = {}
        for item in submissions:
            queue.find(item.case_id)
            relative = f"{LABELS_DIR}/round_{queue.round:03d}/{item.sha256}.nii.gz"
            target = self.run_dir / relative
            if not target.exists():  # content-addressed: an existing file already holds these voxels
                write_bytes_atomic(target, nifti_gz(item.label, item.affine))
            files[item.case_id] = relative
        outcomes: list[Outcome] = []
        with self._transaction() as db:
            now = self._queue(db)
            if now is None or now.round != queue.round:
                raise LabelConflict(f"round {queue.round} is no longer waiting for labels: its next round started")
            for item in submissions:
                case_id = now.find(item.case_id)
                current = self._current(db, now.round, case_id)
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
                db.execute(
                    "INSERT INTO submissions (round, case_id, sha256, file, source, submitted_at, supersedes) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (now.round, case_id, item.sha256, files[item.case_id], item.source, _now(), current and current[0]),
                )
                outcomes.append("corrected" if current is not None else "created")
        return outcomes

    def accept_partial(self) -> Queue:
        """Record the user's choice to start the next round with the labels that have arrived."""
        with self._transaction() as db:
            queue = self._queue(db)
            if queue is None:
                raise NotQueued("no round is waiting for labels")
            if not queue.received:
                raise LabelConflict(f"no label of round {queue.round} has arrived yet; nothing to start with")
            db.execute("INSERT OR IGNORE INTO partial_accepts VALUES (?, ?)", (queue.round, _now()))
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
                return list(json.loads(closed[0])), Queue(round_index, [], False)
            when = _now()
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
        return accepted, queue


# --- the oracle ---------------------------------------------------------------------------------------------------


class HumanOracle:
    """Labels from a person, through a :class:`LabelStore`.

    Round 0's initial units are the seed set: their labels come from the dataset's label files (a team starts from
    cases it has labelled already). Every acquired label comes from the person: the received native-grid file,
    centre-padded/cropped to the training shape exactly as the dataset's labels are, and kept only inside the units
    accepted in its round. A case labelled over several rounds (different slices or patches) combines them.
    """

    def __init__(self, store: LabelStore, data: RunData, shape: tuple[int, int, int], policy: str) -> None:
        self.store = store
        self.data = data
        self.shape = shape
        self.policy = policy
        with closing(sqlite3.connect(store.path)) as db:
            self._seed_units: dict[str, list[str]] = {}
            for unit, case_id in db.execute("SELECT unit, case_id FROM labels WHERE round = 0"):
                self._seed_units.setdefault(case_id, []).append(unit)

    def request(self, round_index: int, case_ids: Sequence[str]) -> list[str]:
        """The ids whose labels train round ``round_index``; raises :class:`LabelsPending` while it must wait."""
        selection = self.store.run_dir / "rounds" / f"round_{round_index - 1:03d}" / "selection.json"
        scores = {c["case_id"]: c["score"] for c in read_json(selection)} if selection.exists() else {}
        requested = [(c, rank, scores.get(c)) for rank, c in enumerate(case_ids)]
        accepted, queue = self.store.close_round(round_index, requested, self.policy)
        if not accepted:
            raise LabelsPending(round_index, len(queue.received), len(queue.items))
        return accepted

    def label(self, case_id: str) -> np.ndarray:
        """The training label_D_H_W of a labelled case (:data:`~activeseg.units.IGNORE` outside its units)."""
        pieces: list[tuple[list[str], np.ndarray]] = []
        if case_id in self._seed_units:
            pieces.append((self._seed_units[case_id], self.data.ground_truth(case_id)))
        pieces += [(units, self._training_grid(path)) for _, units, path in self.store.accepted_labels(case_id)]
        if not pieces:
            raise OracleError(f"no accepted human label for {case_id!r}")
        label_D_H_W = np.full(self.shape, IGNORE, dtype=np.uint8)
        for units, source in pieces:
            if case_id in units:  # the whole volume
                label_D_H_W = source.copy()
                continue
            inside = labelled_mask([unit_from_key(k, self.shape) for k in units], self.shape)
            label_D_H_W[inside] = source[inside]
        return np.ascontiguousarray(label_D_H_W)

    def _training_grid(self, path: Path) -> npt.NDArray[np.uint8]:
        """A received native-grid label on the training grid (padding is background, as for the dataset)."""
        label = np.asarray(read_volume(path).array, dtype=np.uint8)
        cropped, _ = center_pad_or_crop(label, self.shape, fill=0)
        return np.asarray(cropped, dtype=np.uint8)


def make_oracle(config: RunConfig, run_dir: Path, data: RunData, labelled: Sequence[str]) -> Oracle:
    """The oracle a run's config names: simulated (ground truth on request) or human (labels that arrive)."""
    if config.oracle.kind == "human":
        return HumanOracle(LabelStore(run_dir), data, config.data.shape, config.oracle.advance)
    return SimulatedOracle(data.ground_truth, revealed=labelled)


def waiting_message(run_dir: Path) -> str | None:
    """A line saying which round waits for how many labels, or None if none is waiting."""
    path = Path(run_dir) / LEDGER_FILE
    if not path.exists():
        return None
    with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'label_requests'"
        if db.execute(query).fetchone() is None:  # never asked a human: leave the ledger untouched
            return None
    queue = LabelStore(run_dir).queue()
    if queue is None:
        return None
    return str(LabelsPending(queue.round, len(queue.received), len(queue.items)))


def read_submission_file(path: Path) -> bytes:
    """The bytes of a label file on disk (a clear error naming it if it cannot be read)."""
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise LabelFileError(f"{path}: cannot read ({err.strerror or err})") from None
