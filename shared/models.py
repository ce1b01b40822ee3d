"""Every table of the pipeline, as SQLAlchemy 2 typed models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shared.crypto import seal, unseal

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Now, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on every database (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[str]: JSON}


class Source(Base):
    """A wire agency or a columnists' desk that posts items."""

    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    format: Mapped[str] = mapped_column(String(20), default="ninjs")
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    auto_publish: Mapped[bool] = mapped_column(Boolean, default=False)
    poll_url: Mapped[str | None] = mapped_column(Text)
    poll_every: Mapped[int | None] = mapped_column(Integer)
    poll_etag: Mapped[str | None] = mapped_column(Text)
    poll_last_modified: Mapped[str | None] = mapped_column(Text)
    next_poll_at: Mapped[datetime | None]
    poll_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A disabled source's tokens are refused and it is not polled; a removed one is also
    # hidden (its receipts and stories stay, and so does its name).
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    removed_at: Mapped[datetime | None]


class Token(Base):
    """A bearer token, stored only as its SHA-256 hash."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))  # wire | editor | admin
    source_id: Mapped[int | None] = mapped_column(ForeignKey("sources.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # Written at most once a minute per token (shared.auth), not on every request.
    last_used_at: Mapped[datetime | None]


class Receipt(Base):
    """A wire post exactly as it arrived, kept as long as the retention policy says."""

    __tablename__ = "receipts"

    id: Mapped[int] = mapped_column(primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"), index=True)
    content_type: Mapped[str | None] = mapped_column(String(200))
    format: Mapped[str | None] = mapped_column(String(20))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending|done|rejected
    error: Mapped[dict[str, Any] | None]
    item_count: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    processed_at: Mapped[datetime | None]
    # When the retention policy dropped the raw bytes (``body`` is then empty).
    body_pruned_at: Mapped[datetime | None]

    items: Mapped[list[ReceiptItem]] = relationship(
        order_by="ReceiptItem.position", cascade="all, delete-orphan"
    )


class ReceiptItem(Base):
    """What became of one item of a post."""

    __tablename__ = "receipt_items"
    __table_args__ = (UniqueConstraint("receipt_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    receipt_id: Mapped[int] = mapped_column(ForeignKey("receipts.id"))
    position: Mapped[int] = mapped_column(Integer)
    guid: Mapped[str | None] = mapped_column(Text)
    story_id: Mapped[int | None] = mapped_column(ForeignKey("stories.id"))
    outcome: Mapped[str] = mapped_column(String(20))
    error: Mapped[str | None] = mapped_column(Text)


class Story(Base):
    """A story: identified by (source, guid); its columns are what readers see."""

    __tablename__ = "stories"
    __table_args__ = (
        UniqueConstraint("source_id", "guid"),
        Index("ix_stories_status_published_at", "status", "published_at"),
        Index("ix_stories_section_published_at", "section", "published_at"),
        Index("ix_stories_author_slug_published_at", "author_slug", "published_at"),
        Index("ix_stories_status_publish_at", "status", "publish_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"))
    guid: Mapped[str] = mapped_column(String(500))
    slug: Mapped[str] = mapped_column(String(200), unique=True)
    # ingested | scheduled | published | unpublished
    status: Mapped[str] = mapped_column(String(20), default="ingested")
    # Bumped by every change; the ninjs version and the editor's expected_version.
    revision: Mapped[int] = mapped_column(Integer, default=1)

    # The wire's own ordering, compared in SQL so only newer versions win.
    wire_version: Mapped[int] = mapped_column(BigInteger, default=-1)
    wire_version_created: Mapped[datetime | None]
    content_hash: Mapped[str] = mapped_column(String(64))

    headline: Mapped[str] = mapped_column(Text)
    lede: Mapped[str | None] = mapped_column(Text)
    body_html: Mapped[str] = mapped_column(Text)
    body_text: Mapped[str] = mapped_column(Text, default="")
    byline: Mapped[str | None] = mapped_column(Text)
    author_name: Mapped[str | None] = mapped_column(String(200))
    author_slug: Mapped[str | None] = mapped_column(String(200))
    author_bio: Mapped[str | None] = mapped_column(Text)
    section: Mapped[str | None] = mapped_column(String(100))
    genre: Mapped[str | None] = mapped_column(String(100))
    language: Mapped[str | None] = mapped_column(String(20))
    source_url: Mapped[str | None] = mapped_column(Text)
    disclaimer: Mapped[str | None] = mapped_column(Text)
    picture: Mapped[dict[str, Any] | None]
    correction_note: Mapped[str | None] = mapped_column(Text)
    # Edits to a published story wait here until the next publish.
    pending: Mapped[dict[str, Any] | None]

    first_created: Mapped[datetime | None]
    version_created: Mapped[datetime | None]
    embargo_until: Mapped[datetime | None]
    publish_at: Mapped[datetime | None]
    published_at: Mapped[datetime | None]
    updated_at: Mapped[datetime | None]
    unpublished_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    modified_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    tags: Mapped[list[StoryTag]] = relationship(
        cascade="all, delete-orphan", order_by="StoryTag.position", lazy="selectin"
    )
    labels: Mapped[list[StoryLabel]] = relationship(
        cascade="all, delete-orphan", order_by="StoryLabel.label", lazy="selectin"
    )

    # Every ORM update of a story says WHERE revision = <the one read>: a concurrent
    # change makes it fail (StaleDataError) instead of silently winning.
    __mapper_args__ = {"version_id_col": revision, "version_id_generator": False}

    @property
    def tag_names(self) -> list[str]:
        return [tag.name for tag in self.tags]

    @property
    def label_names(self) -> list[str]:
        return [label.label for label in self.labels]


class StoryTag(Base):
    __tablename__ = "story_tags"
    __table_args__ = (
        UniqueConstraint("story_id", "slug"),
        Index("ix_story_tags_slug_story_id", "slug", "story_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    story_id: Mapped[int] = mapped_column(ForeignKey("stories.id", ondelete="CASCADE"))
    slug: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer, default=0)


class StoryLabel(Base):
    __tablename__ = "story_labels"
    __table_args__ = (
        UniqueConstraint("story_id", "label"),
        Index("ix_story_labels_label_story_id", "label", "story_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    story_id: Mapped[int] = mapped_column(ForeignKey("stories.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(40))


class Revision(Base):
    """One change to a story: who, when, why, and the story as it then was."""

    __tablename__ = "revisions"
    __table_args__ = (UniqueConstraint("story_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    story_id: Mapped[int] = mapped_column(ForeignKey("stories.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(30))
    actor: Mapped[str | None] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)
    snapshot: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Partner(Base):
    """A site that receives signed pushes of the stories matching its filters."""

    __tablename__ = "partners"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    url: Mapped[str] = mapped_column(Text)
    # The signing secret, encrypted (shared.crypto); ``secret`` reads and writes it in clear.
    secret_sealed: Mapped[str] = mapped_column(Text)
    # After a rotation, the old secret also signs until ``previous_secret_until``.
    previous_secret_sealed: Mapped[str | None] = mapped_column(Text)
    previous_secret_until: Mapped[datetime | None]
    format: Mapped[str] = mapped_column(String(20), default="ninjs")
    sections: Mapped[list[str]] = mapped_column(default=list)
    tags: Mapped[list[str]] = mapped_column(default=list)
    labels: Mapped[list[str]] = mapped_column(default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A removed partner is disabled for good; its deliveries stay as history.
    removed_at: Mapped[datetime | None]

    @property
    def secret(self) -> str:
        """The signing secret in clear (``whsec_…``)."""
        return unseal(self.secret_sealed)

    @secret.setter
    def secret(self, value: str) -> None:
        self.secret_sealed = seal(value)

    def signing_secrets(self, now: datetime) -> list[str]:
        """The secrets that sign a push now: the current one, and the previous during its grace."""
        found = [self.secret]
        if self.previous_secret_sealed and self.previous_secret_until and self.previous_secret_until > now:
            found.append(unseal(self.previous_secret_sealed))
        return found


class Delivery(Base):
    """One push of one event of one story version to one partner; its id is the webhook-id."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("partner_id", "story_id", "story_revision", "event"),
        Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_deliveries_partner_id_story_id", "partner_id", "story_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id"))
    story_id: Mapped[int] = mapped_column(ForeignKey("stories.id"))
    story_revision: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(30))
    payload: Mapped[str] = mapped_column(Text)
    # pending | sent | dead | superseded
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    sent_at: Mapped[datetime | None]


