"""Which expiries are listed when: daily, weekly, monthly and quarterly, all at 08:00 UTC."""

from __future__ import annotations

from datetime import UTC, date, datetime

from optionfeed.simulator.calendar import (
    Expiry,
    Series,
    SeriesCounts,
    last_friday,
    listed_expiries,
)

COUNTS = SeriesCounts(daily=4, weekly=3, monthly=3, quarterly=4)


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


def test_every_listed_expiry_is_at_0800_utc_and_after_now() -> None:
    now = ms(2024, 5, 14, 13, 30)
    for expiry in listed_expiries(now, COUNTS):
        moment = expiry.moment
        assert (moment.hour, moment.minute, moment.second) == (8, 0, 0)
        assert moment.tzinfo is UTC
        assert expiry.timestamp_ms > now


def test_the_series_are_the_next_days_fridays_month_ends_and_quarter_ends() -> None:
    # Tuesday 14 May 2024, after 08:00: dailies from Wednesday 15 May.
    listed = listed_expiries(ms(2024, 5, 14, 13, 30), COUNTS)
    by_day = {e.day: e.series for e in listed}
    # Four daily dates; Friday the 17th is a daily and a weekly, and the weekly wins.
    assert [d for d, s in by_day.items() if s is Series.DAY] == [
        date(2024, 5, 15),
        date(2024, 5, 16),
        date(2024, 5, 18),
    ]
    assert by_day[date(2024, 5, 17)] is Series.WEEK
    assert by_day[date(2024, 5, 24)] is Series.WEEK
    assert by_day[date(2024, 5, 31)] is Series.MONTH
    assert by_day[date(2024, 6, 28)] is Series.QUARTER
    assert by_day[date(2024, 7, 26)] is Series.MONTH
    assert [d for d, s in by_day.items() if s is Series.QUARTER] == [
        date(2024, 6, 28),
        date(2024, 9, 27),
        date(2024, 12, 27),
        date(2025, 3, 28),
    ]
    assert listed == sorted(listed)


def test_at_0800_the_expiring_day_drops_out_and_a_new_daily_joins() -> None:
    before = listed_expiries(ms(2024, 5, 15, 7, 59, 59), COUNTS)
    after = listed_expiries(ms(2024, 5, 15, 8, 0, 0), COUNTS)
    assert before[0] == Expiry(date(2024, 5, 15), Series.DAY)
    assert Expiry(date(2024, 5, 15), Series.DAY) not in after
    assert Expiry(date(2024, 5, 19), Series.DAY) in after
    assert Expiry(date(2024, 5, 19), Series.DAY) not in before


def test_quarterlies_settle_under_the_month_period_as_deribit_files_them() -> None:
    assert Series.QUARTER.settlement_period == "month"
    assert Series.DAY.settlement_period == "day"
    assert Series.WEEK.settlement_period == "week"


def test_last_friday_of_a_month() -> None:
    assert last_friday(2024, 3) == date(2024, 3, 29)
    assert last_friday(2021, 7) == date(2021, 7, 30)  # ETH-30JUL21 in the capture
    assert last_friday(2021, 9) == date(2021, 9, 24)  # BTC-24SEP21


def test_expiry_codes_are_written_as_in_instrument_names() -> None:
    assert Expiry(date(2021, 7, 9), Series.WEEK).code == "9JUL21"
    assert Expiry(date(2024, 12, 27), Series.QUARTER).code == "27DEC24"
