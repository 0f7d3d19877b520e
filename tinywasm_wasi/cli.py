"""The command line: flags and TINYWASM_* variables become a Config, then a running server.

Installed as the `tinywasm` console script; ``python -m cmd.tinywasm`` runs the same
`main` from the repository root. This is the only module that reads the environment
or prints: the library takes everything as arguments and logs. Each setting has a
flag and a variable; the flag wins over the variable, which wins over the Config default.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import logging
import math
import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus import TopicError, validate_pattern
from tinywasm_wasi.config import (
    DEFAULT_CACHE_DIR,
    MAX_CALL_TIMEOUT,
    MAX_MEMORY,
    MAX_MODULE_THREADS,
    MAX_WORKERS,
    WORKER_CANNOT_LISTEN,
    WORKER_ID_TAKEN,
    Config,
    LogFormat,
)
from tinywasm_wasi.eventloop import choose_loop
from tinywasm_wasi.exceptions import WorkerIdTaken
from tinywasm_wasi.logs import configure_logging
from tinywasm_wasi.policy.limits import LimitsError, parse_size
from tinywasm_wasi.policy.placement import check_node_name, node_from_host, worker_name
from tinywasm_wasi.policy.topic_history import parse_history_rule

__all__ = [
    "SERVERS",
    "build",
    "default_cache_dir",
    "deploy",
    "fast_path",
    "main",
    "parse_config",
    "restart",
    "select_server",
    "serve_config",
]

SERVERS = ("wasi",)
AUTHOR_COMMANDS = ("build", "new", "dev")  # tinywasm_wasi.cli_authors
SERVER_ENV = "TINYWASM_SERVER"
FASTPATH_ENV = "TINYWASM_FASTPATH"
PROG = "tinywasm"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Errors from binding the listening socket; anything else is reported as it is.
_LISTEN_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})

log = logging.getLogger("tinywasm.cli")


def _text(value: str) -> str:
    if not value or value != value.strip():
        raise ValueError("expected a non-empty value without surrounding spaces")
    return value


def _path(value: str) -> Path:
    if not value:
        raise ValueError("expected a folder path")
    return Path(value)


def _whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    wanted = f"from {low} to {high}" if high is not None else f"of at least {low}"

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"expected a whole number {wanted}") from None
        if number < low or (high is not None and number > high):
            raise ValueError(f"expected a whole number {wanted}")
        return number

    return parse


def _module_threads(value: str) -> int:
    """0 (automatic) or 2 to MAX_MODULE_THREADS: one thread would let a slow module
    hold up every other."""
    number = _whole_number(0, MAX_MODULE_THREADS)(value)
    if number == 1:
        raise ValueError(
            "expected 0 (automatic) or at least 2: with one thread, a slow module would "
            "hold up every other"
        )
    return number


def _non_negative(what: str) -> Callable[[str], float]:
    """A parser for a finite number, zero or more; `what` completes "expected ..."."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"expected {what}")
        return number

    return parse


_seconds = _non_negative("a number of seconds, zero or more, e.g. 5 or 0.5")
_rate = _non_negative("frames per second, zero (no limit) or more, e.g. 100")


def _positive_seconds(value: str) -> float:
    seconds = _seconds(value)
    if seconds == 0:
        raise ValueError("expected a number of seconds more than zero, e.g. 10")
    return seconds


def _call_timeout(value: str) -> float:
    seconds = _seconds(value)
    if seconds == 0 or seconds > MAX_CALL_TIMEOUT:
        raise ValueError(
            f"expected a number of seconds more than zero and at most {MAX_CALL_TIMEOUT:g}, "
            "e.g. 0.1"
        )
    return seconds


def _memory(value: str) -> int:
    size = _size(value)
    if size > MAX_MEMORY:
        raise ValueError("expected a size of at most 4GiB, the most a 32-bit memory can address")
    return size


def _patterns(value: str) -> tuple[str, ...]:
    if not value.strip():
        return ()
    patterns = [p.strip() for p in value.split(",")]
    for pattern in patterns:
        try:
            validate_pattern(pattern)
        except TopicError as exc:
            raise ValueError(f"{exc} (separate patterns with commas)") from None
    return tuple(dict.fromkeys(patterns))


def _history(value: str) -> tuple[str, ...]:
    if not value.strip():
        return ()
    rules = [r.strip() for r in value.split(",")]
    for rule in rules:
        parse_history_rule(rule)  # its ValueError names the rule and gives an example
    return tuple(dict.fromkeys(rules))


