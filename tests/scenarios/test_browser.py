"""The demo page end to end in headless Chromium: two tabs chat through the chat module.

A message typed in one tab goes browser -> /ws -> bus -> chat WebAssembly module
-> ws_broadcast -> every browser on `chat`. Playwright drives Debian's
/usr/bin/chromium through the driver bundled in its wheel; nothing is downloaded
(never run `playwright install`). Skipped where Chromium or Playwright is
missing, unless TINYWASM_REQUIRE_BROWSER=1 (as in CI): then that is an error.
Deselect with `-m "not browser"`.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tinywasm_wasi.build import Language, build_module
from tinywasm_wasi.build.scaffold import scaffold

try:
    from playwright.async_api import (
        Browser,
        BrowserContext,
        ConsoleMessage,
        Error,
        Page,
        async_playwright,
        expect,
    )
except ImportError:
    HAVE_PLAYWRIGHT = False
else:
    HAVE_PLAYWRIGHT = True

CHROMIUM = shutil.which("chromium")
REQUIRE_BROWSER = "TINYWASM_REQUIRE_BROWSER"
pytestmark = [
    pytest.mark.browser,
    # Opening a tab has no timeout of its own; this bounds it (~1 s idle, ~3 s on a busy box).
    pytest.mark.timeout(60),
]


def missing_browser() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not HAVE_PLAYWRIGHT:
        return "needs Playwright: pip install playwright (never `playwright install`)"
    if CHROMIUM is None:
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


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless; closed after the test."""
    require_browser()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=LAUNCH_MS
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


async def open_tab(context: BrowserContext, url: str, name: str, errors: PageErrors) -> Page:
    """Open the demo page in a new tab and wait until it says it is connected."""
    page = await context.new_page()
    errors.watch(page, name)
    response = await page.goto(url)
    assert response is not None and response.ok, f"{name}: GET {url} -> {response}"
    try:
        await expect(page.locator("#status")).to_have_text(CONNECTED, timeout=WAIT_MS)
    except AssertionError as exc:
        raise AssertionError(f"{name} never connected; page errors: {errors.items}") from exc
    return page


async def send(page: Page, text: str) -> None:
    await page.locator("#chat-input").fill(text)
    await page.locator("#chat-send").click()


async def test_two_tabs_chat_through_the_chat_module(
    make_server: ServerFactory, browser: Browser, tmp_path: Path
) -> None:
    server = await make_server()
    assert "chat" in server.host.modules
    url = server.url + "/"
    errors = PageErrors()
    context = await browser.new_context()
    context.set_default_timeout(WAIT_MS)
    tab1 = await open_tab(context, url, "tab 1", errors)
    tab2 = await open_tab(context, url, "tab 2", errors)
    first = f"hello from tab 1 {uuid.uuid4().hex[:8]}"
    second = f"reply from tab 2 {uuid.uuid4().hex[:8]}"

    await send(tab1, first)
    for tab in (tab1, tab2):
        await expect(tab.locator("#chat-log")).to_contain_text(first, timeout=WAIT_MS)

    await send(tab2, second)
    await expect(tab1.locator("#chat-log")).to_contain_text(second, timeout=WAIT_MS)
    await expect(tab2.locator("#chat-log")).to_contain_text(second, timeout=WAIT_MS)

    # The chat module handles messages in order and each client's frames arrive in
    # order, so tab 1 already has the server's copy of `first`: one copy means the
    # page shows what the server sent back, not a local echo as well.
    for tab in (tab1, tab2):
        log = await tab.locator("#chat-log").inner_text()
        assert log.count(first) == 1 and log.count(second) == 1, log

    # The monitor module sees every bus message; tab 1's monitor socket opened with the
    # page, well before either message was sent.
    for text in (first, second):
        await expect(tab1.locator("#monitor-log")).to_contain_text(f"chat: {text}", timeout=WAIT_MS)

    shot = tmp_path / "chat.png"
    await tab1.screenshot(path=shot, full_page=True)
    data = shot.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1_000

    await context.close()
    assert errors.items == []


async def test_the_page_shows_tinywasm_devs_builds_and_their_errors(
    make_server: ServerFactory, browser: Browser, tmp_path: Path
) -> None:
    folder = scaffold("shown", Language.WAT, tmp_path / "src")
    modules = tmp_path / "modules"
    await asyncio.to_thread(build_module, folder, modules)
    server = await make_server(modules_dir=modules, watch_sources=(folder,), watch_debounce=0.05)
    errors = PageErrors()
    context = await browser.new_context()
    context.set_default_timeout(WAIT_MS)
    page = await open_tab(context, server.url + "/", "tab", errors)
    await expect(page.locator("#builds")).to_have_attribute("data-state", "connected")
    assert await page.locator("#builds").is_hidden()

    source = folder / "shown.wat"
    good = source.read_text()
    source.write_text(good.replace("(func $free", "(func $free oops"))
    log = page.locator("#build-log")
    await expect(log).to_contain_text("building shown failed", timeout=60_000)
    await expect(log).to_contain_text(f"{source}:", timeout=WAIT_MS)  # the compiler's file:line
    assert await page.locator("#builds").is_visible()
    assert await log.locator("li[data-ok=no]").count() == 1

    source.write_text(good.replace("started", "started again"))
    await expect(log).to_contain_text("built shown.wasm", timeout=60_000)
    await context.close()
    assert errors.items == []


@pytest.mark.parametrize(
    ("required", "outcome"), [("1", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_a_missing_chromium_is_an_error_only_when_the_browser_is_required(
    monkeypatch: pytest.MonkeyPatch, required: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setattr(f"{__name__}.HAVE_PLAYWRIGHT", True)
    monkeypatch.setattr(f"{__name__}.CHROMIUM", None)
    monkeypatch.setenv(REQUIRE_BROWSER, required)
    with pytest.raises(outcome, match="Chromium"):
        require_browser()
