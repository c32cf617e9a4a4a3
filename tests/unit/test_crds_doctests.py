"""The runnable examples in the crds docstrings stay true (STYLE: an example beats a paragraph)."""
import doctest
import importlib

import pytest

MODULES = ["crds.selector", "crds.bgp", "crds.duration", "crds.manifests", "crds.validate"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
