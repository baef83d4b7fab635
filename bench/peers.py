"""The priority workload through two peer libraries users would pick instead of orderlane: FastStream and Taskiq.

Each `Peer` has a consume function, run in the benchmark's own process on a queue the benchmark declared and
filled, and the AMQP message its consumer understands, so that the backlog and the VIP orders are published in the
peer's own wire format. Each handler decodes the order into `broker.messages.Order` the peer's way (FastStream's
and Taskiq's pydantic validation of the handler's argument), reports its start, then sleeps `handler_seconds`.

The queue (a classic queue) must have been declared as orderlane declares its one work queue without lanes
(`ORDERLANE_LANES=`): durable, `x-max-priority` 10, dead-lettering to the default exchange with routing key
`<queue>.dlq`; `<queue>.dlq` must exist too. FastStream only checks that the queue exists (a passive declaration).
Taskiq declares both itself, durable: the queue with `x-dead-letter-exchange` "", `x-dead-letter-routing-key`
"<queue>.dlq", `x-max-priority` 10 and `x-queue-type` "classic"; `<queue>.dlq` with `x-queue-type` "classic" only.
RabbitMQ (3.10 included) takes these as equivalent to orderlane's arguments: `x-queue-type` "classic" is what a
queue declared without it already is.
Taskiq also binds the queue to `amq.direct` (routing key: the queue's name), a binding deleted with the queue.

Defaults, read from the installed packages (FastStream 0.7.8, Taskiq 0.13.0, taskiq-aio-pika 0.6.1):
- FastStream sends no basic.qos unless `Channel(prefetch_count=...)` is given: the broker pushes the whole
  backlog, and aiormq starts one task per delivery, so every delivered message's handler runs at once.
  It acks after the handler returns (AckPolicy.REJECT_ON_ERROR).
- Taskiq's AioPikaBroker sets basic.qos 10 (`qos=10`); the `taskiq worker` runs up to 100 tasks at once
  (`--max-async-tasks`), takes no deliveries beyond that (`--max-prefetch 0`), and acks once the result is saved
  (`--ack-type when_saved`, after the task). The qos of 10 is then the effective concurrency.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aio_pika
from faststream.rabbit import Channel, RabbitBroker, RabbitQueue
from taskiq import TaskiqMessage
from taskiq.cli.worker.args import WorkerArgs
from taskiq.labels import prepare_label
from taskiq.receiver import Receiver
from taskiq.serializers import JSONSerializer
from taskiq_aio_pika import AioPikaBroker, Exchange, Queue, QueueType

from bench.priority import System, Timeline
from broker.messages import CONTENT_TYPE, Order, encode_order
from broker.priority import prioritize
from broker.settings import Settings
from broker.topology import Topology

HandlerStarted = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class PeerRun:
    amqp_url: str
    queue: str
    prefetch: int | None
    """None: the library's default."""
    handler_started: HandlerStarted
    done: asyncio.Event
    handler_seconds: float


Consume = Callable[[PeerRun], Coroutine[Any, Any, None]]
BuildMessage = Callable[[str, bytes, int], aio_pika.Message]
"""(order_id, orderlane's JSON body of the order, broker priority 0..10) -> the persistent message to publish"""

MAX_PRIORITY = 10
"""The work queue's `x-max-priority`."""


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    consume: Consume
    message: BuildMessage


# FastStream


FASTSTREAM_LOGGER = logging.getLogger("bench.peers.faststream")
"""FastStream's own logger prints two lines per message to stdout ("Received", "Processed"); this one is quiet
unless logging is configured to show INFO, as orderlane's and the raw consumer log nothing per message."""


async def faststream_consume(run: PeerRun) -> None:
    broker = RabbitBroker(run.amqp_url, logger=FASTSTREAM_LOGGER)
    subscriber = broker.subscriber(
        RabbitQueue(run.queue, declare=False),  # passive: consume the queue as it is, whatever its arguments
        channel=None if run.prefetch is None else Channel(prefetch_count=run.prefetch),
    )

    @subscriber
    async def process_order(order: Order) -> None:
        run.handler_started(order.order_id)
        await asyncio.sleep(run.handler_seconds)

    try:
        await broker.start()
        await run.done.wait()
    finally:
        await broker.stop()  # cancels the consumer, waits for running handlers (graceful_timeout), closes


