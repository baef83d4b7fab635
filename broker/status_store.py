"""The status store: one Redis hash per order, written by the API and the consumers, read by `GET /orders/{id}`.

Every operation goes through one Lua script (broker/status.lua), packed as JSON, and one call of it is in flight
at a time: the operations asked for meanwhile travel together in the next call, so a busy consumer or API pays
one round trip and one command for many orders, not two per order (docs/benchmarks.md measures what the store
costs).

When Redis does not answer, the operations of that call fail with StatusUnavailable, and for the next
PAUSE_SECONDS every operation fails at once without trying, so an outage costs one timeout, not one per order.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files
from typing import Final, Literal

import orjson
from hiredis import pack_command
from prometheus_client import CollectorRegistry, Counter, Histogram
from redis.asyncio import Connection, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, NoScriptError, RedisError

from broker.errors import StatusUnavailable
from broker.settings import Settings, redacted
from broker.status import OrderStatus, State, Transition, rank_of

logger = logging.getLogger(__name__)

Operation = Literal["get", "reserve", "accept", "release", "transition", "replay", "departed"]
READINESS_KEY: Final = "\x00readiness"
"""An order_id no order can have (the order_id rule excludes it): what `answers()` reads."""
PAUSE_SECONDS: Final = 1.0
"""After a failed call, how long every operation fails at once before the store is tried again."""
STORE_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
GATHER_SECONDS: Final = 0.001
GATHER_MOST: Final = 64
"""Operations nobody waits for (a consumer's processed, intake's accepted) wait up to GATHER_SECONDS for others to
share their call, unless GATHER_MOST are there already: one call per millisecond at most for those, however busy."""
SCRIPT: Final = files("broker").joinpath("status.lua").read_text()


class StoreMetrics:
    """What the store costs and how often it failed; registered on the registry of the process that uses it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.seconds = Histogram(
            "orderlane_status_store_seconds",
            "One call to the status store (the operations of one turn of the event loop, together)",
            buckets=STORE_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "orderlane_status_store_errors",
            "Status store operations that failed, or were not tried while the store was away",
            ["operation"],
            registry=registry,
        )


PENDING: Final = ("state", "pending", "rank", str(rank_of("pending", 0)))
"""What a reservation writes first: its state and rank, strings as every value written (Transition.fields_to_write
says why)."""
RETAKEN: Final = ["retaken"]
"""The script's answer to a reservation of an order_id whose earlier publish may have stored a copy."""


@dataclass(frozen=True, slots=True)
class Reserved:
    """The order_id is this request's to publish. `retaken`: an earlier request for the same order may have stored a
    copy (its publish was never confirmed, or it died holding the order_id), so the message asks the consumer to
    check the status before it runs the handler."""

    retaken: bool


@dataclass(frozen=True, slots=True)
class Taken:
    """An order_id the store already holds: its status, and the fingerprint of the order that holds it (None if
    the record was rebuilt by a consumer from a message that was not the API's)."""

    status: OrderStatus
    fingerprint: str | None


Answer = list[str] | str
"""The script's answer to one operation: a record (get, reserve) as HGETALL's flat list, or the state the record had
before (the other operations), '' for none."""
Written = Callable[[bool], None]
"""Called once an operation nobody waits for is written (True) or failed (False)."""


class _Batch:
    """The operations waiting for the next call of the script, as three lists the call reads as they are (no object
    per operation)."""

    __slots__ = ("answered", "entries", "keys")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.entries: list[list[object]] = []
        """What the script reads for each: [op, rank, [field, value, ...]], and token and fingerprint where given."""
        self.answered: list[asyncio.Future[Answer] | Written] = []
        """The future of a caller who waits for the answer, or the callback of one who does not."""


def _answer(answered: asyncio.Future[Answer] | Written, outcome: Answer | StatusUnavailable) -> None:
    if not isinstance(answered, asyncio.Future):
        answered(not isinstance(outcome, StatusUnavailable))
    elif answered.done():
        pass  # its caller was cancelled
    elif isinstance(outcome, StatusUnavailable):
        answered.set_exception(outcome)
    else:
        answered.set_result(outcome)


