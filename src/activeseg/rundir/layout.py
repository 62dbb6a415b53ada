"""The run directory: every path, file name and SQLite connection of a run goes through :class:`RunLayout`.

::

    config.yaml                 the validated config snapshot
    plan.json                   the plan every case is preprocessed by (``data.plan``), with the pool's fingerprint
    ledger.sqlite               one SQLite file (see ``database``): labelled units, rounds, stop reason, and the
                                human oracle's requests and submissions
    serve-token.sha256          the hash of the token ``activeseg serve`` generated (printed once, never stored)
    run.lock                    held while a process runs the rounds (see ``engine.run.run_lock``)
    curve.csv, curve.png        mean foreground Dice against labelled units and every recorded cost
    rounds/round_NNN/           seeds.json, model.pt (member_M.pt), metrics.json, scores.csv, sketches.npz,
                                embeddings.npz, selection.json, timings.json
    labels/round_NNN/           labels received from a person, named by the hash of their voxels
    annotation/round_NNN/<case>/  what a person labels while round NNN waits: image, prediction, uncertainty,
                                region (derived from the round's model; removed when the round closes)

A full-data upper bound writes ``config.yaml``, ``plan.json``, ``model.pt`` and ``full_data.json`` into a folder
of its own (:class:`FullDataLayout`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from activeseg.rundir.label_store import LabelStore
from activeseg.rundir.ledger import Ledger

CONFIG = "config.yaml"
LEDGER = "ledger.sqlite"
PLAN = "plan.json"


@dataclass(frozen=True)
class RunLayout:
    """Where a run keeps each of its files (nothing is created until something is written)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # --- the run's own files ----------------------------------------------------------------------------------

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def ledger(self) -> Path:
        return self.root / LEDGER

    @property
    def plan(self) -> Path:
        return self.root / PLAN

    @property
    def lock(self) -> Path:
        return self.root / "run.lock"

    @property
    def server_token(self) -> Path:
        """The sha256 of the token that ``activeseg serve`` generated for the run (never the token itself)."""
        return self.root / "serve-token.sha256"

    @property
    def curve_csv(self) -> Path:
        return self.root / "curve.csv"

    @property
    def curve_png(self) -> Path:
        return self.root / "curve.png"

    def is_run(self) -> bool:
        """Whether the folder holds a run (its config and ledger)."""
        return self.config.exists() and self.ledger.exists()

    # --- rounds ---------------------------------------------------------------------------------------------

    def round_dir(self, r: int) -> Path:
        return self.root / "rounds" / f"round_{r:03d}"

    def seeds(self, r: int) -> Path:
        return self.round_dir(r) / "seeds.json"

    def model(self, r: int, member: int = 0) -> Path:
        """Round r's checkpoint; ensemble member m > 0 beside it."""
        return self.round_dir(r) / ("model.pt" if member == 0 else f"member_{member}.pt")

    def metrics(self, r: int) -> Path:
        return self.round_dir(r) / "metrics.json"

    def scores(self, r: int) -> Path:
        return self.round_dir(r) / "scores.csv"

    def teacher_votes(self, r: int) -> Path:
        """Round r - 1's model's votes on round r's labelled cases (``pseudo.TeacherVote``, one folder per case):
        scratch kept while round r trains, so the threshold check and every ensemble member predict a case once."""
        return self.round_dir(r) / "teacher-votes"

    def calibration(self, r: int) -> Path:
        """Round r's pseudo-label threshold and the agreement it was chosen by (``pseudo.calibrated_threshold``)."""
        return self.round_dir(r) / "pseudo-label-check.json"

    def sketches(self, r: int) -> Path:
        return self.round_dir(r) / "sketches.npz"

    def embeddings(self, r: int) -> Path:
        return self.round_dir(r) / "embeddings.npz"

    def selection(self, r: int) -> Path:
        return self.round_dir(r) / "selection.json"

    def timings(self, r: int) -> Path:
        return self.round_dir(r) / "timings.json"

    def selections(self) -> list[Path]:
        """Every round's ``selection.json`` written so far, in round order."""
        return sorted((self.root / "rounds").glob("round_*/selection.json"))

    # --- a person's labels and work packages ------------------------------------------------------------------

    def label_file(self, r: int, sha256: str) -> str:
        """A received label, relative to the run directory (the form the ledger stores)."""
        return f"labels/round_{r:03d}/{sha256}.nii.gz"

    def packages(self, r: int) -> Path:
        """Round ``r``'s annotation packages (removed once the round closes: no command serves them then)."""
        return self.root / "annotation" / f"round_{r:03d}"

    def package_dir(self, r: int, folder: str) -> Path:
        """A queued case's annotation package (``folder`` is the case's file-system-safe name)."""
        return self.packages(r) / folder

    # --- SQLite ---------------------------------------------------------------------------------------------

    def open_ledger(self) -> Ledger:
        """The run's ledger (close it, or use it as a context manager)."""
        return Ledger(self.ledger)

    def label_store(self) -> LabelStore:
        """The human oracle's label store in the same SQLite file."""
        return LabelStore(self)


@dataclass(frozen=True)
class FullDataLayout:
    """The folder of a full-data upper bound."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def plan(self) -> Path:
        return self.root / PLAN

    @property
    def record(self) -> Path:
        return self.root / "full_data.json"

    def finished(self) -> bool:
        return self.record.exists()
