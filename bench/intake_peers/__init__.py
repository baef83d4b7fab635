"""The HTTP intakes users would write or pick instead of orderlane's API, each an ASGI `app` served by uvicorn as
orderlane's is, for `python -m bench intake-peers`. They take the FastAPI + Celery original's OrderRequest and publish
it to the queue named by ORDERLANE_QUEUE on the broker at ORDERLANE_AMQP_URL, with its priority turned the way RabbitMQ
reads it."""
