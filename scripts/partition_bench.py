"""The long partition runs behind docs/high-availability.md: for quorum queues and for mirrored classic queues, each
cut (the API's node with its link down; the same node cut off from its peers while clients still reach it), on a
fresh 3-node cluster in network namespaces (scripts/netns-cluster), under steady intake and consumption.

    .venv/bin/python -m scripts.partition_bench [--cut-seconds 40] [--types quorum,classic] [--cuts link,peers]

As root. Prints one line per run (accepted, lost, processed twice, refused, how long intake was refused). Needs ip,
iptables and rabbitmq-server; takes about 2 minutes a run. The machine's two cores are shared: times are noisy."""

from __future__ import annotations

import argparse
import asyncio
import uuid

from broker.settings import Settings
from tests.partition import Cut, Outcome, run_partition, running_netns_cluster


async def one_run(queue_type: str, cut: Cut, cut_seconds: float) -> Outcome:
    settings = Settings(queue=f"test-bench-{uuid.uuid4().hex[:8]}", queue_type=queue_type, startup_timeout=20)
    with running_netns_cluster() as cluster:
        return await run_partition(cluster, settings, cut, before=300, cut_seconds=cut_seconds, after=300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cut-seconds", type=float, default=40.0)
    parser.add_argument("--types", default="quorum,classic")
    parser.add_argument("--cuts", default="link,peers")
    args = parser.parse_args()
    for queue_type in args.types.split(","):
        for cut in args.cuts.split(","):
            assert cut in ("link", "peers"), cut
            outcome = asyncio.run(one_run(queue_type, cut, args.cut_seconds))
            print(outcome.line(), flush=True)


if __name__ == "__main__":
    main()
