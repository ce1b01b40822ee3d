"""Schemathesis against the running API (`newsroom api` on loopback), with a token of each role.

No answer may be a server error, and every answer must match the OpenAPI document: a
documented status code, its content type and its schema.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers.pipeline import Pipeline
from tests.helpers.support import wait_for

pytestmark = pytest.mark.pipeline

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Bounded, and the same cases every run: a failure here is a bug to fix, never a flake.
EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 8}
ROLES = ("wire", "editor", "admin")


@dataclass
class RunningApi:
    url: str
    source: str
    tokens: dict[str, dict[str, str]]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def api(pipeline: Pipeline) -> Iterator[RunningApi]:
    """`newsroom api` as its own process, a source with a story, and a token of each role."""
    port = _free_port()
    pipeline.start("fuzz-api", "api", "--host", "127.0.0.1", "--port", str(port))
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout=30, what="the API to answer")
        source, wire = pipeline.source()
        item = {"uri": "urn:fuzz:1", "headline": "Fuzzed", "body_text": "Body"}
        posted = httpx.post(
            f"{url}/v1/wire/{source}",
            content=json.dumps(item),
            headers={**wire, "Content-Type": "application/ninjs+json"},
        )
        assert posted.status_code == 202, posted.text
        tokens = {"wire": wire, "editor": pipeline.token("editor"), "admin": pipeline.token("admin")}
        yield RunningApi(url, source, tokens)
    finally:
        pipeline.stop("fuzz-api")


def test_the_document_describes_authentication_and_the_wire_body(api: RunningApi) -> None:
    document = httpx.get(f"{api.url}/openapi.json").json()
    assert document["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["HTTPBearer"]["description"],
    }
    wire = document["paths"]["/v1/wire/{source_name}"]["post"]
    assert wire["security"] == [{"HTTPBearer": []}]
    assert set(wire["requestBody"]["content"]) == {
        "application/ninjs+json",
        "application/json",
        "application/vnd.newsroom.column+json",
        "application/vnd.iptc.g2.newsitem+xml",
        "application/vnd.iptc.g2.newsmessage+xml",
        "application/xml",
        "application/rss+xml",
        "application/atom+xml",
    }
    assert {"202", "400", "401", "403", "404", "413", "415", "422", "429"} <= set(wire["responses"])
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/v1/"):
                assert operation["security"] == [{"HTTPBearer": []}], (method, path)
                assert "Role:" in operation["description"], (method, path)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/receipts/21997748585744504968064082431180800"),
        ("GET", "/v1/stories/1683717006310881498420677063999488"),
        ("GET", "/v1/receipts/2147483648"),
        ("POST", "/v1/stories/26903973324551581696/publish"),
        ("GET", "/v1/stories/0"),
        ("GET", "/v1/stories/-1"),
        ("GET", "/v1/stories?offset=99999999999999999999999"),
        ("GET", "/v1/deliveries?story=99999999999999999999999"),
    ],
)
def test_ids_past_64_bits_are_422(api: RunningApi, method: str, path: str) -> None:
    answer = httpx.request(method, f"{api.url}{path}", headers=api.tokens["admin"], json={})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "unprocessable"


@pytest.mark.parametrize("role", ROLES)
def test_fuzzed_requests_get_documented_answers(api: RunningApi, role: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    headers = api.tokens[role]
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        fixed = {"source_name": api.source} if "{source_name}" in operation.path else None
        for mode, examples in EXAMPLES.items():
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed)

            @settings(
                max_examples=examples,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def call(case: schemathesis.Case) -> None:
                case.call_and_validate(base_url=api.url, headers=headers, checks=CHECKS, timeout=30)

            try:
                call()
            except Unsatisfiable:  # nothing to get wrong: no parameters and no body
                assert mode is GenerationMode.NEGATIVE, operation.label
            except Exception as error:  # every operation is tried; all failures are reported
                failures.append(f"{operation.label} ({mode.value}): {error}")
    assert not failures, "\n\n".join(failures)