def faststream_message(order_id: str, body: bytes, priority: int) -> aio_pika.Message:
    """The body (byte for byte), content type, priority and persistence of what FastStream's
    `broker.publish(order, queue, priority=..., persist=True)` sends; it also sets a random message id, a correlation
    id and `app_id`, which its subscriber does not need."""
    return aio_pika.Message(
        body,
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=priority,
        message_id=order_id,
    )


# Taskiq


TASKIQ_TASK = "orderlane.process_order"
TASKIQ_EXCHANGE = Exchange(name="amq.direct", declare=False)
"""The exchange `.kiq()` publishes to: one that always exists, so that the run leaves no exchange behind."""


def taskiq_broker(amqp_url: str, queue: str, prefetch: int | None = None) -> AioPikaBroker:
    qos: dict[str, Any] = {} if prefetch is None else {"qos": prefetch}
    return AioPikaBroker(
        amqp_url,
        exchange=TASKIQ_EXCHANGE,
        task_queues=[Queue(name=queue, type=QueueType.CLASSIC, max_priority=MAX_PRIORITY)],
        dead_letter_queue=Queue(name=f"{queue}.dlq", type=QueueType.CLASSIC),
        **qos,
    )


async def taskiq_consume(run: PeerRun) -> None:
    """A `taskiq worker` in this process: its Receiver, at the worker's default settings, until `done`."""
    broker = taskiq_broker(run.amqp_url, run.queue, run.prefetch)

    async def process_order(order: Order) -> None:
        run.handler_started(order.order_id)
        await asyncio.sleep(run.handler_seconds)

    broker.register_task(process_order, task_name=TASKIQ_TASK)
    broker.is_worker_process = True
    receiver = Receiver(
        broker,
        max_async_tasks=WorkerArgs.max_async_tasks,
        max_async_tasks_jitter=WorkerArgs.max_async_tasks_jitter,
        max_prefetch=WorkerArgs.max_prefetch,
        ack_type=WorkerArgs.ack_type,
    )
    try:
        await receiver.listen(run.done)  # broker.startup(), then consume until `done`, then wait for running tasks
    finally:
        await broker.shutdown()


def taskiq_message(order_id: str, body: bytes, priority: int) -> aio_pika.Message:
    """What `process_order.kicker().with_labels(priority=...).kiq(order)` sends (a new task id each time)."""
    label, label_type = prepare_label(priority)
    task = TaskiqMessage(
        task_id=uuid.uuid4().hex,
        task_name=TASKIQ_TASK,
        labels={"priority": label},
        labels_types={"priority": label_type},
        args=[json.loads(body)],
        kwargs={},
    )
    return aio_pika.Message(
        JSONSerializer().dumpb(task.model_dump(mode="json")),
        headers={"task_id": task.task_id, "task_name": task.task_name, **task.labels},
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=priority,
    )


def with_prefetch(consume: Consume, default: int) -> Consume:
    """`consume` with `default` in place of the library's default prefetch (a prefetch passed in still wins)."""

    def consume_at(run: PeerRun) -> Coroutine[Any, Any, None]:
        return consume(run if run.prefetch is not None else dataclasses.replace(run, prefetch=default))

    return consume_at


PEERS: tuple[Peer, ...] = (
    Peer(name="faststream", consume=faststream_consume, message=faststream_message),
    Peer(name="faststream p50", consume=with_prefetch(faststream_consume, 50), message=faststream_message),
    Peer(name="taskiq", consume=taskiq_consume, message=taskiq_message),
)


def as_system(peer: Peer) -> System:
    """The peer as one more system of the priority benchmark: its own wire format, on one work queue with
    `x-max-priority` 10, as a user of the library would declare it (and Taskiq declares it itself)."""

    async def consume(settings: Settings, timeline: Timeline, handler_seconds: float) -> None:
        run = PeerRun(
            str(settings.amqp_url), settings.queue, None, timeline.handler_started, timeline.done, handler_seconds
        )
        await peer.consume(run)

    def address(settings: Settings, topology: Topology, order: Order) -> tuple[aio_pika.Message, str]:
        priority = prioritize(order, vip_priority=settings.vip_priority, max_priority=settings.max_priority)
        return peer.message(order.order_id, encode_order(order), priority.broker), settings.queue

    return System(peer.name, consume, {"lanes": "", "max_priority": MAX_PRIORITY}, address=address)


PEER_SYSTEMS = tuple(as_system(peer) for peer in PEERS)
