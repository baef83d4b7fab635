"""Benchmarks: orderlane measured beside raw aio-pika on the same broker, in the same run."""
