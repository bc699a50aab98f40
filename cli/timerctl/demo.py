"""``timerctl demo``: an embedded Redis, two watchdog replicas and a few workers, some of which hang; live.

Without ``--url`` the Redis is fakeredis' TCP server in a thread of this process (good enough for a demo, not for
production); the watchdogs are threads of this process; each worker is a process of its own
(``python -m timerctl.demo_worker``), so the kills are real SIGKILLs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import click

from timer_redis import Event, TimerInfo, TimerStore, Watchdog
from timer_redis.connection import mask_url
from timer_redis.keys import parse_worker_id
from timer_redis.settings import TimerSettings
from timer_redis.signing import SECRET_ENV, SECRET_FILE_ENV, load_secret

from .context import EXIT_ERROR, CliError, CliState, Seconds, wait_for_interrupt
from .dashboard import DEFAULT_HOST, DEFAULT_PORT, DashboardData, DashboardServer
from .group import TimerctlCommand
from .render import emit_json, event_summary, format_duration, plural

STEPS = 3
HANG_AT_STEP = 2
REPLICAS = 2
# Every run must end well inside 30 s, whatever it is asked: with --ttl at most 10 s a healthy worker needs
# 3 steps x 0.5 ttl = 15 s and a hung one dies after 0.5 ttl + ttl = 15 s.
HARD_LIMIT_SECONDS = 25.0
TICK_SECONDS = 0.1
# With --dashboard the workers wait this long at most for the page to be opened.
DASHBOARD_WAIT_SECONDS = 30.0


@dataclass
class DemoWorker:
    """One worker process of the demo and what became of it."""

    name: str
    hang_at: int
    work: float
    process: subprocess.Popen[bytes]
    exit_code: int | None = None
    ended_at: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def hangs(self) -> bool:
        return self.hang_at > 0

    @property
    def plan(self) -> str:
        return f"hangs at step {self.hang_at}" if self.hangs else "healthy"

    @property
    def outcome(self) -> str:
        if self.exit_code is None:
            return "running"
        if self.exit_code == 0:
            return "finished"
        if self.exit_code < 0:
            return f"killed by {signal.Signals(-self.exit_code).name}"
        return f"exit {self.exit_code}"


@dataclass
class DemoRun:
    """Everything the view and the summary read."""

    url: str
    namespace: str
    embedded: bool
    ttl: float
    workers: list[DemoWorker] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    timers: list[TimerInfo] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    server_start_ms: int = 0
    now_ms: int = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def by_pid(self, worker_id: str) -> DemoWorker | None:
        try:
            pid = parse_worker_id(worker_id)[1]
        except ValueError:
            return None
        return next((w for w in self.workers if w.pid == pid), None)

    def killed_by_watchdog(self) -> list[DemoWorker]:
        """Workers that died of a signal the watchdog says it delivered."""
        delivered = {
            w.pid for e in self.events if e.type == "delivered" and (w := self.by_pid(e.fields.get("worker", "")))
        }
        return [w for w in self.workers if w.exit_code is not None and w.exit_code < 0 and w.pid in delivered]

    def summary(self) -> dict[str, Any]:
        killed = self.killed_by_watchdog()
        hung = [w for w in self.workers if w.hangs]
        healthy = [w for w in self.workers if not w.hangs]
        lags = [int(e.fields["lag_ms"]) for e in self.events if e.type == "delivered" and "lag_ms" in e.fields]
        data = {
            "seconds": round(self.elapsed(), 2),
            "url": self.url,
            "embedded": self.embedded,
            "namespace": self.namespace,
            "workers": len(self.workers),
            "hung": len(hung),
            "hung_killed": sum(1 for w in killed if w.hangs),
            "finished": sum(1 for w in healthy if w.exit_code == 0),
            "healthy_killed": sum(1 for w in killed if not w.hangs),
            "max_lag_ms": max(lags) if lags else None,
            "events": dict(Counter(e.type for e in self.events)),
            "outcomes": {w.name: w.outcome for w in self.workers},
        }
        data["ok"] = data["hung_killed"] == len(hung) and data["finished"] == len(healthy)
        return data


@click.command(cls=TimerctlCommand)
@click.option("--workers", type=click.IntRange(1, 20), default=6, show_default=True, help="Worker processes.")
@click.option("--hung", type=click.IntRange(min=0), default=2, show_default=True, help="How many of them hang.")
@click.option(
    "--ttl", type=Seconds(0.5, 10.0), default=3.0, show_default=True, help="Timer of each worker step: 500ms to 10s."
)
@click.option(
    "--dashboard",
    "with_dashboard",
    is_flag=True,
    help="Serve the live page (`timerctl dashboard`, read-only) and print its address: the workers start once it is "
    f"open (or after {DASHBOARD_WAIT_SECONDS:.0f} s), and it stays up after the summary until Ctrl-C.",
)
@click.pass_context
def demo(ctx: click.Context, workers: int, hung: int, ttl: float, with_dashboard: bool) -> None:
    """Watch hung workers being killed: an embedded Redis, two watchdog replicas and a few workers, some of which
    hang. Ends by itself (in about 5 s with the defaults) with a summary; exit status 0 when every hung worker was
    killed and every healthy one finished.

    Without --url (or TIMER_REDIS_URL) the Redis is fakeredis' TCP server inside this process; with it, that
    Redis is used, in a fresh namespace unless --namespace is given.

    \b
    Examples:
      timerctl demo
      timerctl demo --dashboard                  # the same, on a page at http://127.0.0.1:8377/
      timerctl demo --workers 10 --hung 3 --ttl 2s
      timerctl demo --url redis://localhost:6379/0 --json
    """
    if hung > workers:
        raise click.UsageError(f"--hung ({hung}) cannot exceed --workers ({workers})")
    state = ctx.find_object(CliState)
    assert state is not None
    embedded = not state.explicit("url")
    namespace = state.checked_namespace() if state.explicit("namespace") else f"demo-{uuid.uuid4().hex[:8]}"
    out = LineView(err=True) if state.json_output else LiveView() if sys.stdout.isatty() else LineView(err=False)

    secret, secret_env = demo_secret(state)
    with ExitStack() as stack:
        url = stack.enter_context(embedded_redis()) if embedded else state.url
        settings = TimerSettings.from_env(namespace=namespace, shards=state.shards, max_interval=0.5)
        store = TimerStore.from_url(url, settings=settings, secret=secret)
        stack.callback(store.redis.close)
        store.server_time_ms()  # Redis reached before a replica starts: if not, the error is ours, not their retries
        for _ in range(REPLICAS):
            replica = Watchdog(url=url, settings=settings, secret=secret)
            replica.start()
            stack.callback(replica.store.redis.close)
            stack.callback(replica.stop)
        page = stack.enter_context(demo_dashboard(store, state.json_output)) if with_dashboard else None
        run = DemoRun(url=mask_url(url), namespace=namespace, embedded=embedded, ttl=ttl)
        run.server_start_ms = run.now_ms = store.server_time_ms()
        stack.callback(stop_workers, run)
        start_workers(run, workers, hung, url, {**secret_env, "TIMER_REDIS_SHARDS": str(state.shards)})
        out.begin(run, REPLICAS)
        watch(run, store, out)
        summary = run.summary()
        out.end(run, summary)
        if state.json_output:
            emit_json(summary)
        if page is not None:
            click.echo(f"the dashboard stays up at {page.url}: Ctrl-C ends the demo", err=state.json_output)
            wait_for_interrupt()
    if not summary["ok"]:
        raise CliError("demo failed: " + describe_failure(summary), EXIT_ERROR)


@contextmanager
def embedded_redis() -> Iterator[str]:
    """fakeredis' TCP server on a free loopback port, in a thread; yields its URL."""
    try:
        from fakeredis import TcpFakeServer
    except ImportError:
        raise CliError("timerctl demo without --url needs fakeredis: pip install 'timer-redis[demo]'") from None
    server = TcpFakeServer(("127.0.0.1", 0), server_type="redis")
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="timerctl-demo-redis", daemon=True
    )
    thread.start()
    try:
        yield f"redis://127.0.0.1:{server.server_address[1]}/0"
    finally:
        server.shutdown()
        server.server_close()


