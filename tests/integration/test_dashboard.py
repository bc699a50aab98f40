"""The dashboard in a real browser: headless Chromium (Debian's, driven through /usr/bin/chromedriver) loads the page
of a `timerctl dashboard` process, against a real redis-server, a real `Watchdog` thread and real processes.

- a hung worker's timer appears and counts down, and its kill shows in the feed within 2 s of its deadline;
- with --allow-actions, Extend is refused without the token (nothing changes in Redis) and moves the deadline in
  Redis with it.

The first test saves a screenshot of the page; ``TIMER_REDIS_DASHBOARD_SCREENSHOT=docs/dashboard.png`` also writes
it there (the one the README shows).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.helpers import wait_for
from timer_redis import Owner, TimerStore, Watchdog
from timer_redis.history import SAMPLE_FIELDS, SAMPLE_SECONDS, bucket_ms

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    *("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"),
    # No traffic of its own: this machine reaches nothing but package registries.
    *("--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"),
    "--window-size=1440,1000",
]
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("TIMER_REDIS_")}
HUNG_SCOPE = "loader.py#88 fetch shard 7"
HUNG_TTL = 4.0
# A scope that would run script if the page ever parsed Redis text as HTML.
HOSTILE_SCOPE = "<img src=x onerror=\"document.title='pwned'\">"
HUNG_WORKER = """
import sys, time
import timer_redis as timer
timer.configure(timer.RedisTimerClient(url=sys.argv[1], namespace="test", strict=True))
with timer.expires(after=float(sys.argv[2]), scope=sys.argv[3]):
    time.sleep(60)  # hangs: only the watchdog ends it
