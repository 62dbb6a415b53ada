"""The annotation server, tested over HTTP against a real uvicorn server on loopback: the API, the token, hostile
case ids and uploads, racing uploads, corrections, and rounds started in the background (by the user, or by the
last label arriving)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nibabel as nib
import numpy as np
import pytest

from _human_support import (
    TOKEN,
    Prepared,
    copy_run,
    ground_truth_nifti,
    http,
    one_torch_thread,
    prepared,
    serve_in_thread,
    wait_for_job,
)
from activeseg.acquisition.units import case_of
from activeseg.annotation.server import create_app
from activeseg.data.io import nifti_gz
from activeseg.rundir.layout import RunLayout
from activeseg.rundir.ledger import Ledger

from _support import half_step_windows, load_nifti, requires_hippocampus

pytestmark = [requires_hippocampus, pytest.mark.slow]
LIMIT = 256 * 1024  # bytes; a hippocampus label NIfTI is about 70 kB uncompressed


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return prepared(tmp_path_factory)


@pytest.fixture(scope="module")
def run_dir(shared: Prepared, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_run(shared.template, tmp_path_factory.mktemp("server") / "run")


@pytest.fixture(scope="module")
def base(shared: Prepared, run_dir: Path) -> Iterator[str]:

    app = create_app(run_dir, TOKEN, data=shared.data, max_upload_bytes=LIMIT)
    with serve_in_thread(app) as url:
        yield url


def queue(base: str) -> dict[str, Any]:
    return dict(http("GET", f"{base}/api/queue", token=TOKEN).json())


def queued(base: str) -> list[str]:
    return [c["case_id"] for c in queue(base)["cases"]]


def submissions(run_dir: Path) -> list[tuple[object, ...]]:
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    rows = db.execute("SELECT round, case_id, sha256, source, supersedes FROM submissions ORDER BY id").fetchall()
    db.close()
    return rows


def edited(shared: Prepared, case_id: str) -> bytes:
    """A plausible correction of the truth: posterior relabelled anterior."""
    image = nib.Nifti1Image.from_bytes(gzip.decompress(ground_truth_nifti(shared.data, case_id)))
    array = np.asarray(image.dataobj).copy()
    array[array == 2] = 1
    return nifti_gz(array, image.affine)


# --- reading ------------------------------------------------------------------------------------------------------


def test_openapi_schema_lists_the_endpoints_and_the_bearer_scheme(base: str) -> None:
    schema = http("GET", f"{base}/openapi.json").json()
    assert set(schema["paths"]) >= {
        "/api/status",
        "/api/queue",
        "/api/cases/{case_id}/{volume}.nii.gz",
        "/api/cases/{case_id}/label",
        "/api/next-round",
        "/api/job",
        "/api/curve",
        "/api/curve.png",
    }
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert schema["paths"]["/api/cases/{case_id}/label"]["put"]["security"] == [{"HTTPBearer": []}]


def test_queue_status_and_case_volumes(base: str, shared: Prepared, run_dir: Path) -> None:
    body = queue(base)
    selection = json.loads((run_dir / "rounds/round_000/selection.json").read_text())
    assert body["round"] == 1
    assert [(c["case_id"], c["rank"], c["score"]) for c in body["cases"]] == [
        (c["unit"], c["rank"], c["score"]) for c in selection
    ]
    status = http("GET", f"{base}/api/status", token=TOKEN).json()
    assert (status["state"], status["waiting_round"], status["received"], status["requested"]) == ("waiting", 1, 0, 3)
    assert len(http("GET", f"{base}/api/curve", token=TOKEN).json()) == 1
    assert http("GET", f"{base}/api/curve.png", token=TOKEN).body[:8] == b"\x89PNG\r\n\x1a\n"

    case_id = case_of(selection[0]["unit"])  # a volume query: the unit key is the case id
    native = load_nifti(shared.data.pool.case(case_id).image)
    for volume in ("image", "prediction", "uncertainty"):
        reply = http("GET", f"{base}/api/cases/{case_id}/{volume}.nii.gz", token=TOKEN)
        assert reply.status == 200, reply.body
        image = nib.Nifti1Image.from_bytes(gzip.decompress(reply.body))
        assert image.shape == native.shape and np.allclose(image.affine, native.affine, atol=1e-5)
    assert http("GET", f"{base}/api/cases/{case_id}/label.nii.gz", token=TOKEN).status == 404  # nothing received yet
    assert http("GET", f"{base}/api/cases/{case_id}/model.nii.gz", token=TOKEN).status == 404
    page = http("GET", f"{base}/")
    assert page.status == 200 and b"niivue.umd.js" in page.body
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert http("GET", f"{base}/static/vendor/niivue/LICENSE").body.startswith(b"BSD 2-Clause License")


def test_the_server_prepares_the_waiting_rounds_packages_from_its_start_without_being_asked(
    shared: Prepared, tmp_path: Path
) -> None:
    run = copy_run(shared.template, tmp_path / "run")
    queued = RunLayout(run).label_store().queue()
    assert queued is not None and not (run / "annotation").exists()
    with serve_in_thread(create_app(run, TOKEN, data=shared.data)) as url:
        deadline = time.monotonic() + 120
        while (packages := http("GET", f"{url}/api/status", token=TOKEN).json()["packages"])["done"] < max(
            packages["total"], 1
        ):
            assert time.monotonic() < deadline, packages
            time.sleep(0.1)
    windows = sum(half_step_windows(shared.data.shape_of(i.case_id), shared.data.plan.patch_size) for i in queued.items)
    assert packages["stage"] == "round 1: 3 annotation packages (windows)" and packages["total"] == windows
    for item in queued.items:  # every file of every queued case, with no request for any of them
        folder = run / "annotation" / "round_001" / item.case_id
        assert sorted(p.name for p in folder.iterdir()) == ["image.nii.gz", "prediction.nii.gz", "uncertainty.nii.gz"]


# --- security -------------------------------------------------------------------------------------------------------


def test_writes_need_the_right_token(base: str, shared: Prepared, run_dir: Path) -> None:
    case_id = queued(base)[0]
    label = ground_truth_nifti(shared.data, case_id)
    missing = http("PUT", f"{base}/api/cases/{case_id}/label", label)
    assert missing.status == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert http("PUT", f"{base}/api/cases/{case_id}/label", label, token="wrong-token-0123456789").status == 403
    assert http("POST", f"{base}/api/next-round").status == 401
    assert http("POST", f"{base}/api/next-round", token=TOKEN[:-1] + "x").status == 403
    assert submissions(run_dir) == []
    # a page elsewhere that rebinds its DNS name to 127.0.0.1 is not answered
    assert http("GET", f"{base}/api/queue", token=TOKEN, headers={"Host": "attacker.example"}).status == 400


def test_reads_need_the_token_too(base: str) -> None:
    case_id = queued(base)[0]
    for path in ("status", "queue", "job", "curve", "curve.png", f"cases/{case_id}/image.nii.gz"):
        missing = http("GET", f"{base}/api/{path}")
        assert missing.status == 401 and missing.headers["www-authenticate"] == "Bearer", path
        assert http("GET", f"{base}/api/{path}", token="wrong-token-0123456789").status == 403, path
    assert http("GET", f"{base}/").status == 200  # the viewer's page and scripts hold no data


@pytest.mark.parametrize(
    "case_id",
    ["..%2F..%2Fconfig.yaml", "%2E%2E%2Fledger.sqlite", "..", "hippocampus_001%00", "%2Fetc%2Fpasswd", "x" * 300],
)
def test_case_ids_are_looked_up_never_used_as_paths(base: str, run_dir: Path, case_id: str) -> None:
    before = sorted(p.relative_to(run_dir.parent) for p in run_dir.parent.rglob("*"))
    for volume in ("image", "label"):
        assert http("GET", f"{base}/api/cases/{case_id}/{volume}.nii.gz", token=TOKEN).status == 404
    reply = http("PUT", f"{base}/api/cases/{case_id}/label", b"\0" * 100, token=TOKEN)
    assert reply.status == 404, reply.body
    assert sorted(p.relative_to(run_dir.parent) for p in run_dir.parent.rglob("*")) == before
    assert submissions(run_dir) == []


def test_labels_for_cases_that_were_not_queried_are_refused(base: str, shared: Prepared, run_dir: Path) -> None:
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        unqueried = next(c for c in ledger.unlabelled_ids() if c not in queued(base))
        labelled, test_case = ledger.labelled_ids()[0], ledger.split("test")[0]
    for case_id in (unqueried, labelled, test_case):
        reply = http("PUT", f"{base}/api/cases/{case_id}/label", ground_truth_nifti(shared.data, labelled), TOKEN)
        assert reply.status == 404 and "is not queued" in reply.json()["detail"]
    assert submissions(run_dir) == []


def test_oversized_uploads_are_refused_before_parsing(base: str, run_dir: Path) -> None:
    case_id = queued(base)[0]
    big = http("PUT", f"{base}/api/cases/{case_id}/label", b"\0" * (LIMIT + 1), token=TOKEN)
    assert big.status == 413
    # without a Content-Length (chunked), the limit is enforced while the body streams in
    parts = urlsplit(base)
    assert parts.hostname is not None
    connection = HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.putrequest("PUT", f"/api/cases/{case_id}/label")
    connection.putheader("Authorization", f"Bearer {TOKEN}")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    chunk = b"\0" * 65536
    try:
        for _ in range(LIMIT // len(chunk) + 2):
            connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        connection.send(b"0\r\n\r\n")
    except OSError:
        pass  # the server may answer and close before the whole body is sent
    assert connection.getresponse().status == 413
    connection.close()
    assert submissions(run_dir) == []


def test_malformed_uploads_are_refused_with_a_clear_message(base: str, shared: Prepared, run_dir: Path) -> None:
    case_id = queued(base)[0]
    truth = ground_truth_nifti(shared.data, case_id)
    image = nib.Nifti1Image.from_bytes(gzip.decompress(truth))
    bad = {
        b"GIF89a not a nifti" * 10: "not a readable NIfTI",
        truth[: len(truth) // 2]: "truncated",
        b"": "not a readable NIfTI",
        nifti_gz(np.zeros((4, 4, 4), dtype=np.uint8), image.affine): "differs from the image's",
        nifti_gz(np.full(image.shape, 7, dtype=np.uint8), image.affine): "label values [7] are not allowed",
        nifti_gz(np.zeros(image.shape, dtype=np.uint8), np.eye(4) * 2): "affine differs",
    }
    for payload, expected in bad.items():
        reply = http("PUT", f"{base}/api/cases/{case_id}/label", payload, token=TOKEN)
        assert reply.status == 422, reply.body
        assert reply.json()["detail"].startswith(f"label upload for {case_id}: ") and expected in reply.json()["detail"]
    assert submissions(run_dir) == []
    assert not (run_dir / "labels").exists()


# --- concurrency and corrections --------------------------------------------------------------------------------------


def race(base: str, case_id: str, payloads: list[bytes]) -> list[tuple[int, dict[str, object]]]:
    barrier = threading.Barrier(len(payloads))
    results: list[tuple[int, dict[str, object]]] = [(0, {})] * len(payloads)

    def upload(i: int) -> None:
        barrier.wait()
        reply = http("PUT", f"{base}/api/cases/{case_id}/label", payloads[i], token=TOKEN)
        results[i] = (reply.status, reply.json())

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(len(payloads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_racing_uploads_one_label_wins_and_the_conflict_is_reported(base: str, shared: Prepared, run_dir: Path) -> None:
    first, second = queued(base)[:2]
    results = race(base, first, [ground_truth_nifti(shared.data, first), edited(shared, first)])
    assert sorted(status for status, _ in results) == [201, 409]
    loser = next(body for status, body in results if status == 409)
    assert "a different label was already received" in str(loser["detail"])
    rows = submissions(run_dir)
    assert len(rows) == 1 and rows[0][1] == first
    # the same label twice at once is one label, not a conflict
    same = ground_truth_nifti(shared.data, second)
    assert sorted(status for status, _ in race(base, second, [same, same])) == [200, 201]
    assert [r[1] for r in submissions(run_dir)] == [first, second]


def test_a_correction_names_the_label_it_replaces(base: str, shared: Prepared, run_dir: Path) -> None:
    case_id = queued(base)[1]
    current = next(c for c in queue(base)["cases"] if c["case_id"] == case_id)["sha256"]
    correction = edited(shared, case_id)
    stale = http("PUT", f"{base}/api/cases/{case_id}/label", correction, TOKEN, {"If-Match": "0" * 64})
    assert stale.status == 409
    reply = http("PUT", f"{base}/api/cases/{case_id}/label", correction, TOKEN, {"If-Match": f'"{current}"'})
    assert reply.status == 200 and reply.json()["outcome"] == "corrected"
    *_, (r, case, sha, source, supersedes) = submissions(run_dir)
    assert (r, case, sha, source) == (1, case_id, reply.json()["sha256"], "upload") and supersedes is not None
    received = http("GET", f"{base}/api/cases/{case_id}/label.nii.gz", token=TOKEN)
    array = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(received.body)).dataobj)
    assert not (array == 2).any()  # the correction is what the run now holds


# --- rounds in the background -----------------------------------------------------------------------------------------


def test_next_round_runs_in_the_background_then_the_last_label_starts_one(
    base: str, shared: Prepared, run_dir: Path
) -> None:
    cases = queue(base)["cases"]
    assert len(cases) == 3 and sum(bool(c["sha256"]) for c in cases) == 2
    received = sorted(c["case_id"] for c in cases if c["sha256"])
    refused = http("POST", f"{base}/api/next-round", token=TOKEN)  # advance: all, and one label is missing
    assert refused.status == 409 and "accept_partial=true" in refused.json()["detail"]
    started = http("POST", f"{base}/api/next-round?accept_partial=true", token=TOKEN)
    assert started.status == 202 and started.json()["state"] == "running"
    job = wait_for_job(base)
    assert job["state"] == "finished" and job["result"] == "waiting for labels: round 2 has 0 of 3", job
    assert any("training" in stage for stage in job["stages_seen"]) or job["progress"]["stage"]
    (advance,) = RunLayout(run_dir).label_store().advances()
    assert (advance["round"], advance["policy"], advance["requested"], advance["received"]) == (1, "all", 3, 2)
    with Ledger(run_dir / "ledger.sqlite") as ledger:  # only the labels that arrived train; the rest stay in the pool
        assert sorted(r.case_id for r in ledger.labels() if r.round == 1) == received
    assert len(http("GET", f"{base}/api/curve", token=TOKEN).json()) == 2
    status = http("GET", f"{base}/api/status", token=TOKEN).json()
    assert (status["state"], status["waiting_round"], status["labelled"]) == ("waiting", 2, 6)

    # round 2 (the last): the third label completes the queue and starts the round by itself (advance: all)
    replies = [
        http("PUT", f"{base}/api/cases/{c}/label", ground_truth_nifti(shared.data, c), token=TOKEN)
        for c in queued(base)
    ]
    assert [r.status for r in replies] == [201, 201, 201]
    assert "next_round" not in replies[1].json() and replies[2].json()["next_round"]["trigger"] == "all labels in"
    job = wait_for_job(base)
    assert job["state"] == "finished" and job["result"] == "budget reached: 2 acquisition rounds", job
    status = http("GET", f"{base}/api/status", token=TOKEN).json()
    assert (status["state"], status["evaluated_rounds"], status["labelled"]) == ("stopped", 3, 9)
    assert http("POST", f"{base}/api/next-round", token=TOKEN).status == 409  # nothing is waiting any more


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_serve(run: Path, *options: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    command = [sys.executable, "-m", "activeseg.cli", "serve", str(run), "--port", str(port), *options]
    environ = {k: v for k, v in os.environ.items() if k != "ACTIVESEG_TOKEN"} | (env or {})
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environ), port


def wait_until_up(server: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            http("GET", f"http://127.0.0.1:{port}/")
            return
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.2)


def stop(server: subprocess.Popen[str]) -> str:
    server.terminate()
    rest, _ = server.communicate(timeout=30)
    return rest


def test_serve_command_binds_to_loopback_and_prints_the_token_once(shared: Prepared, tmp_path: Path) -> None:
    run = copy_run(shared.template, tmp_path / "run")
    server, port = start_serve(run)
    try:
        lines = iter(server.stdout.readline, "")  # type: ignore[union-attr]
        token_line = next(line for line in lines if line.startswith("token"))  # after any log lines
        viewer_line = next(lines)
        token = token_line.rsplit(" ", 1)[-1].strip()
        assert token_line.startswith("token") and len(token) >= 32
        assert viewer_line.strip() == f"viewer: http://127.0.0.1:{port}/#token={token}"
        wait_until_up(server, port)
        status = http("GET", f"http://127.0.0.1:{port}/api/status", token=token)
        assert status.status == 200 and status.json()["state"] == "waiting"
        assert http("POST", f"http://127.0.0.1:{port}/api/next-round", token=token).status == 409  # token accepted
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=False)
        if listening.returncode == 0:
            assert all("127.0.0.1:" in line for line in listening.stdout.splitlines() if line.strip())
    finally:
        rest = stop(server)
    assert token not in rest  # printed once, never again
    # only the token's hash is kept, and a second start neither prints it nor makes a new one
    assert (run / "serve-token.sha256").read_text().strip() == hashlib.sha256(token.encode()).hexdigest()
    assert not [p for p in run.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    server, port = start_serve(run)
    try:
        wait_until_up(server, port)
        assert http("GET", f"http://127.0.0.1:{port}/api/status", token=token).status == 200
    finally:
        again = stop(server)
    assert token not in again and "token=<the run's token>" in again, again


def test_serve_on_every_interface_answers_only_allowed_hosts_and_reads_need_the_token(
    shared: Prepared, tmp_path: Path
) -> None:
    run = copy_run(shared.template, tmp_path / "run")
    secret = tmp_path / "token"
    secret.write_text("a-token-from-a-file-0123456789\n")
    options = ["--host", "0.0.0.0", "--allowed-host", "annotate.example", "--token-file", str(secret)]
    server, port = start_serve(run, *options)
    try:
        wait_until_up(server, port)
        url = f"http://127.0.0.1:{port}/api/queue"
        token = "a-token-from-a-file-0123456789"
        assert http("GET", url, token=token, headers={"Host": "evil.example"}).status == 400  # DNS rebinding
        assert http("GET", url, token=token, headers={"Host": f"evil.example:{port}"}).status == 400
        assert http("GET", url, headers={"Host": "annotate.example"}).status == 401  # a read without the token
        assert http("GET", url, token=token[:-1] + "x", headers={"Host": "annotate.example"}).status == 403
        assert http("GET", url, token=token, headers={"Host": f"annotate.example:{port}"}).status == 200
        assert http("GET", url, token=token).status == 200  # an IP address cannot be a rebound name
        assert http("GET", f"http://127.0.0.1:{port}/", headers={"Host": "annotate.example"}).status == 200
    finally:
        output = stop(server)
    assert token not in output and "token (needed" not in output  # a token the user gave is never printed
    warning = " ".join(output.split())
    assert "warning: listening on 0.0.0.0" in warning and "images" in warning and "--allowed-host" in warning
    assert "annotate.example" in warning
    assert not (run / "serve-token.sha256").exists()


def test_serve_takes_no_token_on_the_command_line(shared: Prepared, tmp_path: Path) -> None:
    run = copy_run(shared.template, tmp_path / "run")
    command = [sys.executable, "-m", "activeseg.cli", "serve", str(run), "--token", "x" * 20]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and "No such option" in result.stderr + result.stdout
