"""Make sure a RabbitMQ answers at ORDERLANE_AMQP_URL, starting one if we can (used by `make run` / `make test`).

Order of attempts: the broker is already up; Docker works → `docker compose up -d rabbitmq`; a local
`rabbitmq-server` is installed → `rabbitmq-server -detached`; otherwise say what to install and fail.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time

import aio_pika

from broker.settings import Settings

WAIT_SECONDS = 90


async def answers(url: str) -> bool:
    try:
        connection = await aio_pika.connect(url, timeout=3)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError):
        return False
    await connection.close()
    return True


def docker_works() -> bool:
    docker = shutil.which("docker")
    return docker is not None and subprocess.run([docker, "info"], capture_output=True, check=False).returncode == 0


def start_broker() -> bool:
    if docker_works():
        print("ensure_broker: starting RabbitMQ with `docker compose up -d rabbitmq`", flush=True)
        return subprocess.run(["docker", "compose", "up", "-d", "rabbitmq"], check=False).returncode == 0
    if shutil.which("rabbitmq-server"):
        print("ensure_broker: starting the local RabbitMQ with `rabbitmq-server -detached`", flush=True)
        subprocess.run(["rabbitmq-server", "-detached"], check=False)
        if shutil.which("rabbitmqctl"):
            subprocess.run(["rabbitmqctl", "await_startup", "--timeout", str(WAIT_SECONDS)], check=False)
        return True
    return False


def main() -> int:
    settings = Settings()
    url, shown = str(settings.amqp_url), settings.redacted_amqp_url
    if asyncio.run(answers(url)):
        return 0
    print(f"ensure_broker: no RabbitMQ answers at {shown}", flush=True)
    if not start_broker():
        print(
            "ensure_broker: cannot start one. Install Docker (then `docker compose up -d rabbitmq`) or RabbitMQ "
            "(Debian/Ubuntu: `apt-get install rabbitmq-server`), or point ORDERLANE_AMQP_URL at a running broker.",
            file=sys.stderr,
        )
        return 1
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if asyncio.run(answers(url)):
            print(f"ensure_broker: RabbitMQ answers at {shown}", flush=True)
            return 0
        time.sleep(1)
    print(f"ensure_broker: started a broker, but nothing answers at {shown} after {WAIT_SECONDS}s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