class StatusStore:
    """Order records under `orderlane:<queue>:order:<order_id>`, so deployments sharing a Redis stay apart."""

    def __init__(
        self, client: Redis, *, namespace: str, ttl: int, pending_ttl: int, timeout: float, metrics: StoreMetrics
    ) -> None:
        self._client = client
        self._timeout = timeout
        """For one call, its command written and its answer read (ORDERLANE_STATUS_TIMEOUT)."""
        self._sha = hashlib.sha1(SCRIPT.encode()).hexdigest()
        self._prefix = f"orderlane:{namespace}:order:"
        self._departed_key = f"orderlane:{namespace}:departed"
        self._ttl = ttl
        self._pending_ttl = pending_ttl
        self._metrics = metrics
        self._waiting = _Batch()
        self._waited = False
        """Whether a caller waits for an operation in `_waiting` (then it is sent at once)."""
        self._gathering: asyncio.Future[None] | None = None
        """While the sender lets operations nobody waits for gather: done when one somebody waits for comes."""
        self._sender: asyncio.Task[None] | None = None
        self._connection: Connection | None = None
        self._away_until = 0.0

    @classmethod
    def for_settings(cls, client: Redis, settings: Settings, registry: CollectorRegistry) -> StatusStore:
        """The store `settings` describe (its namespace, times to live and call timeout), on `client`, its metrics on
        `registry`: one place that reads them, for the service's Redis and the test kit's in-memory one alike."""
        return cls(
            client,
            namespace=settings.queue,
            ttl=settings.status_ttl,
            pending_ttl=settings.status_pending_ttl,
            timeout=settings.status_timeout,
            metrics=StoreMetrics(registry),
        )

    async def get(self, order_id: str) -> OrderStatus | None:
        record = await self._run("get", order_id)
        assert isinstance(record, list)
        return _status(order_id, record)

    async def departed(self) -> int:
        """How many attempts have left the work queues so far (processed, retrying or dead-lettered), counted by the
        store as the consumers record them: the same count for every process that asks."""
        count = await self._run("departed", "", key=self._departed_key)
        assert isinstance(count, str)
        return int(count)

    async def answers(self) -> bool:
        """Whether the store answers now: a real call (unless one failed less than PAUSE_SECONDS ago)."""
        try:
            await self._run("get", READINESS_KEY)
        except StatusUnavailable:
            return False
        return True

    async def reserve(self, order_id: str, fingerprint: str, token: str) -> Reserved | Taken:
        """Hold `order_id` for this request while it publishes (for the pending TTL at most: then another request
        for the same order may take it over), or say what holds it already."""
        fields = [*PENDING, "fingerprint", fingerprint, "token", token]
        record = await self._run("reserve", order_id, fields=fields, token=token, fingerprint=fingerprint)
        assert isinstance(record, list)
        if not record or record == RETAKEN:
            return Reserved(retaken=bool(record))
        status = _status(order_id, record)
        assert status is not None
        return Taken(status, _fields(record).get("fingerprint") or None)

    def accept(self, transition: Transition, token: str) -> None:
        """The broker confirmed it: `pending` becomes `accepted`, if the reservation is still this request's. Nobody
        waits for it; an operation asked for after it is answered after it is written. Raises StatusUnavailable at
        once while the store is away."""
        self._ask("accept", transition.order_id, _unanswered, token=token, fields=transition.fields_to_write())

    async def release(self, transition: Transition, token: str) -> None:
        """The broker did not confirm it: `unconfirmed` (it may or may not be stored), and a retry may publish it."""
        await self._run("release", transition.order_id, fields=transition.fields_to_write(), token=token)

    async def record(self, transition: Transition, fingerprint: str = "") -> State | None:
        """Apply a transition unless the record is already further along; the state the record had before."""
        fields = transition.fields_to_write()
        previous = await self._run(
            "transition", transition.order_id, rank=transition.rank, fields=fields, fingerprint=fingerprint
        )
        return previous or None  # type: ignore[return-value]  # the script only writes States

    def record_then(self, transition: Transition, then: Written) -> None:
        """Apply a transition and call `then(True)` once it is written, `then(False)` if the store failed: no task
        waits for it (the consumer acks from `then`). Raises StatusUnavailable at once while the store is away."""
        self._ask("transition", transition.order_id, then, rank=transition.rank, fields=transition.fields_to_write())

    async def replay(self, transition: Transition) -> None:
        """An operator sent it back from the dead-letter queue: a new round, unless a consumer has already
        started it (then only the time is noted)."""
        await self._run("replay", transition.order_id, fields=transition.fields_to_write())

    async def settled(self) -> None:
        """Wait until every operation asked for so far has been answered."""
        while self._sender is not None:
            await asyncio.wait((self._sender,))

    async def close(self) -> None:
        await self.settled()
        if self._connection is not None:
            await self._connection.disconnect()
        await self._client.aclose()

    @property
    def _is_up(self) -> bool:
        """False for PAUSE_SECONDS after a call failed."""
        return time.monotonic() >= self._away_until

    async def _run(
        self,
        operation: Operation,
        order_id: str,
        *,
        rank: int = 0,
        token: str = "",
        fingerprint: str = "",
        fields: Sequence[str] = (),
        key: str = "",
    ) -> Answer:
        """Ask, and wait for the answer."""
        result: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._ask(operation, order_id, result, rank=rank, token=token, fingerprint=fingerprint, fields=fields, key=key)
        return await result

    def _ask(
        self,
        operation: Operation,
        order_id: str,
        answered: asyncio.Future[Answer] | Written,
        *,
        rank: int = 0,
        token: str = "",
        fingerprint: str = "",
        fields: Sequence[str] = (),
        key: str = "",
    ) -> None:
        """Queue an operation for the next call: at once if somebody waits for its answer (a future). Its key is the
        order's record, unless `key` names another."""
        if not self._is_up:
            self._metrics.errors.labels(operation=operation).inc()
            raise StatusUnavailable("the status store is away")
        entry: list[object] = [operation, rank, fields]
        if token or fingerprint:  # only the reads that need them: a consumer's entry stays short
            entry += (token, fingerprint)
        waiting = self._waiting
        waiting.keys.append(key or self._prefix + order_id)
        waiting.entries.append(entry)
        waiting.answered.append(answered)
        if isinstance(answered, asyncio.Future):
            self._waited = True
            if self._gathering is not None and not self._gathering.done():
                self._gathering.set_result(None)
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_waiting())

    async def _send_waiting(self) -> None:
        """One call in flight at a time: what is asked for meanwhile goes together in the next one, so the busier
        the process, the more operations share a call (and none waits longer than one round trip for it)."""
        try:
            while self._waiting.keys:
                if not self._waited:  # nobody waits: let more join this call
                    await self._gather()
                batch, self._waiting, self._waited = self._waiting, _Batch(), False
                if self._is_up:
                    await self._send(batch)
                else:  # asked for while the call before failed: fail at once, as a new one would
                    self._fail(batch, StatusUnavailable("the status store is away"))
        finally:
            self._sender = None

    async def _gather(self) -> None:
        """Let operations nobody waits for gather for a turn, and for GATHER_SECONDS more unless there are many by
        then; one somebody waits for ends it at once."""
        await asyncio.sleep(0)
        if len(self._waiting.keys) >= GATHER_MOST or self._waited:
            return
        loop = asyncio.get_running_loop()
        self._gathering = gathering = loop.create_future()
        timer = loop.call_later(GATHER_SECONDS, _finish, gathering)
        try:
            await gathering
        finally:
            timer.cancel()
            self._gathering = None

    async def _send(self, batch: _Batch) -> None:
        """One call of the script for `batch`; every operation in it is answered, whatever happens."""
        started = time.perf_counter()
        try:
            keys = batch.keys
            operations = orjson.dumps(batch.entries)
            try:
                results: list[Answer] = await self._evalsha(keys, operations)
            except NoScriptError:  # a Redis restarted since, or one that never saw the script
                async with asyncio.timeout(self._timeout):
                    await self._client.script_load(SCRIPT)
                results = await self._evalsha(keys, operations)
        except (RedisError, OSError) as exc:
            if self._is_up:
                logger.warning("the status store does not answer (%s); trying again in %gs", exc, PAUSE_SECONDS)
            self._away_until = time.monotonic() + PAUSE_SECONDS
            self._fail(batch, StatusUnavailable(f"the status store did not answer: {exc}"))
            return
        except Exception as exc:  # a value the store cannot take, a bug: the orders must not wait on it
            logger.exception("status store call failed; its operations count as not written")
            self._fail(batch, StatusUnavailable(f"the status store call failed: {exc!r}"))
            return
        finally:
            self._metrics.seconds.observe(time.perf_counter() - started)
        if self._away_until:
            logger.info("the status store answers again")
            self._away_until = 0.0
        for answered, result in zip(batch.answered, results, strict=True):
            _answer(answered, result)

    async def _evalsha(self, keys: list[str], operations: bytes) -> list[Answer]:
        """On the sender's own connection: one call at a time needs no pool. A connection that was idle may have
        been closed by a Redis restarted since, so a refused one is tried once more, on a new connection."""
        reused = self._connection is not None
        try:
            return await self._evalsha_once(keys, operations)
        except ConnectionError:
            if not reused:
                raise
        return await self._evalsha_once(keys, operations)

    async def _evalsha_once(self, keys: list[str], operations: bytes) -> list[Answer]:
        if self._connection is None:
            self._connection = await self._client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            arguments = (operations, self._ttl, self._pending_ttl, self._departed_key)
            command = ("EVALSHA", self._sha, len(keys), *keys, *arguments)
            packed = pack_command(command)  # type: ignore[arg-type]  # its stub allows one argument only
            async with asyncio.timeout(self._timeout):
                await self._connection.send_packed_command(packed, check_health=False)
                response: list[Answer] = await self._connection.read_response()
        except (RedisError, OSError):  # TimeoutError is an OSError
            await self._connection.disconnect()
            self._connection = None
            raise
        return response

    def _fail(self, batch: _Batch, failure: StatusUnavailable) -> None:
        for entry, answered in zip(batch.entries, batch.answered, strict=True):
            self._metrics.errors.labels(operation=entry[0]).inc()
            _answer(answered, failure)


