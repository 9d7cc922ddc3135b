import math

import pytest

from operators.events import (
    MAX_AGE_MS,
    MAX_FUTURE_MS,
    InvalidEvent,
    decode_event,
    transaction_id_of,
    validate_event,
)

NOW = 1_760_000_000_000


def event(**overrides):
    base = {
        "transaction_id": "tx_1",
        "customer_id": "cust-1",
        "event_type": "api_request",
        "timestamp": NOW,
        "properties": {"bytes": 512, "endpoint": "/v1/x", "cached": False, "ratio": 0.5},
    }
    base.update(overrides)
    return base


def reason(raw):
    with pytest.raises(InvalidEvent) as info:
        validate_event(raw, NOW)
    return str(info.value)


def test_valid_event_round_trips():
    parsed = validate_event(event(), NOW)
    assert parsed.transaction_id == "tx_1"
    assert parsed.customer_id == "cust-1"
    assert parsed.timestamp == NOW
    assert parsed.properties["bytes"] == 512
    assert decode_event(parsed.to_json(), NOW) == parsed


def test_properties_are_optional():
    raw = event()
    del raw["properties"]
    assert validate_event(raw, NOW).properties == {}


def test_float_timestamp_is_truncated_to_ms():
    assert validate_event(event(timestamp=NOW + 0.9), NOW).timestamp == NOW


@pytest.mark.parametrize("field", ["transaction_id", "customer_id"])
@pytest.mark.parametrize(
    "value, expected",
    [
        (None, "required"),
        ("", "required"),
        (42, "required"),
        ("has space", "only letters"),
        ("semi;colon", "only letters"),
        ("x" * 256, "longer than 255"),
        ("ünïcode", "only letters"),
    ],
)
def test_identifier_rules(field, value, expected):
    assert expected in reason(event(**{field: value}))


def test_identifier_at_max_length_is_accepted():
    assert validate_event(event(transaction_id="a" * 255), NOW).transaction_id == "a" * 255


@pytest.mark.parametrize(
    "value, expected",
    [(None, "required"), ("", "required"), ("x" * 101, "longer than 100"), ("a\nb", "control")],
)
def test_event_type_rules(value, expected):
    assert expected in reason(event(event_type=value))


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, "must be a number"),
        ("1760000000000", "must be a number"),
        (True, "must be a number"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        (NOW + MAX_FUTURE_MS + 1, "future"),
        (NOW - MAX_AGE_MS - 1, "older than 30 days"),
    ],
)
def test_timestamp_rules(value, expected):
    assert expected in reason(event(timestamp=value))


def test_timestamp_bounds_are_inclusive():
    assert validate_event(event(timestamp=NOW + MAX_FUTURE_MS), NOW)
    assert validate_event(event(timestamp=NOW - MAX_AGE_MS), NOW)


@pytest.mark.parametrize(
    "props, expected",
    [
        ([1, 2], "must be an object"),
        ({"k": "x" * 1001}, "longer than 1000"),
        ({"k": [1]}, "string, number or boolean"),
        ({"k": {"nested": 1}}, "string, number or boolean"),
        ({"k": None}, "string, number or boolean"),
        ({"k": math.nan}, "finite"),
        ({f"k{i}": 1 for i in range(101)}, "more than 100"),
        ({"": 1}, "property names"),
    ],
)
def test_property_rules(props, expected):
    assert expected in reason(event(properties=props))


def test_property_string_at_limit_is_accepted():
    assert validate_event(event(properties={"k": "x" * 1000}), NOW)


def test_non_object_event():
    assert "JSON object" in reason(["not", "an", "object"])


@pytest.mark.parametrize("value", [b"", None, b"{not json", b"\xff\xfe"])
def test_decode_rejects_garbage(value):
    with pytest.raises(InvalidEvent):
        decode_event(value, NOW)


def test_transaction_id_of_broken_events():
    assert transaction_id_of({"transaction_id": "abc"}) == "abc"
    assert transaction_id_of({"transaction_id": 5}) == ""
    assert transaction_id_of("junk") == ""
