"""``python -m bench [--quick] [--markdown] [--json [PATH]] [NAME ...]``: run the benchmarks (all by default).

Every benchmark starts its own redis-server on a free port; they run one after another (they measure time, so
never in parallel). A MISS is a finding, reported in its table; a benchmark that crashes is reported too, and the
others still run. ``--json`` records every figure of the run with its metadata (``bench.report.Run``), from which
``python -m bench.readme`` writes the README's tables. Exit status 0, or 1 when a benchmark crashed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from collections.abc import Sequence

from . import BENCHMARKS, RESULTS
from ._common import run_metadata
from .report import Run, Table

DEFAULT_JSON = str(RESULTS)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="a short run with fewer rounds and smaller sizes")
    parser.add_argument(
        "--markdown", action="store_true", help="print the summary as Markdown, as python -m bench.readme writes it"
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const=DEFAULT_JSON,
        default=None,
        metavar="PATH",
        help="write every figure of the run as JSON to PATH (default: bench/results.json, the README's record)",
    )
    args = parser.parse_args(argv)
    # "--json memory" reads as a path; a benchmark's name there is meant as a name (give a path ending in .json).
    if args.json in BENCHMARKS:
        args.names.insert(0, args.json)
        args.json = DEFAULT_JSON
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    return args


def run_one(name: str, quick: bool) -> Table:
    """Run the benchmark ``name``; a crash becomes a table with the traceback, so the run goes on."""
    began = time.monotonic()
    try:
        module = importlib.import_module(f"bench.{name}")
        table: Table = module.run(quick)
    except Exception:
        table = Table(f"{name}: crashed", error=traceback.format_exc())
    table.name = name
    table.seconds = round(time.monotonic() - began, 1)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    names = args.names or list(BENCHMARKS)
    run = Run(run_metadata(args.quick, names))
    began = time.monotonic()
    for name in names:
        print(f"\n### {name}", flush=True)
        table = run_one(name, args.quick)
        run.tables.append(table)
        print(table.text(), flush=True)
    run.meta["seconds"] = round(time.monotonic() - began, 1)
    run.meta["load_average"]["after"] = os.getloadavg()[0]
    print("\n### summary\n")
    if args.markdown:
        print(run.markdown())  # what python -m bench.readme puts in the README
    else:
        print(run.summary_line())
        for table in run.tables:
            print(f"\n{table.text()}")
        rows = sum(len(table.rows) for table in run.tables)
        print(f"\n{rows} rows, {len(run.missed)} MISS" + "".join(
            f"\n  MISS: {table.title}: {row.measure}" for table, row in run.missed))  # fmt: skip
        for table in run.crashed:
            print(f"  CRASHED: {table.name}")
    if args.json:
        run.write(args.json)
        print(f"\nevery figure of this run: {args.json} (README tables: python -m bench.readme {args.json})")
    return 1 if run.crashed else 0


if __name__ == "__main__":
    sys.exit(main())
