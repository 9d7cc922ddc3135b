"""Types shared by the API's response models."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import PlainSerializer

# Money and quantities are Decimal inside and JSON numbers outside, as the
# contract's clients expect (`"subtotal": 11.5`).
JsonDecimal = Annotated[Decimal, PlainSerializer(float, return_type=float, when_used="json")]
