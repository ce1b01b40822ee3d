"""A story as IPTC ninjs 2.2, the payload partners receive."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urljoin

from shared.config import Settings
from shared.models import Story
from shared.text import slugify

NINJS_SCHEMA_URI = "http://www.iptc.org/std/ninjs/ninjs-schema_2.2.json"
# IPTC genre NewsCodes: https://cv.iptc.org/newscodes/genre/
OPINION_GENRE = {"name": "Opinion", "uri": "http://cv.iptc.org/newscodes/genre/Opinion"}
PUBSTATUSES = frozenset({"usable", "withheld", "canceled"})


def story_url(story: Story, settings: Settings) -> str:
    """The story's canonical public URL: its id in feeds, guids and ninjs."""
    return f"{settings.site_url}/stories/{quote(story.slug, safe='')}"


def rfc3339(moment: datetime) -> str:
    """A datetime as RFC 3339 in UTC with a ``Z``, to the second."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def story_to_ninjs(story: Story, *, settings: Settings, pubstatus: str = "usable") -> dict[str, Any]:
    """The story as a ninjs 2.2 object (valid against the official schema)."""
    if pubstatus not in PUBSTATUSES:
        raise ValueError(f"unknown pubstatus {pubstatus!r}")
    first = story.published_at or story.first_created or story.created_at
    if pubstatus == "canceled" and story.unpublished_at is not None:
        latest: datetime | None = story.unpublished_at
    else:
        latest = story.updated_at or story.published_at or story.version_created or first
    labels = story.label_names
    genre = (story.genre or "").strip()
    genres: list[dict[str, str]] = []
    if "opinion" in labels or genre.lower() == "opinion":
        genres.append(dict(OPINION_GENRE))
    if genre and genre.lower() != "opinion":
        genres.append({"name": genre, "literal": slugify(genre)})
    subjects: list[dict[str, str]] = []
    if story.section:
        subjects.append({"name": story.section, "literal": f"section/{slugify(story.section)}"})
    subjects.extend({"name": tag.name, "literal": f"tag/{tag.slug}"} for tag in story.tags)
    descriptions: list[dict[str, str]] = []
    if story.lede:
        descriptions.append({"role": "summary", "contenttype": "text/plain", "value": story.lede})
    if story.correction_note:
        descriptions.append(
            {"role": "correction", "contenttype": "text/plain", "value": story.correction_note}
        )
    body_text = story.body_text or ""
    document: dict[str, Any] = {
        "standard": {"name": "ninjs", "version": "2.2", "schema": NINJS_SCHEMA_URI},
        "uri": story_url(story, settings),
        "type": "text",
        "representationtype": "full",
        "version": None if story.revision is None else str(story.revision),
        "firstcreated": _maybe_rfc3339(first),
        "versioncreated": _maybe_rfc3339(latest),
        "embargoed": _maybe_rfc3339(story.embargo_until),
        "pubstatus": pubstatus,
        "language": story.language,
        "slugline": story.slug,
        "headlines": [{"role": "main", "contenttype": "text/plain", "value": story.headline}],
        "descriptions": descriptions,
        "bodies": [
            {
                "role": "main",
                "contenttype": "text/html",
                "value": story.body_html or "",
                "charcount": len(body_text) if body_text else None,
                "wordcount": len(body_text.split()) if body_text else None,
            }
        ],
        "by": story.byline or story.author_name,
        "people": (
            [{"name": story.author_name, "rel": "author", "literal": story.author_slug}]
            if story.author_name
            else None
        ),
        "genres": genres,
        "subjects": subjects,
        "associations": _picture_associations(story, settings, latest),
    }
    pruned: dict[str, Any] = _prune(document)
    return pruned


def _picture_associations(
    story: Story, settings: Settings, versioncreated: datetime | None
) -> list[dict[str, Any]] | None:
    picture = story.picture or {}
    if not picture.get("url"):
        return None
    href = urljoin(f"{settings.site_url}/", str(picture["url"]))
    caption = picture.get("caption")
    rendition = {
        "name": "original",
        "href": href,
        "contenttype": picture.get("media_type"),
        "width": _positive(picture.get("width")),
        "height": _positive(picture.get("height")),
        "sizeinbytes": _positive(picture.get("size")),
    }
    return [
        {
            "name": "featureimage",
            "uri": href,
            "type": "picture",
            "versioncreated": _maybe_rfc3339(versioncreated),
            "headlines": [{"role": "main", "value": caption}] if caption else None,
            "descriptions": [{"role": "caption", "value": caption}] if caption else None,
            "by": picture.get("credit"),
            "renditions": [rendition],
        }
    ]


def _maybe_rfc3339(moment: datetime | None) -> str | None:
    return None if moment is None else rfc3339(moment)


def _positive(value: Any) -> int | None:
    # Picture sizes come from wires as numbers or numeric strings; anything else is unknown.
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _prune(value: Any) -> Any:
    """Drop None and empty lists and objects: the schema rejects nulls in most places."""
    if isinstance(value, dict):
        pruned = {key: _prune(item) for key, item in value.items()}
        return {key: item for key, item in pruned.items() if not _empty(item)}
    if isinstance(value, list):
        return [item for item in map(_prune, value) if not _empty(item)]
    return value


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, list | dict) and not value)
