"""Helpers for tests of the status store: its records, read and cleaned up directly in Redis."""

from __future__ import annotations

from redis.asyncio import Redis

from broker.settings import Settings


async def delete_statuses(settings: Settings) -> None:
    """Delete the records of this test's queue (they would expire after ORDERLANE_STATUS_TTL anyway)."""
    if settings.status_url is None:
        return
    client = Redis.from_url(str(settings.status_url))
    try:
        keys = [key async for key in client.scan_iter(match=f"orderlane:{settings.queue}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
