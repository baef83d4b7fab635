"""The start-up replication check's verdicts (broker/mirroring.py); tests/test_cluster.py runs it on a cluster."""

from __future__ import annotations

import logging

import pytest
from pydantic import AmqpDsn

from broker.mirroring import Policy, check_replication, effective_policy, replication_problems
from broker.settings import Settings
from broker.topology import build_topology

MIRRORED = {"ha-mode": "all", "ha-sync-mode": "automatic"}
SETTINGS = Settings(queue="orders")
QUEUES = ["orders", "orders.retry.1", "orders.dlq"]


def test_a_cluster_whose_queues_all_have_a_mirroring_policy_is_fine() -> None:
    policies = [Policy("^orders", "queues", 0, MIRRORED)]
    assert replication_problems("3.10.8", 3, QUEUES, policies, SETTINGS) == []


def test_each_queue_without_mirroring_is_named_with_the_command_that_mirrors_it() -> None:
    policies = [
        Policy("^orders$", "queues", 0, MIRRORED),
        Policy("retry", "exchanges", 5, MIRRORED),  # not for queues
        Policy("dlq$", "queues", 0, {"max-length": 1000}),
    ]
    [problem] = replication_problems("3.10.8", 3, QUEUES, policies, SETTINGS)
    assert "no policy mirrors orders.retry.1, orders.dlq:" in problem
    assert problem.endswith(
        """rabbitmqctl set_policy ha-orderlane '^orders' '{"ha-mode":"all","ha-sync-mode":"automatic"}' """
        "--apply-to queues"
    )


def test_the_policy_of_highest_priority_is_the_one_in_effect() -> None:
    policies = [Policy(".*", "all", 0, MIRRORED), Policy("^orders.dlq$", "queues", 1, {"max-length": 10})]
    assert effective_policy("orders", policies) == MIRRORED
    assert effective_policy("orders.dlq", policies) == {"max-length": 10}
    [problem] = replication_problems("3.10.8", 3, QUEUES, policies, SETTINGS)
    assert "no policy mirrors orders.dlq:" in problem


def test_one_node_needs_no_mirrors() -> None:
    assert replication_problems("3.10.8", 1, QUEUES, [], SETTINGS) == []


def test_rabbitmq_4_cannot_mirror_classic_queues_so_it_asks_for_quorum_ones() -> None:
    [problem] = replication_problems("4.1.0", 3, QUEUES, [], SETTINGS)
    assert "classic queues are not replicated" in problem
    assert "ORDERLANE_QUEUE_TYPE=quorum" in problem
    quorum = Settings(queue="orders", queue_type="quorum")
    assert replication_problems("4.1.0", 3, QUEUES, [], quorum) == []


async def test_failover_urls_without_a_management_url_say_the_check_cannot_be_made(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(amqp_failover_urls=(AmqpDsn("amqp://guest:guest@127.0.0.1:5682/"),))
    with caplog.at_level(logging.INFO, logger="broker.mirroring"):
        await check_replication(settings, build_topology(settings))
    assert "set ORDERLANE_MANAGEMENT_URL" in caplog.text


async def test_a_management_api_that_does_not_answer_is_a_warning_not_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(management_url="http://guest:secret@127.0.0.1:1/")
    with caplog.at_level(logging.WARNING, logger="broker.mirroring"):
        await check_replication(settings, build_topology(settings))
    assert "could not check the queues' replication through http://guest:***@127.0.0.1:1/" in caplog.text
    assert "secret" not in caplog.text
