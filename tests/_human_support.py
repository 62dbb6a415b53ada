"""Shared helpers of the human-oracle tests: one prepared run waiting for labels, a real uvicorn server on loopback,
and a headless Chromium driven over the DevTools protocol (CDP)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import uvicorn
import websocket

from activeseg.config import RunConfig
from activeseg.data.io import nifti_gz, read_volume
from activeseg.data.splits import RunData, open_data
from activeseg.engine.loop import ActiveLearningLoop
from activeseg.engine.run import adopt_round_zero, create_run, resume_run
from activeseg.oracles.simulated import SimulatedOracle
from activeseg.progress import SilentReporter
from activeseg.rundir.layout import RunLayout
from activeseg.rundir.ledger import Ledger

from _support import tiny_config, two_channel_hippocampus

CHROMIUM = Path(os.environ.get("ACTIVESEG_CHROMIUM", "/usr/bin/chromium"))
TOKEN = "test-token-0123456789abcdef"


@dataclass(frozen=True)
class Prepared:
    """The session's shared data and a human-oracle run waiting for round 1's labels (copy before use)."""

    config: RunConfig
    data: RunData
    template: Path


_PREPARED: dict[str, Prepared] = {}


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Train and score on one thread, then restore the setting. These tests run a few tiny rounds; on 2 busy cores
    torch's second thread makes them far slower (measured 20x), and the comparisons stay within one setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


UNITS: dict[str, dict[str, Any]] = {
    "volume": {},
    "patch": {"kind": "patch", "patch_size": [12, 16, 12]},  # 8 patches per planned volume (about 29x42x30)
    "slice": {"kind": "slice", "axis": 1},
}
"""The query units of the prepared runs (3 units a round after 4 initial ones, whatever the kind)."""


def human_config(cache: Path, unit: str = "volume", **oracle: Any) -> RunConfig:
    """The tiny hippocampus config with a human oracle (2 acquisition rounds of 3 units), trained even less: these
    tests check how labels travel, not how good the model is. The plan resamples the 1 mm hippocampus volumes to
    1.2 mm, so labels also travel between two grids."""
    iterations = os.environ.get("ACTIVESEG_HUMAN_TEST_ITERATIONS")  # scripts/viewer_screenshot: a model worth a look
    coarser = {} if iterations else {"target_spacing": [1.2, 1.2, 1.2]}
    seed_set = {"initial": 100} if iterations and unit == "slice" else {}  # 4 slices train no model worth showing
    return tiny_config(
        cache,
        data={"max_cases": 16, "test_size": 4},
        plan=coarser,
        model={} if iterations else {"channels": [4, 8, 16, 32]},
        oracle={"kind": "human", **oracle},
        train={"iterations": int(iterations or 4)},
        strategy={"mc_samples": 2, "mc_batch_size": 2},
        unit=UNITS[unit],
        loop=seed_set,
    )


def prepared(factory: pytest.TempPathFactory, unit: str = "volume") -> Prepared:
    """Validate the data once per session and train round 0 of a human-oracle run once per unit kind; later calls
    reuse them."""
    if unit not in _PREPARED:
        root = factory.mktemp(f"human-{unit}")
        config = human_config(root / "cache", unit)
        data = _PREPARED["volume"].data if "volume" in _PREPARED else open_data(config, SilentReporter())
        template, _ = create_run(config, root / "template", data=data)
        result = resume_run(template, data=data)
        assert result == "waiting for labels: round 1 has 0 of 3" or unit != "volume", result
        assert result.startswith("waiting for labels: round 1 has 0 of "), result
        _PREPARED[unit] = Prepared(config, data, template)
    return _PREPARED[unit]


def prepared_two_channel(factory: pytest.TempPathFactory) -> Prepared:
    """A human-oracle run, as :func:`prepared`'s volume run, on 16 hippocampus cases stored as two-channel MSD 4D
    images (the image, and its square root), waiting for round 1's labels; made once per session."""
    if "two-channel" not in _PREPARED:
        root = factory.mktemp("human-two-channel")
        _, stacked = two_channel_hippocampus(root, 16)
        config = human_config(root / "cache").override({"data.root": stacked})
        data = open_data(config, SilentReporter())
        template, _ = create_run(config, root / "template", data=data)
        result = resume_run(template, data=data)
        assert result == "waiting for labels: round 1 has 0 of 3", result
        _PREPARED["two-channel"] = Prepared(config, data, template)
    return _PREPARED["two-channel"]


def copy_run(source: Path, target: Path) -> Path:
    """A private copy of a run directory."""
    shutil.copytree(source, target)
    return target


