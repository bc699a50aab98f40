"""``python -m timerctl``: the same app as the ``timerctl`` command."""

from timerctl.main import cli

if __name__ == "__main__":
    cli(prog_name="timerctl")
