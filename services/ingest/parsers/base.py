"""The one normalised shape every wire format is parsed into."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

PubStatus = Literal["usable", "canceled", "withheld"]


@dataclass(frozen=True)
class Picture:
    """A featured picture, kept as a reference: the image itself is not copied."""

    url: str
    media_type: str | None = None
    width: int | None = None
    height: int | None = None
    size: int | None = None
    caption: str | None = None
    credit: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ParsedItem:
    """One wire item after parsing and normalisation, ready to be stored as a story.

    Every text is NFC with control characters removed; ``body_html`` is already
    sanitised; every datetime is timezone-aware and in UTC.
    """

    guid: str
    headline: str
    body_html: str
    body_text: str
    lede: str | None = None
    version: int | None = None
    version_created: datetime | None = None
    first_created: datetime | None = None
    byline: str | None = None
    author_name: str | None = None
    author_bio: str | None = None
    section: str | None = None
    tags: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    genre: str | None = None
    language: str | None = None
    source_url: str | None = None
    disclaimer: str | None = None
    embargo_until: datetime | None = None
    pubstatus: PubStatus = "usable"
    picture: Picture | None = None


@dataclass
class ItemError:
    """An item of a post that is well-formed but cannot become a story (422)."""

    position: int
    reason: str
    guid: str | None = None
    field: str | None = None


class MalformedPost(Exception):
    """The post cannot be parsed at all (400); carries the parser's reason and position."""

    def __init__(self, reason: str, *, line: int | None = None, column: int | None = None) -> None:
        self.reason = reason
        self.line = line
        self.column = column
        where = f" (line {line}, column {column})" if line is not None else ""
        super().__init__(f"{reason}{where}")


ParseResult = list["ParsedItem | ItemError"]
