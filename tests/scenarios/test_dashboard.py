"""The live dashboard (/dashboard) in headless Chromium, fed by the `$sys` feed only.

A real server with real modules: a module is swapped by writing its file and the
page shows the new sha256 and a history entry without a reload; the rollback
button brings the old sha256 back; a typed topic is tailed; a module that traps is
quarantined and the page says so. Screenshots at 1440 px and 390 px go to
`test-artifacts/` (see tests/scenarios/browser.py).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest
import wasmtime

from tests.conftest import ServerFactory
from tests.scenarios.browser import WAIT_MS, PageErrors, artifacts_dir, browser
from tests.scenarios.test_hot_swap import relay, sha
from tests.support import eventually
from tests.wat import guest
from tinywasm_wasi.config import DEFAULT_MODULES_DIR

with contextlib.suppress(ImportError):
    from playwright.async_api import Browser, Page, expect

__all__ = ["browser"]

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

# Subscribes to "boom" and traps on every message: three traps put it in quarantine.
TRAPPER = bytes(
    wasmtime.wat2wasm(
        guest(
            """
  (func (export "init") (call $subscribe {t} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32) unreachable)
""",
            {"t": "boom"},
        )
    )
)


def card(page: Page, name: str):  # type: ignore[no-untyped-def]
    return page.locator(f'article.card[data-module="{name}"]')


async def screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    path = artifacts_dir() / name
    await page.screenshot(path=path, full_page=full_page)
    assert path.stat().st_size > 1_000
    return path


async def test_dashboard_follows_swaps_rollbacks_traps_and_tails_a_topic(
    make_server: ServerFactory, browser: Browser, tmp_path: Path
) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    for name in ("chat.wasm", "monitor.wasm", "echo.wasm", "20-auth@[echo_http].wasm"):
        shutil.copy(DEFAULT_MODULES_DIR / name, modules / name)
    first, second = relay(0), relay(1)
    (modules / "relay.wasm").write_bytes(first)
    (modules / "trapper.wasm").write_bytes(TRAPPER)
    server = await make_server(
        modules_dir=modules,
        watch_debounce=0.05,
        swap_probation=0.05,
        quarantine_traps=3,
        quarantine_window=30.0,
        quarantine_backoff=600.0,
    )
    errors = PageErrors()
    page = await browser.new_page(viewport={"width": 1440, "height": 900})
    page.set_default_timeout(WAIT_MS)
    errors.watch(page, "dashboard")
    response = await page.goto(server.url + "/dashboard")
    assert response is not None and response.ok
    await page.evaluate("window.loadedOnce = true")
    await expect(page.locator("#feed")).to_have_text("live")
    relay_card = card(page, "relay")
    await expect(relay_card.locator('[data-field="sha"]')).to_have_text(sha(first)[:12])
    await expect(page.locator("#health-status")).to_have_attribute("data-status", "ok")
    # Exports, subscriptions and the middleware's rule are shown.
    await expect(relay_card).to_contain_text("on_message")
    await expect(relay_card).to_contain_text("nums")
    await expect(card(page, "auth")).to_contain_text("echo_http")
    await screenshot(page, "dashboard-1440.png")

    # Swap by writing the file: the new sha256 and a history entry, without a reload.
    (modules / "relay.wasm").write_bytes(second)
    await expect(relay_card.locator('[data-field="sha"]')).to_have_text(sha(second)[:12])
    await expect(page.locator(f'#timeline li[data-sha="{sha(second)}"]')).to_contain_text("swapped")
    assert await page.evaluate("window.loadedOnce") is True

    # Roll back with the button: the old sha256, and the file now differs.
    await relay_card.locator('button[data-action="rollback"]').click()
    await expect(relay_card.locator('[data-field="sha"]')).to_have_text(sha(first)[:12])
    await expect(relay_card.locator('[data-field="differs"]')).to_contain_text("rolled back")
    await expect(page.locator("#problems")).to_contain_text("relay")

    # Tail a typed topic (a wildcard): the chat module's broadcasts arrive.
    await page.locator("#tail-topic").fill("ch*")
    await page.locator("#tail-start").click()
    await expect(page.locator("#tail-state")).to_contain_text("not a valid pattern")
    await page.locator("#tail-topic").fill(">")
    await page.locator("#tail-start").click()
    await expect(page.locator("#tail-state")).to_contain_text("Tailing")
    server.bus.publish("chat", b"hello from the bus")
    await expect(page.locator("#tail-log")).to_contain_text("hello from the bus")
    # ">" matches the chat module's broadcast and the monitor module's line about it.
    await expect(page.locator("#tail-log")).to_contain_text("chat: hello from the bus")

    # A module that traps: its state changes to quarantined, health to degraded.
    await expect(card(page, "trapper").locator('[data-field="state"]')).to_have_text("live")
    for _ in range(3):
        server.bus.publish("boom", b"x")
    await eventually(lambda: "trapper" in server.host.quarantined, "trapper's quarantine")
    trapper = card(page, "trapper")
    await expect(trapper.locator('[data-field="state"]')).to_have_text("quarantined")
    await expect(trapper.locator("details.error")).to_contain_text("UNREACHABLE")
    await expect(page.locator("#health-status")).to_have_attribute("data-status", "degraded")
    await expect(page.locator("#timeline")).to_contain_text("quarantined")
    await screenshot(page, "dashboard-1440-after.png")

    # Readable on a phone: no sideways scrolling at 390 px.
    await page.set_viewport_size({"width": 390, "height": 844})
    await expect(relay_card).to_be_visible()
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide at a 390 px viewport"
    await screenshot(page, "dashboard-390.png", full_page=False)
    await screenshot(page, "dashboard-390-full.png")
    await page.close()
    assert errors.items == []
