"""Story helpers every service needs: revisions, tags, labels."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm import Session

from shared.changes import announce_change
from shared.models import Revision, Story, StoryLabel, StoryTag, utcnow
from shared.text import slugify

# Fields of a story whose text comes from the wire or an editor.
CONTENT_FIELDS = (
    "headline",
    "lede",
    "body_html",
    "body_text",
    "byline",
    "author_name",
    "author_slug",
    "author_bio",
    "section",
    "genre",
    "language",
    "source_url",
    "disclaimer",
    "picture",
    "first_created",
    "version_created",
    "embargo_until",
)
# A change to one of these is substantive: republishing it earns the "updated" label.
SUBSTANTIVE_FIELDS = ("headline", "lede", "body_html")
LABELS = ("exclusive", "breaking", "opinion", "updated")
EDITOR_LABELS = ("exclusive", "breaking")


def jsonable(content: dict[str, Any]) -> dict[str, Any]:
    """The same mapping with datetimes as ISO 8601 strings."""
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in content.items()}


def snapshot(story: Story) -> dict[str, Any]:
    """The story as it is now, for its revision history."""
    fields = (
        "status",
        "slug",
        *CONTENT_FIELDS,
        "published_at",
        "updated_at",
        "publish_at",
        "correction_note",
        "pending",
    )
    data = jsonable({name: getattr(story, name) for name in fields})
    data["tags"] = story.tag_names
    data["labels"] = story.label_names
    return data


# Stories this transaction wrote (and so holds locked), as the session has them, by id.
_WRITTEN = "stories_written"


def note_written(session: Session, story: Story) -> None:
    """Remember that this transaction wrote ``story``: a step that runs next in it (an
    auto-publish) takes it as it is, instead of reading and locking it again."""
    session.info.setdefault(_WRITTEN, {})[story.id] = story


def written_story(session: Session, story_id: int) -> Story | None:
    """The story as this transaction wrote it, once; None if it did not, or if a savepoint
    rolled back since (its state is then expired)."""
    story: Story | None = session.info.get(_WRITTEN, {}).pop(story_id, None)
    if story is None:
        return None
    state = inspect(story)
    return story if state.persistent and not state.expired_attributes else None


REVISIONS = Revision.metadata.tables[Revision.__tablename__]


def add_revision(
    session: Session, story: Story, action: str, *, actor: str | None, note: str | None = None
) -> None:
    """Record the story's current revision number with who did what and why.

    The session's pending changes are flushed first (the story's version compared in SQL
    among them); the revision itself is one INSERT, with no ORM object kept for it.
    """
    row = {
        "story_id": story.id,
        "number": story.revision,
        "action": action,
        "actor": actor,
        "note": note,
        "snapshot": snapshot(story),
        "created_at": utcnow(),
    }
    session.flush()
    session.connection().execute(REVISIONS.insert(), row)
    announce_change(session)


def set_tags(story: Story, names: list[str]) -> None:
    """Replace a story's tags, one per slug, in the given order."""
    seen: dict[str, str] = {}
    for name in names:
        slug = slugify(name)
        if slug and slug not in seen:
            seen[slug] = name
    existing = {tag.slug: tag for tag in story.tags}
    story.tags = [existing.get(slug) or StoryTag(slug=slug, name=name) for slug, name in seen.items()]
    for position, tag in enumerate(story.tags):
        tag.position = position
        tag.name = seen[tag.slug]


def set_labels(story: Story, labels: set[str]) -> None:
    """Make the story's labels exactly ``labels``, keeping rows that stay."""
    keep = [row for row in story.labels if row.label in labels]
    have = {row.label for row in keep}
    story.labels = keep + [StoryLabel(label=label) for label in sorted(labels - have)]


def membership(story: Story) -> dict[str, Any]:
    """What puts a story in feeds: section, tag slugs, author slug, labels."""
    return {
        "section": story.section,
        "tags": [tag.slug for tag in story.tags],
        "author": story.author_slug,
        "labels": story.label_names,
    }
