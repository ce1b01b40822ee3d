"""Stories as ninjs 2.2, validated against the official IPTC schema."""

from __future__ import annotations

import ast
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from jsonschema.protocols import Validator  # type: ignore[import-untyped]
from jsonschema.validators import validator_for  # type: ignore[import-untyped]
from referencing import Registry, Resource

import shared.ninjs
from shared.config import Settings
from shared.models import Story, StoryLabel, StoryTag
from shared.ninjs import story_to_ninjs

SCHEMAS = Path(__file__).resolve().parent.parent / "data" / "ninjs"
GEOJSON_URI = "https://geojson.org/schema/GeoJSON.json"
SITE = "https://news.example.com"
T0 = datetime(2025, 4, 9, 7, 52, 30, 250_000, tzinfo=UTC)


@pytest.fixture(scope="module")
def validator() -> Validator:
    schema = json.loads((SCHEMAS / "ninjs-schema_2.2.json").read_text(encoding="utf-8"))
    geojson = json.loads((SCHEMAS / "GeoJSON-schema.json").read_text(encoding="utf-8"))
    # The schema $refs GeoJSON on the web; the local copy keeps the tests offline.
    registry = Registry().with_resource(GEOJSON_URI, Resource.from_contents(geojson))
    cls = validator_for(schema)
    return cls(schema, registry=registry, format_checker=cls.FORMAT_CHECKER)


@pytest.fixture
def settings() -> Settings:
    return Settings(site_url=SITE, site_title="Newsroom")


def errors_of(validator: Validator, document: dict[str, Any]) -> list[str]:
    return [
        f"/{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def make_column(**overrides: Any) -> Story:
    fields: dict[str, Any] = {
        "id": 7,
        "slug": "pro-kyiv",
        "revision": 3,
        "headline": "Про Київ & <Львів> 🎉",
        "lede": "Лід & <опис> 🎉",
        "body_html": "<p>Тіло &amp; <em>текст</em> 🎉</p>",
        "body_text": "Тіло & текст 🎉",
        "byline": "By Олена Петренко",
        "author_name": "Олена Петренко",
        "author_slug": "olena-petrenko",
        "section": "Opinion & Analysis",
        "genre": "Column",
        "language": "uk",
        "first_created": T0 - timedelta(hours=3),
        "published_at": T0,
        "updated_at": T0 + timedelta(hours=1),
        "correction_note": "An earlier version misspelt a name.",
        "tags": [
            StoryTag(slug="kyiv", name="Київ"),
            StoryTag(slug="war-and-peace", name="War & Peace"),
        ],
        "labels": [StoryLabel(label="opinion"), StoryLabel(label="updated")],
        "picture": {
            "url": "https://cdn.example.com/kyiv.jpg",
            "media_type": "image/jpeg",
            "width": 1200,
            "height": 800,
            "size": 54321,
            "caption": "Київ at dawn",
            "credit": "AP",
        },
    }
    fields.update(overrides)
    return Story(**fields)


def nulls_in(value: Any, path: str = "") -> list[str]:
    if value is None:
        return [path or "/"]
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in nulls_in(item, f"{path}/{key}")]
    if isinstance(value, list):
        return [found for n, item in enumerate(value) for found in nulls_in(item, f"{path}/{n}")]
    return []


