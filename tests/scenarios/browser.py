"""Shared parts of the browser suites: Debian's Chromium through Playwright.

Playwright drives /usr/bin/chromium through the driver bundled in its wheel;
nothing is downloaded (never run `playwright install`). A suite is skipped where
Chromium or Playwright is missing, unless TINYWASM_REQUIRE_BROWSER=1 (as in CI):
then that is an error. Screenshots go to `artifacts_dir()`
(TINYWASM_ARTIFACTS, default `test-artifacts/` in the checkout) so that CI keeps
them and a person can look at them.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

try:
    from playwright.async_api import Browser, ConsoleMessage, Error, Page, async_playwright
except ImportError:
    HAVE_PLAYWRIGHT = False
else:
    HAVE_PLAYWRIGHT = True

__all__ = [
    "CHROMIUM_ARGS",
    "CONNECTED",
    "PNG_SIGNATURE",
    "REQUIRE_BROWSER",
    "WAIT_MS",
    "PageErrors",
    "artifacts_dir",
    "browser",
    "missing_browser",
    "require_browser",
]

CHROMIUM = shutil.which("chromium")
REQUIRE_BROWSER = "TINYWASM_REQUIRE_BROWSER"

# Flags for a quiet, sandbox-less run as root: no GPU, no calls home, no first-run UI.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 5_000  # every wait on the page is bounded by this
LAUNCH_MS = 20_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# "connected", but not "disconnected", "not connected" or "connecting".
CONNECTED = re.compile(r"(?<!dis)(?<!not )\bconnected\b", re.IGNORECASE)


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not HAVE_PLAYWRIGHT:
        return "needs Playwright: pip install playwright (never `playwright install`)"
    if shutil.which("chromium") is None:
        return "needs Debian's Chromium on PATH: apt-get install -y chromium"
    return None


def require_browser() -> None:
    """Skip when the browser is missing; with TINYWASM_REQUIRE_BROWSER=1, fail instead."""
    reason = missing_browser()
    if reason is None:
        return
    if os.environ.get(REQUIRE_BROWSER) == "1":
        pytest.fail(
            f"{REQUIRE_BROWSER}=1, so the browser test must run, but it {reason}", pytrace=False
        )
    pytest.skip(reason)


def artifacts_dir() -> Path:
    """Where browser tests keep their screenshots (created on demand)."""
    default = Path(__file__).resolve().parents[2] / "test-artifacts"
    folder = Path(os.environ.get("TINYWASM_ARTIFACTS") or default)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless; closed after the test."""
    require_browser()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS, timeout=LAUNCH_MS
        )
        try:
            yield browser
        finally:
            await browser.close()


class PageErrors:
    """Records console errors and uncaught exceptions of the pages it watches."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def watch(self, page: Page, name: str) -> None:
        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                self.items.append(f"{name}: console.error {message.text!r} at {message.location}")

        def on_page_error(error: Error) -> None:
            self.items.append(f"{name}: uncaught {error.name}: {error.message}")

        page.on("console", on_console)
        page.on("pageerror", on_page_error)
