"""Fixtures of the training tests: a generated text corpus prepared once in a private cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from train_helpers import make_text

@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> tuple[str, Path]:
    """(data source string, cache folder) of a prepared tiny corpus, shared by the session."""
    from spikelm.data.build import prepare

    root = tmp_path_factory.mktemp("train-data")
    (root / "tiny.txt").write_text(make_text())
    cache = root / "cache"
    old = os.environ.get("SPIKELM_CACHE")
    os.environ["SPIKELM_CACHE"] = str(cache)
    try:
        prepare(f"text:{root / 'tiny.txt'}")  # once, before any child process starts
    finally:
        os.environ.pop("SPIKELM_CACHE") if old is None else os.environ.__setitem__("SPIKELM_CACHE", old)
    return f"text:{root / 'tiny.txt'}", cache


@pytest.fixture
def tiny_data(data_root, monkeypatch) -> str:
    monkeypatch.setenv("SPIKELM_CACHE", str(data_root[1]))
    return data_root[0]


