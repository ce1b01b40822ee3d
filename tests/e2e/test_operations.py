"""Operating it: health, readiness, metrics, and secrets that never leak."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from services.syndicate.partners import add_partner, rotate_secret
from shared.db import session_scope
from shared.models import Partner, Token
from tests.helpers.pipeline import Pipeline
from tests.helpers.support import ROOT, PartnerServer, newsroom_environment, wait_for

pytestmark = pytest.mark.pipeline

SEARCH_FILES = """
import os, sys
path, *needles = sys.argv[1:]
data = b"".join(open(f, "rb").read() for f in (path, path + "-wal") if os.path.exists(f))
print(" ".join(n for n in needles if n.encode() in data))
"""


def _story(pipeline: Pipeline, name: str, wire: dict[str, str], headline: str) -> int:
    item = {
        "uri": f"urn:ops:{secrets.token_hex(4)}",
        "headlines": [{"role": "main", "value": headline}],
        "bodies": [{"role": "main", "contenttype": "text/html", "value": "<p>Operations.</p>"}],
    }
    answer = pipeline.client.post(
        f"/v1/wire/{name}",
        content=json.dumps(item),
        headers={**wire, "Content-Type": "application/ninjs+json"},
    )
    assert answer.status_code == 202, answer.text
    receipt = pipeline.wait_receipt(answer.json()["receipt"], wire)
    return int(receipt["items"][0]["story_id"])


def samples(pipeline: Pipeline, admin: dict[str, str]) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The /metrics page parsed (read with an admin token): metric sample name -> labels -> value."""
    answer = pipeline.client.get("/metrics", headers=admin)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_health_and_readiness(pipeline: Pipeline) -> None:
    assert pipeline.client.get("/healthz").json() == {"status": "ok"}
    ready = pipeline.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "database": "ok", "redis": "ok"}


def test_readiness_names_the_failed_dependency(newsroom: dict[str, str]) -> None:
    # A Redis that is not there: the database still answers, so only Redis is named.
    with newsroom_environment({"NEWSROOM_REDIS_URL": "redis://127.0.0.1:1/0"}):
        from fastapi.testclient import TestClient

        from services.app import create_app

        with TestClient(create_app()) as client:
            answer = client.get("/readyz")
    assert answer.status_code == 503
    body = answer.json()
    assert body["database"] == "ok"
    assert body["redis"].startswith("failed")


def test_metrics_after_a_run(pipeline: Pipeline) -> None:
    name, wire = pipeline.source()
    editor = pipeline.token("editor")
    admin = pipeline.token("admin")
    server = PartnerServer()
    with session_scope() as session:
        partner = add_partner(
            session, name=f"ops-{secrets.token_hex(3)}", url=server.url, labels=["breaking"]
        )
        partner_name = partner.name
    story_id = _story(pipeline, name, wire, "Metrics story")
    answer = pipeline.client.post(
        f"/v1/stories/{story_id}/publish", headers=editor, json={"labels": ["breaking"]}
    )
    assert answer.status_code == 202
    wait_for(lambda: server.pushes, what="the push")

    def counted() -> dict[str, dict[tuple[tuple[str, str], ...], float]] | None:
        found = samples(pipeline, admin)
        sent = found.get("newsroom_deliveries_total", {}).get((("partner", partner_name), ("status", "sent")))
        renders = found.get("newsroom_feed_renders_total", {}).get((("feed", "label/breaking"),), 0)
        return found if sent == 1 and renders >= 1 else None

    found = wait_for(counted, what="the delivery and the label feed's render in /metrics")
    received = found["newsroom_items_received_total"]
    assert received[(("format", "ninjs"), ("source", name), ("status", "done"))] == 1
    assert found["newsroom_stories"][(("status", "published"),)] >= 1
    assert found["newsroom_feed_renders_total"][(("feed", "label/breaking"),)] >= 1
    assert set(dict(k)["queue"] for k in found["newsroom_queue_depth"]) == {"ingest", "publish", "syndicate"}
    assert "newsroom_publish_to_feed_seconds_count" in found
    with session_scope() as session:
        session.scalars(select(Partner).where(Partner.name == partner_name)).one().enabled = False
    server.close()


