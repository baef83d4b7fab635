"""Process-wide logging set-up, called once by each entry point."""

from __future__ import annotations

import logging

from broker.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT)
    # aio-pika logs every reconnect attempt at WARNING with a traceback at DEBUG; ours are enough at INFO.
    logging.getLogger("aio_pika").setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level)))
    logging.getLogger("aiormq").setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level)))
    # aiormq logs each failed connection attempt at ERROR; broker.connection says the same with the retry plan.
    logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)
