"""The browser client `web/tinywasm.js` in headless Chromium against a real server.

Each test opens a page from the server, imports `/tinywasm.js` in it and drives a
client: CBOR envelopes, wildcard handlers, raw mode, close codes in words, and a
reconnect (with its subscriptions) across a server restart on the same port.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from tests.conftest import ServerFactory
from tests.scenarios.browser import WAIT_MS, PageErrors, browser

with contextlib.suppress(ImportError):
    from playwright.async_api import Browser, Page

__all__ = ["browser"]

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

# A client whose handlers and state changes land in window.seen / window.states.
SETUP = """async ([options, patterns]) => {
  const tw = await import("/tinywasm.js");
  window.tw = tw;
  window.seen = [];
  window.states = [];
  const client = tw.connect("/ws", options);
  client.onState((s) => window.states.push(s));
  window.handlers = {};
  for (const pattern of patterns) {
    const handler = (m) => window.seen.push({pattern, topic: m.topic, text: m.text()});
    window.handlers[pattern] = handler;
    client.subscribe(pattern, handler);
  }
  window.client = client;
}"""


async def open_client(
    browser: Browser, url: str, errors: PageErrors, options: dict[str, Any], patterns: list[str]
) -> Page:
    page = await browser.new_page()
    errors.watch(page, "client")
    response = await page.goto(url + "/")  # any page of the server; this one has an icon
    assert response is not None and response.ok
    await page.evaluate(SETUP, [options, patterns])
    await connected(page)
    return page


async def connected(page: Page) -> None:
    await page.wait_for_function("window.client.state === 'connected'", timeout=WAIT_MS)


async def seen(page: Page) -> list[dict[str, str]]:
    result: list[dict[str, str]] = await page.evaluate("window.seen")
    return result


async def wait_seen(page: Page, pattern: str, text: str) -> None:
    await page.wait_for_function(
        "([p, t]) => window.seen.some((m) => m.pattern === p && m.text.includes(t))",
        arg=[pattern, text],
        timeout=WAIT_MS,
    )


async def test_envelope_client_routes_by_pattern_and_publishes(
    make_server: ServerFactory, browser: Browser
) -> None:
    server = await make_server()
    errors = PageErrors()
    page = await open_client(browser, server.url, errors, {}, ["chat", "events", ">"])
    assert await page.evaluate("window.client.topics") == ["chat", "events", ">"]

    assert await page.evaluate("window.client.publish('chat', 'hello one')") is True
    await wait_seen(page, "chat", "hello one")
    await wait_seen(page, ">", "hello one")  # the chat module's broadcast
    await wait_seen(page, ">", "chat: hello one")  # the monitor module's line about it
    got = await seen(page)
    assert {m["topic"] for m in got if m["pattern"] == ">"} >= {"chat", "monitor"}
    assert all(m["topic"] == "chat" for m in got if m["pattern"] == "chat")
    assert not [m for m in got if m["pattern"] == "events"]

    # Unsubscribing the last handler of a pattern reconnects without it.
    await page.evaluate("window.client.unsubscribe('chat', window.handlers.chat)")
    await page.wait_for_function("!window.client.topics.includes('chat')", timeout=WAIT_MS)
    await connected(page)
    await page.evaluate("window.seen.length = 0")
    await page.wait_for_function("window.client.publish('chat', 'hello two')", timeout=WAIT_MS)
    await wait_seen(page, ">", "chat: hello two")
    assert not [m for m in await seen(page) if m["pattern"] == "chat"]

    # Wildcard matching as on the bus: a table.
    table = [
        ("chat", "chat", True),
        ("chat.*", "chat.room", True),
        ("chat.*", "chat.room.x", False),
        ("chat.>", "chat.room.x", True),
        ("chat.>", "chat", False),
        (">", "a", True),
        ("*.b", "a.b", True),
        ("*", "a.b", False),
    ]
    results = await page.evaluate("(rows) => rows.map(([p, t]) => window.tw.matches(p, t))", table)
    assert results == [row[2] for row in table]
    assert errors.items == []


async def test_raw_client_and_close_codes_in_words(
    make_server: ServerFactory, browser: Browser
) -> None:
    server = await make_server()
    errors = PageErrors()
    page = await open_client(browser, server.url, errors, {"envelope": "raw"}, ["chat"])
    assert await page.evaluate("window.client.publish('chat', 'raw hello')") is True
    await wait_seen(page, "chat", "raw hello")
    refused = await page.evaluate(
        "() => { try { window.client.publish('other', 'x'); return null; }"
        " catch (e) { return e.message; } }"
    )
    assert refused is not None and "first topic" in refused

    # An envelope client publishing where --ws-inbound does not allow: closed with 1008,
    # reported in words, then reconnected.
    await page.evaluate(
        "window.other = window.tw.connect('/ws', {topics: ['events']});"
        "window.otherStates = []; window.other.onState((s) => window.otherStates.push(s)); 0"
    )
    await page.wait_for_function("window.other.state === 'connected'", timeout=WAIT_MS)
    await page.evaluate("window.other.publish('events', 'not allowed here')")
    await page.wait_for_function("window.otherStates.some((s) => s.code === 1008)", timeout=WAIT_MS)
    state = await page.evaluate("window.otherStates.find((s) => s.code === 1008)")
    assert state["state"] == "closed" and state["words"] == "not allowed"
    assert state["retryIn"] > 0
    await page.wait_for_function("window.other.state === 'connected'", timeout=WAIT_MS)
    words = await page.evaluate("[1013, 1001, 1006, 3000].map(window.tw.closeWords)")
    assert words[:3] == ["slow consumer", "server going away", "connection lost"]
    assert words[3] == "token expired"
    await page.evaluate("window.other.close(); window.client.close()")
    assert await page.evaluate("window.client.state") == "closed"
    assert errors.items == []


async def test_reconnects_and_resubscribes_across_a_server_restart(
    make_server: ServerFactory, browser: Browser
) -> None:
    first = await make_server()
    port = first.port
    errors = PageErrors()
    page = await open_client(
        browser, first.url, errors, {"minDelay": 100, "maxDelay": 400}, ["chat"]
    )
    await page.evaluate("window.client.publish('chat', 'before restart')")
    await wait_seen(page, "chat", "before restart")

    await first.stop()
    await page.wait_for_function(
        "window.states.some((s) => s.state === 'closed' && s.code === 1001)", timeout=WAIT_MS
    )
    closed = await page.evaluate("window.states.find((s) => s.code === 1001)")
    assert closed["words"] == "server going away"

    second = await make_server(port=port)
    # Back by itself, with the same subscriptions: an echo of a new line arrives.
    await page.wait_for_function(
        "window.client.state === 'connected' && window.client.publish('chat', 'after restart')",
        timeout=15_000,
    )
    await wait_seen(page, "chat", "after restart")
    assert second.hub.clients >= 1
    # Connection failures while the port was closed were retried (console errors about
    # refused connections are the browser's own, not the page's).
    assert await page.evaluate("window.client.attempts") >= 2
    assert [e for e in errors.items if "WebSocket connection" not in e] == []
