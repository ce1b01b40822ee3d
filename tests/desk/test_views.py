"""The desk's pure pieces: local times across DST, word diffs."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from services.desk.views import LocalTimeError, diff_snapshots, parse_local, word_diff

KYIV = ZoneInfo("Europe/Kyiv")


def test_local_times_on_both_sides_of_the_spring_change() -> None:
    # 2027-03-28: at 03:00 EET the clocks go to 04:00 EEST.
    assert parse_local("2027-03-27T12:00", KYIV) == datetime(2027, 3, 27, 10, 0, tzinfo=UTC)
    assert parse_local("2027-03-28T12:00", KYIV) == datetime(2027, 3, 28, 9, 0, tzinfo=UTC)
    assert parse_local("2027-03-28T02:59", KYIV) == datetime(2027, 3, 28, 0, 59, tzinfo=UTC)
    assert parse_local("2027-03-28T04:00", KYIV) == datetime(2027, 3, 28, 1, 0, tzinfo=UTC)


def test_the_skipped_hour_is_refused_and_the_repeated_one_is_the_first() -> None:
    with pytest.raises(LocalTimeError, match="does not exist"):
        parse_local("2027-03-28T03:30", KYIV)
    # 2026-10-25: 03:30 happens at 00:30 UTC (EEST) and again at 01:30 UTC (EET).
    assert parse_local("2026-10-25T03:30", KYIV) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert parse_local("2026-10-25T05:00", KYIV) == datetime(2026, 10, 25, 3, 0, tzinfo=UTC)


@pytest.mark.parametrize("value", ["", "tomorrow", "2027-03-28T12:00+02:00"])
def test_malformed_local_times_are_refused(value: str) -> None:
    with pytest.raises(LocalTimeError):
        parse_local(value, KYIV)


def test_word_diff_marks_words_and_escapes_text() -> None:
    html = str(word_diff("Council <b>meets</b> on Monday", "Council <b>meets</b> on Tuesday & votes"))
    assert html == ("Council &lt;b&gt;meets&lt;/b&gt; on <del>Monday</del><ins>Tuesday &amp; votes</ins>")
    assert str(word_diff(None, "New")) == "<ins>New</ins>"
    assert str(word_diff("Same text", "Same text")) == "Same text"


def test_diffs_compare_what_the_next_publish_shows() -> None:
    old = {"headline": "Old", "lede": "Lede", "body_text": "Body", "pending": None}
    new = {
        "headline": "Old",
        "lede": "Lede",
        "body_text": "Body",
        "pending": {"headline": "New", "_publish": {"labels": None}},
    }
    fields = {field.name: field for field in diff_snapshots(old, new)}
    assert fields["headline"].changed and str(fields["headline"].html) == "<del>Old</del><ins>New</ins>"
    assert not fields["lede"].changed and not fields["body_text"].changed
