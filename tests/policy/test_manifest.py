"""module.toml: every key, and what a bad one says (policy/manifest.py)."""

from __future__ import annotations

import pytest

from tinywasm_wasi.policy.manifest import (
    BuildSpec,
    Language,
    ManifestError,
    expand,
    guess_language,
    parse_manifest,
)


def test_smallest_manifest_takes_the_defaults() -> None:
    manifest = parse_manifest('language = "zig"\n', "counter")
    assert manifest.language is Language.ZIG
    assert manifest.output == "counter.wasm"
    assert (manifest.sources, manifest.watch, manifest.limits) == ((), (), None)
    assert manifest.build == BuildSpec()


def test_every_key() -> None:
    manifest = parse_manifest(
        """
        language = "c"
        output = "20-auth@[echo_http].wasm"
        sources = ["src/*.c"]
        watch = ["src/*.c", "include/*.h"]
        [build]
        flags = ["-DNAME={name}"]
        timeout = 60
        [limits]
        memory_limit = "16MiB"
        call_timeout = 0.5
        """,
        "auth",
    )
    assert manifest.output == "20-auth@[echo_http].wasm"
    assert manifest.sources == ("src/*.c",)
    assert manifest.watch == ("src/*.c", "include/*.h")
    assert manifest.build == BuildSpec(flags=("-DNAME={name}",), timeout=60.0)
    assert manifest.limits == {"memory_limit": "16MiB", "call_timeout": 0.5}


def test_a_command_replaces_the_default() -> None:
    manifest = parse_manifest(
        'language = "go"\n[build]\ncommand = "make"\nargs = ["OUT={output}", "{sources}"]\n', "m"
    )
    assert manifest.build.command == "make"
    assert manifest.build.args == ("OUT={output}", "{sources}")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("language = ", "not valid TOML"),
        ('output = "x.wasm"', 'language is missing: add e.g. language = "c"'),
        ('language = "cobol"', "language 'cobol' is not one this build knows: use one of c, cpp"),
        ('language = "c"\noutptu = 1', "unknown key 'outptu'; the keys are build, language"),
        ('language = "c"\noutput = 3', "output must be a string"),
        ('language = "c"\noutput = "mw@[].wasm"', "empty middleware rule"),
        ('language = "c"\noutput = "sub/mw.wasm"', "must be a plain file name"),
        ('language = "c"\nwatch = "*.c"', "watch must be a list of strings"),
        ('language = "c"\nsources = ["../*.c"]', "must stay inside the module folder"),
        ('language = "c"\nsources = ["/etc/*"]', "must stay inside the module folder"),
        ('language = "c"\nbuild = 1', "[build] must be a table"),
        ('language = "c"\n[build]\nflag = []', "[build] has an unknown key 'flag'"),
        ('language = "c"\n[build]\ncommand = ""', "[build] command must be a program name"),
        ('language = "c"\n[build]\ncommand = "x"\nflags = ["-O"]', "put them in args instead"),
        ('language = "c"\n[build]\ntimeout = 0', "[build] timeout must be seconds"),
        ('language = "c"\n[build]\nflags = ["{nope}"]', "unknown or malformed placeholder"),
        ('language = "c"\n[limits]\nmemory = 1', "[limits] memory: unknown key"),
        ('language = "c"\n[limits]\nmemory_limit = "lots"', "[limits] memory_limit: 'lots'"),
    ],
)
def test_a_bad_manifest_says_what_to_fix(text: str, says: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, "m")
    assert says in str(info.value)


@pytest.mark.parametrize(
    ("files", "language"),
    [
        (["a.c", "a.h"], Language.C),
        (["a.cpp", "a.h", "b.c"], Language.CPP),
        (["main.zig"], Language.ZIG),
        (["lib.rs"], Language.RUST),
        (["main.go", "go.mod"], Language.GO),
        (["index.ts", "env.d.ts"], Language.ASSEMBLYSCRIPT),
        (["m.wat"], Language.WAT),
        (["only.d.ts", "README.md", ".hidden.c"], None),
    ],
)
def test_guess_language(files: list[str], language: Language | None) -> None:
    assert guess_language(files) is language


def test_expand_sources_into_many_arguments() -> None:
    values = {"output": "o.wasm", "name": "m"}
    assert expand(["-o", "{output}", "{sources}", "-DN={name}"], values, ["a.c", "b.c"]) == [
        "-o",
        "o.wasm",
        "a.c",
        "b.c",
        "-DN=m",
    ]
