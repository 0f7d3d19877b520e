"""`python -m cmd.tinywasm` as a user runs it: the three TINYWASM_SERVER cases and signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
URL = re.compile(r"http://127\.0\.0\.1:(\d+)")

pytestmark = pytest.mark.timeout(60)


class Running:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Read stderr lines until one matches `pattern`."""
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            found = regex.search(line)
            if found:
                return found
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.lines)}")

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, rest = self.proc.communicate(timeout=20)
        return self.proc.returncode, "".join(self.lines) + rest


def start(server: str | None, *args: str) -> Running:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYWASM_")}
    env["TINYWASM_CACHE_DIR"] = "off"  # no compiled modules left in the user's cache
    if server is not None:
        env["TINYWASM_SERVER"] = server
    proc = subprocess.Popen(
        [sys.executable, "-m", "cmd.tinywasm", "--port", "0", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Running(proc)


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for r in started:
        if r.proc.poll() is None:
            r.proc.terminate()  # a supervisor stops its workers, which hold the pipes too
            try:
                r.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.communicate(timeout=10)


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read().decode()


def test_wasi_server_loads_the_examples_and_stops_cleanly_on_sigterm(
    running: list[Running],
) -> None:
    examples = len(list((ROOT / "modules" / "dist").glob("*.wasm")))
    r = start("wasi")
    running.append(r)
    port = r.wait_for(rf"serving {examples} module\(s\) on " + URL.pattern).group(1)
    status, body = get(f"http://127.0.0.1:{port}/healthz")
    assert status == 200
    assert f'"modules": {examples}' in body
    code, output = r.stop()
    assert code == 0, output
    for name in ("chat", "monitor", "receiver", "sender", "echo", "echo_http", "auth", "tag"):
        assert f"loaded module {name} " in output
    assert "[sender] " in output  # guest log lines are tagged with the module
    assert "event loop: uvloop" in output  # a dependency, so the default
    assert output.index("closing") < output.index("closed")


def test_unset_selects_the_static_default_server_and_says_modules_are_off(
    running: list[Running],
) -> None:
    r = start(None)
    running.append(r)
    first = r.wait_for(r".")  # the very first log line
    assert "modules are off" in first.string
    assert "TINYWASM_SERVER=wasi" in first.string
    port = r.wait_for(URL.pattern).group(1)
    status, body = get(f"http://127.0.0.1:{port}/")
    assert status == 200
    assert "<html" in body.lower()
    with pytest.raises(urllib.error.HTTPError) as err:
        get(f"http://127.0.0.1:{port}/api/modules")
    assert err.value.code == 404
    err.value.close()
    code, output = r.stop()
    assert code == 0, output
    assert "loaded module" not in output


def test_an_unknown_server_exits_2_listing_the_valid_values() -> None:
    env = {**os.environ, "TINYWASM_SERVER": "spin", "TINYWASM_CACHE_DIR": "off"}
    proc = subprocess.run(
        [sys.executable, "-m", "cmd.tinywasm"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "'spin'" in proc.stderr
    assert "wasi" in proc.stderr


def test_sigint_stops_the_wasi_server_too(running: list[Running]) -> None:
    r = start("wasi", "--modules-dir", str(ROOT / "modules" / "dist"), "--no-uvloop")
    running.append(r)
    r.wait_for("event loop: asyncio")
    r.wait_for(URL.pattern)
    r.proc.send_signal(signal.SIGINT)
    _, rest = r.proc.communicate(timeout=20)
    assert r.proc.returncode == 0, rest
    assert "closed" in rest


@pytest.mark.timeout(150)
@pytest.mark.parametrize("holder", [(), ("--workers", "2")], ids=["server", "fleet"])
def test_workers_on_a_taken_port_exit_1_instead_of_sharing_or_restarting(
    holder: tuple[str, ...], running: list[Running]
) -> None:
    # A fleet's workers listen with SO_REUSEPORT: without the supervisor's own check, a
    # second fleet on their port would share it silently.
    first = start("wasi", *holder)
    running.append(first)
    port = first.wait_for(r"serving \d+ module.* on " + URL.pattern, timeout=60).group(1)
    env = {**os.environ, "TINYWASM_SERVER": "wasi", "TINYWASM_CACHE_DIR": "off"}
    proc = subprocess.run(
        [sys.executable, "-m", "cmd.tinywasm", "--port", port, "--workers", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr, proc.stderr[-2000:]
    assert "another server or --workers fleet listens there" in proc.stderr
    assert "started (pid" not in proc.stderr  # no worker was started
    assert "restarting it" not in proc.stderr


def test_port_in_use_exits_1_with_a_hint(running: list[Running]) -> None:
    first = start("wasi")
    running.append(first)
    port = first.wait_for(URL.pattern).group(1)
    env = {**os.environ, "TINYWASM_SERVER": "wasi", "TINYWASM_CACHE_DIR": "off"}
    proc = subprocess.run(
        [sys.executable, "-m", "cmd.tinywasm", "--port", port],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "--port" in proc.stderr
