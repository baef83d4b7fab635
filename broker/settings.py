"""Configuration shared by the API and the consumers, read once per entry point from `ORDERLANE_*`."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, AmqpDsn, Field, HttpUrl, RedisDsn, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from broker.errors import ConfigurationError
from broker.messages import DEFAULT_ORDER_MODEL, OrderBase, load_order_model

QueueName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")]
OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/queues", "/openapi.json")


@dataclass(frozen=True, slots=True)
class LaneConfig:
    """One lane of ORDERLANE_LANES, `name:first-last[:prefetch]`, for example `high:0-2:10`."""

    name: str
    first: int
    last: int
    prefetch: int | None

    @classmethod
    def parse(cls, text: str) -> LaneConfig:
        match = _LANE.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"lane {text!r} is not name:first-last[:prefetch], for example high:0-2:10")
        name, first, last, prefetch = match.groups()
        if name == "dlq":
            raise ValueError("a lane cannot be called dlq: <queue>.dlq is the dead-letter queue")
        if prefetch and int(prefetch) > MAX_PREFETCH:
            raise ValueError(f"lane {name}: a prefetch is at most {MAX_PREFETCH}")
        return cls(name, int(first), int(last), int(prefetch) if prefetch else None)


MAX_PREFETCH = 65535
"""basic.qos carries prefetch_count in 16 bits."""
_LANE = re.compile(r"([A-Za-z0-9_-]+):([0-9])-([0-9])(?::([1-9][0-9]{0,4}))?")


def check_lanes(lanes: tuple[LaneConfig, ...]) -> tuple[LaneConfig, ...]:
    """Lanes must cover the priorities 0..9 once each, in order, with distinct names."""
    if not lanes:
        return lanes
    expected_first = 0
    for lane in lanes:
        if lane.first != expected_first or lane.last < lane.first:
            raise ValueError(
                "lanes must cover the priorities 0..9 in order, each once: for example high:0-2,default:3-9"
            )
        expected_first = lane.last + 1
    if expected_first != 10:
        raise ValueError("lanes must cover the priorities up to 9")
    if len({lane.name for lane in lanes}) != len(lanes):
        raise ValueError("lane names must differ")
    return lanes


DEFAULT_LANES = (LaneConfig("high", 0, 2, None), LaneConfig("default", 3, 9, None))
"""The FastAPI + Celery original's split: urgent orders (effective priority 0..2, every VIP order by default) in a queue
of their own, so the broker never holds one behind a window of regular orders already sent. `ORDERLANE_LANES=` (empty)
gives the single queue back; docs/benchmarks.md measures both."""
PENDING_MARGIN_SECONDS = 5
MAX_CONCURRENCY = 4096
Prefetch = int | Literal["auto"]
"""Deliveries the broker may have sent to a consumer and not yet seen settled, per lane; or "auto": adapted while
running (consumers/tuning.py)."""
Concurrency = int | Literal["auto"]
"""Handlers a consumer process runs at once, across its lanes; or "auto": adapted while running."""


def loadable_order_model(reference: str) -> str:
    """Checked when the settings are read, so a model that cannot be loaded stops a process before it connects."""
    try:
        load_order_model(reference)
    except ConfigurationError as exc:
        raise ValueError(str(exc)) from None
    return reference


Reference = Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")]
"""`package.module:attribute`."""


class Settings(BaseSettings):
    """Every knob of orderlane; docs/configuration.md lists the same fields (tests/test_docs.py checks it)."""

    model_config = SettingsConfigDict(env_prefix="ORDERLANE_", frozen=True, extra="ignore")

    amqp_url: AmqpDsn = AmqpDsn("amqp://guest:guest@127.0.0.1:5672/")
    amqp_failover_urls: Annotated[tuple[AmqpDsn, ...], NoDecode] = ()
    queue: QueueName = "orders"
    max_priority: Annotated[int, Field(ge=1, le=255)] = 10
    prefetch: Annotated[int, Field(ge=1, le=MAX_PREFETCH)] | Literal["auto"] = "auto"
    concurrency: Annotated[int, Field(ge=1, le=MAX_CONCURRENCY)] | Literal["auto"] = "auto"
    vip_priority: Annotated[int, Field(ge=0, le=9)] = 0
    vip_slots: Annotated[int, Field(ge=0, le=64)] = 1
    """Handler slots each consumer keeps for orders at least as urgent as vip_priority (every VIP order), beside
    ORDERLANE_CONCURRENCY's: however busy the others are with the backlog, a VIP order starts at once."""
    lanes: Annotated[tuple[LaneConfig, ...], NoDecode, AfterValidator(check_lanes)] = DEFAULT_LANES
    order_model: Annotated[Reference, AfterValidator(loadable_order_model)] = DEFAULT_ORDER_MODEL
    """The pydantic model orders are validated with: broker.messages.Order or a subclass of broker.OrderBase."""
    handler: Reference | None = None
    """The consumer's handler, `package.module:callable` (as --handler); empty: the built-in order processor."""

    max_body_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024
    publish_timeout: Annotated[float, Field(gt=0)] = 5.0
    retry_after_seconds: Annotated[int, Field(ge=1)] = 2
    startup_timeout: Annotated[float, Field(ge=0)] = 30.0
    shutdown_timeout: Annotated[float, Field(gt=0)] = 30.0
    simulated_work_ms: Annotated[float, Field(ge=0)] = 0.0
    handler_timeout: Annotated[float, Field(gt=0, le=1700)] = 60.0
    """At most 1,700 s: with the watchdog's second and a republish it must stay under the broker's consumer_timeout
    (30 min by default), or the broker closes the channel first."""
    max_attempts: Annotated[int, Field(ge=1, le=50)] = 5
    retry_base_seconds: Annotated[float, Field(gt=0)] = 1.0
    retry_max_seconds: Annotated[float, Field(gt=0)] = 300.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["console", "json"] = "console"

    status_url: RedisDsn | None = RedisDsn("redis://127.0.0.1:6379/0")
    """Where order statuses live; empty: no status store, no deduplication at intake."""
    status_ttl: Annotated[int, Field(ge=60)] = 86400
    """Seconds an order's status is kept after its last change; a repost within it is recognised."""
    status_timeout: Annotated[float, Field(gt=0)] = 0.5
    status_required: bool = False
    """True: intake answers 503 while the status store is away, rather than accepting without deduplication."""
    admission_max_wait: Annotated[float, Field(gt=0)] | None = None
    """Seconds an order may be expected to wait before its handler starts; an order over it is refused (429) and
    nothing is published, the least urgent lanes first (broker/estimates.py). Empty: every order is admitted."""

    queue_type: Literal["classic", "quorum"] = "classic"
    """quorum: replicated Raft queues (RabbitMQ 3.8+), the high availability of 4.x; priorities come from the lanes
    before 4.0 (docs/high-availability.md)."""
    delivery_limit: Annotated[int, Field(ge=1)] = 20
    """Quorum queues: deliveries of one message without a settlement (its consumer died, or returned it) before the
    broker dead-letters it; a retry is a new message and starts again at zero."""
    tracing: bool = False
    """Send traces over OTLP (the `otel` extra; broker/tracing.py); on too when an OTLP endpoint is set."""
    management_url: HttpUrl | None = None
    """RabbitMQ's management API (http://user:pass@host:15672/): with it, each process checks at start that its
    queues are replicated across the cluster (broker/mirroring.py); empty: not checked."""
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    rate_limit_per_key: Annotated[float, Field(gt=0)] | None = None
    """Requests a second each API key may send, on average, in one API process; empty: no limit."""
    rate_limit_burst: Annotated[int, Field(ge=1)] | None = None
    """Requests an API key may send at once after a pause; empty: a second's worth of its rate."""
    open_paths: Annotated[tuple[str, ...], NoDecode] = OPEN_PATHS
    metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    queue_poll_seconds: Annotated[float, Field(gt=0)] = 5.0
    http_max_concurrency: Annotated[int, Field(ge=1)] = 1000
    """Requests in flight (from their head to their response) before the API answers 503 `overloaded`."""
    http_max_waiting_connections: Annotated[int, Field(ge=1)] = 4096
    """Connections waiting for a request head (new, idle, or sending it); beyond it the oldest is closed."""
    http_max_incomplete_bodies: Annotated[int, Field(ge=1)] = 256
    """Requests whose body is not all in yet; beyond it the oldest is closed. Below http_max_concurrency."""
    http_header_timeout: Annotated[float, Field(gt=0)] = 5.0
    """Seconds a client has to send a request's head, from the connection opening or the first byte after a response."""
    http_keep_alive_seconds: Annotated[int, Field(ge=1)] = 5
    http_body_timeout: Annotated[float, Field(gt=0)] = 10.0
    """Seconds a client has to send a request's whole body, once its headers are in (408 after)."""
    access_log: bool = False

    @field_validator("api_keys", "open_paths", "amqp_failover_urls", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """`ORDERLANE_API_KEYS=key1,key2`: the environment gives one string; code may pass a sequence."""
        if isinstance(value, str):
            items = tuple(item.strip() for item in value.split(",") if item.strip())
            if value.strip() and not items:
                raise ValueError("holds commas but no value")  # " , " is a mistake, not "none"
            return items
        return value

    @field_validator(
        "status_url",
        "management_url",
        "rate_limit_per_key",
        "rate_limit_burst",
        "handler",
        "admission_max_wait",
        mode="before",
    )
    @classmethod
    def _empty_means_off(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("lanes", mode="before")
    @classmethod
    def _parse_lanes(cls, value: object) -> object:
        """`ORDERLANE_LANES=high:0-2:10,default:3-9`, or a sequence of such strings or of LaneConfig."""
        items = cls._comma_separated(value)
        if isinstance(items, tuple | list):
            return tuple(LaneConfig.parse(item) if isinstance(item, str) else item for item in items)
        return items

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.retry_base_seconds > self.retry_max_seconds:
            raise ValueError("ORDERLANE_RETRY_BASE_SECONDS must not exceed ORDERLANE_RETRY_MAX_SECONDS")
        if self.rate_limit_per_key is not None and not self.api_keys:
            raise ValueError("ORDERLANE_RATE_LIMIT_PER_KEY needs ORDERLANE_API_KEYS: the limit is per key")
        if self.rate_limit_burst is not None and self.rate_limit_per_key is None:
            raise ValueError("ORDERLANE_RATE_LIMIT_BURST needs ORDERLANE_RATE_LIMIT_PER_KEY")
        if self.admission_max_wait is not None and self.status_url is None:
            raise ValueError("ORDERLANE_ADMISSION_MAX_WAIT needs ORDERLANE_STATUS_URL: the drain rate is read there")
        if self.http_max_incomplete_bodies >= self.http_max_concurrency:
            # A request still receiving its body holds a request slot; bounded below the limit, slow senders can
            # never take every slot from the complete requests.
            raise ValueError("ORDERLANE_HTTP_MAX_INCOMPLETE_BODIES must be below ORDERLANE_HTTP_MAX_CONCURRENCY")
        return self

    @property
    def order_type(self) -> type[OrderBase]:
        """The class ORDERLANE_ORDER_MODEL names (imported already: this is a lookup)."""
        return load_order_model(self.order_model)

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue}.dlq"

    @property
    def broker_urls(self) -> tuple[AmqpDsn, ...]:
        """The broker nodes to try, in order: the main URL first, then the failover ones."""
        return (self.amqp_url, *self.amqp_failover_urls)

    @property
    def status_pending_ttl(self) -> int:
        """How long the API may hold an order_id while it publishes, before a retry may take it over: the
        publish timeout and a margin, so that it outlives a publish that ends in a 503."""
        return math.ceil(self.publish_timeout) + PENDING_MARGIN_SECONDS

    @property
    def passwords(self) -> tuple[str, ...]:
        """Every password in the URLs, for the log formatter to mask."""
        urls = (*self.broker_urls, self.status_url, self.management_url)
        return tuple(url.password for url in urls if url is not None and url.password)

    @property
    def redacted_amqp_url(self) -> str:
        """The main broker URL with its password masked: the only form of it that may be logged."""
        return redacted(self.amqp_url)


PREFIX = "ORDERLANE_"
NOT_SETTINGS = frozenset(
    {
        # compose.yaml's: the image, examples/shop's base image, and the single broker's scale (0 with the cluster)
        "ORDERLANE_IMAGE",
        "ORDERLANE_BASE_IMAGE",
        "ORDERLANE_RABBITMQ_SCALE",
        # deploy/nginx.conf's placeholders
        "ORDERLANE_PROXY_LISTEN",
        "ORDERLANE_PROXY_UPSTREAM",
        "ORDERLANE_TLS_CERT",
        "ORDERLANE_TLS_KEY",
        # the test suite's: set by .ci/run, and for the handlers of tests/recording.py and tests/dying.py
        "ORDERLANE_REQUIRE_FAULT_TESTS",
        "ORDERLANE_REQUIRE_CLUSTER_TESTS",
        "ORDERLANE_REQUIRE_PARTITION_TESTS",
        "ORDERLANE_TEST_RECORD_FILE",
        "ORDERLANE_TEST_DIE_AFTER",
    }
)
"""ORDERLANE_ variables that are not settings, which an environment shared with the containers or the tests holds."""


def setting_variables() -> frozenset[str]:
    """`ORDERLANE_<FIELD>` for every field of Settings."""
    return frozenset(PREFIX + name.upper() for name in Settings.model_fields)


def check_variables(environ: Mapping[str, str]) -> None:
    """Refuse an ORDERLANE_ variable that is neither a setting nor one of NOT_SETTINGS, naming the closest one:
    Settings ignores what it does not know, so a misspelt setting would silently keep its default."""
    known = setting_variables() | NOT_SETTINGS
    unknown = sorted(name for name in environ if name.upper().startswith(PREFIX) and name.upper() not in known)
    if unknown:
        raise ConfigurationError(" ".join(_not_a_setting(name, known) for name in unknown))


def _not_a_setting(name: str, known: frozenset[str]) -> str:
    """One sentence on `name`: the closest known variable is found without the prefix, which every one shares and
    would make them all look close."""
    suffixes = {variable.removeprefix(PREFIX): variable for variable in known}
    closest = difflib.get_close_matches(name.upper().removeprefix(PREFIX), suffixes, n=1)
    return f"{name} is not a setting; did you mean {suffixes[closest[0]]}?" if closest else f"{name} is not a setting."


def redacted(url: AmqpDsn | RedisDsn | HttpUrl) -> str:
    if url.password is None:
        return str(url)
    return str(url).replace(f":{url.password}@", ":***@", 1)
