"""The shipped deploy/nginx.conf in a real nginx, in front of a real `python -m api`: for tests/test_proxy.py."""

from __future__ import annotations

import asyncio
import re
import ssl
import string
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from broker.settings import Settings
from tests.amqp import wait_until
from tests.processes import PROJECT_ROOT, free_port, serving_api

NGINX = Path("/usr/sbin/nginx")
SHIPPED = PROJECT_ROOT / "deploy" / "nginx.conf"
# What nginx needs around the shipped file outside /etc/nginx: a pid file and temporary directories of its own
# (relative paths are under `-p`), and one process, so that no worker switches to `nobody`, who may not enter the
# test's directory.
MAIN_CONFIG = """\
master_process off;
pid nginx.pid;
events {}
http {
    access_log off;
    client_body_temp_path client_body_temp;
    proxy_temp_path proxy_temp;
    fastcgi_temp_path fastcgi_temp;
    uwsgi_temp_path uwsgi_temp;
    scgi_temp_path scgi_temp;
    include orderlane.conf;
}
"""


class Placeholders(string.Template):
    """The `${NAME}`s the nginx image fills in with envsubst; upper case only, so nginx's own `$variables` stay."""

    idpattern = r"[A-Z][A-Z0-9_]*"
    flags = re.NOFLAG


def render(values: dict[str, str]) -> str:
    """deploy/nginx.conf with its placeholders filled in; one added or gone fails here."""
    template = Placeholders(SHIPPED.read_text())
    assert sorted(template.get_identifiers()) == sorted(values), "deploy/nginx.conf's placeholders changed"
    return template.safe_substitute(values)


def shipped(directive: str) -> str:
    """The value of `directive` in deploy/nginx.conf, which must set it once."""
    [setting] = re.finditer(rf"^\s*{directive}\s+([^;]*);", SHIPPED.read_text(), re.MULTILINE)
    return setting[1]


@dataclass(frozen=True, slots=True)
class Proxy:
    """nginx serving HTTPS on 127.0.0.1:`port` with a certificate that `tls` trusts; its files in `directory`."""

    port: int
    tls: ssl.SSLContext
    directory: Path

    def client(self, *, connections: int | None = None) -> httpx.AsyncClient:
        """An HTTPS client of the proxy, on at most `connections` connections at once (by default, any number)."""
        return httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{self.port}",
            verify=self.tls,
            limits=httpx.Limits(max_connections=connections),
            timeout=30,  # requests may queue for a free connection on a busy machine
        )

    def logged(self, text: str) -> int:
        """How often `text` appears in nginx's error log."""
        return (self.directory / "error.log").read_text().count(text)


@asynccontextmanager
async def proxied_api(settings: Settings, directory: Path) -> AsyncIterator[Proxy]:
    """The real API behind nginx with the shipped deploy/nginx.conf, over TLS on a free port; both stopped after."""
    cert, key = await self_signed_certificate(directory)
    port = free_port()
    async with serving_api(settings) as api_port:
        site = render(
            {
                "ORDERLANE_PROXY_LISTEN": f"127.0.0.1:{port}",
                "ORDERLANE_PROXY_UPSTREAM": f"127.0.0.1:{api_port}",
                "ORDERLANE_TLS_CERT": str(cert),
                "ORDERLANE_TLS_KEY": str(key),
            }
        )
        (directory / "orderlane.conf").write_text(site)
        (directory / "nginx.conf").write_text(MAIN_CONFIG)
        async with serving_nginx(directory, port):
            yield Proxy(port, ssl.create_default_context(cafile=cert), directory)


async def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate and its key for 127.0.0.1, made with the openssl CLI as docs/http-limits.md's try-out does."""
    cert, key = directory / "tls.crt", directory / "tls.key"
    openssl = await asyncio.create_subprocess_exec(
        *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
        *("-keyout", str(key), "-out", str(cert)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await openssl.communicate()
    assert openssl.returncode == 0, err.decode()
    return cert, key


@asynccontextmanager
async def serving_nginx(directory: Path, port: int) -> AsyncIterator[None]:
    """nginx with `directory` as its prefix, yielded once it accepts connections on `port`; stopped (SIGTERM, its
    fast shutdown) on the way out."""
    error_log = directory / "error.log"
    nginx = await asyncio.create_subprocess_exec(
        *(str(NGINX), "-p", str(directory), "-c", str(directory / "nginx.conf"), "-e", str(error_log)),
        *("-g", "daemon off;"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )

    async def listening() -> bool:
        assert nginx.returncode is None, f"nginx exited:\n{error_log.read_text()}"
        return await accepts(port)

    try:
        await wait_until(listening, within=10, what="nginx listening")  # it announces nothing when it is
        yield
    finally:
        if nginx.returncode is None:
            nginx.terminate()
        async with asyncio.timeout(30):
            await nginx.wait()


async def accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return False
    writer.close()
    await writer.wait_closed()
    return True
