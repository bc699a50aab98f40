"""Benchmarks of timer_redis against the alternatives, measured side by side in one run.

    python -m bench [--quick] [--markdown] [--json [PATH]] [NAME ...]
    python -m bench.<name> [--quick]
    python -m bench.readme [RESULTS.json]      # the README's tables from a recorded run

Each benchmark starts its own redis-server on a free loopback port and returns a table: our figure, the
baseline's, the ratio, the target and PASS/MISS, with the raw numbers behind them (``bench.report``).
"""

from pathlib import Path

# Every benchmark, in the order a run makes them (each a module of this package with ``run(quick) -> Table``).
BENCHMARKS = ("client_overhead", "detection_lag", "operator_reads", "mass_expiry", "memory", "throughput", "cluster")

# The record the README's tables come from: python -m bench --json writes it, python -m bench.readme reads it.
RESULTS = Path(__file__).resolve().parent / "results.json"
README = Path(__file__).resolve().parent.parent / "README.md"
