"""Billing periods: which span of usage one invoice covers, and when it closes.

A period is a pair of Unix-ms bounds, both inclusive, like the periods of
`/v1/invoices/calculate`. Calendar months in UTC are the usual case and get
a short label ("2026-10"); other whole days by the first and last day
("2026-10-05_2026-10-11"), anything else by its Unix-ms bounds. The label names the period's PDF in S3.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

DAY_MS = 86_400_000
_MONTH = re.compile(r"(\d{4})-(\d{2})")
PERIOD_FORMS = "use YYYY-MM (month 01-12) or YYYY-MM-DD..YYYY-MM-DD (UTC days, first..last)"
_DAYS = re.compile(r"(\d{4}-\d{2}-\d{2})(?:\.\.|_)(\d{4}-\d{2}-\d{2})")


def _ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)


def _day(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).date()


def iso_utc(ms: int) -> str:
    """Unix ms as ISO 8601 in UTC, to the millisecond when it has one (what people read in messages)."""
    moment = datetime.fromtimestamp(ms / 1000, timezone.utc)
    return moment.isoformat(timespec="milliseconds" if ms % 1000 else "seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class BillingPeriod:
    start_ms: int  # inclusive
    end_ms: int  # inclusive

    def __post_init__(self) -> None:
        if self.start_ms > self.end_ms:
            raise ValueError("a period must not end before it starts")

    @classmethod
    def month(cls, year: int, month: int) -> "BillingPeriod":
        first = date(year, month, 1)
        following = date(year + month // 12, month % 12 + 1, 1)
        return cls(_ms(first), _ms(following) - 1)

    @classmethod
    def days(cls, first: date, last: date) -> "BillingPeriod":
        """Whole UTC days from `first` to `last`, both included."""
        return cls(_ms(first), _ms(last + timedelta(days=1)) - 1)

    @classmethod
    def parse(cls, text: str) -> "BillingPeriod":
        """`YYYY-MM` (a calendar month) or `YYYY-MM-DD..YYYY-MM-DD` (whole days)."""
        try:
            if match := _MONTH.fullmatch(text):
                return cls.month(int(match[1]), int(match[2]))
            if match := _DAYS.fullmatch(text):
                return cls.days(date.fromisoformat(match[1]), date.fromisoformat(match[2]))
        except ValueError as exc:  # a month 13, a 30 February, a range that ends before it starts
            raise ValueError(f"period {text!r}: {exc}; {PERIOD_FORMS}") from exc
        raise ValueError(f"period {text!r}: {PERIOD_FORMS}")

    @classmethod
    def month_before(cls, now_ms: int) -> "BillingPeriod":
        """The last calendar month that ended before `now_ms`."""
        today = _day(now_ms)
        year, month = (today.year, today.month - 1) if today.month > 1 else (today.year - 1, 12)
        return cls.month(year, month)

    @property
    def is_calendar_month(self) -> bool:
        first = _day(self.start_ms)
        return first.day == 1 and self == BillingPeriod.month(first.year, first.month)

    @property
    def is_whole_days(self) -> bool:
        return self.start_ms % DAY_MS == 0 and (self.end_ms + 1) % DAY_MS == 0

    @property
    def label(self) -> str:
        first = _day(self.start_ms)
        if self.is_calendar_month:
            return f"{first.year:04d}-{first.month:02d}"
        if self.is_whole_days:
            return f"{first.isoformat()}_{_day(self.end_ms).isoformat()}"
        return f"{self.start_ms}-{self.end_ms}"  # not whole days: exact bounds keep labels unique

    @property
    def name(self) -> str:
        """For people: the label of a month or of whole days, else the ISO bounds."""
        if self.is_calendar_month or self.is_whole_days:
            return self.label
        return f"{iso_utc(self.start_ms)}..{iso_utc(self.end_ms)}"

    def closes_at(self, grace_ms: int) -> int:
        """When the period may be billed: its end plus the grace for late events."""
        return self.end_ms + 1 + grace_ms


def pdf_key(customer_id: str, period: BillingPeriod) -> str:
    """Where a period's invoice PDF lives in the bucket."""
    return f"invoices/{customer_id}/{period.label}.pdf"
