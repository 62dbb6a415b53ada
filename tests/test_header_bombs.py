"""Issue 13: memory stays bounded whatever a NIfTI header claims. A file of a few dozen bytes whose header claims
2000³ voxels goes through the server (HTTP), ``activeseg ingest`` and the dataset loader, each in a child process
whose peak resident memory (``os.wait4``'s rusage, the child's own ``ru_maxrss``) must stay under 1 GB; and a
Hypothesis fuzz over NIfTI headers against the label validator, in a child process measured the same way."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
import threading
import time
from http.client import HTTPConnection
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _human_support import TOKEN, Prepared, copy_run, http, one_torch_thread, prepared
from activeseg.data.phantom import make_phantom_dataset
from activeseg.rundir.layout import RunLayout

from _support import requires_hippocampus

EDGE = int(os.environ.get("ACTIVESEG_TEST_BOMB_EDGE", "2000"))
"""The edge of the cube the bomb's header claims (a smaller one checks that the old code fails without 8 GB)."""
LIMIT_MB = 1024
TESTS = Path(__file__).resolve().parent


def bomb(shape: tuple[int, ...] = (EDGE, EDGE, EDGE)) -> bytes:
    """A gzip NIfTI header claiming ``shape`` uint8 voxels, and no voxels: about 60 bytes."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    return gzip.compress(bytes(header.binaryblock) + bytes(4))


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}


def measured(command: list[str], record: Path) -> list[str]:
    """``command`` run by _peak_rss.py, which writes the command's peak resident memory (KiB) to ``record``."""
    return [sys.executable, str(TESTS / "_peak_rss.py"), str(record), *command]


def peak_rss_mb(record: Path, what: str) -> float:
    peak = int(record.read_text()) / 1024
    print(f"{what}: peak RSS {peak:.0f} MiB")  # shown with -s
    return peak


def run_measured(command: list[str], record: Path, what: str, timeout: float = 600) -> tuple[int, str, float]:
    """Run ``command``; (exit code, output, peak RSS in MiB)."""
    done = subprocess.run(
        measured(command, record), capture_output=True, text=True, env=child_env(), timeout=timeout, check=False
    )
    return done.returncode, done.stdout + done.stderr, peak_rss_mb(record, what)


# --- the dataset loader ------------------------------------------------------------------------------------------


LOAD = """
import sys
from activeseg.data.dataset import load_dataset
from activeseg.data.errors import DatasetError
try:
    load_dataset(sys.argv[1])
except DatasetError as err:
    print(err)
    sys.exit(3)
"""


@pytest.mark.parametrize("shape", [(EDGE, EDGE, EDGE), (1000, 1000, 500)])
def test_the_dataset_loader_refuses_a_header_bomb_in_bounded_memory(tmp_path: Path, shape: tuple[int, ...]) -> None:
    root = make_phantom_dataset(tmp_path / "phantoms", 4, seed=1)
    label = root / "labelsTr" / "phantom_001.nii.gz"
    label.write_bytes(bomb(shape))
    code, output, peak = run_measured([sys.executable, "-c", LOAD, str(root)], tmp_path / "rss", "load_dataset")
    assert code == 3, output
    assert f"{label}: " in output and "header" in output, output
    assert peak < LIMIT_MB, f"peak RSS {peak:.0f} MiB"


# --- ingest and the server, on a human run of the hippocampus data ------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    with one_torch_thread():
        return prepared(tmp_path_factory)


@requires_hippocampus
@pytest.mark.slow
def test_ingest_refuses_a_header_bomb_and_a_huge_file_in_bounded_memory(shared: Prepared, tmp_path: Path) -> None:
    run = copy_run(shared.template, tmp_path / "run")
    queue = RunLayout(run).label_store().queue()
    assert queue is not None
    first, second = queue.ids[:2]
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / f"{first}.nii.gz").write_bytes(bomb())
    with (folder / f"{second}.nii").open("wb") as handle:  # sparse: 3 GiB that take no disk
        handle.truncate(3 << 30)
    command = [sys.executable, "-m", "activeseg.cli", "ingest", str(run), str(folder)]
    code, output, peak = run_measured(command, tmp_path / "rss", "activeseg ingest")
    text = " ".join(output.split())
    assert code == 2 and "nothing ingested" in text, output
    assert f"label shape ({EDGE}, {EDGE}, {EDGE}) differs from the image's" in text, output
    assert "the file is 3221225472 bytes, more than a label of this image can be" in text, output
    assert peak < LIMIT_MB, f"peak RSS {peak:.0f} MiB"
    assert RunLayout(run).label_store().submissions() == []


@requires_hippocampus
@pytest.mark.slow
def test_the_server_refuses_a_header_bomb_and_oversized_uploads_in_bounded_memory(
    shared: Prepared, tmp_path: Path
) -> None:
    run = copy_run(shared.template, tmp_path / "run")
    queue = RunLayout(run).label_store().queue()
    assert queue is not None
    case_id = queue.ids[0]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "activeseg.cli", "serve", str(run), "--port", str(port)]
    env = child_env() | {"ACTIVESEG_TOKEN": TOKEN}
    record = tmp_path / "rss"
    server = subprocess.Popen(measured(command, record), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                http("GET", f"{base}/")
                break
            except OSError:
                assert server.poll() is None
                time.sleep(0.2)
        path = f"/api/cases/{case_id}/label"
        reply = http("PUT", base + path, bomb(), token=TOKEN)
        assert reply.status == 422 and "differs from the image's" in reply.json()["detail"], reply.body

        # six parallel uncompressed uploads of 59 MB, far more than a label of this image can be: refused as soon as
        # their length is known, before their bodies are sent
        statuses: list[int] = []

        def upload() -> None:
            connection = HTTPConnection("127.0.0.1", port, timeout=60)
            connection.putrequest("PUT", path)
            connection.putheader("Authorization", f"Bearer {TOKEN}")
            connection.putheader("Content-Length", str(59 << 20))
            connection.endheaders()
            try:
                statuses.append(connection.getresponse().status)
            except OSError as err:
                statuses.append(-1)
                print(f"upload: {err!r}")
            finally:
                connection.close()

        threads = [threading.Thread(target=upload) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [413] * 6, statuses
        assert http("GET", f"{base}/api/status", token=TOKEN).status == 200  # still serving
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert peak_rss_mb(record, "serve") < LIMIT_MB
    assert RunLayout(run).label_store().submissions() == []


# --- the fuzz ------------------------------------------------------------------------------------------------------


def test_fuzzed_nifti_headers_are_accepted_or_refused_cleanly_in_bounded_memory(tmp_path: Path) -> None:
    examples = os.environ.get("ACTIVESEG_FUZZ_EXAMPLES", "400")
    command = [sys.executable, str(TESTS / "_nifti_fuzz.py"), examples]
    code, output, peak = run_measured(command, tmp_path / "rss", "fuzz")
    assert code == 0 and output.strip().endswith("ok"), output[-3000:]
    assert peak < 400, f"peak RSS {peak:.0f} MiB"