def _size(value: str) -> int:
    try:
        return parse_size(value)
    except LimitsError:
        raise ValueError("expected a size in bytes, e.g. 65536, 64KiB or 16MiB") from None


def _origins(value: str) -> tuple[str, ...]:
    origins = [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
    for origin in origins:
        if origin != "*" and "://" not in origin:
            raise ValueError(
                f"{origin!r} is not an origin: use scheme://host[:port], e.g. "
                "https://example.com, or * for any"
            )
    return tuple(dict.fromkeys(origins))


NATS_SCHEMES = ("nats://", "tls://", "ws://", "wss://")


def _nats_urls(value: str) -> tuple[str, ...]:
    urls = [u.strip() for u in value.split(",") if u.strip()]
    for url in urls:
        if not url.startswith(NATS_SCHEMES) or len(url.split("://", 1)[1]) == 0:
            raise ValueError(
                f"{url!r} is not a NATS server URL: use nats://host:port, e.g. "
                "nats://127.0.0.1:4222 (separate a cluster's servers with commas)"
            )
    return tuple(dict.fromkeys(urls))


def _folders(value: str) -> tuple[Path, ...]:
    return tuple(dict.fromkeys(Path(v.strip()) for v in value.split(",") if v.strip()))


def _optional_path(value: str) -> Path | None:
    if value.strip().lower() in ("off", "none"):
        return None
    return _path(value)


def _switch(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "on", "true", "yes"):
        return True
    if lowered in ("0", "off", "false", "no"):
        return False
    raise ValueError("expected on or off (also 1/0, true/false, yes/no)")


def _log_format(value: str) -> LogFormat:
    try:
        return LogFormat(value.lower())
    except ValueError:
        raise ValueError("expected text or json") from None


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return level


@dataclass(frozen=True)
class _Setting:
    """One Config field as a flag and a TINYWASM_* variable."""

    field: str
    metavar: str
    parse: Callable[[str], Any]
    help: str
    # An empty variable counts as unset, unless empty is itself a meaningful value.
    empty_is_value: bool = False
    # The flag may repeat; its values are joined with commas, as the variable takes them.
    repeat: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def env(self) -> str:
        return "TINYWASM_" + self.field.upper()


SETTINGS = (
    _Setting("host", "ADDRESS", _text, "address to listen on"),
    _Setting("port", "PORT", _whole_number(0, 65535), "TCP port to listen on; 0 picks a free one"),
    _Setting("modules_dir", "DIR", _path, "folder of compiled .wasm modules the wasi server hosts"),
    _Setting("web_dir", "DIR", _path, "folder of static files served at /"),
    _Setting(
        "drain_timeout",
        "SECONDS",
        _seconds,
        "seconds each module gets to finish its queued messages when it is swapped or stopped",
    ),
    _Setting(
        "ws_inbound",
        "PATTERNS",
        _patterns,
        "comma-separated topic patterns browsers may publish to, e.g. 'chat,rooms.>'; "
        "empty means browsers may not publish",
        empty_is_value=True,
    ),
    _Setting(
        "ws_inbound_file",
        "FILE",
        _path,
        "file of the topic patterns browsers may publish to (one per line or comma-separated, "
        "# comments), used instead of --ws-inbound; read at start and again on SIGHUP",
    ),
    _Setting(
        "mailbox_size",
        "N",
        _whole_number(1),
        "messages a module's mailbox holds before further ones are dropped and counted",
    ),
    _Setting(
        "mailbox_bytes",
        "SIZE",
        _size,
        "bytes of messages a module's mailbox holds before further ones are dropped and counted",
    ),
    _Setting(
        "module_threads",
        "N",
        _module_threads,
        "threads that run the modules' mailboxes, one item at a time per module; "
        "an idle module costs none (0: min(4, CPUs + 1); else at least 2)",
    ),
    _Setting(
        "ws_queue_size",
        "N",
        _whole_number(1),
        "frames a WebSocket client may have queued before it is disconnected as slow",
    ),
    _Setting(
        "watch",
        "on|off",
        _switch,
        "hot-swap a module when its .wasm in the modules folder is written, replaced "
        "or deleted (--no-watch is --watch off)",
    ),
    _Setting(
        "watch_debounce",
        "SECONDS",
        _seconds,
        "quiet time a changed file must keep before it is loaded",
    ),
    _Setting(
        "watch_sources",
        "DIRS",
        _folders,
        "comma-separated module folders (sources and module.toml) rebuilt into the modules "
        "folder when their sources change; `tinywasm dev` sets it",
        empty_is_value=True,
    ),
    _Setting(
        "swap_probation",
        "SECONDS",
        _seconds,
        "how long a swapped-in version is watched; a trap then rolls back to the old one",
    ),
    _Setting(
        "health_interval",
        "SECONDS",
        _seconds,
        "seconds between health_check() calls on live modules; 0 checks only before a "
        "version takes traffic",
    ),
    _Setting("log_level", "LEVEL", _log_level, f"one of {', '.join(LOG_LEVELS)}"),
    _Setting(
        "nats",
        "URLS",
        _nats_urls,
        "NATS server(s) the bus joins, e.g. nats://127.0.0.1:4222 (comma-separated for a "
        "cluster); unset: this process only",
    ),
    _Setting(
        "nats_buffer",
        "N",
        _whole_number(0),
        "messages for other processes held while NATS is away; past it they are dropped "
        "and counted",
    ),
    _Setting(
        "workers",
        "N",
        _whole_number(1, MAX_WORKERS),
        "worker processes sharing the port, joined over NATS (an embedded nats-server "
        "on loopback unless --nats is given); 1 runs everything in this process",
    ),
    _Setting(
        "node",
        "NAME",
        check_node_name,
        "this machine's name in a fleet of machines on one NATS: its workers are "
        "NAME-w0, NAME-w1, ... and must not clash with another machine's "
        "(unset: the host's short name)",
    ),
    _Setting(
        "worker_index",
        "I",
        _whole_number(0, MAX_WORKERS - 1),
        "this process's place among --workers; set by the supervisor, not by hand",
    ),
    _Setting(
        "uvloop",
        "on|off",
        _switch,
        "run on uvloop's event loop when it is installed (--no-uvloop is --uvloop off)",
    ),
    _Setting(
        "log_format",
        "text|json",
        _log_format,
        "log lines as text, or as one JSON object per line (ts, level, logger, msg, event...)",
    ),
    _Setting(
        "memory_limit",
        "SIZE",
        _memory,
        "linear memory a module may grow to (e.g. 64MiB); beyond it memory.grow fails",
    ),
    _Setting(
        "call_timeout",
        "SECONDS",
        _call_timeout,
        "deadline for one call into a module (init, on_message, handle, drain...)",
    ),
    _Setting("max_module_size", "SIZE", _size, "largest .wasm file loaded"),
    _Setting("max_payload", "SIZE", _size, "largest payload a module may publish or broadcast"),
    _Setting(
        "quarantine_traps",
        "N",
        _whole_number(1),
        "traps within --quarantine-window seconds that put a module in quarantine",
    ),
    _Setting("quarantine_window", "SECONDS", _seconds, "window over which traps are counted"),
    _Setting(
        "quarantine_backoff",
        "SECONDS",
        _seconds,
        "first wait before a quarantined module is retried (doubles each time, at most 5 min)",
    ),
    _Setting(
        "cache_dir",
        "DIR|off",
        _optional_path,
        "folder for compiled modules, so restarts and swaps skip compiling; off disables it",
    ),
    _Setting(
        "state_dir",
        "DIR",
        _path,
        "folder for the server's own state (history, pins); unset: .tinywasm inside the "
        "modules folder",
    ),
    _Setting("ws_max_frame", "SIZE", _size, "largest WebSocket frame a client may send"),
    _Setting(
        "ws_queue_bytes",
        "SIZE",
        _size,
        "bytes a WebSocket client may have queued before it is disconnected as slow",
    ),
    _Setting(
        "ws_rate_limit",
        "PER_SECOND",
        _rate,
        "frames per second one WebSocket connection may send; 0 turns the limit off",
    ),
    _Setting(
        "ws_origins",
        "ORIGINS",
        _origins,
        "comma-separated origins allowed to open /ws, or *; empty means the server's own "
        "origin only (clients that send no Origin header are allowed)",
        empty_is_value=True,
    ),
    _Setting(
        "admin_token",
        "TOKEN",
        _text,
        "token for admin endpoints (Authorization: Bearer TOKEN); unset: loopback clients only",
    ),
    _Setting(
        "status_private",
        "on|off",
        _switch,
        "also guard GET /api/modules and module history like the admin endpoints "
        "(/healthz stays public)",
    ),
    _Setting(
        "history",
        "RULES",
        _history,
        "comma-separated topic history rules pattern:size:ttl, e.g. 'chat.>:100:300s': "
        "browsers reconnecting with since= get what they missed; the flag may repeat; "
        "empty: no history",
        repeat=True,
    ),
    _Setting(
        "history_max_topics",
        "N",
        _whole_number(1),
        "topics whose history is kept at most; the least recent one is dropped first",
    ),
    _Setting(
        "history_max_bytes",
        "SIZE",
        _size,
        "bytes of history kept at most over all topics; the least recent topic is dropped first",
    ),
    _Setting(
        "auth_secret",
        "SECRET",
        _text,
        "turn on token auth for /ws: HS256 secret (at least 32 bytes) that signs connection "
        "JWTs; prefer the variable, a flag shows in the process list",
    ),
    _Setting(
        "auth_public_key",
        "PEM_FILE",
        _path,
        "turn on token auth for /ws: PEM file of the RSA (RS256) or Ed25519 (EdDSA) public "
        "key that verifies connection JWTs",
    ),
    _Setting(
        "http_max_body",
        "SIZE",
        _size,
        "largest HTTP request body passed to a module and largest full-mode response body",
    ),
    _Setting(
        "header_timeout",
        "SECONDS",
        _positive_seconds,
        "seconds a new connection has to send its request head before it gets 408 and is closed",
    ),
)


def _epilog(prog: str) -> str:
    return f"""\
environment:
  Each setting above can also be set with its TINYWASM_* variable; the flag wins.
  An empty variable counts as unset, except TINYWASM_WS_INBOUND, where empty
  means browsers may not publish.
  {SERVER_ENV}={SERVERS[0]} hosts the WebAssembly modules on the bus with the
  WebSocket hub at /ws; unset or empty runs the static default server, which
  serves the web folder only.
  {FASTPATH_ENV}=0 calls modules through wasmtime's public API instead of the
  fast path (slower; for comparison and debugging).
  XDG_CACHE_HOME moves the default cache folder to $XDG_CACHE_HOME/{DEFAULT_CACHE_DIR.name}.

Write modules:
  {prog} new NAME --lang c|cpp|zig|rust|go|assemblyscript|wat   a module folder
  {prog} build MODULE-DIR...     compile into the modules folder and check it
  {prog} dev [MODULE-DIR...] [flags]   serve, and rebuild and swap modules on each save
Deploy one to a running server with: {prog} deploy <file.wasm> --server URL
Replace running --workers one at a time: {prog} restart --rolling [--modules-dir D]
"""


def _show_default(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(value) if value else "'' (none)"
    return str(value)


def _parser(prog: str, defaults: Config) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the web folder and, with TINYWASM_SERVER=wasi, host WebAssembly\n"
        "modules on a pub/sub bus that fans out to WebSocket clients.",
        epilog=_epilog(prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    for setting in SETTINGS:
        default = _show_default(getattr(defaults, setting.field))
        help_text = f"{setting.help} [env {setting.env}; default: {default}]"
        parser.add_argument(
            setting.flag,
            dest=setting.field,
            metavar=setting.metavar,
            default=None,
            action="append" if setting.repeat else "store",
            help=help_text.replace("%", "%%"),  # argparse %-formats help strings
        )
    parser.add_argument(
        "--no-watch", dest="watch", action="store_const", const="off", help="same as --watch off"
    )
    parser.add_argument(
        "--no-uvloop",
        dest="uvloop",
        action="store_const",
        const="off",
        help="same as --uvloop off",
    )
    return parser


def default_cache_dir(env: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME/tinywasm-wasi`` if that variable is set, else Config's default."""
    xdg = env.get("XDG_CACHE_HOME")
    return Path(xdg) / DEFAULT_CACHE_DIR.name if xdg else DEFAULT_CACHE_DIR


def parse_config(argv: list[str], env: Mapping[str, str], prog: str = PROG) -> Config:
    """Build a Config from flags, then TINYWASM_* variables, then the Config defaults.

    Raises:
        SystemExit: status 2 with a message naming the flag and the variable
            for a bad value; status 0 after printing ``--help``.
    """
    cache_dir = default_cache_dir(env)
    parser = _parser(prog, Config(cache_dir=cache_dir))
    args = parser.parse_args(argv)
    values: dict[str, Any] = {"cache_dir": cache_dir}
    for setting in SETTINGS:
        raw: str | list[str] | None = getattr(args, setting.field)
        if isinstance(raw, list):
            raw = ",".join(raw)
        source = f"{setting.flag} {raw!r}"
        if raw is None:
            raw = env.get(setting.env)
            if raw is None or (raw == "" and not setting.empty_is_value):
                continue
            source = f"{setting.env}={raw!r}"
        try:
            values[setting.field] = setting.parse(raw)
        except ValueError as exc:
            parser.error(f"{setting.flag} / {setting.env}: {source} is not valid: {exc}")
    try:
        # Modules' <name>.toml may refer to the environment as ${NAME}: hand it over.
        config = Config(**values, environment=dict(env))
    except ValueError as exc:  # a rule Config checks and the parsers above do not
        parser.error(str(exc))
    if config.auth_secret is not None:
        from tinywasm_wasi.policy.tokens import TokenVerifier

        try:  # here, not at start-up: a usage line rather than a traceback (never the secret)
            TokenVerifier(secret=config.auth_secret)
        except ValueError as exc:
            parser.error(f"--auth-secret / TINYWASM_AUTH_SECRET: {exc}")
    return config


def select_server(env: Mapping[str, str]) -> str | None:
    """The server TINYWASM_SERVER names, or None for the static default server.

    Raises:
        ValueError: the variable names no server; the message says what to use.
    """
    name = env.get(SERVER_ENV, "")
    if not name:
        return None
    if name not in SERVERS:
        choices = " or ".join(repr(s) for s in SERVERS)
        raise ValueError(
            f"{SERVER_ENV}={name!r} is not a valid server: use {choices} "
            "(or leave it unset for the static default server)"
        )
    return name


def fast_path(env: Mapping[str, str]) -> bool:
    """False if ``TINYWASM_FASTPATH=0``: call modules through wasmtime's public API."""
    return env.get(FASTPATH_ENV, "1") != "0"


def build(argv: list[str], prog: str = f"{PROG} build") -> int:
    """Run ``tinywasm build <module-dir>...``; return the exit status (`cli_authors.build`)."""
    from tinywasm_wasi.cli_authors import build as build_command

    return build_command(argv, os.environ, prog=prog)


def deploy(argv: list[str], env: Mapping[str, str], prog: str = f"{PROG} deploy") -> int:
    """Run ``tinywasm deploy <file.wasm> --server URL [--token T] [--name N] [--delete]``."""
    from tinywasm_wasi.deploy_client import DeployClientError, send
    from tinywasm_wasi.policy.rules import RuleError, parse_file_name

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Deploy a module to a running server (PUT /api/modules/<name>), "
        "or remove it with --delete.",
        epilog="The token defaults to TINYWASM_ADMIN_TOKEN; without one, the server "
        "accepts deploys from its own machine only.",
    )
    parser.add_argument("file", type=Path, metavar="file.wasm", help="the module to deploy")
    parser.add_argument("--server", required=True, metavar="URL", help="e.g. http://127.0.0.1:6060")
    parser.add_argument("--token", default=None, help="the server's admin token")
    parser.add_argument(
        "--name", default=None, help="module name (default: from the file name, e.g. chat)"
    )
    parser.add_argument(
        "--delete", action="store_true", help="unload the module and remove its file instead"
    )
    args = parser.parse_args(argv)
    name = args.name
    if name is None:
        try:
            name = parse_file_name(args.file.name).name
        except RuleError as exc:
            parser.error(f"{exc}; or give --name")
    token = args.token or env.get("TINYWASM_ADMIN_TOKEN") or None
    data = None
    if not args.delete:
        try:
            data = args.file.read_bytes()
        except OSError as exc:
            print(f"error: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    try:
        answer = send(args.server, name, data, token=token)
    except DeployClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    body = answer.body
    if body is not None and "outcome" in body:
        result = body.get("result") or {}
        line = f"{name}: {body['outcome']} (sha256 {str(body.get('sha256', '-'))[:12]}"
        if result.get("duration_ms") is not None:
            line += f", {result['duration_ms']:.1f} ms"
        line += ")"
        if body.get("error"):
            line += f": {body['error']}"
        print(line, file=sys.stdout if answer.ok else sys.stderr)
    else:
        print(f"error: the server answered {answer.status}: {answer.text}", file=sys.stderr)
    return 0 if answer.ok else 1


def restart(argv: list[str], env: Mapping[str, str], prog: str = f"{PROG} restart") -> int:
    """Run ``tinywasm restart --rolling [server flags]``: replace a running supervisor's
    workers one at a time (it is found through the state folder the flags name)."""
    from tinywasm_wasi.cluster.restart import RestartError, ask_rolling_restart

    if "--rolling" not in argv:
        print(
            f"usage: {prog} --rolling [the server's --modules-dir / --state-dir]\n"
            "only rolling restarts exist: the workers are replaced one at a time",
            file=sys.stderr,
        )
        return 2
    config = parse_config([a for a in argv if a != "--rolling"], env, prog)
    try:
        report = asyncio.run(ask_rolling_restart(config.state_path))
    except RestartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for worker in report.get("workers", []):
        print(f"{worker['worker']}: replaced in {worker['seconds']:.1f} s")
    print(f"rolling restart done in {report.get('seconds', 0):.1f} s")
    return 0


def main(
    argv: list[str] | None = None, env: Mapping[str, str] | None = None, *, prog: str = PROG
) -> int:
    """Run ``tinywasm [build] ...``; return the exit status.

    `prog` names the command in usage and help (``python -m cmd.tinywasm`` passes its own).
    """
    args = sys.argv[1:] if argv is None else argv
    environ = os.environ if env is None else env
    if args[:1] == ["deploy"]:
        return deploy(args[1:], environ, prog=f"{prog} deploy")
    if args[:1] == ["restart"]:
        return restart(args[1:], environ, prog=f"{prog} restart")
    if args[:1] and args[0] in AUTHOR_COMMANDS:
        from tinywasm_wasi import cli_authors

        command = getattr(cli_authors, args[0])
        status: int = command(args[1:], environ, prog=f"{prog} {args[0]}")
        return status

    try:
        server_name = select_server(environ)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    config = parse_config(args, environ, prog)
    index = config.worker_index
    worker = f"[{worker_name(index, config.node)}] " if index is not None else ""
    configure_logging(config.log_level, config.log_format, prefix=worker)
    from tinywasm_wasi.web.connections import raise_fd_limit

    raised = raise_fd_limit()
    if raised is not None:
        log.info("raised the open-file limit from %d to %d (the hard limit)", *raised)
    if config.workers > 1 and not config.is_worker:
        if server_name != "wasi":
            log.error("--workers needs the wasi server: set %s=wasi", SERVER_ENV)
            return 2
        from tinywasm_wasi.cluster.supervisor import Supervisor

        if not config.node:  # the supervisor names its workers <node>-w0 ... (--node)
            config = dataclasses.replace(config, node=node_from_host(socket.gethostname()))
        return Supervisor(config, args, environ).run()
    return serve_config(config, server_name, environ)


def serve_config(config: Config, server_name: str | None, environ: Mapping[str, str]) -> int:
    """Run the server `server_name` (None: the static one) with `config`; the exit status."""
    # Imported here so that parsing and --help do not load aiohttp and wasmtime.
    from tinywasm_wasi.server import DefaultServer, WasiServer, run_until_signalled

    if server_name == "wasi":
        from tinywasm_wasi.runtime import fastcall

        fastcall.prefer_fast_path(fast_path(environ))
    if config.ws_inbound_file is not None and server_name == "wasi":
        from tinywasm_wasi.web.reload import read_inbound_file

        try:  # a mistake in the file is one line and status 2, not a traceback
            read_inbound_file(config.ws_inbound_file)
        except ValueError as exc:
            log.error("--ws-inbound-file / TINYWASM_WS_INBOUND_FILE: %s", exc)
            return 2
    server = WasiServer(config) if server_name == "wasi" else DefaultServer(config)
    loop = choose_loop(config.uvloop)
    # The static server's first line says that modules are off; the loop matters less there.
    level = logging.INFO if server_name == "wasi" else logging.DEBUG
    log.log(level, "event loop: %s%s", loop.name, f" ({loop.why})" if loop.why else "")
    try:
        with asyncio.Runner(loop_factory=loop.factory) as runner:
            runner.run(run_until_signalled(server))
    except WorkerIdTaken as exc:
        log.error("%s", exc)
        return WORKER_ID_TAKEN
    except OSError as exc:
        if exc.filename is None and exc.errno in _LISTEN_ERRNOS:
            log.error(
                "cannot listen on %s port %d: %s; choose another with --port or TINYWASM_PORT",
                config.host,
                config.port,
                os.strerror(exc.errno).lower(),
            )
            return WORKER_CANNOT_LISTEN if config.worker_index is not None else 1
        log.error("could not start the server: %s", exc)
        return 1
    return 0
