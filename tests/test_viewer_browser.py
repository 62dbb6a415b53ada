"""The viewer in a real browser: Debian's Chromium, headless, driven over the DevTools protocol, against a real
uvicorn server. It opens a queued hippocampus case, accepts the prediction, then corrects it with NiiVue's pen and
saves again; the ledger must hold both, the second as a correction. A screenshot is kept (``scripts/viewer_screenshot``
copies it to docs/viewer.png). A second test opens a slice query: the region to label is a violet overlay (the
label colours are red and green), and only the region of a saved label is kept (its screenshot becomes
docs/viewer-slices.png). A third shows either channel of a two-channel case under the same drawing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from _human_support import (
    FIRST,
    TOKEN,
    Browser,
    browser_on,
    copy_run,
    one_torch_thread,
    open_viewer,
    prepared,
    prepared_two_channel,
    require_chromium,
)
from activeseg.annotation.server import create_app
from activeseg.data.io import read_volume
from activeseg.rundir.layout import RunLayout

from _support import load_nifti, requires_hippocampus

pytestmark = [requires_hippocampus, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def open_first_case(browser: Browser, case_id: str) -> None:
    browser.evaluate(f"{FIRST}.click()")
    browser.wait_for(f"window.viewerState.loaded === {json.dumps(case_id)}", timeout=120)


def pen_stroke(browser: Browser) -> None:
    """NiiVue's pen with label 2: a stroke through the middle of the first view."""
    browser.evaluate("document.getElementById('pen').value = '2'; document.getElementById('draw').click()")
    left, top, width, height = browser.evaluate(
        "(() => { const r = document.getElementById('gl').getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height]; })()"
    )
    x0, y0 = left + width * 0.12, top + height * 0.22
    browser.drag([(x0 + dx, y0 + dy) for dx, dy in zip(range(0, 60, 3), range(0, 80, 4), strict=True)])


