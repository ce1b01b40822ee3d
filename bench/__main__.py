"""Run benchmarks: `python -m bench` runs every one, `python -m bench ingest pages` some.

The results go to standard output as JSON, then as tables for the benchmarks that have them.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import time

BENCHMARKS = ("ingest", "feeds", "storage", "pipeline", "pages")


def main(argv: list[str]) -> None:
    names = argv or [name for name in BENCHMARKS if importlib.util.find_spec(f"bench.{name}")]
    results = {}
    tables = []
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        started = time.monotonic()
        results[name] = module.run()
        results[name]["seconds"] = round(time.monotonic() - started, 1)
        print(json.dumps({name: results[name]}, indent=2), file=sys.stderr, flush=True)
        if hasattr(module, "table"):
            tables.append(f"## {name}\n\n{module.table(results[name])}\n")
    print(json.dumps(results, indent=2))
    # The tables last, where a reader of `make bench` looks first.
    print("\n" + "\n".join(tables), end="")


if __name__ == "__main__":
    main(sys.argv[1:])
