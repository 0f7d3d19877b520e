"""The folder loader against odd files: FIFOs and folders never block or break a load."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tests.conftest import HostFactory
from tests.wat import guest, write
from tinywasm_wasi.exceptions import ModuleLoadError
from tinywasm_wasi.supervisor.loader import read_regular

OK = guest('(func (export "init") (call $log {hi}))', {"hi": "hi"})


def test_read_regular_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.wasm")
    (tmp_path / "dir.wasm").mkdir()
    (tmp_path / "file.wasm").write_bytes(b"12345")
    os.symlink(tmp_path / "file.wasm", tmp_path / "link.wasm")
    with pytest.raises(ModuleLoadError, match=r"pipe.wasm is not a regular file \(a FIFO\)"):
        read_regular(tmp_path / "pipe.wasm", 100)
    with pytest.raises(ModuleLoadError, match=r"dir.wasm is not a regular file \(a folder\)"):
        read_regular(tmp_path / "dir.wasm", 100)
    assert read_regular(tmp_path / "link.wasm", 100) == b"12345"
    assert read_regular(tmp_path / "file.wasm", 2) == b"123"  # one byte past the cap
    assert read_regular(tmp_path / "gone.wasm", 100) is None


async def test_a_fifo_module_file_and_a_fifo_limits_file_do_not_stop_the_start(
    tmp_path: Path, make_host: HostFactory, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "ok", OK)
    os.mkfifo(tmp_path / "stuck.wasm")
    os.mkfifo(tmp_path / "limits.toml")
    caplog.set_level(logging.ERROR, logger="tinywasm")
    host = await make_host(tmp_path)  # returns: nothing blocked on the FIFOs
    assert list(host.modules) == ["ok"]
    assert "not a regular file (a FIFO)" in host.refused["stuck"]
    assert (
        "ignoring the limits file" in caplog.text and "limits.toml is not a regular" in caplog.text
    )


async def test_a_fifo_dropped_in_while_serving_is_refused_and_swaps_go_on(
    tmp_path: Path, make_host: HostFactory
) -> None:
    write(tmp_path, "ok", OK)
    host = await make_host(tmp_path)
    (tmp_path / "ok.wasm").unlink()
    os.mkfifo(tmp_path / "ok.wasm")
    record = await host.swap("ok", "watcher")
    assert record is not None and record.outcome.value == "refused"
    assert "not a regular file" in (record.error or "")
    assert "ok" in host.modules, "the running version keeps serving"
    (tmp_path / "ok.wasm").unlink()
    write(tmp_path, "ok", guest('(func (export "init"))'))
    record = await host.swap("ok", "watcher")
    assert record is not None and record.outcome.value == "swapped"


def test_limits_asked_from_many_threads_at_once_all_see_the_file(tmp_path: Path) -> None:
    # Loads read a module's limits in their compile threads; before the lock, one thread
    # stored the file's new stamp before its overrides, and the others got the defaults.
    import threading

    from tinywasm_wasi.policy.limits import Limits
    from tinywasm_wasi.supervisor.loader import ModuleLoader

    names = [f"m{i}" for i in range(16)]
    (tmp_path / "limits.toml").write_text(
        "".join(f"[{n}]\ncall_timeout = 10.0\n" for n in names) + "# padding\n" * 5000
    )
    for _ in range(20):
        loader = ModuleLoader(Limits())
        loader.directory = tmp_path
        start = threading.Barrier(len(names))
        seen: dict[str, float] = {}

        def ask(
            name: str, loader: ModuleLoader, start: threading.Barrier, seen: dict[str, float]
        ) -> None:
            start.wait()
            seen[name] = loader.limits_for(name).call_timeout

        threads = [threading.Thread(target=ask, args=(n, loader, start, seen)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert seen == dict.fromkeys(names, 10.0)
