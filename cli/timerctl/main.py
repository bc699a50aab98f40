"""The timerctl click app (placeholder until the CLI issue lands)."""

import click


@click.group()
def cli() -> None:
    """Inspect and drive timer_redis timers."""
