"""The quantity domain: what a metered property may carry (operators.metrics,
operators.events.quantity_of), and what the dataflow and the API both refuse."""

from decimal import Decimal

import pytest

from operators.events import InvalidEvent, quantity_of, validate_event
from operators.metrics import (
    DEFAULT_METERED,
    QUANTITY_MAX,
    Aggregation,
    Metric,
    metered_properties,
)

NOW = 1_760_000_000_000


def event(event_type: str = "api_request", **properties):
    return {
        "transaction_id": "tx_1",
        "customer_id": "cust-1",
        "event_type": event_type,
        "timestamp": NOW,
        "properties": properties,
    }


def reason(raw, metered=DEFAULT_METERED) -> str:
    with pytest.raises(InvalidEvent) as info:
        validate_event(raw, NOW, metered)
    return str(info.value)


def test_the_default_catalog_meters_bytes_gb_stored_and_cpu_ms():
    assert DEFAULT_METERED == {
        "api_request": (("bytes", False),),
        "storage": (("gb_stored", False),),
        "compute": (("cpu_ms", False),),
    }


@pytest.mark.parametrize(
    "value, exact",
    [
        (0, Decimal(0)),
        (512, Decimal(512)),
        (QUANTITY_MAX, Decimal(2**63 - 1)),
        (0.1, Decimal("0.1")),
        (0.2, Decimal("0.2")),
        (1e18, Decimal("1e18")),
        (123456.123456789, Decimal("123456.123456789")),
        ("12.5", Decimal("12.5")),
        ("9223372036854775807.999999999", None),  # over the maximum: refused below
        ("0.000000001", Decimal("0.000000001")),
        (-0.0, Decimal("-0.0")),
    ],
)
def test_in_domain_values_are_read_exactly(value, exact):
    if exact is None:
        with pytest.raises(InvalidEvent):
            quantity_of("bytes", value, allow_negative=False)
    else:
        assert quantity_of("bytes", value, allow_negative=False) == exact
        assert validate_event(event(bytes=value), NOW).properties["bytes"] == value


@pytest.mark.parametrize(
    "properties, why",
    [
        ({"bytes": -5e6}, "must not be negative"),
        ({"bytes": -1}, "must not be negative"),
        ({"bytes": "-1"}, "must not be negative"),
        ({"bytes": 1e31}, "larger than 9223372036854775807"),
        ({"bytes": 2**63}, "outside the signed 64-bit range"),  # the contract's integer rule comes first
        ({"bytes": 9.3e18}, "larger than 9223372036854775807"),
        ({"bytes": "99999999999999999999"}, "plain decimal number"),
        ({"bytes": 1e-10}, "more than 9 digits after the decimal point"),
        ({"bytes": "0.0000000001"}, "plain decimal number"),
        ({"bytes": "abc"}, "plain decimal number"),
        ({"bytes": "1e5"}, "plain decimal number"),
        ({"bytes": " 5"}, "plain decimal number"),
        ({"bytes": True}, "must be a number"),
    ],
)
def test_out_of_domain_values_are_refused_with_a_reason(properties, why):
    assert why in reason(event(**properties))


def test_each_event_type_checks_its_own_metered_properties():
    assert "gb_stored" in reason(event("storage", gb_stored=1e27))
    assert "cpu_ms" in reason(event("compute", cpu_ms=-1))
    # The same names on other event types, and other properties, are free.
    assert validate_event(event("storage", bytes=-1, cpu_ms=1e31), NOW)
    assert validate_event(event(ratio=-0.123456789012, note="-1"), NOW)


def test_a_metric_that_allows_credits_takes_negative_values():
    refunds = Metric("refunds", "Refunds", "refund", Aggregation.SUM, "USD", "amount", allow_negative=True)
    metered = metered_properties((refunds,))
    assert validate_event(event("refund", amount=-12.5), NOW, metered).properties["amount"] == -12.5
    assert "larger than" in reason(event("refund", amount=-1e31), metered)


def test_a_property_two_metrics_read_is_negative_only_if_both_allow_it():
    credits = Metric("net", "Net", "usage", Aggregation.SUM, "u", "qty", allow_negative=True)
    peak = Metric("peak", "Peak", "usage", Aggregation.MAX, "u", "qty")
    assert metered_properties((credits, peak)) == {"usage": (("qty", False),)}


def test_count_and_unique_count_do_not_meter_a_quantity():
    users = Metric("users", "Users", "login", Aggregation.UNIQUE_COUNT, "users", "user")
    calls = Metric("calls", "Calls", "login", Aggregation.COUNT, "calls")
    assert metered_properties((users, calls)) == {}


def test_a_seconds_timestamp_gets_a_hint_to_send_milliseconds():
    raw = event(bytes=1)
    raw["timestamp"] = NOW // 1000
    assert "looks like Unix seconds" in reason(raw)
    raw["timestamp"] = NOW - 31 * 24 * 3600 * 1000
    assert reason(raw) == "timestamp is older than 30 days"
