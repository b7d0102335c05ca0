"""Headless Chromium (Debian's `chromium`) for looking at pages the way a
person would: a screenshot, and from Chromium's net-log the requests the
page made.

Chromium is kept off the network: no background services, no component
updates, no sync, a fresh profile each time; and since even so it tries a
few requests of its own (update checks, the network time), every host name
resolves to nothing (`--host-resolver-rules`), so none leaves the machine.
Loopback stays reachable, for tests that serve something to the page."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--disable-default-apps", "--disable-extensions", "--hide-scrollbars",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


def chromium() -> str:
    found = shutil.which("chromium")
    if not found:
        pytest.fail("chromium is not installed: run the README's test command (make test)")
    return found


def screenshot(page: Path, png: Path, workdir: Path, size: tuple[int, int] = (1200, 1600)) -> list[str]:
    """Render page to png; return the URL of every request the page made."""
    netlog = workdir / f"{png.stem}.netlog.json"
    profile = workdir / f"{png.stem}.profile"
    result = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
         f"--log-net-log={netlog}", "--net-log-capture-mode=Everything", f"--screenshot={png}",
         page.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and png.exists(), result.stderr[-2000:]
    return page_requests(netlog)


def page_requests(netlog: Path) -> list[str]:
    """The URL of each request a page made: a request job with an initiator.
    Chromium's own requests (update checks, network time) have none ("not an
    origin"); a file: page's have its opaque origin, "null"."""
    text = netlog.read_text().rstrip()
    if not text.endswith("}"):  # Chromium may stop before it closes the JSON
        text = text.rstrip(",") + "]}"
    log = json.loads(text)
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [event["params"]["url"] for event in log["events"]
            if event["type"] == start_job and "url" in (event.get("params") or {})
            and event["params"].get("initiator", "not an origin") != "not an origin"]