def test_viewer_accepts_then_corrects_a_label_and_the_ledger_holds_it(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    require_chromium()

    shared = prepared(tmp_path_factory)
    run = copy_run(shared.template, tmp_path / "run")
    screenshot = tmp_path_factory.mktemp("screenshots") / "viewer.png"
    with browser_on(create_app(run, TOKEN, data=shared.data), tmp_path / "profile") as (browser, base):
        case_id = open_viewer(browser, base)
        assert browser.evaluate("location.hash") == ""  # the token left the address bar
        open_first_case(browser, case_id)

        # accept the prediction as it is
        browser.evaluate("document.getElementById('accept').click()")
        saved = browser.wait_for("window.viewerState.saved", timeout=120)
        assert (saved["case_id"], saved["outcome"], saved["received"]) == (case_id, "created", 1)
        sent = browser.evaluate("window.viewerState.sent")  # gzip: a clinical-size drawing is tens of MB raw
        assert sent["gzip"] is True and sent["bytes"] < sent["drawn"] / 4, sent
        (accepted,) = RunLayout(run).label_store().submissions()
        assert (accepted["case_id"], accepted["source"], accepted["round"]) == (case_id, "upload", 1)
        prediction = load_nifti(run / "annotation" / "round_001" / case_id / "prediction.nii.gz")
        accepted_label = read_volume(run / accepted["file"]).array
        assert np.array_equal(accepted_label, np.asarray(prediction.dataobj))

        # correct it: NiiVue's pen with label 2, a stroke through the middle of the first view
        browser.evaluate("window.viewerState.saved = null")
        pen_stroke(browser)
        browser.evaluate("document.getElementById('save').click()")
        saved = browser.wait_for("window.viewerState.saved", timeout=120)
        assert saved["outcome"] == "corrected", saved
        browser.screenshot(screenshot)

        first_row, second_row = RunLayout(run).label_store().submissions()
        assert second_row["supersedes"] == first_row["id"] and second_row["case_id"] == case_id
        corrected = read_volume(run / second_row["file"]).array
        changed = corrected != accepted_label
        assert changed.any() and (corrected[changed] == 2).all()  # the pen stroke, in label 2, and nothing else

        # the page loaded nothing from anywhere but this server, and threw nothing
        outside = [u for u in browser.requested_urls() if not u.startswith((base, "data:", "blob:"))]
        assert outside == []
        errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
        assert errors == []
        assert browser.evaluate("window.viewerState.error") is None
    assert screenshot.stat().st_size > 10_000


def test_viewer_shows_the_region_of_a_slice_query_and_the_server_keeps_only_it(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    require_chromium()

    shared = prepared(tmp_path_factory, "slice")
    run = copy_run(shared.template, tmp_path / "run")
    screenshot = tmp_path_factory.mktemp("slice-screenshots") / "viewer-slices.png"
    with browser_on(create_app(run, TOKEN, data=shared.data), tmp_path / "profile") as (browser, base):
        case_id = open_viewer(browser, base)
        assert "slice" in browser.evaluate(f"{FIRST}.textContent")  # the queue says what is asked
        open_first_case(browser, case_id)
        assert browser.evaluate("window.viewerState.region") is True
        assert browser.evaluate("[nv.volumes.length, nv.volumes[2].colormap]") == [3, "violet"]
        assert "violet region" in browser.evaluate("document.getElementById('message').textContent")
        # the crosshair sits on the region (checked against the region file, indexed here with nibabel)
        folder = run / "annotation" / "round_001" / case_id
        region = np.asarray(load_nifti(folder / "region.nii.gz").dataobj) > 0
        x, y, z = browser.evaluate("window.viewerState.regionVoxel")
        assert region[x, y, z]
        assert browser.evaluate("Array.from(nv.frac2vox(nv.scene.crosshairPos))") == [x, y, z]
        browser.screenshot(screenshot)

        browser.evaluate("document.getElementById('accept').click()")
        saved = browser.wait_for("window.viewerState.saved", timeout=120)
        prediction = np.asarray(load_nifti(folder / "prediction.nii.gz").dataobj)
        assert saved.get("ignored_outside_region", 0) == int(np.count_nonzero(prediction[~region]))
        (row,) = RunLayout(run).label_store().submissions()
        kept = read_volume(run / row["file"]).array
        assert np.array_equal(kept[region], prediction[region]) and (kept[~region] == 255).all()
        errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
        assert errors == [] and browser.evaluate("window.viewerState.error") is None
    assert screenshot.stat().st_size > 10_000


def test_viewer_shows_either_channel_of_a_two_channel_case_and_keeps_the_drawing_across(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    require_chromium()

    shared = prepared_two_channel(tmp_path_factory)  # MSD 4D images
    run = copy_run(shared.template, tmp_path / "run")
    with browser_on(create_app(run, TOKEN, data=shared.data), tmp_path / "profile") as (browser, base):
        case_id = open_viewer(browser, base)
        options = "[...document.querySelectorAll('#channel option')].map((o) => [o.value, o.text])"
        assert browser.evaluate(options) == [["image", "MRI"], ["image_0001", "sqrt"]]
        assert browser.evaluate("document.getElementById('channel-choice').hidden") is False
        open_first_case(browser, case_id)
        assert browser.evaluate("nv.volumes[0].url").endswith(f"/{case_id}/image.nii.gz")
        pen_stroke(browser)

        # the second channel becomes the image under the same drawing (the prediction and the stroke)
        browser.evaluate(
            "document.getElementById('channel').value = 'image_0001';"
            " document.getElementById('channel').dispatchEvent(new Event('change'))"
        )
        browser.wait_for(
            f"window.viewerState.loaded === {json.dumps(case_id)} && window.viewerState.channel === 'image_0001'",
            timeout=120,
        )
        assert browser.evaluate("nv.volumes[0].url").endswith(f"/{case_id}/image_0001.nii.gz")
        folder = run / "annotation" / "round_001" / case_id
        shown = np.asarray(load_nifti(folder / "image_0001.nii.gz").dataobj)
        assert browser.evaluate("nv.volumes[0].img.length") == shown.size

        browser.evaluate("document.getElementById('save').click()")
        saved = browser.wait_for("window.viewerState.saved", timeout=120)
        assert (saved["case_id"], saved["outcome"]) == (case_id, "created"), saved
        (row,) = RunLayout(run).label_store().submissions()
        prediction = np.asarray(load_nifti(folder / "prediction.nii.gz").dataobj)
        label = read_volume(run / row["file"]).array
        changed = label != prediction
        assert changed.any() and (label[changed] == 2).all()  # the stroke, drawn before the switch, and nothing else
        errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
        assert errors == [] and browser.evaluate("window.viewerState.error") is None
