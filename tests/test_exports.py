"""Each package's `__all__` is sorted, and every public name it re-exports resolves."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["api", "broker", "consumers"])
def test_all_is_sorted_and_complete(package: str) -> None:
    module = importlib.import_module(package)
    exported = list(module.__all__)
    assert exported == sorted(exported)
    public = {
        name
        for name in vars(module)
        if not name.startswith("_") and not isinstance(getattr(module, name), type(module))
    }
    assert public == set(exported)
