from datetime import date

import pytest

from operators.periods import DAY_MS, BillingPeriod, iso_utc, pdf_key

OCT_2026 = (1_790_812_800_000, 1_793_491_199_999)  # 2026-10-01T00:00Z .. 2026-10-31T23:59:59.999Z


def test_calendar_months_are_inclusive_ms_bounds():
    october = BillingPeriod.month(2026, 10)
    assert (october.start_ms, october.end_ms) == OCT_2026
    assert october.label == "2026-10"
    december = BillingPeriod.month(2026, 12)
    assert december.end_ms + 1 == BillingPeriod.month(2027, 1).start_ms


def test_parse_months_and_day_ranges():
    assert BillingPeriod.parse("2026-10") == BillingPeriod.month(2026, 10)
    week = BillingPeriod.parse("2026-10-05..2026-10-11")
    assert week == BillingPeriod.days(date(2026, 10, 5), date(2026, 10, 11))
    assert week.end_ms - week.start_ms + 1 == 7 * DAY_MS
    assert week.label == "2026-10-05_2026-10-11"
    assert BillingPeriod.parse("2026-10-01..2026-10-31").label == "2026-10"  # a whole month is a month
    with pytest.raises(ValueError):
        BillingPeriod.parse("October")
    with pytest.raises(ValueError):
        BillingPeriod.parse("2026-10-11..2026-10-05")


def test_periods_not_on_day_bounds_are_labelled_by_their_ms():
    assert BillingPeriod(1000, 5000).label == "1000-5000"


def test_month_before_and_close_time():
    now = OCT_2026[0] + 10 * DAY_MS  # 2026-10-11
    assert BillingPeriod.month_before(now) == BillingPeriod.month(2026, 9)
    assert BillingPeriod.month_before(BillingPeriod.month(2026, 1).start_ms) == BillingPeriod.month(2025, 12)
    october = BillingPeriod.month(2026, 10)
    assert october.closes_at(grace_ms=2 * DAY_MS) == october.end_ms + 1 + 2 * DAY_MS


def test_pdf_key_names_customer_and_period():
    assert pdf_key("acme", BillingPeriod.month(2026, 10)) == "invoices/acme/2026-10.pdf"


@pytest.mark.parametrize(
    ("text", "why"),
    [("2026-13", "month must be in 1..12"), ("2026-02-30..2026-03-01", "day is out of range"),
     ("October", "period 'October'"), ("2026-10-11..2026-10-05", "must not end before it starts")],
)  # fmt: skip
def test_a_bad_period_says_why_and_which_forms_work(text, why):
    with pytest.raises(ValueError) as refused:
        BillingPeriod.parse(text)
    assert why in str(refused.value) and "use YYYY-MM (month 01-12) or YYYY-MM-DD..YYYY-MM-DD" in str(refused.value)


def test_iso_utc_is_what_people_read():
    december = BillingPeriod.month(2026, 12)
    assert iso_utc(december.closes_at(grace_ms=2 * DAY_MS)) == "2027-01-03T00:00:00Z"
    assert iso_utc(december.end_ms) == "2026-12-31T23:59:59.999Z"


def test_names_are_labels_for_months_and_days_else_iso_bounds():
    assert BillingPeriod.month(2026, 10).name == "2026-10"
    assert BillingPeriod.days(date(2026, 10, 5), date(2026, 10, 11)).name == "2026-10-05_2026-10-11"
    assert BillingPeriod(1000, 5000).name == "1970-01-01T00:00:01Z..1970-01-01T00:00:05Z"
