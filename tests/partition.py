"""A network partition under load, on a 3-node cluster in network namespaces (scripts/netns-cluster): the test's
short run (tests/test_partition.py) and the long measurement runs (scripts/partition_bench.py) share it.

The API publishes through node 1, which also leads the queues; a consumer takes from node 2; each has the other
nodes as failover URLs. Clients post new orders as fast as they are answered; node 1 is cut off (its link down, or
only its peers dropped while clients still reach it), stays cut, is healed and rejoins. Every 202 and every handler
run is recorded: after the heal every accepted order must have been processed."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import pytest

from broker.connection import open_broker
from broker.settings import Settings
from tests.amqp import wait_until
from tests.cluster import MIRROR_POLICY, MIRRORED, Cluster
from tests.processes import PROJECT_ROOT, serving_api
from tests.test_cluster import Intake, consumer_on, on_node, post_until

SCRIPT = PROJECT_ROOT / "scripts" / "netns-cluster"
REQUIRE_PARTITION_TESTS = "ORDERLANE_REQUIRE_PARTITION_TESTS"
NET_TICKTIME = 5
"""Seconds: a peer that stops answering is counted gone after 1 to 1.25 of them (Erlang's default is 60)."""
Cut = Literal["link", "peers"]
"""link: the node's link down, clients cut off too; peers: the node loses its peers, clients still reach it."""


@dataclass(frozen=True, slots=True)
class NetnsCluster(Cluster):
    """scripts/netns-cluster's nodes: rabbit@olns1..3 at 10.77.0.11..13."""

    async def rabbitmqctl(self, node: int, *args: str) -> str:
        env = {**os.environ, "RABBITMQ_CTL_ERL_ARGS": f"-kernel net_ticktime {NET_TICKTIME}"}
        process = await asyncio.create_subprocess_exec(
            "rabbitmqctl", "-n", f"rabbit@olns{node}", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        out, err = await process.communicate()
        assert process.returncode == 0, f"rabbitmqctl -n rabbit@olns{node} {' '.join(args)}: {err.decode()}"
        return out.decode()

    async def network(self, command: str, node: int) -> None:
        """`cut`, `isolate` (the `peers` cut) or `heal` node `node`."""
        process = await asyncio.create_subprocess_exec(str(SCRIPT), command, str(node), stderr=subprocess.PIPE)
        _, err = await process.communicate()
        assert process.returncode == 0, f"scripts/netns-cluster {command} {node}: {err.decode()}"

    async def all_running(self, ask: int) -> bool:
        process = await asyncio.create_subprocess_exec(
            str(SCRIPT), "running", str(ask), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        out, _ = await process.communicate()
        return process.returncode == 0 and len(out.split()) == 3


def cannot_run_here() -> str | None:
    """Why the namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables"), ("rabbitmq-server", "rabbitmq-server")):
        if subprocess.run(["which", tool], capture_output=True, check=False).returncode != 0:
            return f"{tool} is not installed (apt-get install {package}; make tools)"
    return None


@contextmanager
def running_netns_cluster() -> Iterator[NetnsCluster]:
    """Start scripts/netns-cluster (or skip: fail where ORDERLANE_REQUIRE_PARTITION_TESTS=1, as CI sets), mirror
    the tests' classic queues, and remove everything at the end, the namespaces and /etc/hosts lines included."""
    problem = cannot_run_here()
    started = None
    env = {**os.environ, "NET_TICKTIME": str(NET_TICKTIME)}
    try:
        if problem is None:
            started = subprocess.run(
                [SCRIPT, "start"], capture_output=True, text=True, check=False, env=env, timeout=300
            )
            if started.returncode != 0:
                problem = f"scripts/netns-cluster start failed: {started.stderr.strip()[-600:]}"
        if problem is not None:
            if os.environ.get(REQUIRE_PARTITION_TESTS) == "1":
                pytest.fail(f"{problem}, and {REQUIRE_PARTITION_TESTS}=1 forbids skipping the partition tests")
            pytest.skip(problem)
        assert started is not None
        first, second, third = started.stdout.split()
        policy = ["rabbitmqctl", "-n", "rabbit@olns1", "set_policy", "ha-tests", MIRRORED, MIRROR_POLICY]
        subprocess.run([*policy, "--apply-to", "queues"], capture_output=True, check=True, timeout=60)
        yield NetnsCluster((first, second, third))
    finally:
        subprocess.run([SCRIPT, "stop"], capture_output=True, check=False, env=env, timeout=120)


@dataclass(frozen=True, slots=True)
class Outcome:
    queue_type: str
    cut: Cut
    accepted: int
    lost: int
    processed_twice: int
    refused: int
    """Answers other than 202 (503: turned away, never a silent loss)."""
    refused_for: float
    """The longest time without a 202 from the cut on: how long intake was refused (the 202s right after the cut
    answer publishes the node had confirmed before it)."""
    longest_without_202: float
    """The longest gap between two 202s over the whole run."""

    def line(self) -> str:
        return (
            f"partition, {self.queue_type} queues, API's node cut ({self.cut}): {self.accepted} accepted, "
            f"{self.lost} lost, {self.processed_twice} processed twice; {self.refused} refused; no 202 for "
            f"{self.refused_for:.1f}s after the cut; longest without a 202 {self.longest_without_202:.1f}s"
        )


async def run_partition(
    cluster: NetnsCluster,
    settings: Settings,
    cut: Cut,
    *,
    before: int,
    cut_seconds: float,
    after: int,
    clients: int = 2,
) -> Outcome:
    """One run: `before` orders accepted, node 1 cut for `cut_seconds` (at least until 50 orders are accepted by
    the majority), healed and back in the cluster, `after` more accepted; then every accepted order must be
    processed within 90 s (raises otherwise, naming how many were lost)."""
    async with open_broker(on_node(settings, cluster, 1)):  # the queues' leaders (masters) on node 1
        pass
    intake = Intake()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    api_env = {"ORDERLANE_AMQP_FAILOVER_URLS": cluster.failover(1), "ORDERLANE_QUEUE_TYPE": settings.queue_type}
    async with serving_api(on_node(settings, cluster, 1), **api_env) as port, consumer_on(cluster, settings, 2) as log:
        posting = [asyncio.create_task(post_until(port, f"c{n}", intake, stop)) for n in range(clients)]
        try:
            await wait_until(lambda: len(intake.accepted) >= before, what=f"{before} orders accepted before the cut")
            cut_at = loop.time()
            await cluster.network("cut" if cut == "link" else "isolate", 1)
            await wait_until(lambda: intake.accepted_since(cut_at) >= 50, within=90, what="orders accepted cut off")
            await asyncio.sleep(max(0.0, cut_seconds - (loop.time() - cut_at)))  # a duration, not an assertion
            await cluster.network("heal", 1)
            await wait_until(lambda: cluster.all_running(2), within=120, what="node 1 back in the cluster")
            healed = len(intake.accepted)
            await wait_until(lambda: len(intake.accepted) >= healed + after, within=60, what="orders after the heal")
        finally:
            stop.set()
            await asyncio.gather(*posting)
        accepted = set(intake.accepted)
        try:
            await wait_until(lambda: accepted <= set(log.processed()), within=90, what="every accepted order processed")
        except AssertionError:
            pass  # counted below: the outcome says how many
        processed = log.processed()
    times = sorted(intake.accepted_at)
    since_cut = [cut_at, *(at for at in times if at > cut_at)]
    return Outcome(
        queue_type=settings.queue_type,
        cut=cut,
        accepted=len(accepted),
        lost=len(accepted - set(processed)),
        processed_twice=sum(count > 1 for count in processed.values()),
        refused=len(intake.refused_at),
        refused_for=max(later - earlier for earlier, later in itertools.pairwise(since_cut)),
        longest_without_202=max((later - earlier for earlier, later in itertools.pairwise(times)), default=0.0),
    )
