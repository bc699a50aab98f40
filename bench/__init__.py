"""Benchmarks of timer_redis against the alternatives, measured side by side in one run.

    python -m bench [--quick] [--markdown] [NAME ...]
    python -m bench.<name> [--quick]

Names: client_overhead, detection_lag, mass_expiry, memory, throughput. Each starts its own redis-server on a
free loopback port and prints a table: our figure, the baseline's, the ratio, the target and PASS/MISS.
"""
