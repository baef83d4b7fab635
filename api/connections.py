"""uvicorn's HTTP protocol with the two limits uvicorn lacks: a deadline for a request's head, and a bound on the
connections waiting for a request, beyond which the one that has waited longest is closed.

A connection *waits* from the moment it opens, or its last response is sent, until a whole request (head and
body) has arrived: new, idle between requests, or still sending. Such a connection costs the process a socket
and a little memory and, while it sends a body, a request slot. Without a bound, a thousand connections that send
half a head and then nothing hold the server for as long as they like (uvicorn has no header-read timeout); with
one, the newest connection always gets in, because a flood makes room by losing its own oldest members, and a
client that sends its head in one piece is never the oldest. A request head must be complete within
`header_timeout` of the connection opening, or of its first byte on a kept-alive connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from uvicorn import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

logger = logging.getLogger(__name__)

ConnectionClosed = Callable[[str], None]
"""Told why the guard closed a connection: `header_timeout` or `too_many_waiting`."""


class WaitingConnections:
    """The connections of one server process that wait for a request, oldest first."""

    def __init__(self, limit: int, on_close: ConnectionClosed) -> None:
        self.limit = limit
        self.on_close = on_close
        self._waiting: dict[GuardedHttpProtocol, None] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def enter(self, connection: GuardedHttpProtocol) -> None:
        """`connection` waits (again), as the newest; if that makes one too many, the oldest is closed."""
        self._waiting.pop(connection, None)
        self._waiting[connection] = None
        if len(self._waiting) > self.limit:
            oldest = next(iter(self._waiting))
            self.leave(oldest)
            oldest.close("too_many_waiting")

    def leave(self, connection: GuardedHttpProtocol) -> None:
        self._waiting.pop(connection, None)


class GuardedConfig(Config):
    """uvicorn's Config, serving with `GuardedHttpProtocol` and holding what its connections share."""

    def __init__(
        self, app: Any, *, header_timeout: float, max_waiting: int, on_close: ConnectionClosed, **options: Any
    ) -> None:
        super().__init__(app, http=GuardedHttpProtocol, **options)
        self.header_timeout = header_timeout
        self.waiting = WaitingConnections(max_waiting, on_close)


class GuardedHttpProtocol(HttpToolsProtocol):
    """One connection. Hooks uvicorn's parser callbacks; the HTTP handling itself is uvicorn's."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        assert isinstance(config, GuardedConfig), "serve GuardedHttpProtocol with a GuardedConfig"
        self.header_timeout = config.header_timeout
        self.waiting = config.waiting
        self.head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()
        self.waiting.enter(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        self.waiting.leave(self)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.head_deadline is None:  # the first byte of a request on a kept-alive connection
            self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        self._disarm_head_deadline()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.waiting.leave(self)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self.waiting.enter(self)

    def close(self, reason: str) -> None:
        if not self.transport.is_closing():
            self.waiting.on_close(reason)
            logger.debug("closing a connection from %s: %s", self.client, reason)
            self.transport.close()

    def _arm_head_deadline(self) -> None:
        self.head_deadline = self.loop.call_later(self.header_timeout, self.close, "header_timeout")

    def _disarm_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None
