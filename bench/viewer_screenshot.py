"""A screenshot of the viewer's Drive panel on a trained run, in headless Chromium (the README's picture).

    python bench/viewer_screenshot.py --load-config outputs/.../config.yml --output docs/viewer_drive.png \
        [--jaw-open 0.35] [--expression "smile left=1.5"] [--max-res 256]

The same machinery as the browser test (``headstudio.viewer.browser``): ``ns-viewer`` on a free port,
the page in Debian's Chromium, sliders moved with the keyboard; the viewer is stopped at the end.
Prints the time each step took.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from PIL import Image

from headstudio.viewer.browser import ViewerPage, browser_paths, free_port, running_viewer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load-config", type=Path, required=True)
    ap.add_argument("--output", type=Path, default=Path("docs/viewer_drive.png"))
    ap.add_argument("--max-res", type=int, default=256)
    ap.add_argument("--frame-end", action="store_true", help="move the Frame slider to the last frame first")
    ap.add_argument("--jaw-steps", type=int, default=30, help="arrow-key steps of 0.01 rad on 'jaw open'")
    ap.add_argument("--expression", default="smile left", help="an expression slider moved to its end")
    args = ap.parse_args()
    chromium, driver = browser_paths()
    if chromium is None or driver is None:
        raise SystemExit("apt-get install chromium chromium-driver")
    t0 = time.monotonic()
    with running_viewer(args.load_config, free_port()) as url:
        print(f"viewer up: {time.monotonic() - t0:.1f} s")
        page = ViewerPage(url, chromium, driver)
        try:
            page.wait_for_text(["jaw open (rad)"])
            page.set_number("Max res", args.max_res)
            page.steady_viewport(timeout=300)
            if args.frame_end:
                page.slider_to_end("Frame")
                page.steady_viewport(timeout=300)
            from selenium.webdriver.common.by import By
            from selenium.webdriver.common.keys import Keys

            thumb = page._control("jaw open (rad)").find_element(By.CSS_SELECTOR, "[role=slider]")
            for _ in range(args.jaw_steps):
                thumb.send_keys(Keys.ARROW_RIGHT)
            if args.expression:
                page.slider_to_end(args.expression)
            time.sleep(3)
            page.steady_viewport(timeout=300)
            # Wait for the render at Max res itself: on a CPU it takes tens of seconds, with coarse previews
            # (47x30 px here) shown meanwhile, which an unchanged picture cannot tell from the final one.
            page.wait_for_full_resolution(args.max_res)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(page.screenshot()).save(args.output)
            print(f"{args.output}: written after {time.monotonic() - t0:.1f} s")
        finally:
            page.close()


if __name__ == "__main__":
    main()
