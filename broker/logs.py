"""Process-wide logging, set up once by each entry point: readable lines or JSON lines, never a password.

Log calls about a message pass `extra=` with `order_id`, `priority` and `attempt`; both formats print every such
extra field, as `key=value` on the console and as keys of the JSON object.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from broker.settings import Settings

_STANDARD_FIELDS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in record.__dict__.items() if key not in _STANDARD_FIELDS}


class _Redacting(logging.Formatter):
    """Masks the broker password wherever it would appear, whatever a library put in the message."""

    def __init__(self, secrets: tuple[str, ...], fmt: str | None = None) -> None:
        super().__init__(fmt)
        self._secrets = secrets

    def redact(self, line: str) -> str:
        for secret in self._secrets:
            line = line.replace(secret, "***")
        return line


class ConsoleFormatter(_Redacting):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{key}={value}" for key, value in extra_fields(record).items())
        return self.redact(f"{line} {fields}" if fields else line)


class JsonFormatter(_Redacting):
    """One JSON object per line: time, level, logger, message, the extra fields, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **extra_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self.redact(orjson.dumps(entry, default=str).decode())


CONSOLE_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(settings: Settings) -> None:
    secrets = settings.passwords
    formatter: logging.Formatter = (
        JsonFormatter(secrets) if settings.log_format == "json" else ConsoleFormatter(secrets, CONSOLE_FORMAT)
    )
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    quiet = max(logging.WARNING, logging.getLevelName(settings.log_level))
    logging.getLogger("aio_pika").setLevel(quiet)
    logging.getLogger("aiormq").setLevel(quiet)
    # aiormq logs each failed connection attempt at ERROR; broker.connection says the same with the retry plan.
    logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)
