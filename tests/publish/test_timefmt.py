"""The newsroom's local display of times, exactly as the seed page shows them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from shared.timefmt import (
    LABEL_PRIORITY,
    date_line,
    day_header,
    label_display,
    local,
    primary_label,
    sorted_labels,
    time_hm,
)

KYIV = ZoneInfo("Europe/Kyiv")


def utc(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_seed_more_news_entry() -> None:
    dt = utc(2025, 7, 18, 16, 16)
    assert time_hm(dt, KYIV) == "19:16"
    assert day_header(dt, KYIV) == ("2025, Friday", "18 July")


def test_seed_story_date_line() -> None:
    dt = datetime.fromisoformat("2025-04-09T07:52:00Z")
    assert date_line(dt, KYIV) == "9 April, 2025 Wednesday"
    assert time_hm(dt, KYIV) == "10:52"


def test_any_offset_is_converted() -> None:
    dt = datetime(2025, 4, 9, 10, 52, tzinfo=timezone(timedelta(hours=3)))
    assert time_hm(dt, KYIV) == "10:52"
    assert time_hm(dt, UTC) == "07:52"


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError):
        local(datetime(2025, 4, 9, 7, 52), KYIV)


def test_two_digit_day_and_no_leading_zero() -> None:
    assert date_line(utc(2025, 12, 31, 9, 5), KYIV) == "31 December, 2025 Wednesday"
    assert date_line(utc(2025, 1, 1, 0, 0), KYIV) == "1 January, 2025 Wednesday"
    assert day_header(utc(2025, 1, 1, 0, 0), KYIV) == ("2025, Wednesday", "1 January")
    assert time_hm(utc(2025, 1, 1, 0, 5), KYIV) == "02:05"


@pytest.mark.parametrize(
    ("moment", "expected_time", "expected_header"),
    [
        # Spring forward, Sunday 30 March 2025: 03:00 local becomes 04:00 at 01:00 UTC.
        (utc(2025, 3, 30, 0, 59), "02:59", ("2025, Sunday", "30 March")),
        (utc(2025, 3, 30, 1, 0), "04:00", ("2025, Sunday", "30 March")),
        (utc(2025, 3, 29, 21, 59), "23:59", ("2025, Saturday", "29 March")),
        (utc(2025, 3, 29, 22, 0), "00:00", ("2025, Sunday", "30 March")),
        (utc(2025, 3, 30, 20, 59), "23:59", ("2025, Sunday", "30 March")),
        (utc(2025, 3, 30, 21, 0), "00:00", ("2025, Monday", "31 March")),
        # Fall back, Sunday 26 October 2025: 04:00 local becomes 03:00 at 01:00 UTC.
        (utc(2025, 10, 26, 0, 59), "03:59", ("2025, Sunday", "26 October")),
        (utc(2025, 10, 26, 1, 0), "03:00", ("2025, Sunday", "26 October")),
        (utc(2025, 10, 25, 20, 59), "23:59", ("2025, Saturday", "25 October")),
        (utc(2025, 10, 25, 21, 0), "00:00", ("2025, Sunday", "26 October")),
        (utc(2025, 10, 26, 21, 59), "23:59", ("2025, Sunday", "26 October")),
        (utc(2025, 10, 26, 22, 0), "00:00", ("2025, Monday", "27 October")),
    ],
)
def test_daylight_saving_changes(
    moment: datetime, expected_time: str, expected_header: tuple[str, str]
) -> None:
    assert time_hm(moment, KYIV) == expected_time
    assert day_header(moment, KYIV) == expected_header


def test_offsets_around_the_changes() -> None:
    assert local(utc(2025, 3, 30, 0, 59), KYIV).utcoffset() == timedelta(hours=2)
    assert local(utc(2025, 3, 30, 1, 0), KYIV).utcoffset() == timedelta(hours=3)
    assert local(utc(2025, 10, 26, 0, 59), KYIV).utcoffset() == timedelta(hours=3)
    assert local(utc(2025, 10, 26, 1, 0), KYIV).utcoffset() == timedelta(hours=2)


def test_repeated_local_hour_in_autumn_is_told_apart_by_utc() -> None:
    # 03:30 local happens twice on 26 October; the offset (used in <time datetime>) differs.
    first = utc(2025, 10, 26, 0, 30)
    second = utc(2025, 10, 26, 1, 30)
    assert time_hm(first, KYIV) == time_hm(second, KYIV) == "03:30"
    assert local(first, KYIV).isoformat() == "2025-10-26T03:30:00+03:00"
    assert local(second, KYIV).isoformat() == "2025-10-26T03:30:00+02:00"


def test_local_day_differs_from_utc_day() -> None:
    summer_late = utc(2025, 7, 17, 22, 30)  # UTC+3: already 18 July locally
    assert day_header(summer_late, KYIV) == ("2025, Friday", "18 July")
    assert date_line(summer_late, KYIV) == "18 July, 2025 Friday"
    assert time_hm(summer_late, KYIV) == "01:30"
    winter_late = utc(2025, 12, 31, 22, 30)  # UTC+2: already the new year locally
    assert day_header(winter_late, KYIV) == ("2026, Thursday", "1 January")
    assert time_hm(winter_late, KYIV) == "00:30"


def test_display_does_not_depend_on_locale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LC_ALL", "uk_UA.UTF-8")
    monkeypatch.setenv("LANG", "uk_UA.UTF-8")
    assert date_line(utc(2025, 4, 9, 7, 52), KYIV) == "9 April, 2025 Wednesday"


def test_label_display() -> None:
    assert label_display("exclusive") == "Exclusive"
    assert label_display("opinion") == "OPINION"
    assert label_display("updated") == "Updated"
    assert label_display("breaking") == "Breaking"
    assert label_display("Opinion") == "OPINION"
    assert label_display("live") == "Live"
    assert label_display("fact_check") == "Fact Check"


def test_primary_label() -> None:
    assert LABEL_PRIORITY == ("opinion", "exclusive", "breaking", "updated")
    assert primary_label([]) is None
    assert primary_label(["updated", "exclusive"]) == "exclusive"
    assert primary_label(["updated", "breaking"]) == "breaking"
    assert primary_label(["exclusive", "opinion", "updated"]) == "opinion"
    assert primary_label(["zeta", "updated"]) == "updated"
    assert primary_label(["zeta", "alpha"]) == "alpha"
    assert sorted_labels(["updated", "zeta", "opinion", "breaking"]) == [
        "opinion",
        "breaking",
        "updated",
        "zeta",
    ]