class OutboxEvent(Base):
    """A task to send, written in the same transaction as the change it announces.

    ``sent_at`` is set when the broker took it, ``done_at`` when a worker finished
    it; one sent but not done for too long was lost with Redis or a worker, and is
    sent again.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_sent_at_next_try_at", "sent_at", "next_try_at"),
        Index("ix_outbox_done_at_sent_at", "done_at", "sent_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str] = mapped_column(String(100))
    kwargs: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    next_try_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[datetime | None]
    done_at: Mapped[datetime | None]
    # Gathered: one message makes a worker take every pending event of the task at once.
    gather: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Feed(Base):
    """A feed by name (``all``, ``section/world`` …) and whether it needs rendering."""

    __tablename__ = "feeds"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    dirty_at: Mapped[datetime | None] = mapped_column(index=True)
    renders: Mapped[int] = mapped_column(Integer, default=0)
    rendered_at: Mapped[datetime | None]


class FeedDocument(Base):
    """A rendered feed in one format, served as stored bytes."""

    __tablename__ = "feed_documents"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    format: Mapped[str] = mapped_column(String(10), primary_key=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    etag: Mapped[str] = mapped_column(String(80))
    last_modified: Mapped[datetime]
    rendered_at: Mapped[datetime] = mapped_column(default=utcnow)


class Page(Base):
    """A rendered reader page (``/``, ``/stories/…``, ``/tags/…`` …), served as stored bytes.

    ``dirty_at`` is set while the page waits for a render round. A story page whose story
    is no longer published keeps its row with no body: it is gone (404) until published again.
    A story page's body has a slot for the "More news" list, stored once as ``more-news``.
    """

    __tablename__ = "pages"

    path: Mapped[str] = mapped_column(String(600), primary_key=True)
    story_id: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    etag: Mapped[str | None] = mapped_column(String(80))
    last_modified: Mapped[datetime | None]
    rendered_at: Mapped[datetime | None]
    dirty_at: Mapped[datetime | None] = mapped_column(index=True)


class Failure(Base):
    """A task that failed for good (a poison item): recorded, shown, not retried."""

    __tablename__ = "failures"

    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(200))
    error: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MetricDelta(Base):
    """A change to a count, appended by a database trigger in the transaction that made it.

    The triggers (migration 0003) follow receipts, stories and deliveries; /metrics folds
    the deltas into ``MetricTotal`` and reads the totals, never the growing tables.
    """

    __tablename__ = "metric_deltas"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    metric: Mapped[str] = mapped_column(String(20))  # received | stories | deliveries
    owner_id: Mapped[int] = mapped_column(Integer)  # the source or partner; 0 for stories
    label: Mapped[str] = mapped_column(String(40))  # a receipt's format; '' otherwise
    status: Mapped[str] = mapped_column(String(20))
    count: Mapped[int] = mapped_column(Integer)
    items: Mapped[int] = mapped_column(Integer)


class MetricTotal(Base):
    """A count folded from ``MetricDelta`` rows."""

    __tablename__ = "metric_totals"

    metric: Mapped[str] = mapped_column(String(20), primary_key=True)
    owner_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(String(40), primary_key=True)
    status: Mapped[str] = mapped_column(String(20), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    items: Mapped[int] = mapped_column(BigInteger)
