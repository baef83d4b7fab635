from __future__ import annotations

import asyncio
import logging

import pytest
from pydantic import ValidationError

from broker.cli import configuration_problems
from broker.errors import ConfigurationError
from broker.logs import ConsoleFormatter
from broker.settings import NOT_SETTINGS, LaneConfig, Settings, check_variables, redacted, setting_variables
from tests.orderlane import start_orderlane
from tests.processes import environment, start


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AMQP_URL", "QUEUE", "MAX_PRIORITY", "PREFETCH", "VIP_PRIORITY"):
        monkeypatch.delenv(f"ORDERLANE_{name}", raising=False)
    settings = Settings()
    assert str(settings.amqp_url) == "amqp://guest:guest@127.0.0.1:5672/"
    assert (settings.queue, settings.max_priority, settings.vip_priority) == ("orders", 10, 0)
    assert settings.prefetch == "auto"
    assert settings.lanes == (LaneConfig("high", 0, 2, None), LaneConfig("default", 3, 9, None))
    assert settings.dead_letter_queue == "orders.dlq"
    assert settings.max_body_bytes == 64 * 1024


def test_read_from_orderlane_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERLANE_QUEUE", "shop")
    monkeypatch.setenv("ORDERLANE_MAX_PRIORITY", "5")
    monkeypatch.setenv("ORDERLANE_PREFETCH", "7")
    monkeypatch.setenv("ORDERLANE_VIP_PRIORITY", "1")
    settings = Settings()
    assert (settings.queue, settings.max_priority, settings.prefetch, settings.vip_priority) == ("shop", 5, 7, 1)


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_priority", 0), ("max_priority", 256), ("vip_priority", 10), ("prefetch", 0), ("queue", "a b")],
)
def test_rejects_out_of_range(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        Settings.model_validate({field: value})


def test_max_priority_bounds_are_accepted() -> None:
    assert Settings(max_priority=1).max_priority == 1
    assert Settings(max_priority=255).max_priority == 255


def test_redacted_url_hides_the_password() -> None:
    settings = Settings(amqp_url="amqps://shop:s3cret@rabbit.example:5671/prod")
    assert "s3cret" not in settings.redacted_amqp_url
    assert settings.redacted_amqp_url == "amqps://shop:***@rabbit.example:5671/prod"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("api_keys", " , "),
        ("lanes", "high:0-2:70000,default:3-9"),
        ("lanes", "high:0-2,dlq:3-9"),
        ("handler_timeout", 1799),
    ],
)
def test_mistakes_that_would_bite_later_are_refused_at_start(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        Settings.model_validate({field: value})


def test_retry_base_must_not_exceed_the_cap() -> None:
    with pytest.raises(ValidationError, match="RETRY_BASE"):
        Settings(retry_base_seconds=600, retry_max_seconds=1)


def test_incomplete_bodies_must_stay_below_the_requests_in_flight() -> None:
    """Requests still receiving a body hold request slots: were they allowed as many, they could take them all."""
    with pytest.raises(ValidationError, match="MAX_INCOMPLETE_BODIES"):
        Settings(http_max_concurrency=100, http_max_incomplete_bodies=100)


def test_a_rate_per_key_needs_keys_and_a_burst_needs_a_rate() -> None:
    with pytest.raises(ValidationError, match="RATE_LIMIT_PER_KEY needs ORDERLANE_API_KEYS"):
        Settings(rate_limit_per_key=10)
    with pytest.raises(ValidationError, match="RATE_LIMIT_BURST needs ORDERLANE_RATE_LIMIT_PER_KEY"):
        Settings.model_validate({"api_keys": "k", "rate_limit_burst": 5})


def test_an_empty_key_list_means_no_keys() -> None:
    assert Settings.model_validate({"api_keys": ""}).api_keys == ()


def test_console_lines_carry_message_fields_but_not_uvicorns_colour_copy() -> None:
    record = logging.LogRecord("x", logging.INFO, "", 0, "order processed", (), None)
    record.__dict__.update(order_id="A-1", priority=0, attempt=1, color_message="\x1b[1morder processed\x1b[0m")
    line = ConsoleFormatter(("s3cret",), "%(message)s").format(record)
    assert line == "order processed order_id=A-1 priority=0 attempt=1"


def test_the_status_store_password_is_masked_like_the_brokers() -> None:
    settings = Settings(
        amqp_url="amqp://shop:s3cret@rabbit.example:5672/", status_url="redis://:r3dis-pw@redis.example:6379/0"
    )
    assert set(settings.passwords) == {"s3cret", "r3dis-pw"}
    assert settings.status_url is not None
    assert redacted(settings.status_url) == "redis://:***@redis.example:6379/0"
    assert Settings(status_url="").status_url is None, "empty turns the status store off"


def test_a_misspelt_variable_is_refused_with_the_closest_setting() -> None:
    with pytest.raises(ConfigurationError) as refused:
        check_variables({"ORDERLANE_PREFECH": "3", "orderlane_queue_types": "quorum", "ORDERLANE_ZZZ": "1"})
    assert str(refused.value) == (
        "ORDERLANE_PREFECH is not a setting; did you mean ORDERLANE_PREFETCH? ORDERLANE_ZZZ is not a setting. "
        "orderlane_queue_types is not a setting; did you mean ORDERLANE_QUEUE_TYPE?"
    )


def test_every_setting_and_the_known_other_variables_are_accepted() -> None:
    assert not NOT_SETTINGS & setting_variables(), "a variable is a setting or not, never both"
    known = dict.fromkeys(setting_variables() | NOT_SETTINGS, "1")
    check_variables({"PATH": "/bin", "orderlane_queue": "shop", **known})


def misspelt(**variable: str) -> dict[str, str]:
    """An environment with `variable` and a broker that is not there: a process that did not refuse to start stops
    at once on the broker instead, with another line."""
    unreachable = Settings(amqp_url="amqp://guest:guest@127.0.0.1:1/", startup_timeout=0)
    return environment(unreachable, **variable)


async def stderr_of(process: asyncio.subprocess.Process) -> str:
    try:
        async with asyncio.timeout(30):
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 1, stderr.decode()
    return stderr.decode()


@pytest.mark.parametrize("command", ["consume", "api", "queues"])
async def test_orderlane_refuses_to_start_with_a_misspelt_variable(command: str) -> None:
    process = await start_orderlane(command, env=misspelt(ORDERLANE_PREFECH="8"))
    line = f"orderlane {command}: error: ORDERLANE_PREFECH is not a setting; did you mean ORDERLANE_PREFETCH?\n"
    assert await stderr_of(process) == line


@pytest.mark.parametrize("module", ["api", "consumers"])
async def test_python_m_refuses_to_start_with_a_misspelt_variable(module: str) -> None:
    process = await start(module, env=misspelt(ORDERLANE_HANDLR="shop.handler:handle"))
    line = f"{module}: error: ORDERLANE_HANDLR is not a setting; did you mean ORDERLANE_HANDLER?\n"
    assert await stderr_of(process) == line


@pytest.mark.parametrize(
    ("environment", "line"),
    [
        (
            {"ORDERLANE_PREFETCH": "0"},
            "ORDERLANE_PREFETCH: Input should be greater than or equal to 1 or Input should be 'auto'",
        ),
        (
            {"ORDERLANE_RETRY_BASE_SECONDS": "9", "ORDERLANE_RETRY_MAX_SECONDS": "1"},
            "Value error, ORDERLANE_RETRY_BASE_SECONDS must not exceed ORDERLANE_RETRY_MAX_SECONDS",
        ),
    ],
)
def test_an_invalid_setting_is_one_clause_per_variable(
    environment: dict[str, str], line: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert configuration_problems(refused.value) == line
