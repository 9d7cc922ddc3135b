"""Types shared by the API's models, and the response class that writes
their decimals exactly."""

from __future__ import annotations

import json
import re
import secrets
from decimal import Decimal
from typing import Annotated, Any

from fastapi.responses import JSONResponse
from pydantic import Field, PlainSerializer, WithJsonSchema

# Pydantic writes a Decimal as a JSON string, and a float carries only about
# 15 significant digits, yet a JSON number can carry any decimal exactly. So
# a Decimal that an int or a float holds exactly leaves pydantic as one; any
# other leaves it as a string behind this mark, which ExactJSONResponse
# writes back as the exact number. The mark is random per process, so no
# text a client sends can pass for one.
_MARK_TOKEN = secrets.token_hex(16)
_EXACT_MARK = f"\x00exact-{_MARK_TOKEN}:"
_MARKED_NUMBER = re.compile(rb'"\\u0000exact-%s:(-?[0-9]+(?:\.[0-9]+)?)"' % _MARK_TOKEN.encode())


def _number(value: Decimal) -> int | float | str:
    if value == value.to_integral_value():
        return int(value)
    as_float = float(value)
    if Decimal(repr(as_float)) == value:
        return as_float
    return _EXACT_MARK + format(value, "f")


# Money and quantities are Decimal inside and JSON numbers outside, as the
# contract's clients expect (`"subtotal": 11.5`, `"value": 15000`). Routes
# whose models carry one answer with `response_class=ExactJSONResponse`.
JsonDecimal = Annotated[
    Decimal,
    PlainSerializer(_number, return_type=Any, when_used="json"),
    WithJsonSchema({"type": "number"}, mode="serialization"),
]

CustomerId = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_-]+$")]
EpochMs = Annotated[int, Field(ge=0, le=32_503_680_000_000, description="Unix epoch milliseconds")]


def _marked(value: object) -> str:
    if isinstance(value, Decimal) and value.is_finite():
        return _EXACT_MARK + format(value, "f")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def exact_json(content: Any) -> bytes:
    """JSON of `content` with every number exact: a model dumped in JSON mode
    (its JsonDecimal values marked) or in Python mode (Decimals), integers of
    any size. Whatever stores or sends a wire model as JSON goes through here,
    so no mark ever leaves the process. Read it back exactly with
    `json.loads(body, parse_float=Decimal)`."""
    body = json.dumps(
        content, default=_marked, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode("utf-8")
    if b"\\u0000exact-" not in body:
        return body
    return _MARKED_NUMBER.sub(rb"\1", body)


class ExactJSONResponse(JSONResponse):
    """JSON whose JsonDecimal values are exact numbers, however many digits."""

    def render(self, content: Any) -> bytes:
        return exact_json(content)
