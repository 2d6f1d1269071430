"""Screenshots of every review page at 1920x1080 and 390x844 (light), plus the labeling and users pages
in dark mode, for a person to look at:

    python -m bench.screenshots [--output-dir bench/results/ui]     (make screenshots)

A fresh PostgreSQL database and `python -m cloud.app`, seeded by tests/support/ui_pages.py (a detector
with items to review and two model versions); Debian's chromium through Playwright, as the UI tests
drive it. Writes `<page>-desktop.png`, `<page>-phone.png`, `label-dark-desktop.png`,
`users-dark-desktop.png` and `index.json` (what was shot and how far each page is wider than its
window; 0 everywhere is the goal).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.edge_throughput import code_version
from tests.support.browser import chromium
from tests.support.cloud import CloudServer, TestDatabase
from tests.support.cloud_factories import CloudFactory
from tests.support.ui_pages import DESKTOP, PHONE, log_in, overflow_px, seed_ui_pages, settle

DEFAULT_DIR = Path(__file__).resolve().parent / "results" / "ui"
# Also shot in dark mode: the page people spend their day on, and the one with the most form controls.
DARK_PAGES = ("label", "users")


def shoot(base_url: str, factory: CloudFactory, out: Path) -> list[dict[str, Any]]:
    pages = seed_ui_pages(factory)
    shots: list[dict[str, Any]] = []
    with chromium() as browser:
        for size_name, size in (("desktop", DESKTOP), ("phone", PHONE)):
            page = browser.new_page(viewport=size, color_scheme="light")
            for name, path in pages.paths.items():
                if name != "login" and page.url.endswith("/login"):
                    log_in(page, base_url, pages.reviewer)
                page.goto(base_url + path)
                settle(page, name)
                file = out / f"{name}-{size_name}.png"
                page.screenshot(path=str(file), full_page=True)
                shots.append(
                    {"page": name, "size": size_name, "file": file.name, "overflow_px": overflow_px(page)}
                )
            page.close()
        page = browser.new_page(viewport=DESKTOP, color_scheme="dark")
        log_in(page, base_url, pages.reviewer)
        for name in DARK_PAGES:
            page.goto(base_url + pages.paths[name])
            settle(page, name)
            file = out / f"{name}-dark-desktop.png"
            page.screenshot(path=str(file), full_page=True)
            shots.append({"page": name, "size": "desktop", "scheme": "dark", "file": file.name})
        page.close()
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    out: Path = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp:
        workdir = Path(tmp)
        db = TestDatabase(workdir).create()
        server: CloudServer | None = None
        try:
            server = CloudServer(db.url, workdir, env={"CLOUD_LOG_LEVEL": "warning"}).start()
            shots = shoot(server.url, CloudFactory(db.url, server.data_dir / "blobs"), out)
        finally:
            if server is not None:
                server.stop()
            db.drop()
    (out / "index.json").write_text(json.dumps({"code": code_version(), "shots": shots}, indent=2) + "\n")
    for shot in shots:
        print(f"{shot['file']:<28} overflow {shot.get('overflow_px', '-')} px")
    print(f"wrote {len(shots)} screenshots to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
