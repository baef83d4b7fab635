"""docs/testing.md, run as written: its handler module and the test modules that use the kit, imported from files as a
user's project would hold them, each of their tests awaited in order. Neither RabbitMQ nor Redis is involved."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest

from tests.processes import PROJECT_ROOT

GUIDE = PROJECT_ROOT / "docs" / "testing.md"
MODULES = ("shop_handlers", "test_shop_handlers", "test_shop_flow")


def python_blocks() -> dict[str, str]:
    """Each python block of the guide, by the module its first line (`# name.py`) names."""
    blocks = re.findall(r"```python\n# (\w+)\.py\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    return dict(blocks)


def test_the_guide_has_no_python_block_this_test_does_not_run() -> None:
    assert GUIDE.read_text().count("```python") == len(MODULES)
    assert sorted(python_blocks()) == sorted(MODULES)


async def test_the_guides_tests_pass_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, code in python_blocks().items():
        (tmp_path / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    ran = []
    try:
        for name in MODULES[1:]:
            module = importlib.import_module(name)
            for test_name, test in vars(module).items():
                if test_name.startswith("test_") and inspect.iscoroutinefunction(test):
                    await test()
                    ran.append(test_name)
    finally:
        for name in MODULES:
            sys.modules.pop(name, None)
    assert len(ran) == 6
