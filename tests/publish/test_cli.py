"""`newsroom publish`, `unpublish` and `stories list`, run in-process against the pipeline's database."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.cli import main
from tests.helpers.desk import Desk, actions, row

pytestmark = pytest.mark.pipeline


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    main(list(argv))
    return json.loads(capsys.readouterr().out)


def test_publish_list_unpublish(desk: Desk, capsys: pytest.CaptureFixture[str]) -> None:
    story_id = desk.story(headline="From the command line", section="world")
    published = run(
        capsys, "publish", str(story_id), "--label", "exclusive", "--at", "2025-07-18T19:16:00+03:00"
    )
    assert published["event"] == "story.published"
    assert published["labels"] == ["exclusive"]
    assert published["published_at"] == "2025-07-18T16:16:00Z"
    assert actions(story_id)[-1][1:3] == ("published", "cli")

    again = run(capsys, "publish", str(story_id), "--label", "exclusive")
    assert again["event"] is None and again["version"] == published["version"]

    main(["stories", "list", "-q", "From the command line", "--status", "published"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    # The newsroom's local time, as readers see it.
    assert lines[0].split() == [
        str(story_id),
        "published",
        f"v{published['version']}",
        "2025-07-18",
        "19:16",
        "exclusive",
        "From",
        "the",
        "command",
        "line",
    ]
    listed = run(capsys, "stories", "list", "--section", "world", "-q", "command line", "--json")
    assert [s["id"] for s in listed] == [story_id]

    killed = run(capsys, "unpublish", str(story_id), "--reason", "Wrong desk", "--actor", "editor:night")
    assert killed["event"] == "story.killed" and killed["status"] == "unpublished"
    assert actions(story_id)[-1][1:] == ("unpublished", "editor:night", "Wrong desk")
    assert run(capsys, "unpublish", str(story_id), "--reason", "again")["event"] is None


def test_errors_exit_with_the_reason(desk: Desk, capsys: pytest.CaptureFixture[str]) -> None:
    story_id = desk.story()
    for argv, detail in [
        (["publish", "2000000000"], "error: story 2000000000 not found"),
        (["publish", str(story_id), "--at", "tomorrow"], "error: at: not an ISO 8601 time"),
        (["publish", str(story_id), "--expected-version", "7"], "error: story"),
        (["publish", str(story_id), "--label", "opinion"], "error: labels: opinion is set by the newsroom"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.startswith(detail)
    assert row(story_id).status == "ingested"
