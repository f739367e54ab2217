"""The Drive panel in a real browser: ns-viewer on a trained tiny model, opened in headless Chromium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and selenium (the
``test`` extra); skipped with the reason when they are missing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from headstudio.viewer.browser import ViewerPage, browser_paths, free_port, running_viewer

pytestmark = pytest.mark.e2e

SHOTS = os.environ.get("HEADSTUDIO_VIEWER_SHOTS")
"""A folder: the test also writes its viewports and a page screenshot there (the README's picture comes from it)."""

DRIVE_LABELS = ["Source", "Frame", "Play / Pause", "Reset to frame", "jaw open (rad)", "neck yaw (rad)",
                "eye gaze yaw (rad)", "smile left"]  # fmt: skip


def _browser():
    chromium, driver = browser_paths()
    if chromium is None or driver is None:
        pytest.skip("headless Chromium missing: apt-get install chromium chromium-driver (.ci/run does)")
    pytest.importorskip("selenium", reason="selenium missing: pip install -e '.[test]'")
    return chromium, driver


def _after_change(page: ViewerPage, before: np.ndarray, timeout: float = 60.0) -> np.ndarray:
    """The viewport once a new render has replaced ``before`` and settled (or the unchanged one at the timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = page.viewport()
        if now.shape == before.shape and np.abs(now.astype(float) - before.astype(float)).mean() > 0.02:
            return page.steady_viewport()
        time.sleep(0.5)
    return page.viewport()


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(float) - b.astype(float)).mean(-1)


@pytest.mark.parametrize("method", ["tensorf-local-deform"])
def test_drive_panel_moves_the_jaw_and_the_frame_in_headless_chromium(method, trained, tmp_path):
    """The jaw must change the lower face: the head's pixels (the background is white) in the lower half of
    the viewport. A tiny run's deformation is not yet local (the whole outline may move a little with the
    jaw), so where on the mesh the jaw acts is tested in-process, on the driven FLAME mesh
    (``tests/test_viewer_drive.py``)."""
    chromium, driver = _browser()
    config = trained(method)
    with running_viewer(config, free_port(), log=tmp_path / "viewer.log") as url:
        page = ViewerPage(url, chromium, driver)
        try:
            page.wait_for_text(DRIVE_LABELS)  # the Drive controls are there
            page.set_number("Max res", 96)  # a small render keeps the CPU test short
            start = page.steady_viewport()
            # The first camera is a training camera: the head fills the middle, not empty space.
            h, w = start.shape[:2]
            centre = start[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3].astype(float)
            assert (centre.mean(-1) < 200).mean() > 0.3, "the first view does not look at the head"
            page.slider_to_end("Frame")  # the last tracked frame (a test frame: other expression and pose)
            assert page.slider_value("Frame") > 0
            framed = _after_change(page, start)
            assert _diff(framed, start).mean() > 0.3, "the Frame slider did not change the picture"
            page.slider_to_end("jaw open (rad)")  # switches the source to manual and opens the jaw
            opened = _after_change(page, framed)
            page.slider_to_end("smile left")
            smiled = _after_change(page, opened)
            if SHOTS:
                from PIL import Image

                Path(SHOTS).mkdir(parents=True, exist_ok=True)
                for name, img in (("start", start), ("frame", framed), ("jaw", opened), ("smile", smiled)):
                    Image.fromarray(img).save(Path(SHOTS) / f"{method}_{name}.png")
                Image.fromarray(page.screenshot()).save(Path(SHOTS) / f"{method}_page.png")
            d = _diff(opened, framed)
            assert d.mean() > 0.02, "the jaw slider did not change the picture"
            rows = np.arange(d.shape[0])[:, None]
            lower_face = (framed.astype(float).mean(-1) < 200) & (rows >= d.shape[0] // 2)
            assert lower_face.sum() > 100, "no head pixels in the lower half of the viewport"
            assert d[lower_face].mean() > 1.0, f"the jaw did not change the lower face ({d[lower_face].mean():.3f})"
            assert _diff(smiled, opened).mean() > 0.01, "the expression slider did not change the picture"
        finally:
            page.close()
