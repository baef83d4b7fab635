"""Optional API keys: `Authorization: Bearer <key>` on everything but the open paths, compared in constant time;
and, if asked for, a rate per key, so that one key cannot starve the others."""

from __future__ import annotations

import hmac

from prometheus_client import Counter
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import rate_limited, unauthorized
from api.limits import TokenBuckets


class ApiKeys:
    """Pure ASGI middleware; with no keys configured it is not installed at all. Keys are known by their position
    in ORDERLANE_API_KEYS (from 1) wherever one must be named, as in the `key` label of `rate_limited`."""

    def __init__(
        self,
        app: ASGIApp,
        keys: tuple[bytes, ...],
        open_paths: tuple[str, ...],
        rates: TokenBuckets | None,
        rate_limited: Counter,
    ) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = frozenset(open_paths)
        self.rates = rates
        self.rate_limited = rate_limited

    def matching(self, authorization: str | None) -> int | None:
        """The position of the key presented, if it is one of ours."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        presented = token.strip().encode()
        # Compare with every key, so the time taken does not tell which one (or how much of one) matched.
        matches = [hmac.compare_digest(presented, key) for key in self.keys]
        return matches.index(True) + 1 if any(matches) else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        key = self.matching(Headers(scope=scope).get("authorization"))
        if key is None:
            await unauthorized()(scope, receive, send)
            return
        wait = self.rates.take(key) if self.rates is not None else 0.0
        if wait > 0:
            self.rate_limited.labels(key=str(key)).inc()
            await rate_limited(wait)(scope, receive, send)
            return
        await self.app(scope, receive, send)
