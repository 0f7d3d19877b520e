"""SIGHUP to a real server process: the inbound list and the auth public key reload."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.test_cli_servers import ROOT, Running
from tinywasm_wasi.web.reload import read_inbound_file

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for running in started:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.communicate(timeout=10)


def start(started: list[Running], modules: Path, *args: str) -> tuple[Running, str]:
    """`python -m cmd.tinywasm` (wasi) on an empty modules folder; its running process and URL."""
    modules.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYWASM_")}
    env.update(TINYWASM_CACHE_DIR="off", TINYWASM_SERVER="wasi")
    command = [sys.executable, "-m", "cmd.tinywasm", "--port", "0", "--no-watch"]
    proc = subprocess.Popen(
        [*command, "--modules-dir", str(modules), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = Running(proc)
    started.append(running)
    port = running.wait_for(r"serving \d+ module\(s\) on http://127\.0\.0\.1:(\d+)").group(1)
    return running, f"http://127.0.0.1:{port}"


def get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def inbound(url: str) -> list[str]:
    status, body = get(f"{url}/api/ws/inbound")
    assert status == 200, body
    patterns: list[str] = json.loads(body)["inbound"]
    return patterns


def test_sighup_reloads_the_inbound_file_and_keeps_the_list_on_a_mistake(
    serve: list[Running], tmp_path: Path
) -> None:
    rules = tmp_path / "inbound.txt"
    rules.write_text("chat  # the demo\n")
    server, url = start(serve, tmp_path / "modules", "--ws-inbound-file", str(rules))
    assert inbound(url) == ["chat"]

    rules.write_text("chat\nrooms.>, news\n")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for(r"ws inbound topics now: chat, rooms\.>, news")
    assert inbound(url) == ["chat", "rooms.>", "news"]

    rules.write_text("chat\nrooms..x\n")  # a mistake: nothing of it applies
    server.proc.send_signal(signal.SIGHUP)
    line = server.wait_for(r"SIGHUP: inbound file .* line 2: .*the inbound list in force stays")
    assert "chat, rooms.>, news" in line.string
    assert inbound(url) == ["chat", "rooms.>", "news"]

    rules.unlink()  # gone: the same
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for(r"SIGHUP: cannot read the inbound file .*the inbound list in force stays")
    assert inbound(url) == ["chat", "rooms.>", "news"]
    code, log = server.stop()
    assert code == 0, log


def test_sighup_without_an_inbound_file_says_what_stays(
    serve: list[Running], tmp_path: Path
) -> None:
    server, url = start(serve, tmp_path / "modules", "--ws-inbound", "chat,news")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for(r"comes from --ws-inbound, not a file: it stays chat, news")
    assert inbound(url) == ["chat", "news"]
    assert server.stop()[0] == 0


def pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_sighup_rotates_the_auth_public_key(serve: list[Running], tmp_path: Path) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    key_file = tmp_path / "auth.pem"
    key_file.write_bytes(pem(old))
    server, url = start(serve, tmp_path / "modules", "--auth-public-key", str(key_file))
    claims = {"sub": "ann", "grants": {"sub": ["room"]}}
    signed_old = jwt.encode(claims, old, algorithm="EdDSA")
    signed_new = jwt.encode(claims, new, algorithm="EdDSA")
    presence = f"{url}/api/topics/room/presence"
    assert get(presence, signed_old)[0] == 200
    assert get(presence, signed_new)[0] == 401

    key_file.write_bytes(pem(new))
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for(r"SIGHUP: new connections' tokens are checked with")
    assert get(presence, signed_old)[0] == 401
    assert get(presence, signed_new)[0] == 200

    key_file.write_text("not a key")  # a mistake: the new key stays
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for(r"SIGHUP: auth public key .*: .*still checked with the old key")
    assert get(presence, signed_new)[0] == 200
    assert server.stop()[0] == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"chat\n", None),
        (b"a.b\nbad topic\n", "line 2: "),
        (b"\xff\xfe", "is not UTF-8 text"),
    ],
)
def test_read_inbound_file(tmp_path: Path, content: bytes, message: str | None) -> None:
    path = tmp_path / "inbound"
    path.write_bytes(content)
    if message is None:
        assert read_inbound_file(path) == ("chat",)
        return
    with pytest.raises(ValueError, match=message) as caught:
        read_inbound_file(path)
    assert str(path) in str(caught.value)


def test_a_bad_inbound_file_is_a_usage_error_at_start(tmp_path: Path) -> None:
    rules = tmp_path / "inbound.txt"
    rules.write_text("a..b\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYWASM_")}
    env["TINYWASM_SERVER"] = "wasi"
    done = subprocess.run(
        [sys.executable, "-m", "cmd.tinywasm", "--ws-inbound-file", str(rules)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--ws-inbound-file / TINYWASM_WS_INBOUND_FILE: inbound file" in done.stderr
    assert "line 1: " in done.stderr and "Traceback" not in done.stderr
