"""Fixtures for the SDK examples: each language's three examples, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sdk.examples import LANGS, built


@pytest.fixture(scope="session")
def examples_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder all xdist workers of this session share (their common temporary root)."""
    root = tmp_path_factory.getbasetemp()
    shared = root.parent if root.name.startswith("popen-gw") else root
    return shared / "sdk-examples"


@pytest.fixture(scope="session", params=LANGS)
def lang(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def lang_examples(lang: str, examples_base: Path) -> Path:
    """`lang`'s relay, http_json and counter modules, compiled from source."""
    return built(lang, examples_base)
