"""The HTTP API: an application factory whose lifespan owns the broker connection."""

from api.app import create_app

__all__ = ["create_app"]
