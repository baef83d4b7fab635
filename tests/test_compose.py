"""compose.yaml read as compose reads it, without Docker: which services start with and without the profile `cluster`,
and what the API and the consumers wait for before they start."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pytest
import yaml

from tests.processes import PROJECT_ROOT

COMPOSE = PROJECT_ROOT / "compose.yaml"
CLUSTER_ENV = PROJECT_ROOT / "deploy" / "cluster" / "cluster.env"
ORDERLANE_SERVICES = ("api", "consumer")
Services = dict[str, dict[str, Any]]


def env_file(text: str) -> dict[str, str]:
    """`NAME=value` lines, as `docker compose --env-file` reads them."""
    lines = (line.strip() for line in text.splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def interpolated(value: object, variables: Mapping[str, str]) -> str:
    """`${NAME}` and `${NAME:-default}`, the forms compose.yaml uses: an unset or empty NAME gives the default."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda found: variables.get(found[1]) or found[2] or "", str(value))


def enabled(profiles: set[str]) -> Services:
    """The services compose keeps with `profiles` on: those without a profile, and those of an active one."""
    services: Services = yaml.safe_load(COMPOSE.read_text())["services"]
    return {
        name: service
        for name, service in services.items()
        if not service.get("profiles") or set(service["profiles"]) & profiles
    }


def started(services: Services, variables: Mapping[str, str]) -> set[str]:
    """The services of which compose starts containers: a scale of 0 starts none."""
    return {name for name, service in services.items() if int(interpolated(service.get("scale", 1), variables)) > 0}


def waited_for(service: str, services: Services, variables: Mapping[str, str]) -> dict[str, str]:
    """What compose waits for before starting `service`, by condition; a required dependency that the profiles
    leave out makes compose refuse the whole file, so this fails on one."""
    running = started(services, variables)
    waits = {}
    for dependency, config in services[service]["depends_on"].items():
        assert dependency in services or config.get("required") is False, f"{service} requires {dependency}, left out"
        if dependency in running:
            waits[dependency] = config["condition"]
    return waits


@pytest.mark.parametrize("service", ORDERLANE_SERVICES)
def test_without_a_profile_orderlane_waits_for_the_single_broker(service: str) -> None:
    services = enabled(profiles=set())
    assert started(services, {}) >= {"rabbitmq", "redis", *ORDERLANE_SERVICES}
    assert not {"rabbit1", "rabbit2", "rabbit3", "cluster-policy"} & set(services)
    assert waited_for(service, services, {}) == {"rabbitmq": "service_healthy", "redis": "service_healthy"}


@pytest.mark.parametrize("service", ORDERLANE_SERVICES)
def test_with_the_cluster_profile_orderlane_waits_for_the_cluster_not_the_single_broker(service: str) -> None:
    services = enabled(profiles={"cluster"})
    variables = env_file(CLUSTER_ENV.read_text())
    running = started(services, variables)
    assert "rabbitmq" not in running, "the cluster's env file keeps the single broker from starting"
    assert running >= {"rabbit1", "rabbit2", "rabbit3", "cluster-policy", "redis", *ORDERLANE_SERVICES}
    assert waited_for(service, services, variables) == {
        "redis": "service_healthy",
        "rabbit1": "service_healthy",
        "rabbit2": "service_healthy",
        "rabbit3": "service_healthy",
        "cluster-policy": "service_completed_successfully",
    }


def test_the_cluster_env_file_points_orderlane_at_the_clusters_nodes() -> None:
    variables = env_file(CLUSTER_ENV.read_text())
    urls = [variables["ORDERLANE_AMQP_URL"], *variables["ORDERLANE_AMQP_FAILOVER_URLS"].split(",")]
    assert [re.findall(r"@([\w-]+):", url) for url in urls] == [["rabbit1"], ["rabbit2"], ["rabbit3"]]
