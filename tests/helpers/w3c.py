"""The W3C Feed Validation Service's own code, run on a rendered feed in a subprocess.

Used only when FEEDVALIDATOR_SRC names the ``src/`` folder of a w3c/feedvalidator checkout;
the subprocess keeps its module-level settings (socket timeouts, sys.path) out of the tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from services.syndicate.feeds import RenderedFeed

SRC = os.environ.get("FEEDVALIDATOR_SRC", "")

# Validates stdin as if served from argv[2] with the Content-Type argv[3]; prints the events
# at warning level and above as JSON.
VALIDATE = r"""
import io, json, sys
sys.path.insert(0, sys.argv[1])
import feedvalidator
from feedvalidator import logging as fvlog

data = sys.stdin.buffer.read()
try:
    result = feedvalidator.validateStream(
        io.BytesIO(data), firstOccurrenceOnly=0, contentType=sys.argv[3], base=sys.argv[2]
    )
    events = result["loggedEvents"]
except fvlog.ValidationFailure as failure:
    events = [failure.event]
out = []
for event in events:
    if isinstance(event, fvlog.Error):
        level = "error"
    elif isinstance(event, fvlog.Warning):
        level = "warning"
    else:
        continue
    params = {key: str(value) for key, value in event.params.items()}
    out.append({"level": level, "type": type(event).__name__, "params": params})
print(json.dumps(out))
"""


def validate(feed: RenderedFeed, url: str) -> list[dict[str, Any]]:
    completed = subprocess.run(
        [sys.executable, "-c", VALIDATE, SRC, url, feed.media_type],
        input=feed.body,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    events: list[dict[str, Any]] = json.loads(completed.stdout)
    return events
