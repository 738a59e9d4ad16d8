"""Open a report in headless Chromium: is it free of script errors, did every image load, and a screenshot.

Used by tests/report/test_report_browser.py, and as a script for the screenshots in docs/report.md::

    python tests/report/browser.py WORKSPACE/DATASET/report/index.html docs/images/report_demo.png [HEIGHT [SKIP]]

Chromium is Debian's ``chromium`` package (``.ci/ensure_chromium`` installs it where it can).
"""
from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH = 1280
TIMEOUT_S = 120


def find_browser() -> str | None:
    """The first Chromium (or Chrome) on PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    """What the page's own check script recorded (attributes of ``<body>``), and the browser's stderr."""

    checked: bool
    images: int
    images_loaded: int
    errors: int
    error_list: str
    sorted_tables: int
    sort_errors: int
    console: list[str]
    seconds: float


def _flags(profile: Path) -> list[str]:
    return ["--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"]


def _body_attr(dom: str, name: str) -> str | None:
    body = re.search(r"<body\b[^>]*>", dom)
    if body is None:
        return None
    m = re.search(rf'\s{re.escape(name)}="([^"]*)"', body.group(0))
    return html.unescape(m.group(1)) if m else None


def check_page(browser: str, index: Path) -> PageCheck:
    """Load ``index`` from disk (file://) and read the page's check attributes from the DOM after load (with
    ``#check-sorting``: the page sorts each sortable table both ways and counts the ones left out of order)."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="segpipe-chromium-") as profile:
        proc = subprocess.run([browser, *_flags(Path(profile)), "--virtual-time-budget=5000", "--dump-dom",
                               index.resolve().as_uri() + "#check-sorting"], capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    dom = proc.stdout
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]

    def num(name: str) -> int:
        v = _body_attr(dom, name)
        return int(v) if v and v.isdigit() else -1

    return PageCheck(_body_attr(dom, "data-checked") == "1", num("data-images"), num("data-images-loaded"),
                     num("data-errors"), _body_attr(dom, "data-error-list") or "", num("data-sorted-tables"),
                     num("data-sort-errors"), console, time.monotonic() - t0)


def screenshot(browser: str, index: Path, out: Path, height: int = 4000, skip: int = 0) -> Path:
    """A ``WIDTH`` x ``height`` screenshot of the page from ``skip`` pixels below its top, written to ``out``
    (PNG; with ``skip``, a taller screenshot cropped with Pillow)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="segpipe-chromium-") as profile:
        shot = Path(profile) / "shot.png"
        subprocess.run([browser, *_flags(Path(profile) / "profile"), "--virtual-time-budget=5000",
                        f"--window-size={WIDTH},{height + skip}", f"--screenshot={shot}", index.resolve().as_uri()],
                       capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        if skip and shot.is_file():
            from PIL import Image

            with Image.open(shot) as im:
                im.crop((0, skip, WIDTH, skip + height)).save(out)
        elif shot.is_file():
            shutil.move(shot, out)
    return out


def main(argv: list[str]) -> int:
    browser = find_browser()
    if browser is None:
        print("no chromium on PATH (run .ci/ensure_chromium)", file=sys.stderr)
        return 1
    index, out = Path(argv[0]), Path(argv[1])
    check = check_page(browser, index)
    print(check)
    screenshot(browser, index, out, int(argv[2]) if len(argv) > 2 else 4000, int(argv[3]) if len(argv) > 3 else 0)
    print(f"screenshot -> {out}")
    return 0 if check.checked and check.errors == 0 and check.images == check.images_loaded else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
