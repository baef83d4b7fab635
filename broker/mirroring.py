"""At start, with a RabbitMQ cluster: are this process's queues replicated?

On RabbitMQ 3.x a classic queue lives on one node, and a policy, not a queue argument, mirrors it to others
(`ha-mode`); without one, the node that dies takes its queues' messages with it, confirmed or not. orderlane does
not set that policy itself: a policy is the operator's (it needs the `policymaker` tag, and its pattern may cover
other applications' queues too), and the command is one line (docs/scaling.md). It checks instead, through the
management API (ORDERLANE_MANAGEMENT_URL): with more than one node running, each queue of the topology without a
mirroring policy is a warning. RabbitMQ 4 has no mirroring: there a classic queue in a cluster is a warning to use
ORDERLANE_QUEUE_TYPE=quorum. Without the management API nothing can be checked, which a process with failover URLs
(a cluster, presumably) says once.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import urllib.request
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote

import orjson
from pydantic import HttpUrl

from broker.settings import Settings, redacted
from broker.topology import Topology

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT: Final = 5.0
MIRROR_POLICY_COMMAND: Final = (
    'rabbitmqctl set_policy ha-orderlane \'^{queue}\' \'{{"ha-mode":"all","ha-sync-mode":"automatic"}}\' '
    "--apply-to queues"
)


@dataclass(frozen=True, slots=True)
class Policy:
    """A policy as the management API lists it (`/api/policies/{vhost}`)."""

    pattern: str
    apply_to: str
    priority: int
    definition: dict[str, Any]

    def covers(self, queue: str) -> bool:
        return self.apply_to in ("queues", "classic_queues", "all") and re.search(self.pattern, queue) is not None


def effective_policy(queue: str, policies: list[Policy]) -> dict[str, Any]:
    """The definition RabbitMQ applies to `queue`: the matching policy's of the highest priority ({} if none). Read
    from the policies rather than from the queue, whose policy the management API shows only once its statistics
    have caught up (seconds after a declare)."""
    matching = [policy for policy in policies if policy.covers(queue)]
    return max(matching, key=lambda policy: policy.priority).definition if matching else {}


def replication_problems(
    version: str, running_nodes: int, queues: list[str], policies: list[Policy], settings: Settings
) -> list[str]:
    """What is wrong with the replication of `queues` on a broker of `version` with `running_nodes` nodes running."""
    if running_nodes < 2 or settings.queue_type == "quorum":
        return []
    if not version.startswith("3."):
        return [
            f"RabbitMQ {version} runs {running_nodes} nodes, but classic queues are not replicated on it: a node lost "
            "loses its queues; set ORDERLANE_QUEUE_TYPE=quorum (docs/scaling.md)"
        ]
    unmirrored = [queue for queue in queues if "ha-mode" not in effective_policy(queue, policies)]
    if not unmirrored:
        return []
    command = MIRROR_POLICY_COMMAND.format(queue=settings.queue)
    return [
        f"the cluster runs {running_nodes} nodes, but no policy mirrors {', '.join(unmirrored)}: the node that holds "
        f"a queue takes its messages with it when it dies. Mirror them: {command}"
    ]


async def check_replication(settings: Settings, topology: Topology) -> None:
    """Log what `replication_problems` finds, as warnings; a check that cannot be made is a warning too."""
    if settings.management_url is None:
        if settings.amqp_failover_urls:
            logger.info(
                "several broker nodes are configured: set ORDERLANE_MANAGEMENT_URL to have the queues' "
                "replication checked at start"
            )
        return
    api = ManagementApi(settings.management_url)
    vhost = quote(unquote((settings.amqp_url.path or "/")[1:]) or "/", safe="")  # amqp://host/ is vhost "/"
    try:
        overview, nodes, listed = await asyncio.gather(
            api.get("overview"), api.get("nodes"), api.get(f"policies/{vhost}")
        )
    except (OSError, ValueError) as exc:
        logger.warning("could not check the queues' replication through %s: %s", redacted(settings.management_url), exc)
        return
    running = sum(1 for node in nodes if node.get("running"))
    policies = [Policy(p["pattern"], p["apply-to"], p["priority"], p["definition"]) for p in listed]
    queues = [spec.name for spec in topology.queues]
    for problem in replication_problems(overview["rabbitmq_version"], running, queues, policies, settings):
        logger.warning("%s", problem)


class ManagementApi:
    """GETs from RabbitMQ's management HTTP API, with the credentials of its URL (stdlib: one call per start)."""

    def __init__(self, url: HttpUrl) -> None:
        self._base = f"{url.scheme}://{url.host}:{url.port}{(url.path or '/').rstrip('/')}/api/"
        credentials = f"{unquote(url.username or 'guest')}:{unquote(url.password or 'guest')}".encode()
        self._authorization = "Basic " + base64.b64encode(credentials).decode()

    async def get(self, path: str) -> Any:
        return await asyncio.to_thread(self._get, path)

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(self._base + path, headers={"Authorization": self._authorization})
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            return orjson.loads(response.read())
