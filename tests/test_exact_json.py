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
from api.routers.invoices import InvoiceOut, invoice_out
from api.schemas import ExactJSONResponse, JsonDecimal, _number, exact_json
from meterflow.webhook_outbox import envelope
from operators.invoices import Invoice, build_invoice
from operators.metrics import catalog_by_code
from operators.pricing import pricing_by_code


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


def test_exact_json_writes_python_mode_decimals_and_big_integers_exactly():
    content = {"a": Decimal("5"), "b": Decimal("-0.000000001"), "c": 2**70, "d": [Decimal("1E+2")]}
    assert exact_json(content) == b'{"a":5,"b":-0.000000001,"c":1180591620717411303424,"d":[100]}'


def test_webhooks_and_the_api_write_the_same_decimal_the_same_way():
    for value in (Decimal("1E+2"), Decimal("1E-7"), Decimal("-0.000000001"), Decimal("12.50")):
        webhook = envelope("evt", "t", "c", {"v": value}, 0)
        assert exact_json({"v": value}) in webhook


def _huge_invoice() -> Invoice:
    usage = {"bandwidth": Decimal(2 * (2**63 - 1)), "storage_peak": Decimal("1234567890.123456789")}
    return build_invoice(
        "cust", 0, 1, usage, catalog_by_code(), pricing_by_code(), generated_at="2026-12-01T00:00:00+00:00"
    )


def test_an_invoice_stored_or_sent_by_webhook_keeps_every_digit_and_no_mark():
    invoice = invoice_out(_huge_invoice())
    stored = exact_json(invoice.model_dump())  # api.billing stores the invoice so
    webhook = envelope("evt", "invoice.created", "cust", invoice.model_dump(), 0)  # api.billing_job sends it so
    for body in (stored, webhook):
        assert b"exact-" not in body
        assert b"18446744073709551614" in body
        assert b"1234567890.123456789" in body
        assert b"184467440737095.52" in body
    again = InvoiceOut.model_validate(json.loads(stored, parse_float=Decimal))
    assert again == invoice
