"""The file limit the API's connection bounds need (sockets are files)."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest

from api.connections import SPARE_FILES, allow_connections


@pytest.fixture
def file_limit() -> Iterator[tuple[int, int]]:
    """The process's limit as it is, put back afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield soft, hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_soft_limit_is_raised_to_what_the_bounds_need(file_limit: tuple[int, int]) -> None:
    _, hard = file_limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    assert allow_connections(1000) == 1000 + SPARE_FILES
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 1000 + SPARE_FILES


def test_beyond_the_hard_limit_it_warns(file_limit: tuple[int, int], caplog: pytest.LogCaptureFixture) -> None:
    _, hard = file_limit
    assert hard != resource.RLIM_INFINITY
    assert allow_connections(hard) == hard
    assert "fewer than the" in caplog.text