def demo_secret(state: CliState) -> tuple[bytes, dict[str, str]]:
    """The namespace secret of the demo and what its workers need in their environment to sign with it: the
    one configured (--secret-file, TIMER_REDIS_SECRET_FILE, TIMER_REDIS_SECRET), else a new random one, so the
    demo shows signed timers as a deployment should run them."""
    if state.secret_file:
        environ = {SECRET_FILE_ENV: state.secret_file}
        return load_secret(environ=environ) or b"", environ
    configured = load_secret()
    if configured is not None:
        return configured, {}
    text = secrets.token_hex(32)
    return text.encode(), {SECRET_ENV: text}


@contextmanager
def demo_dashboard(store: TimerStore, err: bool) -> Iterator[DashboardServer]:
    """The read-only dashboard of the demo's namespace in a thread, on port 8377 (any free one if that is taken);
    returns once the page has been opened, or after DASHBOARD_WAIT_SECONDS."""
    data = DashboardData(store)
    try:
        server = DashboardServer(data, DEFAULT_HOST, DEFAULT_PORT)
    except CliError:
        server = DashboardServer(data, DEFAULT_HOST, 0)
    server.start()
    try:
        click.echo(f"dashboard: {server.url}  (the workers start once it is open)", err=err)
        data.first_read.wait(DASHBOARD_WAIT_SECONDS)
        yield server
    finally:
        server.stop()


