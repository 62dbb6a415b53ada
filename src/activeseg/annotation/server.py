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

import hmac
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from activeseg.annotation.packages import open_human_run
from activeseg.annotation.service import AnnotationService
from activeseg.data.splits import RunData

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
        path = run.layout.curve_png
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
