"""`GET /metrics` on a real server with the example modules, read with prometheus-client's parser."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import ServerFactory
from tests.support import eventually


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, list[Sample]]:
    async with session.get(url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    families = {family.name: family.samples for family in text_string_to_metric_families(text)}
    return families


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) == 1, f"{name}{labels}: {found} in {samples}"
    return found[0]


async def test_metrics_scrape_cleanly_and_count_what_happened(make_server: ServerFactory) -> None:
    server = await make_server()
    ws_url = server.url.replace("http", "ws") + "/ws?topic=chat"
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
        await ws.send_str("hello metrics")
        frame = await ws.receive_bytes(timeout=5)
        assert frame == b'{"from":"conn:c1","data":"hello metrics"}'  # the chat module's echo
        # The auth middleware answers 401 itself: a short-circuit.
        async with session.get(server.url + "/m/echo_http") as response:
            assert response.status == 401
        async with session.post(server.url + "/m/echo", data=b"ping") as response:
            assert response.status == 200
        async with session.get(server.url + "/no/such/path") as response:
            assert response.status == 404

        metrics = await eventually(
            lambda: _delivered_chat(session, server.url), "chat's delivery in /metrics"
        )
        # The metrics the issue names, with the conventional suffixes.
        chat = {"module": "chat"}
        assert (
            value(metrics["tinywasm_module_delivered"], "tinywasm_module_delivered_total", **chat)
            >= 1
        )
        assert (
            value(metrics["tinywasm_module_broadcast"], "tinywasm_module_broadcast_total", **chat)
            >= 1
        )
        assert (
            value(
                metrics["tinywasm_module_mailbox_depth"],
                "tinywasm_module_mailbox_depth",
                **chat,
            )
            >= 0
        )
        assert (
            value(metrics["tinywasm_module_quarantined"], "tinywasm_module_quarantined", **chat)
            == 0
        )
        assert (
            value(metrics["tinywasm_module_up"], "tinywasm_module_up", module="chat", state="live")
            == 1
        )
        calls = metrics["tinywasm_guest_call_duration_seconds"]
        count = value(
            calls,
            "tinywasm_guest_call_duration_seconds_count",
            module="chat",
            export="on_message",
        )
        assert count >= 1
        assert (
            value(
                calls,
                "tinywasm_guest_call_duration_seconds_bucket",
                module="chat",
                export="on_message",
                le="+Inf",
            )
            == count
        )
        assert (
            value(
                metrics["tinywasm_module_swaps"],
                "tinywasm_module_swaps_total",
                module="chat",
                result="loaded",
            )
            == 1
        )
        hub = metrics
        assert value(hub["tinywasm_hub_clients"], "tinywasm_hub_clients") == 1
        assert value(hub["tinywasm_hub_frames_sent"], "tinywasm_hub_frames_sent_total") >= 1
        assert value(hub["tinywasm_hub_sent_bytes"], "tinywasm_hub_sent_bytes_total") >= len(
            b"hello metrics"
        )
        assert (
            value(
                hub["tinywasm_hub_inbound_frames"],
                "tinywasm_hub_inbound_frames_total",
                result="published",
            )
            == 1
        )
        assert (
            value(
                hub["tinywasm_hub_slow_consumer_closes"],
                "tinywasm_hub_slow_consumer_closes_total",
                reason="frames",
            )
            == 0
        )
        assert value(metrics["tinywasm_bus_published"], "tinywasm_bus_published_total") >= 1
        http = metrics["tinywasm_http_requests"]
        assert value(http, "tinywasm_http_requests_total", route="/m/{name}", status="401") == 1
        assert value(http, "tinywasm_http_requests_total", route="/m/{name}", status="200") == 1
        assert value(http, "tinywasm_http_requests_total", route="unmatched", status="404") == 1
        latency = metrics["tinywasm_http_request_duration_seconds"]
        assert (
            value(latency, "tinywasm_http_request_duration_seconds_count", route="/m/{name}") == 2
        )
        short = metrics["tinywasm_http_middleware_short_circuits"]
        assert value(short, "tinywasm_http_middleware_short_circuits_total", middleware="auth") == 1
        # prometheus-client's own collectors.
        assert "process_cpu_seconds" in metrics and "python_gc_objects_collected" in metrics


async def _delivered_chat(
    session: aiohttp.ClientSession, url: str
) -> dict[str, list[Sample]] | None:
    metrics = await scrape(session, url)
    delivered = [
        s for s in metrics["tinywasm_module_delivered"] if s.labels.get("module") == "chat"
    ]
    return metrics if delivered and delivered[0].value >= 1 else None


async def test_metrics_obey_status_private(make_server: ServerFactory) -> None:
    server = await make_server(status_private=True, admin_token="s3cret-token-for-tests")
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url + "/metrics") as response:
            assert response.status == 401
        headers = {"Authorization": "Bearer s3cret-token-for-tests"}
        async with session.get(server.url + "/metrics", headers=headers) as response:
            assert response.status == 200
            assert "tinywasm_hub_clients" in await response.text()
