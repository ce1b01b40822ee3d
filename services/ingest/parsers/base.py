"""The one normalised shape every wire format is parsed into."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from services.ingest.normalize import ItemRejectedError

PubStatus = Literal["usable", "canceled", "withheld"]

# What a post may hold (README, "What to expect"). Real wires stay far below these; past
# them a post or an item is refused with the reason (422), before it costs more work.
MAX_ITEMS = 1000  # items in one post
MAX_NESTING = 100  # levels of nesting of a JSON or XML document
MAX_HEADLINE = 500  # characters of a headline
MAX_LEDE = 3000  # characters of a lede
MAX_SUBJECTS = 200  # subjects (ninjs, NewsML-G2), categories (RSS, Atom) or tags (columns) of an item
MAX_TAGS = 50  # tags a story keeps


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

    status = 400
    code = "malformed"

    def __init__(self, reason: str, *, line: int | None = None, column: int | None = None) -> None:
        self.reason = reason
        self.line = line
        self.column = column
        where = f" (line {line}, column {column})" if line is not None else ""
        super().__init__(f"{reason}{where}")


class PostOverLimit(MalformedPost):
    """The post is well-formed but over a limit of the whole post (422): too many items, too deep."""

    status = 422
    code = "unprocessable"


def check_item_count(count: int) -> None:
    """Refuse a post with more than MAX_ITEMS items, before any of them is read."""
    if count > MAX_ITEMS:
        raise PostOverLimit(f"the post has {count} items; at most {MAX_ITEMS} are accepted in one post")


def check_subject_count(count: int, what: str = "subjects") -> None:
    """Refuse an item with more than MAX_SUBJECTS subjects, categories or tags."""
    if count > MAX_SUBJECTS:
        raise ItemRejectedError(f"item has {count} {what}; at most {MAX_SUBJECTS} are accepted", what)


ParseResult = list["ParsedItem | ItemError"]
