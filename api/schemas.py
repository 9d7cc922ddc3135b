"""Types shared by the API's models."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import Field, PlainSerializer


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


# Money and quantities are Decimal inside and JSON numbers outside, as the
# contract's clients expect (`"subtotal": 11.5`, `"value": 15000`).
JsonDecimal = Annotated[Decimal, PlainSerializer(_number, return_type=int | float, when_used="json")]

CustomerId = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_-]+$")]
EpochMs = Annotated[int, Field(ge=0, le=32_503_680_000_000, description="Unix epoch milliseconds")]
