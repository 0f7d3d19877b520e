"""`web/tinywasm.js` recovers what it missed, in headless Chromium against a real server.

A stream of numbered broadcasts runs on a topic with history; mid-stream the server
kills the page's socket (no close frame), or the page's token expires (close 3000 and
`getToken` gives a new one). The client reconnects with `since=` by itself and the page
ends with every number exactly once, in order, and `recovered === true`. A server
restart (history is in memory) gives `recovered === false`, then live messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import jwt
import pytest

from tests.conftest import ServerFactory
from tests.scenarios.browser import WAIT_MS, PageErrors, artifacts_dir, browser
from tests.support import eventually
from tinywasm_wasi.server import WasiServer

with contextlib.suppress(ImportError):
    from playwright.async_api import Browser, Page

__all__ = ["browser"]

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

TOTAL = 600
SECRET = "r" * 32

# A client on `ticks` whose messages and recoveries land in window.got / window.recoveries,
# shown on the page too (for the screenshot).
SETUP = """async (options) => {
  const tw = await import("/tinywasm.js");
  document.body.innerHTML =
    "<h1>tinywasm.js recovery</h1><p id=state></p><p id=summary></p><pre id=log></pre>";
  window.got = [];
  window.recoveries = [];
  window.tokens = 0;
  if (options.tokens) {
    options.getToken = async () => { window.tokens += 1; return await window.mintToken(); };
  }
  const client = tw.connect("/ws", options);
  const show = () => {
    const n = window.got.length;
    document.getElementById("summary").textContent =
      "received " + n + " messages" + (n ? " (" + window.got[0] + " .. " + window.got[n - 1] + ")" : "") +
      " · recovered = " + client.recovered + " · tokens asked: " + window.tokens;
  };
  client.subscribe("ticks", (m) => { window.got.push(Number(m.text())); show(); });
  client.onRecover((r) => {
    window.recoveries.push(r);
    document.getElementById("log").textContent +=
      "reconnected: " + r.topic + " recovered=" + r.recovered + " at offset " + r.offset + "\\n";
    show();
  });
  client.onState((s) => {
    document.getElementById("state").textContent = s.state + ": " + s.words +
      (s.code ? " (" + s.code + ")" : "");
  });
  window.client = client;
}"""


async def open_page(
    browser: Browser, server: WasiServer, **options: Any
) -> tuple[Page, PageErrors]:
    errors = PageErrors()
    page = await browser.new_page()
    errors.watch(page, "recovery")
    response = await page.goto(server.url + "/healthz")  # any page of the server's origin
    assert response is not None and response.ok
    options = {"topics": ["ticks"], "minDelay": 50, "maxDelay": 200, **options}
    await page.evaluate(SETUP, options)
    await page.wait_for_function("window.client.state === 'connected'", timeout=WAIT_MS)
    await eventually(lambda: server.hub.clients == 1, "the page to connect")
    return page, errors


async def stream(server: WasiServer, start: int, stop: int, midway: Any = None) -> None:
    """Broadcast start..stop-1 at about 2,000 a second; call `midway()` halfway."""
    half = (start + stop) // 2
    for n in range(start, stop):
        server.hub.broadcast("ticks", str(n).encode())
        if n == half and midway is not None:
            midway()
        if n % 10 == 9:
            await asyncio.sleep(0.005)


def kill_sockets(server: WasiServer) -> None:
    """The server drops every connection without a close frame (a network cut)."""
    for client in list(server.hub._clients):
        assert client.transport is not None
        client.transport.abort()


async def got_all(page: Page, count: int) -> list[int]:
    await page.wait_for_function(f"window.got.length >= {count}", timeout=15_000)
    got: list[int] = await page.evaluate("window.got")
    return got


async def test_the_page_recovers_after_the_server_kills_its_socket(
    make_server: ServerFactory, browser: Browser, tmp_path: Any
) -> None:
    server = await make_server(
        modules_dir=tmp_path, watch=False, history=(f"ticks:{TOTAL * 2}:300s",)
    )
    page, errors = await open_page(browser, server)
    await stream(server, 0, 10)
    await page.wait_for_function("window.got.length === 10", timeout=WAIT_MS)
    assert await page.evaluate("window.client.recovered") is None  # nothing asked yet

    killed = asyncio.Event()

    def kill() -> None:
        kill_sockets(server)
        killed.set()

    await stream(server, 10, TOTAL, kill)
    assert killed.is_set()
    got = await got_all(page, TOTAL)
    assert got == list(range(TOTAL)), "every message exactly once, in order"
    assert await page.evaluate("window.client.recovered") is True
    recoveries = await page.evaluate("window.recoveries")
    assert recoveries and all(r["recovered"] for r in recoveries)
    assert await page.evaluate("window.client.attempts") >= 2
    await page.wait_for_function(
        "document.getElementById('summary').textContent.includes('recovered = true')",
        timeout=WAIT_MS,
    )
    shot = artifacts_dir() / "js-recovery.png"
    await page.screenshot(path=str(shot))
    assert [e for e in errors.items if "WebSocket" not in e and "favicon" not in e] == []

    # A restart: history was in memory, so the position is from a gone epoch. The page
    # says so (recovered false) and goes on with live messages.
    port = server.port
    await server.stop()
    second = await make_server(
        modules_dir=tmp_path, watch=False, port=port, history=(f"ticks:{TOTAL}:300s",)
    )
    await page.wait_for_function("window.client.recovered === false", timeout=15_000)
    await eventually(lambda: second.hub.clients == 1, "the page to reconnect")
    await stream(second, TOTAL, TOTAL + 5)
    got = await got_all(page, TOTAL + 5)
    assert got[TOTAL:] == list(range(TOTAL, TOTAL + 5))


async def test_an_expired_token_is_refreshed_and_nothing_is_missed(
    make_server: ServerFactory, browser: Browser, tmp_path: Any
) -> None:
    server = await make_server(
        modules_dir=tmp_path,
        watch=False,
        history=(f"ticks:{TOTAL * 4}:300s",),
        auth_secret=SECRET,
    )
    minted: list[float] = []

    def mint() -> str:
        exp = time.time() + (1.5 if not minted else 600)  # the first one expires soon
        minted.append(exp)
        claims = {"sub": "page", "exp": int(exp) + 1, "grants": {"sub": ["ticks"]}}
        return jwt.encode(claims, SECRET, algorithm="HS256")

    page = await browser.new_page()
    await page.expose_function("mintToken", mint)
    errors = PageErrors()
    errors.watch(page, "tokens")
    response = await page.goto(server.url + "/healthz")
    assert response is not None and response.ok
    await page.evaluate(SETUP, {"topics": ["ticks"], "tokens": True, "minDelay": 50})
    await page.wait_for_function("window.client.state === 'connected'", timeout=WAIT_MS)
    # Stream until the first token has expired and the page is back with a second one.
    n = 0
    deadline = time.monotonic() + 20
    while server.hub.stats().tokens_expired < 1 or len(minted) < 2 or n < 200:
        assert time.monotonic() < deadline, (
            "the token did not expire and get refreshed",
            minted,
            server.hub.stats(),
            await page.evaluate("[window.tokens, window.client.state, window.got.length]"),
            errors.items,
        )
        await stream(server, n, n + 50)
        n += 50
    await stream(server, n, n + 50)
    n += 50
    got = await got_all(page, n)
    assert got == list(range(n)), "every message exactly once, in order"
    assert await page.evaluate("window.client.recovered") is True
    assert await page.evaluate("window.tokens") == 2
    assert [e for e in errors.items if "WebSocket" not in e and "favicon" not in e] == []


PRESENCE_SETUP = """async () => {
  const tw = await import("/tinywasm.js");
  document.body.innerHTML = "<h1>tinywasm.js presence</h1><pre id=log></pre>";
  window.events = [];
  window.messages = [];
  const client = tw.connect("/ws", { topics: ["room"], presence: true, minDelay: 50 });
  client.subscribe("room", (m) => window.messages.push(m.text()));
  client.onPresence((e) => {
    window.events.push(e);
    document.getElementById("log").textContent += e.kind + " " + e.topic + " " + e.conn + "\\n";
  });
  window.client = client;
}"""


async def test_presence_events_reach_on_presence_and_never_the_message_handlers(
    make_server: ServerFactory, browser: Browser, tmp_path: Any
) -> None:
    import aiohttp

    server = await make_server(modules_dir=tmp_path, watch=False)
    errors = PageErrors()
    page = await browser.new_page()
    errors.watch(page, "presence")
    response = await page.goto(server.url + "/healthz")
    assert response is not None and response.ok
    await page.evaluate(PRESENCE_SETUP)
    await page.wait_for_function("window.client.state === 'connected'", timeout=WAIT_MS)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{server.url}/ws?topic=room"):
            await page.wait_for_function("window.events.length >= 1", timeout=WAIT_MS)
        await page.wait_for_function("window.events.length >= 2", timeout=WAIT_MS)
    server.hub.broadcast("room", b"hello")
    await page.wait_for_function("window.messages.length === 1", timeout=WAIT_MS)
    events = await page.evaluate("window.events")
    assert [(e["kind"], e["topic"], e["user"]) for e in events] == [
        ("join", "room", None),
        ("leave", "room", None),
    ]
    assert events[0]["conn"] == events[1]["conn"] and events[0]["conn"].startswith("c")
    assert await page.evaluate("window.messages") == ["hello"], "no presence frame as a message"
    await page.screenshot(path=str(artifacts_dir() / "js-presence.png"))
    assert [e for e in errors.items if "favicon" not in e] == []
    with pytest.raises(Exception, match="presence needs envelope"):
        await page.evaluate(
            "async () => (await import('/tinywasm.js')).connect('/ws', "
            "{topics: ['room'], envelope: 'raw', presence: true})"
        )
