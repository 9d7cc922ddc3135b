"""Decimals leave the API as exact JSON numbers (api.schemas)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import typing
from decimal import Decimal
from typing import Annotated

from fastapi.routing import APIRoute
from pydantic import BaseModel, PlainSerializer

import api.routers
from api.schemas import ExactJSONResponse, JsonDecimal, _number


class _Sample(BaseModel):
    value: JsonDecimal
    maybe: JsonDecimal | None = None
    breakdown: dict[str, JsonDecimal] = {}
    note: str = ""


def _render(model: BaseModel) -> bytes:
    return ExactJSONResponse(model.model_dump(mode="json")).body


def test_every_digit_survives_and_short_values_stay_plain_numbers():
    body = _render(
        _Sample(
            value=Decimal("1234567890.123456789"),
            maybe=Decimal("0.3"),
            breakdown={"a": Decimal(2 * (2**63 - 1)), "b": Decimal("-0.000000001"), "c": Decimal("11.50")},
        )
    )
    assert body == (
        b'{"value":1234567890.123456789,"maybe":0.3,'
        b'"breakdown":{"a":18446744073709551614,"b":-1e-09,"c":11.5},"note":""}'
    )
    parsed = json.loads(body, parse_float=Decimal)
    assert parsed["value"] == Decimal("1234567890.123456789")
    assert parsed["breakdown"]["b"] == Decimal("-0.000000001")


def test_text_a_client_sends_is_never_taken_for_a_number():
    # A string that looks like the mark without the process's secret token stays a string.
    body = _render(_Sample(value=Decimal(1), note="\x00exact-0000:1.5"))
    assert json.loads(body)["note"] == "\x00exact-0000:1.5"


def _is_json_decimal(metadata: typing.Iterable[object]) -> bool:
    return any(isinstance(m, PlainSerializer) and m.func is _number for m in metadata)


def _holds_decimal(tp: object) -> bool:
    fields = getattr(tp, "model_fields", None)
    if isinstance(fields, dict):
        return any(_is_json_decimal(f.metadata) or _holds_decimal(f.annotation) for f in fields.values())
    if typing.get_origin(tp) is Annotated and _is_json_decimal(tp.__metadata__):  # type: ignore[attr-defined]
        return True
    return any(_holds_decimal(arg) for arg in typing.get_args(tp))


def _api_routes() -> list[APIRoute]:
    routes: list[APIRoute] = []
    for module in pkgutil.iter_modules(api.routers.__path__):
        router = importlib.import_module(f"api.routers.{module.name}").router
        routes += [r for r in router.routes if isinstance(r, APIRoute)]
    return routes


def test_every_route_that_answers_a_decimal_writes_it_exactly():
    """Only ExactJSONResponse turns the mark back into a number, so every
    route whose response model holds a JsonDecimal must answer with it."""
    routes = [r for r in _api_routes() if r.response_model is not None]
    with_decimals = [r for r in routes if _holds_decimal(r.response_model)]
    paths = {r.path for r in with_decimals}
    assert {"/v1/usage", "/v1/invoices/calculate", "/v1/pricing", "/v1/invoices/{invoice_id}"} <= paths
    assert not [r.path for r in with_decimals if r.response_class is not ExactJSONResponse]
