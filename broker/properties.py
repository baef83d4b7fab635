"""A message's AMQP properties, read lazily: the fields the ack policy, the logs and a republished copy need, for a
consumer's delivery (consumers/received.py) and the in-memory broker's message (broker/memory.py) alike."""

from __future__ import annotations

from datetime import datetime

from pamqp.commands import Basic


class PropertiesView:
    """Properties read from `_properties`, which the subclass sets (a slot of its own)."""

    __slots__ = ()
    _properties: Basic.Properties

    @property
    def priority(self) -> int | None:
        return self._properties.priority

    @property
    def message_id(self) -> str | None:
        return self._properties.message_id

    @property
    def content_type(self) -> str | None:
        return self._properties.content_type

    @property
    def content_encoding(self) -> str | None:
        return self._properties.content_encoding

    @property
    def correlation_id(self) -> str | None:
        return self._properties.correlation_id

    @property
    def timestamp(self) -> datetime | None:
        return self._properties.timestamp

    @property
    def type(self) -> str | None:
        return self._properties.message_type

    @property
    def app_id(self) -> str | None:
        return self._properties.app_id
