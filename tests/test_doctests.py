"""The worked examples in docstrings run, so they cannot drift from the code."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import tinygpt

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(tinygpt.__path__, "tinygpt.")
    if not m.name.endswith("__main__")
)


def test_modules_with_examples_are_found():
    assert "tinygpt.train.loop" in MODULES and "tinygpt.data.tokenizer.bpe" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
