"""The command line: flags and TINYWASM_* variables to Config, server selection, `python -m`."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tinywasm_wasi.cli import (
    SERVERS,
    default_cache_dir,
    fast_path,
    main,
    parse_config,
    select_server,
)
from tinywasm_wasi.config import DEFAULT_CACHE_DIR, Config, LogFormat

ROOT = Path(__file__).resolve().parent.parent

# (flag, variable, raw value, Config attribute, expected value)
VALUES = [
    ("--host", "TINYWASM_HOST", "0.0.0.0", "host", "0.0.0.0"),
    ("--host", "TINYWASM_HOST", "::1", "host", "::1"),
    ("--port", "TINYWASM_PORT", "8080", "port", 8080),
    ("--port", "TINYWASM_PORT", "0", "port", 0),
    ("--port", "TINYWASM_PORT", "65535", "port", 65535),
    ("--modules-dir", "TINYWASM_MODULES_DIR", "/srv/mods", "modules_dir", Path("/srv/mods")),
    ("--web-dir", "TINYWASM_WEB_DIR", "site", "web_dir", Path("site")),
    ("--drain-timeout", "TINYWASM_DRAIN_TIMEOUT", "0.25", "drain_timeout", 0.25),
    ("--drain-timeout", "TINYWASM_DRAIN_TIMEOUT", "0", "drain_timeout", 0.0),
    ("--drain-timeout", "TINYWASM_DRAIN_TIMEOUT", "30", "drain_timeout", 30.0),
    ("--ws-inbound", "TINYWASM_WS_INBOUND", "chat", "ws_inbound", ("chat",)),
    (
        "--ws-inbound",
        "TINYWASM_WS_INBOUND",
        "chat, rooms.>,*.typing",
        "ws_inbound",
        ("chat", "rooms.>", "*.typing"),
    ),
    ("--ws-inbound", "TINYWASM_WS_INBOUND", "chat,chat", "ws_inbound", ("chat",)),
    ("--ws-inbound", "TINYWASM_WS_INBOUND", "", "ws_inbound", ()),
    (
        "--ws-inbound-file",
        "TINYWASM_WS_INBOUND_FILE",
        "/etc/inbound.txt",
        "ws_inbound_file",
        Path("/etc/inbound.txt"),
    ),
    ("--mailbox-size", "TINYWASM_MAILBOX_SIZE", "5", "mailbox_size", 5),
    ("--mailbox-size", "TINYWASM_MAILBOX_SIZE", "1", "mailbox_size", 1),
    ("--mailbox-bytes", "TINYWASM_MAILBOX_BYTES", "8MiB", "mailbox_bytes", 8 * 1024 * 1024),
    ("--module-threads", "TINYWASM_MODULE_THREADS", "0", "module_threads", 0),
    ("--module-threads", "TINYWASM_MODULE_THREADS", "8", "module_threads", 8),
    ("--ws-queue-size", "TINYWASM_WS_QUEUE_SIZE", "64", "ws_queue_size", 64),
    ("--watch", "TINYWASM_WATCH", "off", "watch", False),
    ("--watch", "TINYWASM_WATCH", "0", "watch", False),
    ("--watch", "TINYWASM_WATCH", "on", "watch", True),
    ("--watch-debounce", "TINYWASM_WATCH_DEBOUNCE", "0.3", "watch_debounce", 0.3),
    (
        "--watch-sources",
        "TINYWASM_WATCH_SOURCES",
        "a, b,a",
        "watch_sources",
        (Path("a"), Path("b")),
    ),
    ("--swap-probation", "TINYWASM_SWAP_PROBATION", "2", "swap_probation", 2.0),
    ("--health-interval", "TINYWASM_HEALTH_INTERVAL", "3", "health_interval", 3.0),
    ("--log-level", "TINYWASM_LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ("--log-level", "TINYWASM_LOG_LEVEL", "WARNING", "log_level", "WARNING"),
    ("--log-format", "TINYWASM_LOG_FORMAT", "json", "log_format", LogFormat.JSON),
    ("--log-format", "TINYWASM_LOG_FORMAT", "TEXT", "log_format", LogFormat.TEXT),
    ("--memory-limit", "TINYWASM_MEMORY_LIMIT", "16MiB", "memory_limit", 16 * 1024 * 1024),
    ("--memory-limit", "TINYWASM_MEMORY_LIMIT", "65536", "memory_limit", 65536),
    ("--memory-limit", "TINYWASM_MEMORY_LIMIT", "1.5 KiB", "memory_limit", 1536),
    ("--memory-limit", "TINYWASM_MEMORY_LIMIT", "2g", "memory_limit", 2 * 1024**3),
    ("--call-timeout", "TINYWASM_CALL_TIMEOUT", "0.5", "call_timeout", 0.5),
    ("--max-module-size", "TINYWASM_MAX_MODULE_SIZE", "4MiB", "max_module_size", 4 * 1024**2),
    ("--max-payload", "TINYWASM_MAX_PAYLOAD", "64KiB", "max_payload", 65536),
    ("--quarantine-traps", "TINYWASM_QUARANTINE_TRAPS", "3", "quarantine_traps", 3),
    ("--quarantine-window", "TINYWASM_QUARANTINE_WINDOW", "2.5", "quarantine_window", 2.5),
    ("--quarantine-backoff", "TINYWASM_QUARANTINE_BACKOFF", "1", "quarantine_backoff", 1.0),
    ("--cache-dir", "TINYWASM_CACHE_DIR", "/var/cache/tw", "cache_dir", Path("/var/cache/tw")),
    ("--cache-dir", "TINYWASM_CACHE_DIR", "off", "cache_dir", None),
    ("--state-dir", "TINYWASM_STATE_DIR", "/var/lib/tw", "state_dir", Path("/var/lib/tw")),
    ("--ws-max-frame", "TINYWASM_WS_MAX_FRAME", "4KiB", "ws_max_frame", 4096),
    ("--ws-queue-bytes", "TINYWASM_WS_QUEUE_BYTES", "1MiB", "ws_queue_bytes", 1024**2),
    ("--ws-rate-limit", "TINYWASM_WS_RATE_LIMIT", "0", "ws_rate_limit", 0.0),
    ("--ws-rate-limit", "TINYWASM_WS_RATE_LIMIT", "25.5", "ws_rate_limit", 25.5),
    (
        "--ws-origins",
        "TINYWASM_WS_ORIGINS",
        "https://a.example, http://localhost:8080/",
        "ws_origins",
        ("https://a.example", "http://localhost:8080"),
    ),
    ("--ws-origins", "TINYWASM_WS_ORIGINS", "*", "ws_origins", ("*",)),
    ("--ws-origins", "TINYWASM_WS_ORIGINS", "", "ws_origins", ()),
    ("--admin-token", "TINYWASM_ADMIN_TOKEN", "s3cret-token", "admin_token", "s3cret-token"),
    ("--http-max-body", "TINYWASM_HTTP_MAX_BODY", "2MiB", "http_max_body", 2 * 1024**2),
    ("--header-timeout", "TINYWASM_HEADER_TIMEOUT", "2.5", "header_timeout", 2.5),
    ("--history", "TINYWASM_HISTORY", "chat.>:100:300s", "history", ("chat.>:100:300s",)),
    ("--history", "TINYWASM_HISTORY", "a:1:1s, b.*:2:5m", "history", ("a:1:1s", "b.*:2:5m")),
    ("--history", "TINYWASM_HISTORY", "", "history", ()),
    ("--history-max-topics", "TINYWASM_HISTORY_MAX_TOPICS", "50", "history_max_topics", 50),
    ("--history-max-bytes", "TINYWASM_HISTORY_MAX_BYTES", "1MiB", "history_max_bytes", 1024**2),
    ("--auth-secret", "TINYWASM_AUTH_SECRET", "k" * 32, "auth_secret", "k" * 32),
    (
        "--auth-public-key",
        "TINYWASM_AUTH_PUBLIC_KEY",
        "/etc/tw/key.pem",
        "auth_public_key",
        Path("/etc/tw/key.pem"),
    ),
    ("--status-private", "TINYWASM_STATUS_PRIVATE", "on", "status_private", True),
    ("--status-private", "TINYWASM_STATUS_PRIVATE", "off", "status_private", False),
    ("--uvloop", "TINYWASM_UVLOOP", "off", "uvloop", False),
    ("--nats", "TINYWASM_NATS", "nats://127.0.0.1:4222", "nats", ("nats://127.0.0.1:4222",)),
    (
        "--nats",
        "TINYWASM_NATS",
        "nats://a:4222, nats://b:4222",
        "nats",
        ("nats://a:4222", "nats://b:4222"),
    ),
    ("--nats-buffer", "TINYWASM_NATS_BUFFER", "0", "nats_buffer", 0),
    ("--workers", "TINYWASM_WORKERS", "3", "workers", 3),
    ("--workers", "TINYWASM_WORKERS", "1", "workers", 1),
    ("--worker-index", "TINYWASM_WORKER_INDEX", "0", "worker_index", 0),
    ("--node", "TINYWASM_NODE", "eu-1", "node", "eu-1"),
    ("--uvloop", "TINYWASM_UVLOOP", "on", "uvloop", True),
]

# A valid value for each variable that differs from every value in VALUES.
OTHER = {
    "TINYWASM_HOST": "10.0.0.1",
    "TINYWASM_PORT": "7000",
    "TINYWASM_MODULES_DIR": "/elsewhere",
    "TINYWASM_WEB_DIR": "/elsewhere",
    "TINYWASM_DRAIN_TIMEOUT": "9",
    "TINYWASM_WS_INBOUND": "other.>",
    "TINYWASM_MAILBOX_SIZE": "99",
    "TINYWASM_MAILBOX_BYTES": "99KiB",
    "TINYWASM_MODULE_THREADS": "3",
    "TINYWASM_WS_QUEUE_SIZE": "99",
    "TINYWASM_WATCH": "yes",
    "TINYWASM_WATCH_DEBOUNCE": "7",
    "TINYWASM_WATCH_SOURCES": "c",
    "TINYWASM_SWAP_PROBATION": "7",
    "TINYWASM_HEALTH_INTERVAL": "7",
    "TINYWASM_LOG_LEVEL": "ERROR",
    "TINYWASM_LOG_FORMAT": "json",
    "TINYWASM_MEMORY_LIMIT": "7MiB",
    "TINYWASM_CALL_TIMEOUT": "7",
    "TINYWASM_MAX_MODULE_SIZE": "7MiB",
    "TINYWASM_MAX_PAYLOAD": "7KiB",
    "TINYWASM_QUARANTINE_TRAPS": "7",
    "TINYWASM_QUARANTINE_WINDOW": "7",
    "TINYWASM_QUARANTINE_BACKOFF": "7",
    "TINYWASM_CACHE_DIR": "/elsewhere",
    "TINYWASM_STATE_DIR": "/elsewhere/state",
    "TINYWASM_WS_MAX_FRAME": "7KiB",
    "TINYWASM_WS_QUEUE_BYTES": "7KiB",
    "TINYWASM_WS_RATE_LIMIT": "7",
    "TINYWASM_WS_ORIGINS": "https://other.example",
    "TINYWASM_ADMIN_TOKEN": "other-token",
    "TINYWASM_HTTP_MAX_BODY": "7KiB",
    "TINYWASM_HEADER_TIMEOUT": "30",
    "TINYWASM_UVLOOP": "no",
    "TINYWASM_NATS": "nats://elsewhere:4222",
    "TINYWASM_NATS_BUFFER": "7",
    "TINYWASM_WORKERS": "7",
    "TINYWASM_WORKER_INDEX": "",
    "TINYWASM_NODE": "other_node",
    "TINYWASM_HISTORY": "other:1:1",
    "TINYWASM_HISTORY_MAX_TOPICS": "7",
    "TINYWASM_HISTORY_MAX_BYTES": "7KiB",
    "TINYWASM_AUTH_SECRET": "o" * 32,
    "TINYWASM_AUTH_PUBLIC_KEY": "/elsewhere/key.pem",
    "TINYWASM_WS_INBOUND_FILE": "/elsewhere/inbound.txt",
    "TINYWASM_STATUS_PRIVATE": "yes",
}

FLAGS = sorted({row[0] for row in VALUES})
VARIABLES = sorted(OTHER)


def test_history_flag_repeats_and_bad_rules_name_the_setting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = parse_config(["--history", "a:1:1", "--history", "b.>:2:2m"], {})
    assert config.history == ("a:1:1", "b.>:2:2m")
    with pytest.raises(SystemExit):
        parse_config(["--history", "chat:0:1"], {})
    err = " ".join(capsys.readouterr().err.split())
    assert "--history / TINYWASM_HISTORY: --history 'chat:0:1' is not valid: history rule" in err
    assert "size must be 1 to 100000 messages" in err


def test_no_watch_turns_watching_off_and_beats_the_variable() -> None:
    assert parse_config(["--no-watch"], {}).watch is False
    assert parse_config(["--no-watch"], {"TINYWASM_WATCH": "on"}).watch is False
    assert parse_config([], {}).watch is True


def test_no_uvloop_turns_uvloop_off_and_beats_the_variable() -> None:
    assert parse_config(["--no-uvloop"], {}).uvloop is False
    assert parse_config(["--no-uvloop"], {"TINYWASM_UVLOOP": "on"}).uvloop is False
    assert parse_config([], {}).uvloop is True


def test_tables_cover_every_config_field() -> None:
    fields = {f.name for f in dataclasses.fields(Config)} - {"environment"}  # not a setting
    assert {row[3] for row in VALUES} == fields
    assert {f"TINYWASM_{field.upper()}" for field in fields} == set(VARIABLES)


@pytest.mark.parametrize(("flag", "variable", "raw", "attr", "expected"), VALUES)
def test_setting_from_flag(flag: str, variable: str, raw: str, attr: str, expected: object) -> None:
    assert getattr(parse_config([flag, raw], {}), attr) == expected
    assert getattr(parse_config([f"{flag}={raw}"], {}), attr) == expected


@pytest.mark.parametrize(("flag", "variable", "raw", "attr", "expected"), VALUES)
def test_setting_from_env(flag: str, variable: str, raw: str, attr: str, expected: object) -> None:
    assert getattr(parse_config([], {variable: raw}), attr) == expected


@pytest.mark.parametrize(("flag", "variable", "raw", "attr", "expected"), VALUES)
def test_flag_beats_env(flag: str, variable: str, raw: str, attr: str, expected: object) -> None:
    assert getattr(parse_config([flag, raw], {variable: OTHER[variable]}), attr) == expected


def test_defaults_when_neither_flag_nor_env() -> None:
    assert parse_config([], {}) == Config()
    assert parse_config([], {"HOME": "/root", "TINYWASM_UNKNOWN": "x"}) == Config()


def test_empty_variable_counts_as_unset_except_ws_inbound_and_origins() -> None:
    env = dict.fromkeys(VARIABLES, "")
    assert parse_config([], env) == Config(ws_inbound=(), ws_origins=())


def test_settings_combine() -> None:
    config = parse_config(
        ["--port", "9000", "--ws-inbound", ""],
        {"TINYWASM_HOST": "0.0.0.0", "TINYWASM_PORT": "1", "TINYWASM_MAILBOX_SIZE": "3"},
    )
    assert config == Config(host="0.0.0.0", port=9000, ws_inbound=(), mailbox_size=3)


# (flag, variable, raw value, fragment of the reason)
BAD_VALUES = [
    ("--host", "TINYWASM_HOST", " 127.0.0.1", "expected a non-empty value"),
    ("--port", "TINYWASM_PORT", "abc", "expected a whole number from 0 to 65535"),
    ("--node", "TINYWASM_NODE", "web.example", "use 1 to 63 letters, digits, '-' or '_'"),
    ("--node", "TINYWASM_NODE", "a b", "use 1 to 63 letters, digits, '-' or '_'"),
    ("--port", "TINYWASM_PORT", "80.5", "expected a whole number from 0 to 65535"),
    ("--port", "TINYWASM_PORT", "-1", "expected a whole number from 0 to 65535"),
    ("--port", "TINYWASM_PORT", "65536", "expected a whole number from 0 to 65535"),
    ("--drain-timeout", "TINYWASM_DRAIN_TIMEOUT", "-1", "zero or more"),
    ("--drain-timeout", "TINYWASM_DRAIN_TIMEOUT", "soon", "expected a number of seconds"),
    ("--drain-timeout", "TINYWASM_DRAIN_TIMEOUT", "nan", "expected a number of seconds"),
    ("--drain-timeout", "TINYWASM_DRAIN_TIMEOUT", "inf", "expected a number of seconds"),
    ("--ws-inbound", "TINYWASM_WS_INBOUND", "chat,a..b", "pattern 'a..b' has an empty token"),
    ("--ws-inbound", "TINYWASM_WS_INBOUND", "chat,,rooms", "pattern is empty"),
    ("--ws-inbound", "TINYWASM_WS_INBOUND", "chat,", "pattern is empty"),
    ("--ws-inbound", "TINYWASM_WS_INBOUND", "ch*", "a wildcard must be a whole token"),
    ("--ws-inbound", "TINYWASM_WS_INBOUND", ">.a", "'>' may only be the last token"),
    ("--ws-inbound", "TINYWASM_WS_INBOUND", "chat rooms", "white space"),
    ("--mailbox-size", "TINYWASM_MAILBOX_SIZE", "0", "expected a whole number of at least 1"),
    ("--mailbox-size", "TINYWASM_MAILBOX_SIZE", "lots", "expected a whole number of at least 1"),
    ("--ws-queue-size", "TINYWASM_WS_QUEUE_SIZE", "-5", "expected a whole number of at least 1"),
    ("--module-threads", "TINYWASM_MODULE_THREADS", "-1", "expected a whole number from 0"),
    ("--module-threads", "TINYWASM_MODULE_THREADS", "1", "with one thread, a slow module"),
    ("--module-threads", "TINYWASM_MODULE_THREADS", "257", "expected a whole number from 0"),
    ("--log-level", "TINYWASM_LOG_LEVEL", "loud", "expected one of DEBUG, INFO, WARNING"),
    ("--log-format", "TINYWASM_LOG_FORMAT", "yaml", "expected text or json"),
    ("--memory-limit", "TINYWASM_MEMORY_LIMIT", "lots", "expected a size in bytes"),
    ("--memory-limit", "TINYWASM_MEMORY_LIMIT", "0", "expected a size in bytes"),
    ("--memory-limit", "TINYWASM_MEMORY_LIMIT", "5 parsecs", "expected a size in bytes"),
    ("--call-timeout", "TINYWASM_CALL_TIMEOUT", "0", "more than zero"),
    ("--call-timeout", "TINYWASM_CALL_TIMEOUT", "1e308", "more than zero and at most 3600"),
    ("--memory-limit", "TINYWASM_MEMORY_LIMIT", "5GiB", "at most 4GiB"),
    ("--memory-limit", "TINYWASM_MEMORY_LIMIT", "1e30GiB", "expected a size in bytes"),
    ("--max-payload", "TINYWASM_MAX_PAYLOAD", "99999999999999999999999", "expected a size"),
    ("--ws-rate-limit", "TINYWASM_WS_RATE_LIMIT", "-1", "expected frames per second"),
    ("--ws-origins", "TINYWASM_WS_ORIGINS", "example.com", "is not an origin"),
    ("--quarantine-traps", "TINYWASM_QUARANTINE_TRAPS", "0", "expected a whole number"),
]


def _exit_message(argv: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        parse_config(argv, env)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: tinywasm ")
    return err


@pytest.mark.parametrize(("flag", "variable", "raw", "reason"), BAD_VALUES)
def test_bad_flag_value_exits_2(
    flag: str, variable: str, raw: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _exit_message([flag, raw], {}, capsys)
    assert f"error: {flag} / {variable}: {flag} {raw!r} is not valid: " in err
    assert reason in err


@pytest.mark.parametrize(("flag", "variable", "raw", "reason"), BAD_VALUES)
def test_bad_env_value_exits_2(
    flag: str, variable: str, raw: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _exit_message([], {variable: raw}, capsys)
    assert f"error: {flag} / {variable}: {variable}={raw!r} is not valid: " in err
    assert reason in err


@pytest.mark.parametrize(
    ("flag", "reason"),
    [
        ("--host", "expected a non-empty value"),
        ("--port", "expected a whole number"),
        ("--modules-dir", "expected a folder path"),
        ("--web-dir", "expected a folder path"),
        ("--log-level", "expected one of"),
    ],
)
def test_empty_flag_value_exits_2(
    flag: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _exit_message([flag, ""], {}, capsys)
    assert f"{flag} '' is not valid: {reason}" in err


def test_bad_env_value_is_ignored_when_the_flag_is_given() -> None:
    assert parse_config(["--port", "1234"], {"TINYWASM_PORT": "nonsense"}).port == 1234


@pytest.mark.parametrize("argv", [["--nope"], ["--po", "8080"], ["serve"], ["--port"]])
def test_unknown_or_incomplete_arguments_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    _exit_message(argv, {}, capsys)


def test_help_explains_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(["--help"], {})
    assert info.value.code == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())  # argparse wraps lines
    for name in [*FLAGS, *VARIABLES, "TINYWASM_SERVER"]:
        assert name in flat
    for flag, variable, default in [
        ("--port", "TINYWASM_PORT", "6060"),
        ("--host", "TINYWASM_HOST", "127.0.0.1"),
        ("--ws-inbound", "TINYWASM_WS_INBOUND", "chat"),
        ("--drain-timeout", "TINYWASM_DRAIN_TIMEOUT", "5.0"),
        ("--log-level", "TINYWASM_LOG_LEVEL", "INFO"),
    ]:
        assert f"[env {variable}; default: {default}]" in flat
        assert flag in flat
    assert flat.count("default:") == len(FLAGS)


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, None), ({"TINYWASM_SERVER": ""}, None), ({"TINYWASM_SERVER": "wasi"}, "wasi")],
)
def test_select_server(env: dict[str, str], expected: str | None) -> None:
    assert SERVERS == ("wasi",)
    assert select_server(env) == expected


@pytest.mark.parametrize("value", ["nope", "WASI", " wasi", "default"])
def test_invalid_server_returns_2(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], env={"TINYWASM_SERVER": value}) == 2
    assert capsys.readouterr().err == (
        f"TINYWASM_SERVER={value!r} is not a valid server: use 'wasi' "
        "(or leave it unset for the static default server)\n"
    )


def test_main_bad_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--port", "x"], env={})
    assert info.value.code == 2
    assert "--port / TINYWASM_PORT" in capsys.readouterr().err


def test_main_dispatches_build(capsys: pytest.CaptureFixture[str]) -> None:
    # `build` ignores TINYWASM_SERVER and the server flags.
    with pytest.raises(SystemExit) as info:
        main(["build", "--help"], env={"TINYWASM_SERVER": "nope"})
    assert info.value.code == 0
    assert "build" in capsys.readouterr().out.splitlines()[0]


def test_xdg_cache_home_moves_the_default_cache_dir() -> None:
    assert default_cache_dir({}) == DEFAULT_CACHE_DIR
    assert default_cache_dir({"XDG_CACHE_HOME": ""}) == DEFAULT_CACHE_DIR
    xdg = {"XDG_CACHE_HOME": "/x/cache"}
    assert parse_config([], xdg).cache_dir == Path("/x/cache/tinywasm-wasi")
    assert parse_config([], {**xdg, "TINYWASM_CACHE_DIR": "/c"}).cache_dir == Path("/c")
    assert parse_config(["--cache-dir", "off"], xdg).cache_dir is None


@pytest.mark.parametrize(
    ("env", "fast"),
    [({}, True), ({"TINYWASM_FASTPATH": "1"}, True), ({"TINYWASM_FASTPATH": "0"}, False)],
)
def test_tinywasm_fastpath_0_selects_the_public_api(env: dict[str, str], fast: bool) -> None:
    assert fast_path(env) is fast


def test_main_prog_names_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"], env={}, prog="python -m cmd.tinywasm")
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m cmd.tinywasm ")
    assert "python -m cmd.tinywasm build MODULE-DIR..." in out
    with pytest.raises(SystemExit):
        main(["build", "--help"], env={})
    assert capsys.readouterr().out.startswith("usage: tinywasm build ")


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TINYWASM_")}
    environ.pop("PYTHONSAFEPATH", None)  # the repository root must come first on sys.path
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60
    )


def test_pdb_works_when_cmd_is_this_package() -> None:
    script = textwrap.dedent(
        """
        import os, sysconfig
        import cmd, pdb
        assert os.path.dirname(cmd.__file__) == os.path.join(os.getcwd(), "cmd"), cmd.__file__
        stdlib_cmd = os.path.join(sysconfig.get_paths()["stdlib"], "cmd.py")
        assert cmd.Cmd.__init__.__code__.co_filename == stdlib_cmd
        assert issubclass(pdb.Pdb, cmd.Cmd)
        pdb.Pdb()
        import cmd.tinywasm
        """
    )
    result = _run("-c", script)
    assert result.returncode == 0, result.stderr


def test_python_m_help() -> None:
    result = _run("-m", "cmd.tinywasm", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m cmd.tinywasm")
    assert "TINYWASM_SERVER" in result.stdout


def test_python_m_invalid_server() -> None:
    result = _run("-m", "cmd.tinywasm", env={"TINYWASM_SERVER": "nope"})
    assert result.returncode == 2
    assert "TINYWASM_SERVER='nope' is not a valid server" in result.stderr


def test_the_environment_is_handed_over_for_module_config_references() -> None:
    env = {"DB_PASSWORD": "hunter2", "TINYWASM_PORT": "7000"}
    config = parse_config([], env)
    assert config.environment == env
    assert "hunter2" not in repr(config)


def test_restart_needs_rolling(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["restart"], {}) == 2
    assert "--rolling" in capsys.readouterr().err


def test_restart_without_a_supervisor_says_where_it_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["restart", "--rolling", "--state-dir", str(tmp_path)], {})
    err = capsys.readouterr().err
    assert status == 1
    assert "no running supervisor found" in err and "supervisor.json" in err
