"""Optional API keys: `Authorization: Bearer <key>` on everything but the open paths, compared in constant time."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from api.responses import error_response, problem


class ApiKeys:
    """Pure ASGI middleware; with no keys configured it is not installed at all."""

    def __init__(self, app: ASGIApp, keys: tuple[bytes, ...], open_paths: tuple[str, ...]) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = frozenset(open_paths)

    def allows(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        presented = token.strip().encode()
        # Compare with every key, so the time taken does not tell which one (or how much of one) matched.
        matches = [hmac.compare_digest(presented, key) for key in self.keys]
        return any(matches)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        if self.allows(Headers(scope=scope).get("authorization")):
            await self.app(scope, receive, send)
            return
        response = error_response(
            401,
            [problem("unauthorized", "send a valid API key as `Authorization: Bearer <key>`")],
            {"WWW-Authenticate": 'Bearer realm="orderlane"'},
        )
        await response(scope, receive, send)
