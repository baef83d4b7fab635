"""`package.module:attribute` references, the form ORDERLANE_HANDLER and ORDERLANE_ORDER_MODEL take (as uvicorn
takes its app)."""

from __future__ import annotations

import importlib

from broker.errors import ConfigurationError


def load_reference(reference: str, what: str) -> object:
    """Import the module and return the attribute; a ConfigurationError naming `what` if either is missing."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"{what} {reference!r} is not of the form module:attribute")
    try:
        found: object = importlib.import_module(module_name)
        for name in attribute.split("."):
            found = getattr(found, name)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"{what} {reference!r} cannot be loaded: {exc}") from exc
    return found
