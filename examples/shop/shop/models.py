"""The shop's order, as its customers post it: priced lines and where to ship them.

`ShopOrder` subclasses orderlane's `OrderBase`, so orderlane routes it by `order_id`, `priority` and `user_type` and
validates the rest at the API (a 422 before anything is queued) and again in the consumer.

Money is a `Decimal`: OrderBase's models are strict, and strict validation takes a JSON string ("12.50") or a JSON
number (12.5) for a Decimal, never a float in Python. Prices are normalised to cents (12.5 becomes 12.50), so an
order posted with either spelling has the same body, and a repost is recognised as the same order.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from broker.messages import OrderBase

CENT = Decimal("0.01")
STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)
"""OrderBase's own configuration, for the models nested in the order too."""


def _in_cents(value: Decimal) -> Decimal:
    return value.quantize(CENT)


Price = Annotated[Decimal, Field(gt=0, max_digits=10, decimal_places=2), AfterValidator(_in_cents)]
"""A unit price: positive, at most 99,999,999.99, in cents."""

# ISO 3166-1 alpha-2, the officially assigned codes.
ISO_COUNTRIES = frozenset(
    """AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ
    CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR
    GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO
    JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR
    MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO
    RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV
    TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW""".split()
)


def _iso_country(code: str) -> str:
    if code not in ISO_COUNTRIES:
        raise ValueError(f"{code!r} is not an ISO 3166-1 alpha-2 country code")
    return code


Country = Annotated[str, Field(min_length=2, max_length=2), AfterValidator(_iso_country)]
Text = Annotated[str, Field(min_length=1, max_length=200)]
Email = Annotated[str, Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
"""One @ and a dotted domain. For RFC-level checks use pydantic's EmailStr (the `pydantic[email]` extra)."""


class LineItem(BaseModel):
    """One line of an order: `quantity` units of `sku` at `unit_price` each."""

    model_config = STRICT

    sku: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
    quantity: Annotated[int, Field(gt=0, le=10_000)]
    """Bounded so that a line can never overflow the database's integer (a retry could not fix that)."""
    unit_price: Price

    @property
    def amount(self) -> Decimal:
        return self.quantity * self.unit_price


class Address(BaseModel):
    """Where an order is shipped."""

    model_config = STRICT

    name: Text
    street: Text
    city: Text
    postcode: Annotated[str, Field(min_length=1, max_length=16)]
    country: Country


class ShopOrder(OrderBase):
    """The shop's order: `ORDERLANE_ORDER_MODEL=shop.models:ShopOrder`."""

    items: Annotated[list[LineItem], Field(min_length=1, max_length=100)]
    customer_email: Email
    shipping_address: Address
    note: Annotated[str, Field(max_length=500)] | None = None

    @property
    def total(self) -> Decimal:
        """What the order costs: the sum of its lines."""
        return sum((line.amount for line in self.items), Decimal("0.00"))
