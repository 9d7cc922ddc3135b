"""Properties of event validation, checked on inputs Hypothesis makes up.

`validate_event` sees whatever a client posts and whatever lands on the
Kafka topic, so its promise is about every input, not a list of examples:
anything JSON can carry either becomes a `UsageEvent` that survives its
wire form unchanged, or is refused with `InvalidEvent` and a reason that
can be sent back. Any other exception is a 500 in the API and a crash in
the dataflow. The example tests in test_events.py pin the messages; these
pin the rules at and around every bound.
"""

from __future__ import annotations

import json
import math
import string
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from operators.events import (
    EVENT_TYPE_MAX_LEN,
    ID_MAX_LEN,
    MAX_AGE_MS,
    MAX_FUTURE_MS,
    PROPERTIES_MAX_COUNT,
    PROPERTY_INT_MAX,
    PROPERTY_INT_MIN,
    PROPERTY_KEY_MAX_LEN,
    PROPERTY_STRING_MAX_LEN,
    InvalidEvent,
    UsageEvent,
    decode_event,
    transaction_id_of,
    validate_event,
)

NOW = 1_760_000_000_000
ID_ALPHABET = string.ascii_letters + string.digits + "_-"

# Every code point, lone surrogates included (JSON's "\ud800" escape gives one),
# with surrogates drawn often enough to matter. Built from lists because
# st.text() quietly leaves surrogates out.
any_char = st.one_of(st.characters(exclude_categories=[]), st.characters(categories=["Cs"]))


def any_text(max_size: int = 20) -> st.SearchStrategy[str]:
    return st.lists(any_char, max_size=max_size).map("".join)


big_ints = st.sampled_from([PROPERTY_INT_MIN - 1, PROPERTY_INT_MAX + 1, 2**64, -(2**64), 10**30])
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), big_ints, st.floats(), any_text())
json_like = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text(), inner, max_size=4),
    max_leaves=12,
)

ids = st.text(ID_ALPHABET, min_size=1, max_size=ID_MAX_LEN)
event_types = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"]) | st.just(" "),
    min_size=1,
    max_size=EVENT_TYPE_MAX_LEN,
)
timestamps = st.integers(NOW - MAX_AGE_MS, NOW + MAX_FUTURE_MS) | st.floats(
    NOW - MAX_AGE_MS, NOW + MAX_FUTURE_MS, allow_nan=False
)
property_keys = st.text(st.characters(codec="utf-8"), min_size=1, max_size=PROPERTY_KEY_MAX_LEN)
property_values = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=PROPERTY_STRING_MAX_LEN),
    st.integers(PROPERTY_INT_MIN, PROPERTY_INT_MAX),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
properties = st.dictionaries(property_keys, property_values, max_size=PROPERTIES_MAX_COUNT)


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "transaction_id": draw(ids),
        "customer_id": draw(ids),
        "event_type": draw(event_types),
        "timestamp": draw(timestamps),
        "properties": draw(properties),
    }


FIELDS = ["transaction_id", "customer_id", "event_type", "timestamp", "properties"]


