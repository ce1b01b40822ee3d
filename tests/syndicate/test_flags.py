"""Feed flags: a change made in the flagging transaction itself is not read back."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from sqlalchemy import event, update

from services.ingest import service as ingest
from services.publish import service as publish
from services.syndicate import service
from shared.db import get_engine, session_scope
from shared.models import OutboxEvent
from shared.outbox import emitted


def test_flags_at_commit_use_the_membership_the_change_recorded(newsroom: dict[str, str]) -> None:
    tag = secrets.token_hex(3)
    item = {
        "uri": f"urn:flags:{tag}",
        "headlines": [{"role": "main", "value": f"Flags {tag}"}],
        "bodies": [{"role": "main", "contenttype": "text/html", "value": "<p>Flagged.</p>"}],
        "subjects": [{"name": f"Harbour {tag}", "rel": "about"}],
        "by": f"Jane {tag}",
    }
    with session_scope() as session:
        source, _ = ingest.add_source(session, name=f"flags-{tag}")
        result = ingest.accept_post(
            session, source=source, content_type="application/ninjs+json", body=json.dumps(item).encode()
        )
        # Processed before the commit relays it: a worker that another test left running
        # then finds it done, instead of this test finding it done by that worker.
        [row] = ingest.process_receipt(session, result.receipt.id)
        story_id = row.story_id
    assert story_id is not None
    with session_scope() as session:
        publish.publish_story(session, story_id=story_id, actor="editor:test")
        [change] = [e.kwargs for e in emitted(session) if e.task == "syndicate.story_changed"]
        statements: list[str] = []

        def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            statements.append(statement)

        event.listen(get_engine(), "before_cursor_execute", record)
        try:
            flagged = service.stories_changed(session, [change], current=True)
        finally:
            event.remove(get_engine(), "before_cursor_execute", record)
        read_back = service.stories_changed(session, [change])
        ids = [e.id for e in emitted(session) if e.id is not None]
    with session_scope() as session:  # not for a worker: this test has none
        session.execute(
            update(OutboxEvent).where(OutboxEvent.id.in_(ids)).values(done_at=OutboxEvent.sent_at)
        )
    # The same feeds as reading the story back would flag: its tag and author among them.
    assert flagged == read_back
    assert "all" in flagged, flagged
    assert any(name.startswith("tag/harbour") for name in flagged), flagged
    assert any(name.startswith("author/jane") for name in flagged)
    # ... without reading the story, its tags or its labels.
    assert not [s for s in statements if re.search(r"\bFROM (stories|story_tags|story_labels)\b", s)]