def simulated_twin(shared: Prepared, human: Path, target: Path) -> Path:
    """The human run's twin with the simulated oracle (same config and seed, round 0 adopted), run through rounds 0
    and 1; asserts that both rounds' selections, scores and metrics are byte-identical to the human run's."""
    config = shared.config.override({"oracle.kind": "simulated"})
    simulated, _ = create_run(config, target, data=shared.data)
    assert adopt_round_zero(human, simulated)
    with Ledger(simulated / "ledger.sqlite") as ledger:
        oracle = SimulatedOracle(shared.data.ground_truth, revealed=ledger.labelled_units())
        loop = ActiveLearningLoop(config, RunLayout(simulated), shared.data, ledger, oracle, SilentReporter())
        loop.run_round(0)
        loop.run_round(1)
    for r in (0, 1):
        for name in ("selection.json", "scores.csv", "metrics.json"):
            path = f"rounds/round_{r:03d}/{name}"
            assert (human / path).read_text() == (simulated / path).read_text(), path
    return simulated


def ground_truth_nifti(data: RunData, case_id: str) -> bytes:
    """A case's true label as the annotator would save it: on the image's grid, as NIfTI bytes."""
    case = data.pool.case(case_id)
    image = read_volume(case.image)
    return nifti_gz(np.asarray(read_volume(case.label).array, dtype=np.uint8), image.affine)


# --- a real server on loopback ------------------------------------------------------------------------------------


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))  # lifespan: as `serve` runs it
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str, url: str, body: bytes | None = None, token: str | None = None, headers: dict[str, str] | None = None
) -> Reply:
    """One HTTP request (urllib); HTTP errors are replies, not exceptions."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return Reply(response.status, response.read(), dict(response.headers))
    except urllib.error.HTTPError as err:
        return Reply(err.code, err.read(), dict(err.headers))


def wait_for_job(base: str, timeout: float = 240) -> dict[str, Any]:
    """Poll ``/api/job`` until the background round ends; returns its last state and the stages seen."""
    deadline = time.monotonic() + timeout
    stages: list[str] = []
    while time.monotonic() < deadline:
        job = http("GET", f"{base}/api/job", token=TOKEN).json()
        stage = job.get("progress", {}).get("stage")
        if stage and (not stages or stages[-1] != stage):
            stages.append(stage)
        if job["state"] != "running":
            job["stages_seen"] = stages
            return dict(job)
        time.sleep(0.2)
    raise TimeoutError("the background round did not finish")


# --- headless Chromium over CDP -------------------------------------------------------------------------------------


def require_chromium() -> None:
    """Skip without Chromium, except under CI, which must have it (it installs it): there the test fails."""
    if CHROMIUM.exists():
        return
    message = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class Browser:
    """Debian's Chromium, headless, driven through the Chrome DevTools Protocol over a websocket."""

    def __init__(self, profile: Path, width: int = 1360, height: int = 820) -> None:

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.process = subprocess.Popen(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--remote-debugging-port={port}",
                "--remote-debugging-address=127.0.0.1",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-sync",
                "--disable-component-update",
                "--metrics-recording-only",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        target = self._page_target(port)
        self.ws = websocket.create_connection(target, timeout=60, suppress_origin=True)
        self._id = 0
        self.events: list[dict[str, Any]] = []
        for domain in ("Page", "Runtime", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _page_target(self, port: int) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                    pages = [t for t in json.load(response) if t.get("type") == "page"]
                if pages:
                    return str(pages[0]["webSocketDebuggerUrl"])
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"Chromium exited with {self.process.returncode}")
            time.sleep(0.2)
        raise RuntimeError("Chromium's DevTools endpoint did not come up")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        problem = self.evaluate("window.viewerState && window.viewerState.error")
        raise TimeoutError(f"timed out waiting for {expression} (viewer error: {problem})")

    def drag(self, points: list[tuple[float, float]]) -> None:
        """A left-button drag through ``points`` (page coordinates)."""
        x, y = points[0]
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        self.call("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", buttons=1, clickCount=1)
        for x, y in points[1:]:
            self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y, button="left", buttons=1)
        self.call("Input.dispatchMouseEvent", type="mouseReleased", x=x, y=y, button="left", buttons=0, clickCount=1)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


FIRST = "document.querySelector('#queue li')"
"""The viewer's first queued case (a JavaScript expression)."""


def open_viewer(browser: Browser, base: str, timeout: float = 120) -> str:
    """Load the page with the token in its address; returns the first queued case id (not opened yet)."""
    browser.call("Page.navigate", url=f"{base}/#token={TOKEN}")
    browser.wait_for("window.viewerState && window.viewerState.ready", timeout=timeout)
    return str(browser.wait_for(f"{FIRST} && {FIRST}.dataset.case"))


@contextmanager
def browser_on(app: Any, profile: Path) -> Iterator[tuple[Browser, str]]:
    """``app`` served on loopback and a headless Chromium beside it; yields (browser, base URL), closing both."""
    with serve_in_thread(app) as base:
        browser = Browser(profile)
        try:
            yield browser, base
        finally:
            browser.close()