@st.composite
def event_like(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with a few fields removed or replaced by junk and a few
    junk properties added, so that every check is reached, not only the first."""
    raw = draw(valid_events())
    for name in draw(st.sets(st.sampled_from(FIELDS), max_size=2)):
        junk = draw(st.none() | json_like)
        if junk is None:
            del raw[name]
        else:
            raw[name] = junk
    if isinstance(raw.get("properties"), dict):
        raw["properties"].update(draw(st.dictionaries(any_text(), json_scalars | json_like, max_size=2)))
    return raw


def base_event(**overrides: Any) -> dict[str, Any]:
    return {"transaction_id": "tx-1", "customer_id": "c-1", "event_type": "api_request", "timestamp": NOW} | overrides


def accepted(raw: Any) -> UsageEvent | None:
    """The event, or None when it is refused (with a reason, checked here)."""
    try:
        return validate_event(raw, NOW)
    except InvalidEvent as exc:
        reason = str(exc)
        assert reason.strip(), "a refusal must say why"
        reason.encode("utf-8")  # it is sent back in a JSON response
        return None


@given(st.one_of(json_like, event_like()))
def test_any_input_is_an_event_or_a_reason(raw):
    event = accepted(raw)
    if event is None:
        reported = transaction_id_of(raw)
        assert len(reported) <= ID_MAX_LEN
        reported.encode("utf-8")
    else:
        assert decode_event(event.to_json(), NOW) == event


@given(valid_events())
def test_valid_events_are_kept_exactly_and_survive_the_wire(raw):
    event = validate_event(raw, NOW)
    assert event.to_dict() == raw | {"timestamp": int(raw["timestamp"])}
    decoded = decode_event(event.to_json(), NOW)
    assert decoded == event
    # True stays true, not 1; 1.0 stays a float: types survive, not just values.
    assert [type(v) for v in decoded.properties.values()] == [type(v) for v in raw["properties"].values()]


@given(st.one_of(st.binary(), json_like.map(lambda raw: json.dumps(raw).encode())))
def test_any_kafka_message_decodes_or_is_refused(value):
    try:
        decode_event(value, NOW)
    except InvalidEvent as exc:
        assert str(exc)


@given(st.integers(-MAX_AGE_MS - 10**6, MAX_FUTURE_MS + 10**6))
@example(MAX_FUTURE_MS)
@example(MAX_FUTURE_MS + 1)
@example(-MAX_AGE_MS)
@example(-MAX_AGE_MS - 1)
def test_timestamps_count_from_now_with_inclusive_bounds(offset):
    event = accepted(base_event(timestamp=NOW + offset))
    assert (event is not None) == (-MAX_AGE_MS <= offset <= MAX_FUTURE_MS)


@given(st.floats(-MAX_AGE_MS - 10.0, MAX_FUTURE_MS + 10.0))
@example(MAX_FUTURE_MS + 0.5)
@example(-MAX_AGE_MS - 0.5)
def test_fractional_timestamps_are_judged_as_the_whole_ms_stored(offset):
    event = accepted(base_event(timestamp=NOW + offset))
    stored = int(NOW + offset)
    assert (event is not None) == (NOW - MAX_AGE_MS <= stored <= NOW + MAX_FUTURE_MS)
    if event is not None:
        assert event.timestamp == stored


@given(st.sampled_from(["transaction_id", "customer_id"]), any_text(ID_MAX_LEN + 5))
@example("transaction_id", "a" * ID_MAX_LEN)
@example("transaction_id", "a" * (ID_MAX_LEN + 1))
@example("customer_id", "acme\n")
@example("customer_id", "acme\x00")
@example("customer_id", "١٢٣")  # Arabic-Indic digits: digits, but not 0-9
def test_ids_are_1_to_255_of_letters_digits_dash_underscore(field, value):
    event = accepted(base_event(**{field: value}))
    assert (event is not None) == (1 <= len(value) <= ID_MAX_LEN and set(value) <= set(ID_ALPHABET))


@given(st.integers(0, EVENT_TYPE_MAX_LEN + 5))
@example(EVENT_TYPE_MAX_LEN)
@example(EVENT_TYPE_MAX_LEN + 1)
def test_event_type_length(length):
    assert (accepted(base_event(event_type="é" * length)) is not None) == (1 <= length <= EVENT_TYPE_MAX_LEN)


@given(st.integers(0, PROPERTIES_MAX_COUNT + 20))
@example(PROPERTIES_MAX_COUNT)
@example(PROPERTIES_MAX_COUNT + 1)
def test_at_most_100_properties(count):
    props = {f"p{i}": i for i in range(count)}
    assert (accepted(base_event(properties=props)) is not None) == (count <= PROPERTIES_MAX_COUNT)


@given(st.integers(0, PROPERTY_STRING_MAX_LEN + 50), st.integers(1, PROPERTY_KEY_MAX_LEN + 50))
@example(PROPERTY_STRING_MAX_LEN, PROPERTY_KEY_MAX_LEN)
@example(PROPERTY_STRING_MAX_LEN + 1, 1)
@example(0, PROPERTY_KEY_MAX_LEN + 1)
def test_property_string_and_name_lengths(value_length, key_length):
    event = accepted(base_event(properties={"k" * key_length: "€" * value_length}))
    valid = value_length <= PROPERTY_STRING_MAX_LEN and key_length <= PROPERTY_KEY_MAX_LEN
    assert (event is not None) == valid


@given(any_text(50), st.sampled_from(["key", "value"]))
@example("\ud800", "value")
@example("a\udfffb", "key")
@example("\x00\u2028\U0001f600", "value")
def test_property_text_is_any_unicode_without_lone_surrogates(text, where):
    props = {text or "k": "v"} if where == "key" else {"k": text}
    event = accepted(base_event(properties=props))
    encodable = True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        encodable = False
    assert (event is not None) == encodable
    if event is not None:
        assert decode_event(event.to_json(), NOW).properties == props


@given(st.one_of(st.integers(), big_ints))
@example(PROPERTY_INT_MAX)
@example(PROPERTY_INT_MIN)
def test_integer_properties_fit_64_bits_and_stay_exact(value):
    event = accepted(base_event(properties={"n": value}))
    assert (event is not None) == (PROPERTY_INT_MIN <= value <= PROPERTY_INT_MAX)
    if event is not None:
        assert decode_event(event.to_json(), NOW).properties["n"] == value


@given(st.floats())
@example(math.nan)
@example(-math.inf)
@example(5e-324)
def test_float_properties_are_finite_and_stay_exact(value):
    event = accepted(base_event(properties={"x": value}))
    assert (event is not None) == math.isfinite(value)
    if event is not None:
        assert decode_event(event.to_json(), NOW).properties["x"] == value


@given(st.booleans())
def test_a_bool_is_no_timestamp_but_is_a_property(flag):
    assert accepted(base_event(timestamp=flag)) is None
    event = accepted(base_event(properties={"cached": flag}))
    assert event is not None
    assert decode_event(event.to_json(), NOW).properties["cached"] is flag
