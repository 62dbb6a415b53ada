"""The annotation server's state: the opened run, the reference grids of its cases, and one background round.

:class:`AnnotationService` does what the HTTP endpoints ask (``server``) and raises ``HTTPException`` with the
status code each problem deserves; the round itself runs in a thread through ``engine.run.resume_run``.
"""

from __future__ import annotations

import csv
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from activeseg.annotation.packages import (
    REGION_FILE,
    HumanRun,
    image_files,
    package_dir,
    package_files,
    prepare_packages,
)
from activeseg.engine.run import resume_run
from activeseg.oracles.label_files import (
    LabelFileError,
    Reference,
    check_label,
    native_region,
    reference_for,
    take_region,
)
from activeseg.rundir.database import now
from activeseg.rundir.label_store import ANY, LabelConflict, NotQueued, Queue, QueueItem, Submission

logger = logging.getLogger(__name__)
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/])/(?:[^\s/'\"():,]+/)*([^\s/'\"():,]+)")

# --- the background job ---------------------------------------------------------------------------------------------


class JobReporter:
    """A :class:`activeseg.reporting.Reporter` that keeps the current stage and messages for ``GET /api/job``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stage: str | None = None
        self.done = 0
        self.total = 0
        self.messages: list[str] = []

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        with self._lock:
            self.stage, self.done, self.total = description, 0, total

        def advance(n: int) -> None:
            with self._lock:
                self.done += n

        yield advance

    def info(self, message: str) -> None:
        with self._lock:
            self.messages.append(message)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"stage": self.stage, "done": self.done, "total": self.total, "messages": list(self.messages)}


@dataclass
class Job:
    """One background round: ``running``, then ``finished`` (with the loop's result) or ``failed``."""

    number: int
    trigger: str
    reporter: JobReporter = field(default_factory=JobReporter)
    state: str = "running"
    started_at: str = field(default_factory=now)
    finished_at: str | None = None
    result: str | None = None
    error: str | None = None
    error_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.number,
            "trigger": self.trigger,
            "state": self.state,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "result": self.result,
            "error": self.error,
            "error_id": self.error_id,
            "progress": self.reporter.snapshot(),
        }


def public_message(err: Exception, run_dir: Path) -> str:
    """An error for the API: its type and message with the run folder written ``RUN_DIR`` and any other absolute path
    cut to its last part (the traceback goes only to the server's log)."""
    text = f"{type(err).__name__}: {err}"
    for root in sorted({str(run_dir), str(Path(run_dir).resolve())}, key=len, reverse=True):
        text = text.replace(root, "RUN_DIR")
    return _ABSOLUTE_PATH.sub(lambda m: f"…/{m.group(1)}", text)


# --- the service ----------------------------------------------------------------------------------------------------


class AnnotationService:
    """The server's state: the opened run, the reference grids, and at most one background job."""

    def __init__(self, run: HumanRun, max_upload_bytes: int) -> None:
        self.run = run
        self.max_upload_bytes = max_upload_bytes
        self._job: Job | None = None
        self._jobs = 0
        self._job_lock = threading.Lock()
        self._package_lock = threading.Lock()
        self._references: dict[str, Reference] = {}
        self.packages: JobReporter | None = None
        """The progress of :meth:`prepare_in_background`, once started."""

    @property
    def policy(self) -> str:
        return self.run.config.oracle.advance

    def job(self) -> Job | None:
        with self._job_lock:
            return self._job

    def running(self) -> bool:
        job = self.job()
        return job is not None and job.state == "running"

    def queued(self, case_id: str) -> tuple[Queue, QueueItem]:
        """The waiting round and the queue's own item for ``case_id`` (404 if it is not queued there); only the
        item's strings are used afterwards."""
        queue = self.run.store.queue()
        if queue is None:
            raise HTTPException(404, f"no round is waiting for labels, so {case_id!r} is not queued")
        try:
            return queue, queue.item(case_id)
        except NotQueued as err:
            raise HTTPException(404, str(err)) from None

    def reference(self, case_id: str) -> Reference:
        if case_id not in self._references:
            self._references[case_id] = reference_for(self.run.data, case_id)
        return self._references[case_id]

    def volume(self, case_id: str, name: str) -> Path:
        """A queued case's package file (computed on first use), or its received label."""
        queue, item = self.queued(case_id)
        case_id = item.case_id
        if name == "label":
            try:
                path = self.run.store.current_file(case_id)
            except NotQueued as err:  # the round moved on meanwhile
                raise HTTPException(404, str(err)) from None
            if path is None:
                raise HTTPException(404, f"no label has been received for {case_id!r}")
            return path
        channels = self.run.data.plan.channels
        if name == REGION_FILE and name not in package_files(item, channels):
            raise HTTPException(404, f"{case_id!r} is queried as a whole volume, so it has no {name}")
        if name not in package_files(item, channels):
            raise HTTPException(404, f"{case_id!r} has no {name}: its image has {channels} channel(s)")
        prepare_packages(self.run, queue, cases=[case_id], guard=self._package_lock)
        return package_dir(self.run, queue.round, case_id) / f"{name}.nii.gz"

    def submit(self, case_id: str, payload: bytes, if_match: str | None) -> tuple[int, dict[str, Any]]:
        """Validate and record one uploaded label, kept only inside the case's region; (status code, body)."""
        _, item = self.queued(case_id)
        case_id = item.case_id
        try:
            reference = self.reference(case_id)
            label = check_label(f"label upload for {case_id}", payload, reference)
        except LabelFileError as err:
            raise HTTPException(422, str(err)) from None
        region = native_region(item.units, self.run.data.geometry(case_id))
        label, outside = take_region(label, region)
        replaces = None if if_match is None else (ANY if if_match.strip() == "*" else if_match.strip().strip('"'))
        submission = Submission(case_id, label, reference.affine, "upload")
        try:
            (outcome,) = self.run.store.submit([submission], replaces=replaces)
        except LabelConflict as err:
            raise HTTPException(409, str(err)) from None
        except NotQueued as err:
            raise HTTPException(404, str(err)) from None
        queue = self.run.store.queue()
        body: dict[str, Any] = {"case_id": case_id, "sha256": submission.sha256, "outcome": outcome}
        if outside:
            body["ignored_outside_region"] = outside
        if queue is not None:
            body.update(round=queue.round, received=len(queue.received), requested=len(queue.items))
            if queue.complete and self.policy == "all" and not self.running():
                body["next_round"] = self.start_job("all labels in").as_dict()
        return (201 if outcome == "created" else 200), body

    def start_job(self, trigger: str) -> Job:
        """Run the loop from the ledger in a background thread (one job at a time)."""
        with self._job_lock:
            if self._job is not None and self._job.state == "running":
                raise HTTPException(409, "a round is already running")
            self._jobs += 1
            job = self._job = Job(self._jobs, trigger)
        threading.Thread(target=self._run_job, args=(job,), name=f"activeseg-round-{job.number}", daemon=True).start()
        return job

    def _run_job(self, job: Job) -> None:
        try:
            result = resume_run(self.run.layout.root, job.reporter, data=self.run.data)
            queue = self.run.store.queue()
            if queue is not None:  # the next round waits: have its packages ready for the viewer
                prepare_packages(self.run, queue, job.reporter, guard=self._package_lock)
            job.result, job.state = result, "finished"
        except Exception as err:
            job.error_id = uuid.uuid4().hex[:12]
            job.error = public_message(err, self.run.layout.root)
            logger.exception("background round %d failed (error id %s)", job.number, job.error_id)
            job.state = "failed"
        job.finished_at = now()

    def prepare_in_background(self) -> None:
        """Compute the waiting round's missing packages in a thread, in rank order, so that a case opens without
        waiting for its scoring (minutes at clinical size); a case asked for meanwhile is made first."""
        queue = self.run.store.queue()
        if queue is None:
            return
        reporter = self.packages = JobReporter()

        def prepare() -> None:
            try:
                prepare_packages(self.run, queue, reporter, guard=self._package_lock)
            except Exception as err:  # a request for the case computes it again and reports the error
                reporter.info(public_message(err, self.run.layout.root))
                logger.exception("preparing the annotation packages of round %d failed", queue.round)

        threading.Thread(target=prepare, name="activeseg-packages", daemon=True).start()

    def upload_limit(self, case_id: str) -> int:
        """The largest upload for a queued case: the configured limit, or the largest label file of its image."""
        return min(self.max_upload_bytes, self.reference(case_id).max_file_bytes)

    def next_round(self, accept_partial: bool) -> Job:
        queue = self.run.store.queue()
        if queue is None:
            raise HTTPException(409, "no round is waiting for labels")
        if not queue.received:
            raise HTTPException(409, f"no label of round {queue.round} has arrived yet")
        if not queue.complete and self.policy == "all" and not accept_partial:
            raise HTTPException(
                409,
                f"round {queue.round} has {len(queue.received)} of {len(queue.items)} labels and the policy is "
                "advance: all; send accept_partial=true to start with the labels that have arrived",
            )
        if self.running():
            raise HTTPException(409, "a round is already running")
        if not queue.complete:
            self.run.store.accept_partial()
        return self.start_job("user" + (" (partial)" if not queue.complete else ""))

    def status(self) -> dict[str, Any]:
        with self.run.layout.open_ledger() as ledger:
            rounds = ledger.rounds()
            stop = ledger.stop_reason()
            labelled = len(ledger.labelled_ids())
            pool = len(ledger.split("pool"))
        queue = self.run.store.queue()
        job = self.job()
        state = "running" if self.running() else "stopped" if stop else "waiting" if queue else "idle"
        return {
            "run": self.run.run_dir.name,
            "strategy": self.run.config.strategy.name,
            "advance": self.policy,
            "state": state,
            "stop_reason": stop,
            "evaluated_rounds": len(rounds),
            "last_dice": rounds[-1].mean_dice if rounds else None,
            "labelled": labelled,
            "pool": pool,
            "waiting_round": queue.round if queue else None,
            "received": len(queue.received) if queue else 0,
            "requested": len(queue.items) if queue else 0,
            "job": job.as_dict() if job else None,
            "packages": self.packages.snapshot() if self.packages else None,
        }

    def queue(self) -> dict[str, Any]:
        queue = self.run.store.queue()
        if queue is None:
            return {"round": None, "cases": [], "complete": False, "label_values": self.label_values()}
        cases = [
            {
                "case_id": i.case_id,
                "units": list(i.units),
                "rank": i.rank,
                "score": i.score,
                "sha256": i.sha256,
                "submitted_at": i.submitted_at,
                "source": i.source,
            }
            for i in queue.items
        ]
        return {
            "round": queue.round,
            "unit": self.run.config.unit.kind,
            "cases": cases,
            "complete": queue.complete,
            "partial_accepted": queue.partial_accepted,
            "label_values": self.label_values(),
            "channels": self.channels(),
        }

    def channels(self) -> list[dict[str, str]]:
        """The image's channels in order: package volume and name (dataset.json's, else "channel N")."""
        names = self.run.data.pool.modality
        count = self.run.data.plan.channels
        return [{"volume": v, "name": names.get(str(c), f"channel {c}")} for c, v in enumerate(image_files(count))]

    def label_values(self) -> dict[str, str]:
        return {str(k): v for k, v in self.run.data.pool.labels.items()}

    def curve(self) -> list[dict[str, Any]]:
        path = self.run.layout.curve_csv
        if not path.exists():
            return []
        with path.open() as handle:
            return [{k: float(v) if k != "round" else int(v) for k, v in row.items()} for row in csv.DictReader(handle)]
