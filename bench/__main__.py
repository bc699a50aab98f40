"""``python -m bench [--quick] [--markdown] [NAME ...]``: run the benchmarks (all by default), one table each.

Every benchmark starts its own redis-server on a free port; run them one after another (they measure time, so
never in parallel). Exit status 0 whatever the results: a MISS is a finding, reported in the table.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence

from ._common import Table, pin_note, torch_version

BENCHMARKS = ("client_overhead", "detection_lag", "mass_expiry", "memory", "throughput")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="a short run with fewer rounds and smaller sizes")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for the README)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    began = time.monotonic()
    tables: list[Table] = []
    for name in names:
        print(f"\n### {name}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        table: Table = module.run(args.quick)
        tables.append(table)
        print(table.text(), flush=True)
    elapsed = time.monotonic() - began
    print(f"\n### summary ({elapsed:.0f} s, {pin_note()}, torch {torch_version() or 'not installed'})")
    for table in tables:
        print()
        print(table.markdown() if args.markdown else table.text())
    missed = [(table.title, row.measure) for table in tables for row in table.missed]
    print(f"\n{sum(len(t.rows) for t in tables)} rows, {len(missed)} MISS" + "".join(
        f"\n  MISS: {title}: {measure}" for title, measure in missed))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
