"""Driving a running nerfstudio viewer in headless Chromium (the browser test, the README screenshot).

Uses selenium (the ``test`` extra) with the system browser: Debian's ``chromium`` and
``chromium-driver`` (``/usr/bin/chromium``, ``/usr/bin/chromedriver``; ``.ci/run`` installs them).
WebGL runs on SwiftShader, Chromium's software renderer.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

CHROMIUM_ARGS = (
    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800",
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-gpu-sandbox",
)  # fmt: skip


def browser_paths() -> tuple[Optional[str], Optional[str]]:
    """(chromium, chromedriver) on PATH or in /usr/bin, or None where missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return chromium, driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_viewer(config: Path, port: int, timeout: float = 240.0, log: Optional[Path] = None) -> Iterator[str]:
    """``ns-viewer`` on ``config`` at localhost:``port``; yields its URL once it serves; always stopped."""
    exe = Path(sys.executable).parent / "ns-viewer"
    cmd = [str(exe if exe.exists() else "ns-viewer"), "--load-config", str(config), "--viewer.websocket-port", str(port)]
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ns-viewer exited with status {proc.returncode} before serving (log: {log})")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"ns-viewer did not serve on port {port} within {timeout:.0f} s")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if log:
            out.close()


@contextlib.contextmanager
def viewer_in_process(config: Path, port: int, max_res: Optional[int] = None) -> Iterator[str]:
    """The viewer ``ns-viewer --load-config config`` starts, served from this process (its server and render
    threads run beside the caller); yields its URL; the server is always stopped. ``max_res``: the panel's
    Max res before any client connects (so the first render is already that small).

    The same steps as nerfstudio's ``ns-viewer`` (``nerfstudio/scripts/viewer/run_viewer.py``: load the
    pipeline, build the viewer, add the training cameras, show the step), without the new interpreter and
    its second pass of nerfstudio's method discovery (about 9 s here). Tests of several methods use it;
    the console script itself is :func:`running_viewer`."""
    import threading

    from nerfstudio.utils.eval_utils import eval_setup  # before writer: writer alone is a circular import
    from nerfstudio.utils import writer
    from nerfstudio.viewer.viewer import Viewer

    cfg, pipeline, _, step = eval_setup(Path(config), eval_num_rays_per_chunk=None, test_mode="test")
    cfg.viewer.websocket_port = port
    cfg.viewer.make_share_url = False
    viewer = Viewer(
        cfg.viewer,
        log_filename=cfg.get_base_dir() / cfg.viewer.relative_log_filename,
        datapath=pipeline.datamanager.get_datapath(),
        pipeline=pipeline,
        train_lock=threading.Lock(),
    )
    if max_res is not None:
        viewer.control_panel._max_res.value = int(max_res)
    try:
        cfg.logging.local_writer.enable = False  # the viewer reads writer.GLOBAL_BUFFER, as in ns-viewer
        writer.setup_local_writer(cfg.logging, max_iter=cfg.max_num_iterations, banner_messages=None)
        viewer.init_scene(
            train_dataset=pipeline.datamanager.train_dataset,
            train_state="completed",
            eval_dataset=pipeline.datamanager.eval_dataset,
        )
        viewer.update_scene(step=step)
        yield f"http://127.0.0.1:{port}"
    finally:
        viewer.viser_server.stop()


