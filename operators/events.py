"""The usage event: its shape, the contract's validation rules, its wire form.

The API validates events before they reach Kafka and the dataflow validates
every Kafka message again (anything can be produced to the topic), so both
call `validate_event` here. It is plain Python rather than a pydantic model
because it runs once per event on the dataflow's hot path and must return a
reason, not raise a stack of errors. Each rule checks the common case
first (an exact `str`, ASCII text, a plain `int`) and only works out which
rule a value breaks when it breaks one.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any, Mapping, NamedTuple

import orjson

from operators.metrics import DEFAULT_METERED, QUANTITY_MAX, QUANTITY_SCALE, MeteredProperties

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
ID_MAX_LEN = 255
EVENT_TYPE_MAX_LEN = 100
PROPERTY_STRING_MAX_LEN = 1000
PROPERTY_KEY_MAX_LEN = 255
PROPERTIES_MAX_COUNT = 100
MAX_FUTURE_MS = 5 * 60 * 1000
MAX_AGE_MS = 30 * 24 * 3600 * 1000
# Integer property values must fit a signed 64-bit integer: what the wire
# form (orjson) can write and every consumer of it can read back exactly.
PROPERTY_INT_MIN = -(2**63)
PROPERTY_INT_MAX = 2**63 - 1

# A quantity written as a string: plain decimal notation, the scale bounded.
_QUANTITY_TEXT = re.compile(rf"-?[0-9]{{1,19}}(\.[0-9]{{1,{QUANTITY_SCALE}}})?").fullmatch
# A seconds timestamp of the last 30 days, read as milliseconds, lies in 1970.
_SECONDS_BEFORE = 10**11

# A valid identifier, length included, in one match: the fast path of _check_id.
_VALID_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{ID_MAX_LEN}}}").fullmatch

PropertyValue = str | int | float | bool


class InvalidEvent(ValueError):
    """An event that breaks a rule; the message is the reason shown to the caller."""


class UsageEvent(NamedTuple):
    """One validated usage event; `timestamp` is Unix epoch milliseconds (UTC).

    A named tuple rather than a dataclass: the dataflow builds one per event,
    a tuple is several times cheaper to build, and a batch of them turns
    into ClickHouse's columns with one `zip(*events)`.
    """

    transaction_id: str
    customer_id: str
    event_type: str
    timestamp: int
    properties: dict[str, PropertyValue] = {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "customer_id": self.customer_id,
            "event_type": self.event_type,
            "timestamp": self.timestamp,
            "properties": self.properties,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def _is_unicode(text: str) -> bool:
    """False for a string with lone surrogates (JSON's "\\ud800" escape
    decodes to one): it cannot be encoded as UTF-8, so it could be neither
    produced to Kafka nor echoed back in a response."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_id(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name)
    if type(value) is str and _VALID_ID(value):
        return value
    if not isinstance(value, str) or value == "":
        raise InvalidEvent(f"{name} is required and must be a non-empty string")
    if len(value) > ID_MAX_LEN:
        raise InvalidEvent(f"{name} is longer than {ID_MAX_LEN} characters")
    if not ID_PATTERN.fullmatch(value):
        raise InvalidEvent(f"{name} may contain only letters, digits, '_' and '-'")
    return value


def _check_event_type(raw: Mapping[str, Any]) -> str:
    value = raw.get("event_type")
    if type(value) is str and 0 < len(value) <= EVENT_TYPE_MAX_LEN and value.isprintable():
        return value
    if not isinstance(value, str) or value == "":
        raise InvalidEvent("event_type is required and must be a non-empty string")
    if len(value) > EVENT_TYPE_MAX_LEN:
        raise InvalidEvent(f"event_type is longer than {EVENT_TYPE_MAX_LEN} characters")
    if not value.isprintable():
        raise InvalidEvent("event_type contains control characters")
    return value


def _check_timestamp(raw: Mapping[str, Any], now_ms: int) -> int:
    value = raw.get("timestamp")
    if type(value) is int:
        ts = value
    # bool is an int subclass; True is not a timestamp.
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEvent("timestamp is required and must be a number (Unix epoch milliseconds)")
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidEvent("timestamp must be a finite number")
    else:
        ts = int(value)
    if ts > now_ms + MAX_FUTURE_MS:
        raise InvalidEvent("timestamp is more than 5 minutes in the future")
    if ts < now_ms - MAX_AGE_MS:
        if 0 < ts < _SECONDS_BEFORE and now_ms - MAX_AGE_MS <= ts * 1000 <= now_ms + MAX_FUTURE_MS:
            raise InvalidEvent(
                "timestamp is older than 30 days: it looks like Unix seconds; send milliseconds (seconds x 1000)"
            )
        raise InvalidEvent("timestamp is older than 30 days")
    return ts