@asynccontextmanager
async def open_status_store(settings: Settings, registry: CollectorRegistry) -> AsyncIterator[StatusStore | None]:
    """The store ORDERLANE_STATUS_URL names, or None when it is empty (the feature is off). Redis need not answer
    yet: the store is tried on first use, and its absence is a StatusUnavailable for whoever asked."""
    if settings.status_url is None:
        yield None
        return
    client = Redis.from_url(
        str(settings.status_url),
        decode_responses=True,
        # No socket_timeout: redis-py would wrap each write in asyncio.wait_for, a task per call on Python 3.11; the
        # store bounds each call itself (StatusStore._evalsha_once).
        socket_connect_timeout=settings.status_timeout,
        retry=Retry(NoBackoff(), retries=1),  # once, on a fresh connection: a pooled one may predate a restart
    )
    store = StatusStore.for_settings(client, settings, registry)
    logger.info("order status in %s (kept %ds)", redacted(settings.status_url), settings.status_ttl)
    try:
        yield store
    finally:
        await store.close()


def _unanswered(stored: bool) -> None:
    """For an operation whose outcome nobody reads: a failure is counted where it happens (StoreMetrics.errors)."""


def _finish(gathering: asyncio.Future[None]) -> None:
    if not gathering.done():
        gathering.set_result(None)


def _fields(record: list[str]) -> dict[str, str]:
    """HGETALL's flat list of names and values, as a dict."""
    return dict(zip(record[::2], record[1::2], strict=True))


def _status(order_id: str, record: list[str]) -> OrderStatus | None:
    return OrderStatus.from_record(order_id, _fields(record)) if record else None
