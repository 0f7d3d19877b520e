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
import contextlib
import re
import shutil
import uuid
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.scenarios import browser as browser_support
from tests.scenarios.browser import (
    CONNECTED,
    PNG_SIGNATURE,
    REQUIRE_BROWSER,
    WAIT_MS,
    PageErrors,
    artifacts_dir,
    browser,
    require_browser,
)
from tinywasm_wasi.build import Language, build_module
from tinywasm_wasi.build.scaffold import scaffold
from tinywasm_wasi.config import DEFAULT_MODULES_DIR

with contextlib.suppress(ImportError):
    from playwright.async_api import Browser, BrowserContext, Page, expect

__all__ = ["browser"]  # the fixture, imported for the tests here

pytestmark = [
    pytest.mark.browser,
    # Opening a tab has no timeout of its own; this bounds it (~1 s idle, ~3 s on a busy box).
    pytest.mark.timeout(60),
]


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
    make_server: ServerFactory, browser: Browser
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
        await expect(tab1.locator("#monitor-log")).to_contain_text(text, timeout=WAIT_MS)

    # Each line names its sender: the name the tab chose (a claim), and the connection the
    # server says it came from (guest interface version 2), different for the two tabs.
    name = await tab2.locator("#chat-name").input_value()
    line = tab1.locator("#chat-log li", has_text=second)
    await expect(line.locator(".who")).to_have_text(name)
    await expect(line.locator(".from")).to_have_text(re.compile(r"^c\d+$"))
    assert (await line.get_attribute("data-from") or "").startswith("conn:c")
    mine = await tab1.locator("#chat-log li", has_text=first).get_attribute("data-from")
    assert mine is not None and mine != await line.get_attribute("data-from")
    await expect(tab1.locator("#chat-notice")).to_be_hidden()

    shot = artifacts_dir() / "demo-chat.png"
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
    monkeypatch.setattr(browser_support, "HAVE_PLAYWRIGHT", True)
    monkeypatch.setattr(browser_support.shutil, "which", lambda _name: None)
    monkeypatch.setenv(REQUIRE_BROWSER, required)
    with pytest.raises(outcome, match="Chromium"):
        require_browser()


async def test_demo_says_when_nobody_handles_chat(
    make_server: ServerFactory, browser: Browser, tmp_path: Path
) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    for name in ("monitor.wasm", "receiver.wasm"):
        shutil.copy(DEFAULT_MODULES_DIR / name, modules / name)
    server = await make_server(modules_dir=modules)
    errors = PageErrors()
    context = await browser.new_context()
    context.set_default_timeout(WAIT_MS)
    tab = await open_tab(context, server.url + "/", "tab", errors)
    # The events pane explains why it is empty instead of showing nothing.
    await expect(tab.locator("#monitor-log .empty")).to_contain_text("No events yet")
    await expect(tab.locator("#chat-notice")).to_be_hidden()
    await send(tab, "is anyone there")
    await expect(tab.locator("#chat-notice")).to_be_visible(timeout=WAIT_MS)
    await expect(tab.locator("#chat-notice")).to_contain_text("Nobody handles chat")
    # The monitor module still saw the message on the bus.
    await expect(tab.locator("#monitor-log")).to_contain_text("is anyone there")
    await context.close()
    assert errors.items == []
