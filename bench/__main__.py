"""Run benchmarks: `python -m bench` runs every one, `python -m bench ingest pages` some."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import time

BENCHMARKS = ("ingest", "feeds", "pipeline", "pages")


def main(argv: list[str]) -> None:
    names = argv or [name for name in BENCHMARKS if importlib.util.find_spec(f"bench.{name}")]
    results = {}
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        started = time.monotonic()
        results[name] = module.run()
        results[name]["seconds"] = round(time.monotonic() - started, 1)
        print(json.dumps({name: results[name]}, indent=2), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
