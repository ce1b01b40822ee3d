"""Items are made to fit the story's columns before they reach the database."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

from sqlalchemy import String

from services.ingest import parsers
from services.ingest.parsers import parse
from services.ingest.parsers.base import ItemError, ParsedItem
from shared.models import Story, StoryTag


def entry(uri: str, **extra: Any) -> dict[str, Any]:
    return {"uri": uri, "headline": "H", "body_text": "B", **extra}


def test_limits_follow_the_model() -> None:
    def length(column: Any) -> int | None:
        assert isinstance(column.type, String)
        return column.type.length

    columns = Story.__table__.c
    assert length(columns.guid) == parsers.MAX_GUID
    assert length(columns.author_name) == parsers.MAX_AUTHOR_NAME
    assert length(columns.genre) == parsers.MAX_GENRE
    assert length(columns.language) == parsers.MAX_LANGUAGE
    assert length(StoryTag.__table__.c.name) == parsers.MAX_TAG


def test_an_overlong_guid_is_refused_in_its_place() -> None:
    long_uri = "urn:" + "x" * 500
    results = parse("ninjs", json.dumps([entry("urn:ok"), entry(long_uri)]).encode(), default_tz=UTC)
    assert isinstance(results[0], ParsedItem)
    assert results[1] == ItemError(
        position=1, reason="guid is longer than 500 characters", guid=long_uri, field="guid"
    )


def test_long_or_bogus_text_is_cut_or_dropped() -> None:
    body = entry(
        "urn:long",
        byline="B" * 300,
        genres=[{"name": "G" * 150}],
        subjects=[{"name": "T" * 250}],
        language="en_GB",
    )
    [item] = parse("ninjs", json.dumps(body).encode(), default_tz=UTC)
    assert isinstance(item, ParsedItem)
    assert item.author_name == "B" * 199 + "…"
    assert item.byline == "B" * 300  # the byline is free text of any length
    assert item.genre is not None and len(item.genre) == 100
    assert item.tags == ["T" * 200]
    assert item.language == "en-GB"
    for bogus in ("not a language", "x" * 30, "en--GB"):
        [item] = parse("ninjs", json.dumps(entry("urn:l", language=bogus)).encode(), default_tz=UTC)
        assert isinstance(item, ParsedItem) and item.language is None
