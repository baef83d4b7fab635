"""A shop on orderlane: its order model (shop.models) and its handler into PostgreSQL (shop.handler)."""