class ViewerPage:
    """A viewer page in headless Chromium."""

    def __init__(self, url: Optional[str], chromium: str, chromedriver: str) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        options = Options()
        for arg in CHROMIUM_ARGS:
            options.add_argument(arg)
        options.binary_location = chromium
        self.driver = webdriver.Chrome(service=Service(chromedriver), options=options)
        if url:
            self.driver.get(url)

    def open(self, url: str) -> None:
        """Load another viewer in the same browser (one Chromium for several viewers)."""
        self.driver.get(url)

    def close(self) -> None:
        self.driver.quit()

    # ------------------------------------------------------------------ page
    def wait_for_text(self, texts: Sequence[str], timeout: float = 60.0) -> None:
        from selenium.webdriver.common.by import By

        deadline = time.monotonic() + timeout
        missing = list(texts)
        while time.monotonic() < deadline:
            body = self.driver.find_element(By.TAG_NAME, "body").text
            missing = [t for t in texts if t not in body]
            if not missing:
                return
            time.sleep(0.5)
        raise TimeoutError(f"the viewer page never showed {missing}")

    def _control(self, label: str):
        """The root element of the GUI control whose label is ``label`` (viser: ``<label for=ID>``)."""
        from selenium.webdriver.common.by import By

        node = self.driver.find_element(By.XPATH, f"//label[normalize-space(text())='{label}']")
        return self.driver.find_element(By.ID, node.get_attribute("for"))

    def slider_to_end(self, label: str, end: str = "END") -> None:
        """Move slider ``label`` to its maximum (``END``) or minimum (``HOME``), or one step (``LEFT``, ``RIGHT``),
        with the keyboard (``end`` names a selenium ``Keys`` key)."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        thumb = self._control(label).find_element(By.CSS_SELECTOR, "[role=slider]")
        thumb.send_keys(getattr(Keys, end))

    def slider_value(self, label: str) -> float:
        from selenium.webdriver.common.by import By

        thumb = self._control(label).find_element(By.CSS_SELECTOR, "[role=slider]")
        return float(thumb.get_attribute("aria-valuenow"))

    def set_number(self, label: str, value: float) -> None:
        """Type into the number field of control ``label`` (a slider's field, e.g. 'Max res')."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        row = self._control(label).find_element(By.XPATH, "./ancestor::div[contains(@class,'mantine-Flex-root')][1]")
        field = row.find_element(By.CSS_SELECTOR, "input.mantine-NumberInput-input")
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(str(value), Keys.ENTER)

    # ------------------------------------------------------------------ pictures
    def screenshot(self) -> np.ndarray:
        """The whole page as RGB uint8 [H, W, 3]."""
        from PIL import Image

        png = self.driver.get_screenshot_as_png()
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def viewport(self) -> np.ndarray:
        """The 3-D viewport left of the control panel, below the title bar, as RGB uint8."""
        from selenium.webdriver.common.by import By

        r = self.driver.find_element(By.TAG_NAME, "canvas").rect
        panel = self.driver.find_element(By.XPATH, "//*[normalize-space(text())='Connected']").rect
        ratio = float(self.driver.execute_script("return window.devicePixelRatio") or 1.0)
        img = self.screenshot()
        right = min(r["x"] + r["width"], panel["x"] - 40)  # the panel's edge, left of its 'Connected' status
        x0, y0 = int(r["x"] * ratio), int(r["y"] * ratio)
        x1, y1 = int(right * ratio), int((r["y"] + r["height"]) * ratio)
        return img[y0:y1, x0:x1]

    def rendered_resolution(self) -> tuple[int, int]:
        """(width, height) of the last finished render, from the panel's 'Resolution: WxHpx' line ((0, 0) if absent)."""
        import re

        from selenium.webdriver.common.by import By

        match = re.search(r"Resolution:\s*(\d+)x(\d+)px", self.driver.find_element(By.TAG_NAME, "body").text)
        return (int(match.group(1)), int(match.group(2))) if match else (0, 0)

    def wait_for_full_resolution(self, max_res: int, timeout: float = 600.0) -> np.ndarray:
        """The viewport once a render at ``max_res`` (its long side) has finished: on a CPU a full render takes
        seconds to minutes (nerfstudio shows coarse previews meanwhile, so an unchanged picture is not enough)."""
        deadline = time.monotonic() + timeout
        while abs(max(self.rendered_resolution()) - max_res) > 1:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no render at {max_res} px within {timeout:.0f} s (last: {self.rendered_resolution()})")
            time.sleep(0.25)
        return self.steady_viewport()

    def after_change(self, before: np.ndarray, max_res: int, timeout: float = 60.0) -> np.ndarray:
        """The viewport once a new render has replaced ``before`` and the render at ``max_res`` has followed the
        coarse preview (the unchanged viewport if nothing changed within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.viewport()
            if now.shape == before.shape and np.abs(now.astype(float) - before.astype(float)).mean() > 0.02:
                # nerfstudio sends the image, then the 'Resolution' line: the line may still name the last render
                time.sleep(0.1)
                return self.wait_for_full_resolution(max_res, timeout=max(deadline - time.monotonic(), 5.0))
            time.sleep(0.25)
        return self.viewport()

    def steady_viewport(self, timeout: float = 90.0, settle: float = 0.6, tol: float = 0.3) -> np.ndarray:
        """The viewport once it stops changing (the render has reached full resolution)."""
        deadline = time.monotonic() + timeout
        last = self.viewport()
        while time.monotonic() < deadline:
            time.sleep(settle)
            now = self.viewport()
            if now.shape == last.shape and np.abs(now.astype(float) - last.astype(float)).mean() < tol:
                return now
            last = now
        raise TimeoutError(f"the viewport kept changing for {timeout:.0f} s")
