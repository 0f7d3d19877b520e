"""Per-module limits (tinywasm_wasi.policy.limits) and the quarantine backoff rule: pure code."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scenarios.hostile import HEALTHY
from tinywasm_wasi.policy.limits import (
    LIMITS_FILE,
    Limits,
    LimitsError,
    Replicas,
    parse_overrides,
)
from tinywasm_wasi.policy.limits import parse_size as size
from tinywasm_wasi.policy.quarantine import MAX_BACKOFF, Quarantine, next_backoff
from tinywasm_wasi.runtime.engine import CompiledModule, Runtime
from tinywasm_wasi.supervisor.loader import load_overrides

DEFAULTS = Limits()
KiB, MiB, GiB = 1024, 1024**2, 1024**3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (65536, 65536),
        (1, 1),
        ("65536", 65536),
        ("10b", 10),
        ("10B", 10),
        ("1k", KiB),
        ("64KiB", 64 * KiB),
        ("64 kib", 64 * KiB),
        ("16MiB", 16 * MiB),
        ("16m", 16 * MiB),
        ("1.5 GiB", GiB + GiB // 2),
        ("2g", 2 * GiB),
        ("0.5KiB", 512),
        ("  8 MiB  ", 8 * MiB),
        ("1.9", 1),  # bytes are whole: a fraction is cut
    ],
)
def test_parse_size_accepts_bytes_and_binary_units(text: str | int, expected: int) -> None:
    assert size(text) == expected


@pytest.mark.parametrize(
    "text",
    [0, -1, "0", "-5", "", "lots", "MiB", "1 kb", "1 MB", "1 TiB", "1e", "0.1", "nan", "inf",
     "1..5k", True, False],
)  # fmt: skip
def test_parse_size_refuses_what_is_not_a_positive_size(text: str | int) -> None:
    with pytest.raises(LimitsError) as caught:
        size(text)
    assert str(caught.value) == (f"{text!r} is not a size: use bytes, e.g. 65536, 64KiB or 16MiB")


def test_limits_defaults_are_the_documented_ones() -> None:
    assert Limits(memory_limit=64 * MiB, call_timeout=0.1, max_payload=1 * MiB) == DEFAULTS


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"memory_limit": 0}, "memory_limit and max_payload must be at least 1 byte"),
        ({"max_payload": -1}, "memory_limit and max_payload must be at least 1 byte"),
        ({"call_timeout": 0.0}, "call_timeout must be a number of seconds more than zero"),
        ({"call_timeout": -1.0}, "call_timeout must be a number of seconds more than zero"),
        ({"call_timeout": float("nan")}, "call_timeout must be a number of seconds"),
        ({"call_timeout": float("inf")}, "call_timeout must be a number of seconds"),
    ],
)
def test_limits_refuse_values_that_cannot_work(changes: dict[str, float], message: str) -> None:
    with pytest.raises(LimitsError, match=message):
        Limits(**changes)  # type: ignore[arg-type]


def test_overrides_replace_only_the_keys_given_per_module() -> None:
    text = """
        [chat]
        memory_limit = "128MiB"
        call_timeout = 0.5

        [monitor]
        max_payload = 4096
        call_timeout = 2          # an integer number of seconds

        [empty]
    """
    assert parse_overrides(text, DEFAULTS) == {
        "chat": Limits(memory_limit=128 * MiB, call_timeout=0.5, max_payload=1 * MiB),
        "monitor": Limits(memory_limit=64 * MiB, call_timeout=2.0, max_payload=4096),
        "empty": DEFAULTS,
    }


@pytest.mark.parametrize(
    ("text", "replicas"),
    [("", Replicas.ONE), ('replicas = "all"', Replicas.ALL), ("replicas = 1", Replicas.ONE)],
)
def test_replicas_say_whether_every_worker_runs_the_module(text: str, replicas: Replicas) -> None:
    assert parse_overrides(f"[echo]\n{text}\n", Limits())["echo"].replicas is replicas


def test_overrides_start_from_the_given_defaults() -> None:
    defaults = Limits(memory_limit=1 * MiB, call_timeout=0.05, max_payload=100)
    got = parse_overrides('[a]\nmax_payload = "1KiB"\n', defaults)
    assert got == {"a": Limits(memory_limit=1 * MiB, call_timeout=0.05, max_payload=KiB)}


def test_no_text_means_no_overrides() -> None:
    assert parse_overrides("", DEFAULTS) == {}
    assert parse_overrides("# nothing yet\n", DEFAULTS) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[chat\nmemory_limit = 1", "limits.toml is not valid TOML: "),
        ("chat = 5", "limits.toml: 'chat' must be a table, e.g. [chat] then key = value lines"),
        (
            "[chat]\nmemory = 1",
            "limits.toml: [chat] memory: unknown key; use one of broadcast, call_timeout, "
            "max_payload, memory_limit, publish, replicas, subscribe",
        ),
        (
            '[chat]\nmemory_limit = "lots"',
            "limits.toml: [chat] memory_limit: 'lots' is not a size: use bytes, e.g. 65536, "
            "64KiB or 16MiB",
        ),
        (
            "[chat]\nmax_payload = 0",
            "limits.toml: [chat] max_payload: 0 is not a size: use bytes",
        ),
        (
            "[chat]\nmax_payload = [1]",
            "limits.toml: [chat] max_payload: [1] is not a size",
        ),
        (
            '[chat]\nreplicas = "some"',
            'limits.toml: [chat] replicas: expected "all" (every worker) or 1 (one owner), '
            "not 'some'",
        ),
        ("[chat]\nreplicas = 2", 'limits.toml: [chat] replicas: expected "all"'),
        ("[chat]\nreplicas = true", 'limits.toml: [chat] replicas: expected "all"'),
        (
            '[chat]\ncall_timeout = "fast"',
            "limits.toml: [chat] call_timeout: expected seconds as a number, e.g. 0.5",
        ),
        (
            "[chat]\ncall_timeout = true",
            "limits.toml: [chat] call_timeout: expected seconds as a number, e.g. 0.5",
        ),
        (
            "[chat]\ncall_timeout = 0",
            "limits.toml: [chat]: call_timeout must be a number of seconds more than zero, "
            "e.g. 0.1",
        ),
        (
            "[chat]\ncall_timeout = -0.5",
            "limits.toml: [chat]: call_timeout must be a number of seconds more than zero",
        ),
        ("[chat]\ncall_timeout = inf", "limits.toml: [chat]: call_timeout must be a number"),
        ("[chat]\ncall_timeout = nan", "limits.toml: [chat]: call_timeout must be a number"),
        # Absurd values are refused with the allowed range, never wrapped or crashing.
        (
            "[chat]\ncall_timeout = 1e308",
            "limits.toml: [chat]: call_timeout must be at most 3600 seconds",
        ),
        (
            '[chat]\nmemory_limit = "1e30GiB"',
            "limits.toml: [chat] memory_limit: '1e30GiB' is too large: sizes go up to 1TiB",
        ),
        (
            "[chat]\nmax_payload = 99999999999999999999999",
            "limits.toml: [chat] max_payload: 99999999999999999999999 is too large",
        ),
        (
            '[chat]\nmemory_limit = "5GiB"',
            "limits.toml: [chat]: memory_limit must be at most 4GiB, the most a 32-bit",
        ),
    ],
)
def test_bad_override_files_are_refused_naming_the_table_and_key(text: str, message: str) -> None:
    with pytest.raises(LimitsError) as caught:
        parse_overrides(text, DEFAULTS)
    assert str(caught.value).startswith(message), str(caught.value)


def test_one_bad_table_refuses_the_whole_file() -> None:
    with pytest.raises(LimitsError, match=r"\[bad\] memory_limit"):
        parse_overrides('[good]\ncall_timeout = 1\n[bad]\nmemory_limit = "x"\n', DEFAULTS)


def test_load_overrides_reads_the_folder_file(tmp_path: Path) -> None:
    assert load_overrides(tmp_path, DEFAULTS) == {}  # no file: no overrides
    (tmp_path / LIMITS_FILE).write_text("[chat]\ncall_timeout = 0.25\n")
    assert load_overrides(tmp_path, DEFAULTS) == {
        "chat": Limits(memory_limit=64 * MiB, call_timeout=0.25, max_payload=1 * MiB)
    }


def test_load_overrides_refuses_a_file_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / LIMITS_FILE).write_bytes(b"[chat]\n\xff\xfe = 1\n")
    with pytest.raises(LimitsError, match=r"^cannot read .*limits\.toml: "):
        load_overrides(tmp_path, DEFAULTS)
    (tmp_path / LIMITS_FILE).unlink()
    (tmp_path / LIMITS_FILE).mkdir()
    with pytest.raises(LimitsError, match=r"^cannot read .*limits\.toml: "):
        load_overrides(tmp_path, DEFAULTS)


# -- quarantine backoff -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled() -> CompiledModule:
    runtime = Runtime()
    try:
        return runtime.compile_module("flaky", HEALTHY)
    finally:
        runtime.close()


def entry(compiled: CompiledModule, backoff: float, retry_at: float) -> Quarantine:
    return Quarantine(
        compiled=compiled,
        error="trap",
        since=retry_at - backoff,
        backoff=backoff,
        retry_at=retry_at,
    )


def test_first_quarantine_waits_the_base_backoff(compiled: CompiledModule) -> None:
    assert next_backoff(None, 5.0, now=1000.0) == 5.0


@pytest.mark.parametrize(
    ("backoff", "since_retry", "expected"),
    [
        (5.0, 0.0, 10.0),  # again right after its retry: doubled
        (5.0, 20.0, 10.0),  # within four backoffs of the retry: doubled
        (5.0, 20.001, 5.0),  # later: it held up for a while, back to the base
        (200.0, 1.0, MAX_BACKOFF),  # doubling stops at the maximum
        (MAX_BACKOFF, 1.0, MAX_BACKOFF),
        (1.0, 1.0, 5.0),  # never below the base (the base may have been raised since)
    ],
)
def test_backoff_doubles_when_it_recurs_soon_and_resets_when_it_held_up(
    compiled: CompiledModule, backoff: float, since_retry: float, expected: float
) -> None:
    previous = entry(compiled, backoff, retry_at=1000.0)
    assert next_backoff(previous, 5.0, now=1000.0 + since_retry) == expected


def test_backoff_sequence_of_a_module_that_never_recovers(compiled: CompiledModule) -> None:
    now, previous, waits = 0.0, None, []
    for _ in range(10):
        backoff = next_backoff(previous, 5.0, now)
        waits.append(backoff)
        previous = entry(compiled, backoff, retry_at=now + backoff)
        now += backoff + 0.5  # retried, and trapping again half a second later
    assert waits == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0, 300.0]


def test_quarantine_json_reports_the_state_over_the_snapshot(compiled: CompiledModule) -> None:
    record = Quarantine(
        compiled=compiled,
        error="module 'flaky' trapped in on_message() [UNREACHABLE]: boom",
        since=100.0,
        backoff=5.0,
        retry_at=105.0,
        retries=2,
        snapshot={"name": "flaky", "state": "live", "counters": {"traps": 5}, "last_error": "x"},
    )
    assert record.to_json() == {
        "name": "flaky",
        "state": "quarantined",
        "counters": {"traps": 5},
        "last_error": "module 'flaky' trapped in on_message() [UNREACHABLE]: boom",
        "quarantined_at": 100.0,
        "retry_at": 105.0,
        "backoff_s": 5.0,
        "retries": 2,
    }
    assert record.snapshot["state"] == "live"  # the snapshot itself is left alone
