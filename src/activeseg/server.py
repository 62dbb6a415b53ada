"""``activeseg serve RUN_DIR``: the human oracle over HTTP (FastAPI on uvicorn), and the browser viewer.

Endpoints (OpenAPI schema at ``/openapi.json``; the viewer at ``/``):

- ``GET  /api/status``: round, state (waiting / running / stopped), labels in, the background job, the advance policy;
- ``GET  /api/queue``: the waiting round's cases, their ranks and scores, and the label received for each (sha256);
- ``GET  /api/cases/{case_id}/{image|prediction|uncertainty|region|label}.nii.gz``: one case's volumes (native
  grid; ``region`` only for slice and patch queries: the voxels to label);
- ``PUT  /api/cases/{case_id}/label``: a label NIfTI as the raw request body, validated as ``activeseg ingest`` does;
- ``POST /api/next-round``: start the next round as a background job (``?accept_partial=true``: with what arrived);
- ``GET  /api/job``: that job's progress; ``GET /api/curve`` and ``/api/curve.png``: the learning curve so far.

Security: binds to 127.0.0.1 unless told otherwise; every write needs ``Authorization: Bearer <token>`` (generated
at start and printed once, or ``oracle.token`` / ``--token``); case ids are looked up in the ledger's queue and
only the ledger's own string is used afterwards, so no path is built from user input; uploads are limited in size
while the body is read (413 before parsing); writes are SQLite transactions, and a second, different label for a
case whose sender did not name the current one (``If-Match: <sha256>``) is a 409 conflict.
"""

from __future__ import annotations

import csv
import hmac
import secrets
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from activeseg.annotate import HumanRun, open_human_run, package_dir, package_files, prepare_packages
from activeseg.human import (
    ANY,
    LabelConflict,
    LabelFileError,
    NotQueued,
    Queue,
    QueueItem,
    Reference,
    Submission,
    check_label,
    native_region,
    reference_for,
    take_region,
)
from activeseg.ledger import Ledger
from activeseg.loop import LEDGER_FILE, RunData, resume_run

WEB_DIR = Path(__file__).parent / "web"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
BEARER = HTTPBearer(auto_error=False, description="The token printed by `activeseg serve`.")
VOLUMES = ("image", "prediction", "uncertainty", "region", "label")
CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self' data: blob:; worker-src 'self' blob:; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def new_token() -> str:
    """A fresh random bearer token."""
    return secrets.token_urlsafe(24)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
    started_at: str = field(default_factory=_now)
    finished_at: str | None = None
    result: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.number,
            "trigger": self.trigger,
            "state": self.state,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "result": self.result,
            "error": self.error,
            "progress": self.reporter.snapshot(),
        }


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
        if name not in package_files(item):
            raise HTTPException(404, f"{case_id!r} is queried as a whole volume, so it has no {name}")
        with self._package_lock:
            prepare_packages(self.run, queue)
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
        region = native_region(item.units, reference.shape, self.run.config.data.shape)
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
            result = resume_run(self.run.run_dir, job.reporter, data=self.run.data)
            queue = self.run.store.queue()
            if queue is not None:  # the next round waits: have its packages ready for the viewer
                with self._package_lock:
                    prepare_packages(self.run, queue, job.reporter)
            job.result, job.state = result, "finished"
        except Exception as err:
            job.error = f"{type(err).__name__}: {err}"
            job.reporter.info(traceback.format_exc(limit=5))
            job.state = "failed"
        job.finished_at = _now()

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
        with Ledger(self.run.run_dir / LEDGER_FILE) as ledger:
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
        }

    def label_values(self) -> dict[str, str]:
        return {str(k): v for k, v in self.run.data.pool.labels.items()}

    def curve(self) -> list[dict[str, Any]]:
        path = self.run.run_dir / "curve.csv"
        if not path.exists():
            return []
        with path.open() as handle:
            return [{k: float(v) if k != "round" else int(v) for k, v in row.items()} for row in csv.DictReader(handle)]