def _check_property(key: Any, item: Any) -> None:
    """Every rule for one property; raises the reason of the first it breaks."""
    if not isinstance(key, str) or key == "" or len(key) > PROPERTY_KEY_MAX_LEN:
        raise InvalidEvent(f"property names must be 1-{PROPERTY_KEY_MAX_LEN} characters")
    if not _is_unicode(key):
        raise InvalidEvent("property names must be valid Unicode (no lone surrogates)")
    if isinstance(item, str):
        if len(item) > PROPERTY_STRING_MAX_LEN:
            raise InvalidEvent(f"property '{key}' is longer than {PROPERTY_STRING_MAX_LEN} characters")
        if not _is_unicode(item):
            raise InvalidEvent(f"property '{key}' must be valid Unicode (no lone surrogates)")
    elif isinstance(item, float):
        if not math.isfinite(item):
            raise InvalidEvent(f"property '{key}' must be a finite number")
    elif isinstance(item, int):  # bools too: True and False are in range
        if not PROPERTY_INT_MIN <= item <= PROPERTY_INT_MAX:
            raise InvalidEvent(f"property '{key}' is an integer outside the signed 64-bit range")
    else:
        raise InvalidEvent(f"property '{key}' must be a string, number or boolean")


def quantity_of(key: str, item: Any, allow_negative: bool) -> Decimal:
    """The exact value of a metered property, or InvalidEvent saying which
    rule of the quantity domain (operators.metrics) it breaks.

    A JSON number with a fraction arrives as a double; its shortest decimal
    form (Python's repr) is the value the client wrote whenever that has at
    most 15 significant digits. Longer exact values go as numeric strings.
    """
    if isinstance(item, bool) or not isinstance(item, (int, float, str)):
        raise InvalidEvent(f"property '{key}' is a metered quantity and must be a number")
    if isinstance(item, str):
        if not _QUANTITY_TEXT(item):
            raise InvalidEvent(
                f"property '{key}' is a metered quantity: a string value must be a plain decimal "
                f"number with at most {QUANTITY_SCALE} digits after the point, like \"12.5\""
            )
        value = Decimal(item)
    elif isinstance(item, float):
        if not math.isfinite(item):
            raise InvalidEvent(f"property '{key}' must be a finite number")
        value = Decimal(repr(item))
    else:
        value = Decimal(item)
    if value < 0 and not allow_negative:
        raise InvalidEvent(f"property '{key}' is a metered quantity and must not be negative")
    if abs(value) > QUANTITY_MAX:
        raise InvalidEvent(f"property '{key}' is larger than {QUANTITY_MAX}, the most one event may carry")
    exponent = value.as_tuple().exponent  # an int: the value is finite
    if isinstance(exponent, int) and exponent < -QUANTITY_SCALE:
        raise InvalidEvent(f"property '{key}' has more than {QUANTITY_SCALE} digits after the decimal point")
    return value


def _check_quantities(properties: dict[str, PropertyValue], metered: tuple[tuple[str, bool], ...]) -> None:
    for key, allow_negative in metered:
        item = properties.get(key)
        if item is None:
            continue
        # The common case: a whole number in range.
        if type(item) is int and 0 <= item <= QUANTITY_MAX:
            continue
        quantity_of(key, item, allow_negative)


def _check_properties(raw: Mapping[str, Any]) -> dict[str, PropertyValue]:
    value = raw.get("properties")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidEvent("properties must be an object")
    if len(value) > PROPERTIES_MAX_COUNT:
        raise InvalidEvent(f"properties has more than {PROPERTIES_MAX_COUNT} keys")
    for key, item in value.items():
        # The common cases pass here; anything else gets every rule.
        if type(key) is str and 0 < len(key) <= PROPERTY_KEY_MAX_LEN and key.isascii():
            kind = type(item)
            if kind is str:
                if len(item) <= PROPERTY_STRING_MAX_LEN and item.isascii():
                    continue
            elif kind is int:
                if PROPERTY_INT_MIN <= item <= PROPERTY_INT_MAX:
                    continue
            elif kind is float:
                if math.isfinite(item):
                    continue
            elif kind is bool:
                continue
        _check_property(key, item)
    return value


def validate_event(raw: Any, now_ms: int, metered: MeteredProperties = DEFAULT_METERED) -> UsageEvent:
    """Check `raw` against the contract's rules, relative to `now_ms`, and
    its metered properties (`metered`, from the catalog) against the
    quantity domain.

    `now_ms` is the caller's notion of "now": wall-clock time in the API,
    the Kafka message's produce time in the dataflow, so a replay of old
    messages is judged as it was when they arrived.
    """
    if not isinstance(raw, dict):
        raise InvalidEvent("event must be a JSON object")
    # _make: a tuple in field order, half the cost of the keyword constructor.
    event = UsageEvent._make((
        _check_id(raw, "transaction_id"),
        _check_id(raw, "customer_id"),
        _check_event_type(raw),
        _check_timestamp(raw, now_ms),
        _check_properties(raw),
    ))  # fmt: skip
    quantities = metered.get(event.event_type)
    if quantities is not None:
        _check_quantities(event.properties, quantities)
    return event


def transaction_id_of(raw: Any) -> str:
    """The transaction_id to report a failure under, even for a broken event;
    always encodable, since it is echoed back in the response."""
    if isinstance(raw, dict) and isinstance(raw.get("transaction_id"), str):
        return raw["transaction_id"][:ID_MAX_LEN].encode("utf-8", "replace").decode("utf-8")
    return ""


def decode_event(value: bytes | None, now_ms: int) -> UsageEvent:
    """Parse one Kafka message value (JSON) and validate it."""
    if not value:
        raise InvalidEvent("empty message")
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"malformed JSON: {exc}") from None
    return validate_event(raw, now_ms)
