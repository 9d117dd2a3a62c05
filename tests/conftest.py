"""Shared test fixtures: every test runs on CPU with a private cache directory."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Keep tests away from the user's cache (corpora, prepared datasets)."""
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run faster on one thread, and the suite shares two cores with itself;
    a test that trains with `train.threads` set gets the one thread back afterwards."""
    import torch

    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say where tests left files for people to look at (the chat page's screenshots)."""
    for folder in getattr(config, "tinygpt_artifacts", ()):
        terminalreporter.write_line(f"test artifacts (screenshots): {folder}")
