"""A 3-node RabbitMQ cluster on this machine (`scripts/cluster`), beside the broker on 5672, for the cluster tests."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from tests.processes import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "cluster"
REQUIRE_CLUSTER_TESTS = "ORDERLANE_REQUIRE_CLUSTER_TESTS"
MIRROR_POLICY = '{"ha-mode": "all", "ha-sync-mode": "automatic"}'
"""What the operator sets on 3.x (docs/scaling.md, "A RabbitMQ cluster"): every queue on every node, in sync."""
MIRRORED = "^test-"
"""The queues the tests' policy mirrors: every test's own (tests/conftest.py names them test-...)."""


@dataclass(frozen=True, slots=True)
class Cluster:
    urls: tuple[str, str, str]
    """Node 1's, 2's and 3's AMQP URL."""

    def url(self, node: int) -> str:
        return self.urls[node - 1]

    def management_url(self, node: int) -> str:
        return f"http://guest:guest@127.0.0.1:{15680 + node}/"

    def failover(self, node: int) -> str:
        """ORDERLANE_AMQP_FAILOVER_URLS for a process that connects to `node` first: the other two, in order."""
        return ",".join(url for n, url in enumerate(self.urls, start=1) if n != node)

    async def kill(self, node: int) -> None:
        """SIGKILL the node's Erlang VM: a crash, not a stop."""
        await run_script("kill", str(node))

    async def restart(self, node: int) -> None:
        """Start it again and wait until it is back in the cluster."""
        await run_script("restart", str(node))

    async def healthy(self) -> bool:
        """All three nodes run, clustered."""
        return (await run_script("status", check=False)) == 0

    async def rabbitmqctl(self, node: int, *args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            "rabbitmqctl", "-n", f"ol{node}@localhost", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await process.communicate()
        assert process.returncode == 0, f"rabbitmqctl -n ol{node}@localhost {' '.join(args)}: {err.decode()}"
        return out.decode()

    async def queue_nodes(self, ask: int, queue: str) -> tuple[str, set[str]]:
        """The node that leads `queue` and the nodes of its other replicas in sync, as node `ask` sees them: a
        classic queue's master and synchronised mirrors (read from the text form: the JSON one leaves the node out of
        a pid), a quorum queue's Raft leader and its other online members."""
        listed = await self.rabbitmqctl(
            ask,
            "list_queues",
            *("name", "type", "pid", "synchronised_slave_pids", "leader", "online"),
            "--no-table-headers",
            "--quiet",
        )
        found = [line.split("\t")[1:] for line in listed.splitlines() if line.split("\t")[0] == queue]
        if not found:  # a quorum queue whose leader just died is left out until a new one is elected
            raise LookupError(f"node {ask} does not list queue {queue!r}")
        [(kind, pid, mirrors, leader, online)] = found
        if kind == "quorum":
            return leader, {member for member in online.strip("[]").split(", ") if member} - {leader}
        return erlang_node(pid), {erlang_node(mirror) for mirror in mirrors.strip("[]").split(", ") if mirror}


def erlang_node(pid: str) -> str:
    """`<ol1@localhost.1795960636.1174.0>` → `ol1@localhost`."""
    return pid.strip("<>").rsplit(".", 3)[0]


def node_number(node: str) -> int:
    """`ol2@localhost` → 2."""
    return int(node.removeprefix("ol").split("@")[0])


async def run_script(*args: str, check: bool = True) -> int:
    process = await asyncio.create_subprocess_exec(
        str(SCRIPT), *args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, err = await process.communicate()
    assert process.returncode is not None
    if check:
        assert process.returncode == 0, f"scripts/cluster {' '.join(args)}: {err.decode()}"
    return process.returncode


@contextmanager
def running_cluster() -> Iterator[Cluster]:
    """Start the cluster (or skip: fail where ORDERLANE_REQUIRE_CLUSTER_TESTS=1, as CI sets), mirror the tests'
    queues, and stop it, data and all, at the end."""
    started = subprocess.run([SCRIPT, "start"], capture_output=True, text=True, check=False, timeout=300)
    try:
        if started.returncode != 0:
            problem = f"scripts/cluster start failed: {started.stderr.strip()[-600:]}"
            if os.environ.get(REQUIRE_CLUSTER_TESTS) == "1":
                pytest.fail(f"{problem}, and {REQUIRE_CLUSTER_TESTS}=1 forbids skipping the cluster tests")
            pytest.skip(problem)
        first, second, third = started.stdout.split()
        policy = ["rabbitmqctl", "-n", "ol1@localhost", "set_policy", "ha-tests", MIRRORED, MIRROR_POLICY]
        subprocess.run([*policy, "--apply-to", "queues"], capture_output=True, check=True, timeout=60)
        yield Cluster((first, second, third))
    finally:
        subprocess.run([SCRIPT, "stop"], capture_output=True, check=False, timeout=120)