def start_workers(run: DemoRun, count: int, hung: int, url: str, secret_env: dict[str, str]) -> None:
    """Start ``count`` workers; ``hung`` of them, spread out, hang at step 2."""
    spacing = count // hung if hung else 0
    hanging = {k * count // hung + spacing // 2 for k in range(hung)}
    env = dict(os.environ, TIMER_REDIS_URL=url, TIMER_REDIS_NAMESPACE=run.namespace, **secret_env)
    for index in range(count):
        name = f"worker-{index + 1}"
        work = round(run.ttl * (0.3 + 0.1 * (index % 3)), 3)  # every healthy step well inside its ttl
        hang_at = HANG_AT_STEP if index in hanging else 0
        args = [sys.executable, "-m", "timerctl.demo_worker", "--name", name, "--ttl", str(run.ttl)]
        args += ["--work", str(work), "--steps", str(STEPS), "--hang-at", str(hang_at)]
        process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        run.workers.append(DemoWorker(name, hang_at, work, process))


def stop_workers(run: DemoRun) -> None:
    """Kill whatever still runs (only after the hard limit or an error) and reap every worker."""
    for worker in run.workers:
        if worker.process.poll() is None:
            worker.process.kill()
        worker.process.wait()


def watch(run: DemoRun, store: TimerStore, out: View) -> None:
    """Poll the workers, the timers and the events until every worker has exited, and show it."""
    cursor = {keys.shard: "0-0" for keys in store.shard_keys}
    settle_until: float | None = None
    while True:
        for worker in run.workers:
            if worker.exit_code is None and worker.process.poll() is not None:
                worker.exit_code = worker.process.returncode
                worker.ended_at = run.elapsed()
                out.worker_ended(run, worker)
        new_events = store.events(count=500, after=cursor)
        if new_events:
            cursor = store.follow_cursor(new_events, cursor)
            run.events.extend(new_events)
            for event in new_events:
                out.event(run, event)
        run.timers = store.list()
        run.now_ms = store.server_time_ms()
        out.frame(run)
        if all(w.exit_code is not None for w in run.workers):
            # A kill is seen by us a moment before the watchdog writes its "delivered" event: wait for those.
            settle_until = settle_until or time.monotonic() + 2.0
            killed = sum(1 for w in run.workers if w.exit_code is not None and w.exit_code < 0)
            if len(run.killed_by_watchdog()) >= killed or time.monotonic() > settle_until:
                return
        if run.elapsed() > HARD_LIMIT_SECONDS:
            return
        time.sleep(TICK_SECONDS)


def describe_failure(summary: dict[str, Any]) -> str:
    problems = []
    if summary["hung_killed"] < summary["hung"]:
        missed = summary["hung"] - summary["hung_killed"]
        problems.append(f"{plural(missed, 'hung worker was', 'hung workers were')} not killed")
    unfinished = summary["workers"] - summary["hung"] - summary["finished"]
    if unfinished:
        problems.append(f"{plural(unfinished, 'healthy worker')} did not finish ({summary['healthy_killed']} killed)")
    return "; ".join(problems) or "unknown"


# -- the two views -------------------------------------------------------------------------------------------------


class View:
    """What the demo shows as it runs; the base class shows nothing."""

    def begin(self, run: DemoRun, replicas: int) -> None: ...

    def worker_ended(self, run: DemoRun, worker: DemoWorker) -> None: ...

    def event(self, run: DemoRun, event: Event) -> None: ...

    def frame(self, run: DemoRun) -> None: ...

    def end(self, run: DemoRun, summary: dict[str, Any]) -> None: ...


def header(run: DemoRun, replicas: int) -> str:
    where = f"embedded Redis (fakeredis) at {run.url}" if run.embedded else f"Redis at {run.url}"
    return (
        f"timerctl demo: {plural(len(run.workers), 'worker')} ({STEPS} steps, {format_duration(run.ttl * 1000)} "
        f"timer each), {plural(replicas, 'watchdog replica')}, {where}, namespace {run.namespace}"
    )


def describe_event(run: DemoRun, event: Event) -> str:
    """The event as ``timerctl events`` words it, after the seconds since the demo started."""
    at = (event.time_ms - run.server_start_ms) / 1000
    return f"{at:5.1f}s  {event_summary(event)}"


def summary_lines(summary: dict[str, Any]) -> list[str]:
    lag = f", max kill lag {summary['max_lag_ms']} ms" if summary["max_lag_ms"] is not None else ""
    events = ", ".join(f"{kind} {n}" for kind, n in sorted(summary["events"].items())) or "none"
    verdict = (
        "OK: every hung worker was killed by a watchdog, and every healthy one finished"
        if summary["ok"]
        else "FAILED: " + describe_failure(summary)
    )
    return [
        f"summary: {plural(summary['workers'], 'worker')} in {summary['seconds']:.1f}s: "
        f"{summary['finished']} finished, "
        f"{summary['hung_killed']} of {summary['hung']} hung killed by the watchdog{lag}, "
        f"{summary['healthy_killed']} healthy killed",
        f"events: {events}",
        verdict,
    ]


class LineView(View):
    """One line per thing that happens: for pipes, logs and tests."""

    def __init__(self, err: bool) -> None:
        self.err = err

    def echo(self, run: DemoRun | None, text: str) -> None:
        prefix = f"[{run.elapsed():5.1f}s] " if run is not None else ""
        click.echo(prefix + text, err=self.err)

    def begin(self, run: DemoRun, replicas: int) -> None:
        self.echo(run, header(run, replicas))
        for worker in run.workers:
            self.echo(
                run, f"{worker.name} (pid {worker.pid}, {worker.plan}) started: {STEPS} steps of {worker.work:g}s"
            )

    def worker_ended(self, run: DemoRun, worker: DemoWorker) -> None:
        self.echo(run, f"{worker.name} (pid {worker.pid}, {worker.plan}) {worker.outcome}")

    def event(self, run: DemoRun, event: Event) -> None:
        self.echo(run, "event " + describe_event(run, event))

    def end(self, run: DemoRun, summary: dict[str, Any]) -> None:
        for line in summary_lines(summary):
            self.echo(None, line)


class LiveView(View):
    """A table redrawn in place with ANSI escapes: timers counting down, hung workers turning red."""

    BAR = 20

    def __init__(self) -> None:
        self.lines_drawn = 0
        self.replicas = 0

    def begin(self, run: DemoRun, replicas: int) -> None:
        self.replicas = replicas

    def frame(self, run: DemoRun) -> None:
        width = shutil.get_terminal_size((100, 24)).columns
        lines = [click.style(header(run, self.replicas), bold=True), f"t = {run.elapsed():.1f}s", ""]
        lines.append(f"{'WORKER':<10} {'PID':<8} {'PLAN':<16} {'STATE':<18} {'TIMER':<22} LEFT")
        timers = {t.pid: t for t in run.timers}
        for worker in run.workers:
            timer = timers.get(worker.pid)
            state = worker.outcome
            if worker.exit_code is None and timer is not None and timer.deadline_ms < run.now_ms:
                state = "overdue"
            color = {"finished": "green", "running": None, "overdue": "yellow"}.get(state, "red")
            cells = f"{worker.name:<10} {worker.pid:<8} {worker.plan:<16} "
            cells += click.style(f"{state:<18}", fg=color)
            if timer is not None and worker.exit_code is None:
                left = timer.deadline_ms - run.now_ms
                filled = max(0, min(self.BAR, round(self.BAR * left / (run.ttl * 1000))))
                cells += f" {timer.scope_id.split(' ', 1)[-1]:<22} {'#' * filled}{'.' * (self.BAR - filled)} "
                cells += format_duration(left)
            lines.append(cells)
        lines += ["", "events:"]
        lines += ["  " + describe_event(run, e) for e in run.events[-6:]] or ["  (none yet)"]
        self.draw([fit(line, width) for line in lines])

    def end(self, run: DemoRun, summary: dict[str, Any]) -> None:
        self.frame(run)
        click.echo("")
        for line in summary_lines(summary):
            click.echo(click.style(line, fg=None if not line.startswith(("OK", "FAILED")) else "green" if summary["ok"]
                                   else "red"))  # fmt: skip

    def draw(self, lines: list[str]) -> None:
        # Back to the first line of the previous frame, clear to the end of the screen, draw the new one.
        up = f"\x1b[{self.lines_drawn}F\x1b[J" if self.lines_drawn else ""
        click.echo(up + "\n".join(lines), nl=True)
        self.lines_drawn = len(lines)


def fit(line: str, width: int) -> str:
    """Cut a line to the terminal width (counting only visible characters), so no frame line wraps."""
    visible = click.unstyle(line)
    if len(visible) < width:
        return line
    return visible[: width - 1]
