"""Every task's name, declared once, as a typed reference that ``emit`` takes.

The references live here, not beside the task bodies, because services never import
each other: publish emits a syndicate task without importing syndicate's code. A name
misspelled at an ``emit`` is an unknown attribute (mypy and the import fail), and
``shared.tasks.newsroom_task`` refuses to register a name that is not declared here.
"""

from __future__ import annotations

from typing import NamedTuple

# The queues, one per service; a task goes to the queue its name starts with.
QUEUES = ("ingest", "publish", "syndicate")


class TaskRef(NamedTuple):
    """A task's stable name, its batch entry point's name if its events may be batched, and
    whether a worker that emits it runs it in place, right after the commit (``shared.tasks``)."""

    name: str
    batch: str | None = None
    in_place: bool = False

    @property
    def queue(self) -> str:
        return self.name.partition(".")[0]


PROCESS_RECEIPT = TaskRef("ingest.process_receipt", batch="ingest.process_receipts")
POLL_SOURCE = TaskRef("ingest.poll_source")
# An ingest's auto-publishes, and a publish's feed flags, run in the worker that emitted them.
PUBLISH_STORY = TaskRef("publish.publish_story", batch="publish.publish_stories", in_place=True)
PUBLISH_DUE = TaskRef("publish.publish_due")
UNPUBLISH_STORY = TaskRef("publish.unpublish_story")
STORY_CHANGED = TaskRef("syndicate.story_changed", batch="syndicate.stories_changed", in_place=True)
RENDER_FEEDS = TaskRef("syndicate.render_feeds")
DELIVER = TaskRef("syndicate.deliver")
SWEEP_DELIVERIES = TaskRef("syndicate.sweep_deliveries")
PING_HUBS = TaskRef("syndicate.ping_hubs")

DECLARED: dict[str, TaskRef] = {
    ref.name: ref
    for ref in (
        PROCESS_RECEIPT,
        POLL_SOURCE,
        PUBLISH_STORY,
        PUBLISH_DUE,
        UNPUBLISH_STORY,
        STORY_CHANGED,
        RENDER_FEEDS,
        DELIVER,
        SWEEP_DELIVERIES,
        PING_HUBS,
    )
}
# Batch entry points by name, each with the task whose events it takes.
BATCHES: dict[str, TaskRef] = {ref.batch: ref for ref in DECLARED.values() if ref.batch is not None}
