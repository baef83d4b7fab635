"""uvicorn's HTTP protocol with the limits uvicorn lacks: a deadline for a request's head (uvicorn has no
header-read timeout), and bounds on the connections waiting for a head and on the requests waiting for their body.
Beyond a bound the connection that has waited longest is closed, rather than the newest refused: a flood makes room
by losing its own oldest members, and a real client, which sends its head as soon as it connects, gets in. Fewer
incomplete bodies than request slots are allowed, so slow senders never take every slot. What a user sets, and what a
flood larger than the bounds still costs (the proxy's per-client limits are for that): docs/http-limits.md.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any, Literal

from uvicorn import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

logger = logging.getLogger(__name__)

CloseReason = Literal["header_timeout", "too_many_waiting", "too_many_bodies"]
SPARE_FILES = 64
"""Files the process needs besides its HTTP connections: the listening socket, the broker's and the store's, logs."""


def allow_connections(connections: int) -> int:
    """Let the process open enough files for `connections` (sockets are files), raising its soft limit (`ulimit -n`)
    up to the hard one if need be; warn if that is not enough. Returns the soft limit in force."""
    needed = connections + SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < needed:
        logger.warning(
            "this process may open %d files (ulimit -n), fewer than the %d its HTTP bounds need: raise the hard limit, "
            "or lower ORDERLANE_HTTP_MAX_WAITING_CONNECTIONS",
            soft,
            needed,
        )
    return soft


class OldestFirst:
    """Connections of one server process in one phase, oldest first; beyond `limit`, the oldest is closed."""

    def __init__(self, limit: int, reason: CloseReason) -> None:
        self.limit = limit
        self.reason: CloseReason = reason
        self._members: dict[GuardedHttpProtocol, None] = {}

    def __len__(self) -> int:
        return len(self._members)

    def enter(self, connection: GuardedHttpProtocol) -> None:
        """`connection` enters (again), as the newest."""
        self._members.pop(connection, None)
        self._members[connection] = None
        if len(self._members) > self.limit:
            oldest = next(iter(self._members))
            self.leave(oldest)
            oldest.close(self.reason)

    def leave(self, connection: GuardedHttpProtocol) -> None:
        self._members.pop(connection, None)


class GuardedConfig(Config):
    """uvicorn's Config, serving with `GuardedHttpProtocol` and holding what its connections share."""

    def __init__(self, app: Any, *, header_timeout: float, max_waiting: int, max_bodies: int, **options: Any) -> None:
        super().__init__(app, http=GuardedHttpProtocol, **options)
        self.header_timeout = header_timeout
        self.waiting = OldestFirst(max_waiting, "too_many_waiting")
        self.bodies = OldestFirst(max_bodies, "too_many_bodies")

    def closed(self, reason: CloseReason) -> None:
        """Told why each connection the guard closes was closed: a subclass counts them."""


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
        self.guard = config
        self.head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()
        self.guard.waiting.enter(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        self.guard.waiting.leave(self)
        self.guard.bodies.leave(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.head_deadline is None and (self.cycle is None or self.cycle.response_complete):
            # The first bytes after a response: a new head, a stray CRLF, or the rest of a body the app did not read
            # (uvicorn's keep-alive timer stops at any byte, and only a complete head arms it again).
            self._arm_head_deadline()
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._disarm_head_deadline()
        self.guard.waiting.leave(self)
        self.guard.bodies.enter(self)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.guard.bodies.leave(self)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle.response_complete:  # no pipelined request was started: the connection waits for the next one
            self.guard.bodies.leave(self)  # answered before its body was all in (401, 413, 415, ...)
            if not self.transport.is_closing():
                self.guard.waiting.enter(self)

    def close(self, reason: CloseReason) -> None:
        if not self.transport.is_closing():
            self.guard.closed(reason)
            logger.debug("closing a connection from %s: %s", self.client, reason)
            self.transport.close()

    def _arm_head_deadline(self) -> None:
        self.head_deadline = self.loop.call_later(self.guard.header_timeout, self.close, "header_timeout")

    def _disarm_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None