"""


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Headless Chromium through chromedriver, both from Debian: nothing is downloaded, no network is used."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        message = f"{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="timer-redis-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in CHROMIUM_FLAGS:
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={profile}")  # a fresh profile: nothing from an earlier run
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium never runs its manager, which would try to download one.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(chromium: Any) -> Iterator[Any]:
    """The module's browser, left on a blank page (no polling of a dashboard that is gone) with its log read."""
    yield chromium
    chromium.get("about:blank")
    chromium.get_log("browser")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[Any]]]:
    """Child processes of the test (workers, the dashboard); each is killed and reaped at the end."""
    started: list[subprocess.Popen[Any]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


@pytest.fixture
def an_hour_of_samples(real_store: TimerStore) -> None:
    """An hour of history samples before the test, as the watchdogs' heartbeats would have written them, so the
    live-timers chart has its hour (the samples of the test's own watchdog follow them)."""
    first = bucket_ms(real_store.server_time_ms()) - 3600 * 1000
    pipe = real_store.redis.pipeline(transaction=False)
    for index in range(3600 // SAMPLE_SECONDS):
        wave = 6 + round(4 * abs(((index % 120) - 60) / 60))
        values = [wave, 1 if index % 97 == 0 else 0, 1 if index % 131 == 0 else 0, 1, 0]
        fields = dict(zip(SAMPLE_FIELDS, values, strict=True))
        pipe.xadd(real_store.keys.history, fields, id=f"{first + index * SAMPLE_SECONDS * 1000}-0")
    pipe.execute()


@pytest.fixture
def watchdog(real_store: TimerStore, an_hour_of_samples: None) -> Iterator[Watchdog]:
    """A real watchdog replica (a thread of the test), signalling this node's processes. It starts after the hour
    of samples is in: once its own sample is, Redis refuses older ones."""
    replica = Watchdog(store=TimerStore.from_url(real_store.url, "test"), max_interval=0.5)
    replica.start()
    yield replica
    replica.stop()
    replica.store.redis.close()


def start_dashboard(
    redis_url: str, processes: list[subprocess.Popen[Any]], *args: str
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """`timerctl dashboard` on a free port; returns it and what it printed at start (url, actions, token)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "timerctl", "--url", redis_url, "--namespace", "test", "dashboard", "--port", "0",
         "--json", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLEAN_ENV, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    processes.append(process)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, f"the dashboard printed nothing; stderr: {process.stderr.read() if process.stderr else ''}"
    return process, dict(json.loads(line))


def sleeper(processes: list[subprocess.Popen[Any]]) -> subprocess.Popen[Any]:
    """A healthy worker: a process that sleeps for a minute."""
    process = subprocess.Popen(["sleep", "60"])
    processes.append(process)
    return process


def timer_rows(driver: Any) -> dict[str, dict[str, str]]:
    """The timers table as the page shows it: scope -> left, worker, owner, scope text."""
    return dict(
        driver.execute_script(
            """return [...document.querySelectorAll('#timers tbody tr')].map(tr => [tr.dataset.scope, {
                 left: tr.querySelector('.countdown').textContent, worker: tr.dataset.worker,
                 owner: tr.querySelector('.badge').textContent, scope: tr.cells[1].textContent}])"""
        )
    )


def seconds_left(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", text)
    assert match, f"not a countdown under a minute: {text!r}"
    return float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)


def feed_has(driver: Any, kind: str, worker: str) -> bool:
    return bool(
        driver.execute_script(
            "return [...document.querySelectorAll('#feed li')].some(li => li.dataset.type === arguments[0]"
            " && li.dataset.worker === arguments[1])",
            kind,
            worker,
        )
    )


def page_errors(driver: Any) -> list[str]:
    """Errors the page's script raised or logged (failed requests, such as a refused action, are not among them)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE" and e.get("source") != "network"]


def test_a_hung_worker_counts_down_and_its_kill_shows_in_the_feed(
    redis_url: str,
    real_store: TimerStore,
    browser: Any,
    processes: list[subprocess.Popen[Any]],
    watchdog: Watchdog,
    tmp_path: Path,
) -> None:
    store = real_store
    for index, ttl in enumerate((25, 45, 70)):
        store.acquire(Owner.of_pid(sleeper(processes).pid), f"train.py#{40 + index} step {index}", ttl)
    store.acquire(Owner.of_pid(sleeper(processes).pid), "checkpoint.py#12 save", 95, signal="TERM", kill_after=10)
    store.acquire(Owner("gpu-07-4026531836", 4242, 912345), HOSTILE_SCOPE, 600)
    # A node with no replica: its timer is claimed by ours, but nothing will deliver the order, so it is stuck.
    store.acquire(Owner("gpu-09-4026531836", 777, 12), "eval.py#12 batch 3", 0.2)
    _, dashboard = start_dashboard(redis_url, processes)
    hung = subprocess.Popen([sys.executable, "-c", HUNG_WORKER, redis_url, str(HUNG_TTL), HUNG_SCOPE], env=CLEAN_ENV)
    processes.append(hung)
    hung_worker = Owner.of_pid(hung.pid).worker_id
    [timer] = wait_for(lambda: store.list(worker=hung_worker), timeout=10, what="the hung worker's timer")

    browser.get(dashboard["url"])
    rows = wait_for(lambda: (r := timer_rows(browser)).get(HUNG_SCOPE) and r, timeout=5, what="the hung timer's row")
    first = seconds_left(rows[HUNG_SCOPE]["left"])
    assert rows[HUNG_SCOPE]["worker"] == hung_worker and rows[HUNG_SCOPE]["owner"] == "running"
    assert 0 < first <= HUNG_TTL
    wait_for(lambda: seconds_left(timer_rows(browser)[HUNG_SCOPE]["left"]) <= first - 0.3, timeout=3,
             what="the countdown to go down")  # fmt: skip

    wait_for(lambda: feed_has(browser, "delivered", hung_worker), timeout=HUNG_TTL + 5, interval=0.02,
             what="the kill in the feed")  # fmt: skip
    seen_after_deadline_ms = store.server_time_ms() - timer.deadline_ms
    assert seen_after_deadline_ms <= 2000, f"the kill showed {seen_after_deadline_ms} ms after the deadline"
    assert hung.wait(timeout=5) == -9, "the hung worker was killed by SIGKILL"
    assert feed_has(browser, "expired", hung_worker)
    wait_for(lambda: HUNG_SCOPE not in timer_rows(browser), timeout=2, what="the row of the killed worker to go")

    # Redis text is shown as text: the hostile scope is in the table, literally, and ran nothing.
    assert timer_rows(browser)[HOSTILE_SCOPE]["scope"] == HOSTILE_SCOPE
    assert browser.execute_script("return document.querySelectorAll('#timers img').length") == 0
    assert "pwned" not in browser.title
    # The stuck node stands out; the charts have their hour and the kill.
    stuck = "#nodes tr.stuck[data-node='gpu-09-4026531836']"
    wait_for(lambda: browser.execute_script(f'return document.querySelector("{stuck}") !== null'), timeout=3,
             what="the stuck node's row")  # fmt: skip
    live_path = "return (document.querySelector('#chart-live path.s-live') || {}).getAttribute?.('d') || ''"
    wait_for(lambda: browser.execute_script(live_path).count("L") >= 300, timeout=8, what="an hour of samples")
    wait_for(lambda: browser.execute_script("return document.querySelectorAll('#chart-lag circle').length") > 0,
             timeout=8, what="the kill's lag in the chart")  # fmt: skip
    assert page_errors(browser) == []

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1440, height + 140)  # the window's frame: the whole page in one picture
    time.sleep(0.3)  # one repaint at the new size
    picture = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(picture)) and picture.stat().st_size > 20_000
    target = os.environ.get("TIMER_REDIS_DASHBOARD_SCREENSHOT")
    if target:
        shutil.copyfile(picture, target)
    browser.set_window_size(1440, 1000)


def test_extend_is_refused_without_the_token_and_moves_the_deadline_with_it(
    redis_url: str, real_store: TimerStore, browser: Any, processes: list[subprocess.Popen[Any]]
) -> None:
    store = real_store
    owner = Owner.of_pid(sleeper(processes).pid)
    before = store.acquire(owner, "nightly-backup", 30)
    assert before is not None
    process, dashboard = start_dashboard(redis_url, processes, "--allow-actions")
    assert dashboard["actions"] is True and len(dashboard["token"]) >= 20

    def click_extend() -> None:
        browser.execute_script(
            "[...document.querySelectorAll('#timers tbody tr')].find(tr => tr.dataset.scope === arguments[0])"
            ".querySelector('button.extend').click()",
            "nightly-backup",
        )

    def toast() -> str:
        script = "const box = document.getElementById('toast'); return box.hidden ? '' : box.textContent"
        return str(browser.execute_script(script))

    browser.get(dashboard["url"])  # no token in the address, none typed
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    wait_for(lambda: "nightly-backup" in timer_rows(browser), timeout=5, what="the timer's row")
    click_extend()
    message = wait_for(toast, timeout=3, what="the refusal")
    assert "refused" in message and "token" in message
    time.sleep(0.5)  # a request that got through would have changed Redis by now
    timer = store.get(owner, "nightly-backup")
    assert timer is not None and timer.deadline_ms == before, "refused: the deadline did not move"

    browser.find_element("id", "token").send_keys(dashboard["token"])
    click_extend()  # to 5 min from now, the page's default
    moved = wait_for(lambda: (t := store.get(owner, "nightly-backup")) and t.deadline_ms != before and t,
                     timeout=3, what="the deadline to move")  # fmt: skip
    assert moved.deadline_ms - store.server_time_ms() > 290_000
    wait_for(lambda: "extended" in toast(), timeout=3, what="the confirmation")
    assert page_errors(browser) == []
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0, "SIGTERM stops the dashboard cleanly"


def test_demo_with_the_dashboard_waits_for_the_page_and_stays_up_until_ctrl_c(
    processes: list[subprocess.Popen[Any]],
) -> None:
    """`timerctl demo --dashboard` (embedded Redis): the address first, workers once the page is open, the page up
    after the summary, exit 0 on Ctrl-C."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "timerctl", "demo", "--dashboard", "--workers", "2", "--hung", "1", "--ttl", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLEAN_ENV, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    processes.append(demo)
    assert demo.stdout is not None
    first = demo.stdout.readline()
    address = re.search(r"http://127\.0\.0\.1:\d+/", first)
    assert first.startswith("dashboard: ") and address, first
    with urllib.request.urlopen(address.group(0) + "api/state", timeout=5) as response:  # the page is open
        assert json.load(response)["namespace"].startswith("demo-")
    lines = []
    while not (line := demo.stdout.readline()).startswith("the dashboard stays up"):
        assert line, f"the demo ended early: {''.join(lines)}"
        lines.append(line)
    assert any(line.startswith("OK: every hung worker was killed") for line in lines), lines
    with urllib.request.urlopen(address.group(0) + "api/state", timeout=5) as response:
        kinds = [e["type"] for e in json.load(response)["events"]["items"]]
    assert "delivered" in kinds
    demo.send_signal(signal.SIGINT)
    assert demo.wait(timeout=15) == 0