def test_secrets_never_logged_nor_stored_in_clear(pipeline: Pipeline) -> None:
    name, wire = pipeline.source()
    wire_token = wire["Authorization"].removeprefix("Bearer ")
    editor = pipeline.token("editor")
    editor_token = editor["Authorization"].removeprefix("Bearer ")
    server = PartnerServer()
    # A partner URL may carry a token of the partner's in its query: never logged.
    query_token = f"qt{secrets.token_hex(8)}"
    partner_name = f"secret-{secrets.token_hex(3)}"
    with session_scope() as session:
        partner = add_partner(session, name=partner_name, url=f"{server.url}?token={query_token}")
        retired = partner.secret
    with session_scope() as session:
        secret = rotate_secret(session, name=partner_name, grace=timedelta(hours=1))
    story_id = _story(pipeline, name, wire, "Secrets story")
    pipeline.client.post(f"/v1/stories/{story_id}/publish", headers=editor, json={})
    wait_for(lambda: server.pushes, what="the push")
    assert len(server.pushes[0].headers["webhook-signature"].split(" ")) == 2
    secret_values = [secret, secret.removeprefix("whsec_"), retired, retired.removeprefix("whsec_")]
    for log in ("worker", "scheduler"):
        text = pipeline.log(log)
        for value in (wire_token, editor_token, query_token, *secret_values):
            assert value not in text, f"a secret is in the {log} log"
    # The partner's secrets are stored sealed, and the generated key is its owner's alone.
    with session_scope(read_only=True) as session:
        row = session.scalars(select(Partner).where(Partner.name == partner_name)).one()
        stored = f"{row.secret_sealed} {row.previous_secret_sealed}"
    assert all(value not in stored for value in secret_values)
    key_file = pipeline.data_dir / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_bytes().strip()) >= 32
    with session_scope(read_only=True) as session:
        hashes = set(session.scalars(select(Token.token_hash)))
    assert wire_token not in hashes
    assert editor_token not in hashes
    # Tokens are stored as SHA-256 hashes only.
    import hashlib

    assert hashlib.sha256(wire_token.encode()).hexdigest() in hashes
    if pipeline.dialect == "sqlite":  # not anywhere in the database's files either
        path = pipeline.env["NEWSROOM_DATABASE_URL"].removeprefix("sqlite:///")
        # Read them from another process: closing a descriptor of the database file
        # here would drop this process's SQLite locks on it (POSIX advisory locks).
        found = subprocess.run(
            [sys.executable, "-c", SEARCH_FILES, path, wire_token, editor_token, *secret_values],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert found == []
    server.close()


def test_a_redis_password_never_reaches_the_logs(pipeline: Pipeline) -> None:
    # Redis's default user takes any password when it has none, so a URL can carry one here.
    password = f"pw{secrets.token_hex(8)}"
    url = pipeline.env["NEWSROOM_REDIS_URL"].replace("redis://", f"redis://default:{password}@", 1)
    env = {**os.environ, **pipeline.env, "NEWSROOM_REDIS_URL": url}
    logs = {name: pipeline.data_dir / f"redis-password-{name}.log" for name in ("worker", "scheduler")}
    commands = {
        "worker": ["worker", "-Q", f"nothing-{password[:4]}", "-c", "1", "--loglevel", "DEBUG"],
        "scheduler": ["scheduler"],
    }
    processes = {}
    for name, argv in commands.items():
        with open(logs[name], "wb") as log:
            command = [sys.executable, "-m", "services.cli", *argv]
            processes[name] = subprocess.Popen(
                command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
    try:
        wait_for(lambda: "ready" in logs["worker"].read_text(errors="replace"), timeout=60, what="the worker")
    finally:
        for process in processes.values():
            process.terminate()
            process.wait(timeout=30)
    for name, path in logs.items():
        text = path.read_text(errors="replace")
        assert text, name
        assert password not in text, f"the Redis password is in the {name} log"
