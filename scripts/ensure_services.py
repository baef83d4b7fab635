"""Make sure RabbitMQ answers at ORDERLANE_AMQP_URL and Redis at ORDERLANE_STATUS_URL (unless it is empty),
starting them if we can (used by `make run` / `make test`); with `--postgres`, PostgreSQL at SHOP_DATABASE_URL too
(the example shop's database: `make test`, `make run-shop`).

For each, in order: it already answers; Docker works → `docker compose up -d <service>`; the server is installed
locally → start it in the background; otherwise say what to install and fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass

import aio_pika
from redis.asyncio import Redis
from redis.exceptions import RedisError

from broker.settings import Settings, redacted

WAIT_SECONDS = 90
SHOP_DATABASE_URL = os.environ.get("SHOP_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def answers(url: str) -> bool:
    try:
        connection = await aio_pika.connect(url, timeout=3)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError):
        return False
    await connection.close()
    return True


async def redis_answers(url: str) -> bool:
    client = Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()


async def postgres_answers(url: str) -> bool:
    import asyncpg  # the example shop's dependency, installed with it

    try:
        connection = await asyncpg.connect(url, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False
    await connection.close()
    return True


def start_postgres() -> None:
    """Debian's clusters (`pg_ctlcluster`), as the postgresql package installs them."""
    subprocess.run(["service", "postgresql", "start"], check=False)


def docker_works() -> bool:
    docker = shutil.which("docker")
    return docker is not None and subprocess.run([docker, "info"], capture_output=True, check=False).returncode == 0


def start_rabbitmq() -> None:
    subprocess.run(["rabbitmq-server", "-detached"], check=False)
    if shutil.which("rabbitmqctl"):
        subprocess.run(["rabbitmqctl", "await_startup", "--timeout", str(WAIT_SECONDS)], check=False)


def start_redis(port: int) -> None:
    """In the background, keeping nothing on disk: statuses are worth a restart's loss, not a disk's care."""
    subprocess.run(["redis-server", "--port", str(port), "--daemonize", "yes", "--save", ""], check=False)


@dataclass(frozen=True)
class Service:
    name: str
    url: str
    shown: str
    """The URL as it may be printed: password masked."""
    answers: Callable[[str], Coroutine[None, None, bool]]
    compose_service: str | None
    """The service of compose.yaml that runs it, if any."""
    local_server: str
    start_local: Callable[[], None]
    install_hint: str

    def ensure(self) -> bool:
        if asyncio.run(self.answers(self.url)):
            return True
        print(f"ensure_services: no {self.name} answers at {self.shown}", flush=True)
        if self.compose_service is not None and docker_works():
            print(f"ensure_services: `docker compose up -d {self.compose_service}`", flush=True)
            subprocess.run(["docker", "compose", "up", "-d", self.compose_service], check=False)
        elif shutil.which(self.local_server):
            print(f"ensure_services: starting the local {self.local_server}", flush=True)
            self.start_local()
        else:
            print(f"ensure_services: cannot start {self.name}. {self.install_hint}", file=sys.stderr)
            return False
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            if asyncio.run(self.answers(self.url)):
                print(f"ensure_services: {self.name} answers at {self.shown}", flush=True)
                return True
            time.sleep(1)
        print(f"ensure_services: started {self.name}, but nothing answers at {self.shown}", file=sys.stderr)
        return False


def services(settings: Settings) -> list[Service]:
    found = [
        Service(
            "RabbitMQ",
            str(settings.amqp_url),
            settings.redacted_amqp_url,
            answers,
            "rabbitmq",
            "rabbitmq-server",
            start_rabbitmq,
            "Install Docker or RabbitMQ (Debian/Ubuntu: `apt-get install rabbitmq-server`), "
            "or point ORDERLANE_AMQP_URL at a running broker.",
        )
    ]
    if settings.status_url is not None:
        port = settings.status_url.port or 6379
        found.append(
            Service(
                "Redis",
                str(settings.status_url),
                redacted(settings.status_url),
                redis_answers,
                "redis",
                "redis-server",
                lambda: start_redis(port),
                "Install Docker or Redis (Debian/Ubuntu: `apt-get install redis-server`), point ORDERLANE_STATUS_URL "
                "at a running Redis, or set ORDERLANE_STATUS_URL= (empty) to run without order status.",
            )
        )
    return found


def postgres() -> Service:
    shown = SHOP_DATABASE_URL.split("@")[-1]
    hint = "Install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql`) or point SHOP_DATABASE_URL at one."
    return Service(
        "PostgreSQL", SHOP_DATABASE_URL, shown, postgres_answers, None, "pg_ctlcluster", start_postgres, hint
    )


def main() -> int:
    wanted = services(Settings()) + ([postgres()] if "--postgres" in sys.argv[1:] else [])
    return 0 if all(service.ensure() for service in wanted) else 1


if __name__ == "__main__":
    raise SystemExit(main())
