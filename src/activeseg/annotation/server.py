"""``activeseg serve RUN_DIR``: the human oracle over HTTP (FastAPI on uvicorn), and the browser viewer.

Endpoints (OpenAPI schema at ``/openapi.json``; the viewer at ``/``):

- ``GET  /api/status``: round, state (waiting / running / stopped), labels in, the background job, the advance
  policy, and the progress of the waiting round's packages (computed in the background from the server's start);
- ``GET  /api/queue``: the waiting round's cases, their ranks and scores, the label received for each (sha256),
  and the image's channels;
- ``GET  /api/cases/{case_id}/{image|prediction|uncertainty|region|label}.nii.gz``: one case's volumes (native
  grid; ``region`` only for slice and patch queries: the voxels to label; ``image_0001`` … for the further
  channels of a multi-channel image);
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

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from activeseg.annotation.packages import open_human_run
from activeseg.annotation.service import AnnotationService
from activeseg.artifacts import write_text_atomic
from activeseg.config import load_config
from activeseg.data.splits import RunData
from activeseg.engine.loop import RunError
from activeseg.rundir.layout import RunLayout

WEB_DIR = Path(__file__).parent / "web"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
WILDCARD_ADDRESSES = ("0.0.0.0", "::")
TOKEN_ENV = "ACTIVESEG_TOKEN"
MIN_TOKEN_LENGTH = 16
BEARER = HTTPBearer(auto_error=False, description="The token of `activeseg serve` (every /api request needs it).")
VOLUMES = ("image", "prediction", "uncertainty", "region", "label")
CHANNEL_VOLUME = re.compile(r"image_\d{4}")
"""A further channel of a multi-channel image (``image_0001`` …)."""
CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self' data: blob:; worker-src 'self' blob:; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def new_token() -> str:
    """A fresh random bearer token."""
    return secrets.token_urlsafe(24)


def token_digest(token: str) -> str:
    """The sha256 (hex) of a token: all the server keeps of it."""
    return hashlib.sha256(token.encode()).hexdigest()


def host_allowed(header: str | None, names: frozenset[str], ip_addresses: bool) -> bool:
    """Whether a request's Host header (``name[:port]``) is one the server answers: one of ``names``, or, when
    ``ip_addresses``, any IP address (a page reached through a rebound DNS name sends that name, never an IP)."""
    if not header:
        return False
    host = header.strip().lower()
    if host.startswith("["):
        host = host[: host.find("]") + 1] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.rstrip(".")
    if host in names:
        return True
    if not ip_addresses:
        return False
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


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
    token: str | None = None,
    data: RunData | None = None,
    max_upload_bytes: int | None = None,
    allowed_hosts: list[str] | None = None,
    *,
    token_sha256: str | None = None,
    ip_hosts: bool = False,
) -> FastAPI:
    """The annotation server of a run with a human oracle. Every ``/api`` request needs the bearer token: ``token``
    itself, or only its ``token_sha256``.

    ``allowed_hosts``: the Host names answered (default: this machine's loopback names), and ``ip_hosts``: any IP
    address too, so that a web page elsewhere cannot reach the server through DNS rebinding.
    """
    if (token is None) == (token_sha256 is None):
        raise ValueError("give the token or its sha256, not both")
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"the token must be at least {MIN_TOKEN_LENGTH} characters")
    expected = bytes.fromhex(token_sha256 if token_sha256 is not None else token_digest(token or ""))
    run = open_human_run(Path(run_dir), data=data)
    limit = max_upload_bytes or int(run.config.oracle.max_upload_mb * 1024 * 1024)
    service = AnnotationService(run, limit)
    names = frozenset(h.lower().rstrip(".") for h in (allowed_hosts or LOOPBACK_NAMES))

    def authorised(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        if credentials is None:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        presented = hashlib.sha256(credentials.credentials.encode()).digest()
        if not hmac.compare_digest(presented, expected):
            raise HTTPException(403, "wrong token")

    authorised_only = [Depends(authorised)]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.prepare_in_background()
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="activeseg annotation server",
        version="1",
        description="The human oracle of one active-learning run: queue, volumes, labels, rounds.",
        docs_url=None,  # the Swagger page would load scripts from a CDN; the schema is at /openapi.json
        redoc_url=None,
    )
    app.state.service = service

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Any]) -> Any:
        if not host_allowed(request.headers.get("host"), names, ip_hosts):
            response: Any = PlainTextResponse("Invalid host header", status_code=400)
        else:
            response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/api/status", summary="Run status: round, state, labels in, background job", dependencies=authorised_only)
    def get_status() -> dict[str, Any]:
        return service.status()

    @app.get(
        "/api/queue",
        summary="The waiting round's queried cases with scores and received labels",
        dependencies=authorised_only,
    )
    def get_queue() -> dict[str, Any]:
        return service.queue()

    @app.get(
        "/api/cases/{case_id}/{volume}.nii.gz",
        summary="A queued case's image or channel, prediction, uncertainty, region or received label (NIfTI, native)",
        response_class=FileResponse,
        dependencies=authorised_only,
    )
    def get_volume(case_id: str, volume: str) -> FileResponse:
        if volume not in VOLUMES and not CHANNEL_VOLUME.fullmatch(volume):
            raise HTTPException(404, f"unknown volume {volume!r}; one of {', '.join(VOLUMES)}, or image_0001 …")
        path = service.volume(case_id, volume)
        return FileResponse(path, media_type="application/octet-stream")

    @app.put(
        "/api/cases/{case_id}/label",
        summary="Upload a case's label (NIfTI bytes as the body; If-Match: <sha256> to correct a received one)",
        status_code=201,
        dependencies=authorised_only,
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
        limit = await run_in_threadpool(service.upload_limit, case_id)
        payload = await read_body(request, limit)
        status, body = await run_in_threadpool(service.submit, case_id, payload, if_match)
        return JSONResponse(body, status_code=status)

    @app.post(
        "/api/next-round",
        summary="Start the next round in the background (accept_partial: with the labels that have arrived)",
        status_code=202,
        dependencies=authorised_only,
    )
    def post_next_round(accept_partial: Annotated[bool, Query()] = False) -> dict[str, Any]:
        return service.next_round(accept_partial).as_dict()

    @app.get("/api/job", summary="The background round's progress", dependencies=authorised_only)
    def get_job() -> dict[str, Any]:
        job = service.job()
        return job.as_dict() if job else {"job": None, "state": "none"}

    @app.get(
        "/api/curve",
        summary="The learning curve so far: mean foreground Dice per round",
        dependencies=authorised_only,
    )
    def get_curve() -> list[dict[str, Any]]:
        return service.curve()

    @app.get(
        "/api/curve.png",
        summary="The learning curve as a PNG",
        response_class=FileResponse,
        dependencies=authorised_only,
    )
    def get_curve_png() -> FileResponse:
        path = run.layout.curve_png
        if not path.exists():
            raise HTTPException(404, "no round has been evaluated yet")
        return FileResponse(path, media_type="image/png")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def server_token(
    run_dir: Path, token_file: Path | None = None, renew: bool = False, environ: dict[str, str] | None = None
) -> tuple[str, str | None]:
    """The sha256 of the server's token, and the token itself only when it was generated just now (to print once).

    In order: the file ``token_file``, ``$ACTIVESEG_TOKEN``, the config's ``oracle.token_sha256``, the token that
    ``serve`` generated for the run earlier (unless ``renew``), else a new one, whose hash is stored in the run.
    """
    run_dir = Path(run_dir)
    environ = dict(os.environ) if environ is None else environ
    given, source = None, ""
    if token_file is not None:
        try:
            given, source = Path(token_file).read_text(encoding="utf-8").strip(), str(token_file)
        except (OSError, UnicodeDecodeError) as err:
            raise RunError(f"{token_file}: cannot read the token file ({err})") from None
    elif environ.get(TOKEN_ENV):
        given, source = environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    if given is not None:
        if len(given) < MIN_TOKEN_LENGTH:
            raise RunError(f"the token in {source} must be at least {MIN_TOKEN_LENGTH} characters")
        return token_digest(given), None
    layout = RunLayout(run_dir)
    if not layout.config.exists():
        raise RunError(f"{run_dir} is not an activeseg run directory (no {layout.config.name})")
    configured = load_config(layout.config).oracle.token_sha256
    if configured:
        return configured, None
    stored = layout.server_token
    if stored.exists() and not renew:
        digest = stored.read_text(encoding="utf-8").strip()
        if len(digest) == 64:
            return digest, None
    token = new_token()
    write_text_atomic(stored, token_digest(token) + "\n")
    stored.chmod(0o600)
    return token_digest(token), token


def serve(
    run_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    token_file: Path | None = None,
    allowed_hosts: list[str] | None = None,
    renew_token: bool = False,
    echo: Callable[[str], None] = print,
) -> None:
    """Run the server until interrupted; prints a generated token once, with the viewer's address."""
    run = open_human_run(Path(run_dir))
    digest, created = server_token(Path(run_dir), token_file, renew_token)
    loopback = host in LOOPBACK_NAMES
    names = [*LOOPBACK_NAMES, *(allowed_hosts or [])]
    if not loopback and host not in WILDCARD_ADDRESSES:
        names.append(host)
    elif host in WILDCARD_ADDRESSES:
        names.append(socket.gethostname())
    app = create_app(
        Path(run_dir), data=run.data, allowed_hosts=names, token_sha256=digest, ip_hosts=host in WILDCARD_ADDRESSES
    )
    shown = f"[{host}]" if ":" in host else host
    if created is not None:
        echo(f"token (needed for every request; shown once, only its hash is kept): {created}")
        echo(f"viewer: http://{shown}:{port}/#token={created}")
    else:
        echo(
            f"viewer: http://{shown}:{port}/#token=<the run's token> (from --token-file, ${TOKEN_ENV}, the config, "
            "or printed when `serve` made it; `serve --new-token` makes a new one)"
        )
    if not loopback:
        answered = ", ".join(sorted(set(names))) + (", any IP address" if host in WILDCARD_ADDRESSES else "")
        echo(
            f"warning: listening on {host}, not only on this machine: anyone who can reach port {port} can try the "
            "token, and plain HTTP shows the token, the images, predictions, uncertainty maps and labels to anyone on "
            f"the network path. Host names answered: {answered} (add one with --allowed-host NAME)."
        )
    uvicorn.run(app, host=host, port=port, log_level="warning")