# --- the app --------------------------------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it is known to exceed ``limit`` bytes; nothing is parsed first."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPException(413, f"upload larger than the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"upload larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    run_dir: Path,
    token: str,
    data: RunData | None = None,
    max_upload_bytes: int | None = None,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The annotation server of a run with a human oracle. ``token`` guards every write.

    ``allowed_hosts``: the Host headers answered (default: this machine's loopback names), so that a web page
    elsewhere cannot reach the server through DNS rebinding.
    """
    if len(token) < 16:
        raise ValueError("the token must be at least 16 characters")
    run = open_human_run(Path(run_dir), data=data)
    limit = max_upload_bytes or int(run.config.oracle.max_upload_mb * 1024 * 1024)
    service = AnnotationService(run, limit)
    expected = token.encode()

    def authorised(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        if credentials is None:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise HTTPException(403, "wrong token")

    app = FastAPI(
        title="activeseg annotation server",
        version="1",
        description="The human oracle of one active-learning run: queue, volumes, labels, rounds.",
        docs_url=None,  # the Swagger page would load scripts from a CDN; the schema is at /openapi.json
        redoc_url=None,
    )
    app.state.service = service
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or list(LOOPBACK_NAMES))

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Any]) -> Any:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/api/status", summary="Run status: round, state, labels in, background job")
    def get_status() -> dict[str, Any]:
        return service.status()

    @app.get("/api/queue", summary="The waiting round's queried cases with scores and received labels")
    def get_queue() -> dict[str, Any]:
        return service.queue()

    @app.get(
        "/api/cases/{case_id}/{volume}.nii.gz",
        summary="A queued case's image, prediction, uncertainty, region or received label (NIfTI, native grid)",
        response_class=FileResponse,
    )
    def get_volume(case_id: str, volume: str) -> FileResponse:
        if volume not in VOLUMES:
            raise HTTPException(404, f"unknown volume {volume!r}; one of {', '.join(VOLUMES)}")
        path = service.volume(case_id, volume)
        return FileResponse(path, media_type="application/octet-stream")

    @app.put(
        "/api/cases/{case_id}/label",
        summary="Upload a case's label (NIfTI bytes as the body; If-Match: <sha256> to correct a received one)",
        status_code=201,
        dependencies=[Depends(authorised)],
        responses={
            200: {"description": "The same label again (unchanged) or a recorded correction"},
            401: {"description": "Missing token"},
            403: {"description": "Wrong token"},
            404: {"description": "The case is not queued in the waiting round"},
            409: {"description": "A different label was already received, or the round has started"},
            413: {"description": "Upload too large"},
            422: {"description": "Not a valid label for this case (the message says why)"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def put_label(
        case_id: str,
        request: Request,
        if_match: Annotated[str | None, Header(description="sha256 of the label this one corrects, or *")] = None,
    ) -> JSONResponse:
        service.queued(case_id)  # 404 before reading any body
        payload = await read_body(request, service.max_upload_bytes)
        status, body = await run_in_threadpool(service.submit, case_id, payload, if_match)
        return JSONResponse(body, status_code=status)

    @app.post(
        "/api/next-round",
        summary="Start the next round in the background (accept_partial: with the labels that have arrived)",
        status_code=202,
        dependencies=[Depends(authorised)],
    )
    def post_next_round(accept_partial: Annotated[bool, Query()] = False) -> dict[str, Any]:
        return service.next_round(accept_partial).as_dict()

    @app.get("/api/job", summary="The background round's progress")
    def get_job() -> dict[str, Any]:
        job = service.job()
        return job.as_dict() if job else {"job": None, "state": "none"}

    @app.get("/api/curve", summary="The learning curve so far: mean foreground Dice per round")
    def get_curve() -> list[dict[str, Any]]:
        return service.curve()

    @app.get("/api/curve.png", summary="The learning curve as a PNG", response_class=FileResponse)
    def get_curve_png() -> FileResponse:
        path = run.run_dir / "curve.png"
        if not path.exists():
            raise HTTPException(404, "no round has been evaluated yet")
        return FileResponse(path, media_type="image/png")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def serve(
    run_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Run the server until interrupted; prints the token once (with the viewer's address)."""
    import uvicorn

    run = open_human_run(Path(run_dir))
    token = token or run.config.oracle.token or new_token()
    hosts = list(LOOPBACK_NAMES) if host in LOOPBACK_NAMES else ["*"] if host in ("0.0.0.0", "::") else [host]
    app = create_app(Path(run_dir), token, data=run.data, allowed_hosts=hosts)
    shown = f"[{host}]" if ":" in host else host
    echo(f"token (needed for every write; shown once): {token}")
    echo(f"viewer: http://{shown}:{port}/#token={token}")
    if host not in LOOPBACK_NAMES:
        echo(f"warning: listening on {host}, not only on this machine; anyone who can reach it can read the images")
    uvicorn.run(app, host=host, port=port, log_level="warning")
