from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from broker.messages import Order, decode_order, encode_order

VALID: dict[str, Any] = {"order_id": "A-1.b:c_9", "priority": 3, "items": ["book"], "user_type": "vip"}


def with_(**changes: Any) -> dict[str, Any]:
    return {**VALID, **changes}


def test_defaults_priority_5_and_regular() -> None:
    parsed = Order.model_validate({"order_id": "x", "items": ["a"]})
    assert (parsed.priority, parsed.user_type) == (5, "regular")


def test_null_user_type_means_regular() -> None:
    assert Order.model_validate(with_(user_type=None)).user_type == "regular"


def test_an_integral_number_is_an_integer_as_json_schema_has_it() -> None:
    """`3.0` is three to JSON Schema's `integer` (the OpenAPI document's contract), so it is to the order too; it is
    published as 3."""
    parsed = decode_order(b'{"order_id": "x", "items": ["a"], "priority": 3.0}', Order)
    assert parsed.priority == 3
    assert b'"priority":3,' in encode_order(parsed)


def test_the_schema_admits_what_validation_admits_for_user_type() -> None:
    schema = Order.model_json_schema(mode="validation")["properties"]["user_type"]
    assert {"type": "null"} in schema["anyOf"]


def test_round_trip_through_the_wire() -> None:
    parsed = Order.model_validate(VALID)
    assert decode_order(encode_order(parsed), Order) == parsed


@pytest.mark.parametrize(
    ("payload", "error_type"),
    [
        (with_(order_id=""), "string_too_short"),
        (with_(order_id="x" * 65), "string_too_long"),
        (with_(order_id="has space"), "string_pattern_mismatch"),
        (with_(order_id=7), "string_type"),
        (with_(priority=10), "less_than_equal"),
        (with_(priority=-1), "greater_than_equal"),
        (with_(priority="3"), "int_type"),
        (with_(priority=True), "int_type"),
        (with_(priority=2.5), "int_type"),
        (with_(items=[]), "too_short"),
        (with_(items=["x"] * 101), "too_long"),
        (with_(items=[""]), "string_too_short"),
        (with_(items="book"), "list_type"),
        (with_(user_type="gold"), "literal_error"),
        (with_(extra=1), "extra_forbidden"),
        ({"items": ["a"]}, "missing"),
        ({"order_id": "x"}, "missing"),
    ],
)
def test_rejects(payload: dict[str, Any], error_type: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Order.model_validate(payload)
    assert error_type in {error["type"] for error in caught.value.errors()}


def test_orders_are_immutable() -> None:
    parsed = Order.model_validate(VALID)
    with pytest.raises(ValidationError):
        parsed.priority = 0  # type: ignore[misc]
