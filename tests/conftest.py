"""Shared test fixtures: every test runs on CPU with a private cache directory."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Keep tests away from the user's cache (corpora, prepared datasets)."""
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