def test_a_full_story_is_valid_ninjs_2_2(validator: Validator, settings: Settings) -> None:
    document = story_to_ninjs(make_column(), settings=settings)
    assert errors_of(validator, document) == []
    assert nulls_in(document) == []
    assert document["uri"] == f"{SITE}/stories/pro-kyiv"
    assert document["version"] == "3"
    assert document["type"] == "text"
    assert document["pubstatus"] == "usable"
    assert document["firstcreated"] == "2025-04-09T07:52:30Z"
    assert document["versioncreated"] == "2025-04-09T08:52:30Z"
    assert document["language"] == "uk"
    assert document["by"] == "By Олена Петренко"
    assert document["headlines"] == [
        {"role": "main", "contenttype": "text/plain", "value": "Про Київ & <Львів> 🎉"}
    ]
    assert document["bodies"][0]["role"] == "main"
    assert document["bodies"][0]["contenttype"] == "text/html"
    assert document["bodies"][0]["value"] == "<p>Тіло &amp; <em>текст</em> 🎉</p>"
    assert document["descriptions"][0] == {
        "role": "summary",
        "contenttype": "text/plain",
        "value": "Лід & <опис> 🎉",
    }
    assert {"name": "Opinion", "uri": "http://cv.iptc.org/newscodes/genre/Opinion"} in document["genres"]
    assert {"name": "Column", "literal": "column"} in document["genres"]
    assert document["subjects"] == [
        {"name": "Opinion & Analysis", "literal": "section/opinion-analysis"},
        {"name": "Київ", "literal": "tag/kyiv"},
        {"name": "War & Peace", "literal": "tag/war-and-peace"},
    ]
    (picture,) = document["associations"]
    assert picture["name"] == "featureimage"
    assert picture["type"] == "picture"
    assert picture["uri"] == "https://cdn.example.com/kyiv.jpg"
    assert picture["by"] == "AP"
    assert picture["renditions"] == [
        {
            "name": "original",
            "href": "https://cdn.example.com/kyiv.jpg",
            "contenttype": "image/jpeg",
            "width": 1200,
            "height": 800,
            "sizeinbytes": 54321,
        }
    ]
    # Partners get it as JSON: it must serialise as it is.
    assert json.loads(json.dumps(document, ensure_ascii=False)) == document


def test_a_bare_story_has_no_nulls_and_is_valid(validator: Validator, settings: Settings) -> None:
    bare = Story(id=8, slug="bare", headline="Bare", body_html="<p>x</p>", tags=[], labels=[])
    document = story_to_ninjs(bare, settings=settings)
    assert errors_of(validator, document) == []
    assert nulls_in(document) == []
    assert "version" not in document  # a transient story has no revision yet
    assert "genres" not in document
    assert "associations" not in document
    assert document["headlines"][0]["value"] == "Bare"


def test_a_killed_story_is_canceled(validator: Validator, settings: Settings) -> None:
    killed = make_column(unpublished_at=T0 + timedelta(days=1), revision=4)
    document = story_to_ninjs(killed, settings=settings, pubstatus="canceled")
    assert errors_of(validator, document) == []
    assert document["pubstatus"] == "canceled"
    assert document["version"] == "4"
    assert document["versioncreated"] == "2025-04-10T07:52:30Z"


def test_only_ninjs_pubstatuses_are_accepted(settings: Settings) -> None:
    with pytest.raises(ValueError, match="pubstatus"):
        story_to_ninjs(make_column(), settings=settings, pubstatus="killed")


def test_an_opinion_genre_without_the_label_still_says_opinion(
    validator: Validator, settings: Settings
) -> None:
    story = make_column(genre="Opinion", labels=[], picture={"url": "/media/p.png", "size": "n/a"})
    document = story_to_ninjs(story, settings=settings)
    assert errors_of(validator, document) == []
    assert document["genres"] == [{"name": "Opinion", "uri": "http://cv.iptc.org/newscodes/genre/Opinion"}]
    rendition = document["associations"][0]["renditions"][0]
    assert rendition == {"name": "original", "href": f"{SITE}/media/p.png"}


def test_the_schema_copy_catches_what_it_should(validator: Validator, settings: Settings) -> None:
    document = story_to_ninjs(make_column(), settings=settings)
    document["pubstatus"] = None
    assert errors_of(validator, document)


def test_ninjs_imports_nothing_from_services() -> None:
    source = Path(shared.ninjs.__file__).read_text(encoding="utf-8")
    imported: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.append(node.module)
    assert imported
    assert not [name for name in imported if name.split(".")[0] == "services"]
