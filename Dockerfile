# One image for both processes: the API (default CMD, `orderlane api`) and the consumers (`orderlane consume`).
# Your own order model and handler: an image FROM this one that adds your package and names them, e.g.
#   FROM orderlane:local
#   COPY shop /app/shop                      # importable as `shop` (PYTHONPATH=/app), or `RUN pip install ./shop`
#   ENV ORDERLANE_ORDER_MODEL=shop.models:ShopOrder ORDERLANE_HANDLER=shop.handler:handle
# examples/shop/Dockerfile is a complete one.

# --- builder: install orderlane and its runtime deps into a self-contained venv -----------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Same path as in the final stage: a venv's scripts hard-code its location in their shebangs.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY api ./api
COPY broker ./broker
COPY consumers ./consumers
# A regular (non-editable) install: the code lands in site-packages, so /src is not needed later.
RUN pip install ".[otel]"

# --- final: the venv only, no build tools, run as an unprivileged user ------------------------
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app

RUN groupadd --gid 10001 orderlane \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin orderlane
COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
USER 10001:10001

EXPOSE 8000
# For the API. A consumer serves metrics on ORDERLANE_METRICS_PORT instead; compose checks that for it. The slim image
# has no curl: urlopen raises on a refused connection or a non-2xx status, so python exits 1.
# start-period covers ORDERLANE_STARTUP_TIMEOUT (30 s): the API connects to the broker first.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]

# Exec form, so python is PID 1 and receives SIGTERM itself for a graceful shutdown.
CMD ["orderlane", "api", "--host", "0.0.0.0", "--port", "8000"]
