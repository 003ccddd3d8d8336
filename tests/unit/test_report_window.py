"""The report's window: durations, ISO instants, and which flags go together."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from optionfeed.report.window import (
    Window,
    WindowError,
    format_instant,
    format_seconds,
    iso,
    parse_duration,
    parse_instant,
    resolve,
)

NOW = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("0.5h", 1800.0),
        (" 1H ", 3600.0),
    ],
)
def test_durations_read_as_people_write_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1x", "1h 30m", "m15", "-1h", "0", "0m", "1h-"])
def test_malformed_or_empty_durations_are_refused(text: str) -> None:
    with pytest.raises(WindowError):
        parse_duration(text)


def test_an_instant_without_a_zone_is_utc_and_one_with_a_zone_is_converted() -> None:
    assert parse_instant("2024-06-03T12:00") == NOW
    assert parse_instant("2024-06-03T12:00:00Z") == NOW
    assert parse_instant("2024-06-03T14:00:00+02:00") == NOW
    assert parse_instant("2024-06-03") == datetime(2024, 6, 3, tzinfo=UTC)


def test_a_malformed_instant_names_the_expected_form() -> None:
    with pytest.raises(WindowError, match="ISO 8601"):
        parse_instant("yesterday")


def test_the_default_window_is_the_last_hour() -> None:
    window = resolve(NOW, since=None, start=None, end=None, default_since="1h")
    assert window == Window(NOW - timedelta(hours=1), NOW)
    assert window.seconds == 3600.0


def test_from_without_to_runs_until_now() -> None:
    window = resolve(NOW, since=None, start="2024-06-03T11:30Z", end=None, default_since="1h")
    assert window == Window(NOW - timedelta(minutes=30), NOW)


@pytest.mark.parametrize(
    ("since", "start", "end", "message"),
    [
        ("1h", "2024-06-03T11:00Z", None, "not both"),
        ("1h", None, "2024-06-03T11:00Z", "not both"),
        (None, None, "2024-06-03T11:00Z", "--to needs --from"),
        (None, "2024-06-03T12:00Z", "2024-06-03T11:00Z", "empty"),
        (None, "2024-06-03T12:00Z", "2024-06-03T12:00Z", "empty"),
    ],
)
def test_conflicting_or_empty_windows_are_refused(
    since: str | None, start: str | None, end: str | None, message: str
) -> None:
    with pytest.raises(WindowError, match=message):
        resolve(NOW, since=since, start=start, end=end, default_since="1h")


def test_instants_print_in_utc_for_tables_and_json() -> None:
    local = datetime(2024, 6, 3, 14, 0, 0, 123456, tzinfo=UTC) + timedelta(0)
    assert format_instant(local) == "2024-06-03 14:00:00Z"
    assert iso(local) == "2024-06-03T14:00:00.123456Z"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0 ms"),
        (0.85, "850 ms"),
        (0.9996, "1.0 s"),
        (12.46, "12.5 s"),
        (59.96, "1 min 00 s"),
        (250, "4 min 10 s"),
        (3 * 3600 + 5 * 60, "3 h 05 min"),
        (2 * 86400 + 4 * 3600, "2 d 4 h"),
    ],
)
def test_durations_print_in_the_unit_that_reads_best(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text
