"""The newsroom's local, English display of times and labels, independent of the locale."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, tzinfo

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

LABEL_DISPLAY = {
    "exclusive": "Exclusive",
    "opinion": "OPINION",
    "updated": "Updated",
    "breaking": "Breaking",
}

# A list shows one label per story, so the most telling one wins: "opinion" says what
# kind of text it is (a column, not reporting) and stays true forever; "exclusive" is
# the newsroom's own editorial claim; "breaking" fades within hours; "updated" is
# stamped automatically on any substantive republish and is the least informative.
LABEL_PRIORITY: tuple[str, ...] = ("opinion", "exclusive", "breaking", "updated")


def local(dt: datetime, tz: tzinfo) -> datetime:
    """The aware datetime ``dt`` as wall-clock time in ``tz``."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("naive datetime: times are stored aware, in UTC")
    return dt.astimezone(tz)


def time_hm(dt: datetime, tz: tzinfo) -> str:
    """Local hours and minutes, as ``19:16``."""
    wall = local(dt, tz)
    return f"{wall.hour:02d}:{wall.minute:02d}"


def day_header(dt: datetime, tz: tzinfo) -> tuple[str, str]:
    """The two lines of a day's header in a list, as ``("2025, Friday", "18 July")``."""
    wall = local(dt, tz)
    return f"{wall.year}, {WEEKDAYS[wall.weekday()]}", f"{wall.day} {MONTHS[wall.month - 1]}"


def date_line(dt: datetime, tz: tzinfo) -> str:
    """A story's local date, as ``9 April, 2025 Wednesday``."""
    wall = local(dt, tz)
    return f"{wall.day} {MONTHS[wall.month - 1]}, {wall.year} {WEEKDAYS[wall.weekday()]}"


def label_display(label: str) -> str:
    """How a label is shown to readers: ``Exclusive``, ``OPINION``, ``Updated``, ``Breaking``."""
    key = label.strip().lower()
    if key in LABEL_DISPLAY:
        return LABEL_DISPLAY[key]
    return key.replace("_", " ").replace("-", " ").title()


def _rank(label: str) -> tuple[int, str]:
    key = label.strip().lower()
    try:
        return LABEL_PRIORITY.index(key), key
    except ValueError:
        return len(LABEL_PRIORITY), key


def sorted_labels(labels: Iterable[str]) -> list[str]:
    """Labels in display order: by ``LABEL_PRIORITY``, then unknown ones alphabetically."""
    return sorted(set(labels), key=_rank)


def primary_label(labels: Iterable[str]) -> str | None:
    """The one label a list shows for a story with several, or None."""
    ordered = sorted_labels(labels)
    return ordered[0] if ordered else None
