// timer-redis dashboard. Polls /api/state twice a second and /api/history every 5 s; counts down locally between
// polls on the Redis server's clock. Everything read from Redis is untrusted text: it only ever reaches the page
// through textContent and attribute values, never as HTML.
"use strict";

(() => {
  const POLL_MS = 500;
  const HISTORY_MS = 5000;
  const TICK_MS = 100;
  const FEED_MAX = 300;
  const STALE_MS = 2000;
  const HOUR_MS = 3600 * 1000;
  const SIGNALS = { 1: "HUP", 2: "INT", 3: "QUIT", 6: "ABRT", 9: "KILL", 10: "USR1", 12: "USR2", 15: "TERM" };
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  let offsetMs = 0; // Redis clock minus this browser's clock
  let lastOkAt = 0;
  let lastEventId = null;
  let actions = false;
  let historyData = null;
  const rows = new Map(); // timer id -> <tr>
  const nodeOptions = new Set();

  // -- small helpers ---------------------------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    return node;
  }

  function serverNow() {
    return Date.now() + offsetMs;
  }

  function duration(ms) {
    if (ms === null || ms === undefined || !Number.isFinite(ms)) return "–";
    const sign = ms < 0 ? "-" : "";
    ms = Math.abs(ms);
    if (ms < 1000) return `${sign}${Math.round(ms)}ms`;
    const s = ms / 1000;
    if (s < 60) return `${sign}${s.toFixed(1)}s`;
    if (s < 3600) return `${sign}${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, "0")}s`;
    return `${sign}${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  }

  function clock(ms, withMs) {
    if (!Number.isFinite(ms)) return "–";
    const d = new Date(ms - offsetMs); // shown on this browser's clock
    const hms = [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
    return withMs ? `${hms}.${String(d.getMilliseconds()).padStart(3, "0")}` : hms;
  }

  function number(n) {
    return Number.isFinite(n) ? n.toLocaleString("en-US") : "–";
  }

  function signalName(n) {
    if (n === null || n === undefined || n === "") return "–";
    return SIGNALS[n] || String(n);
  }

  function setKpi(id, value, sub, mood) {
    const card = $(id);
    card.querySelector(".value").textContent = value;
    card.querySelector(".sub").textContent = sub || "";
    card.classList.remove("bad", "warn", "good");
    if (mood) card.classList.add(mood);
  }

  let toastTimer = null;
  function toast(message, isError) {
    const box = $("toast");
    box.textContent = message;
    box.classList.toggle("error", Boolean(isError));
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.hidden = true; }, isError ? 8000 : 4000);
  }

  function banner(message, isError) {
    const box = $("banner");
    box.hidden = !message;
    box.textContent = message || "";
    box.classList.toggle("error", Boolean(isError));
  }

  // -- the token (actions) ---------------------------------------------------------------------------------------

  function readToken() {
    // `timerctl dashboard --allow-actions` prints a URL with #token=...; a fragment never reaches a server or a log.
    const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (match) {
      sessionStorage.setItem("timerctl-token", decodeURIComponent(match[1]));
      dropTokenFromUrl();
    }
    $("token").value = sessionStorage.getItem("timerctl-token") || "";
    $("token").addEventListener("input", () => sessionStorage.setItem("timerctl-token", $("token").value.trim()));
  }

  function dropTokenFromUrl() {
    window.history.replaceState(null, "", location.pathname + location.search);
  }

  async function act(kind, body, what) {
    try {
      const response = await fetch(`/api/${kind}`, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Timerctl-Token": $("token").value.trim() },
        body: JSON.stringify(body),
      });
      const reply = await response.json().catch(() => ({}));
      if (!response.ok) {
        const reason = reply.error || response.statusText;
        toast(`${kind} refused: ${reason}`, true);
        return;
      }
      if (kind === "extend") toast(`extended ${what}: due in ${duration(reply.deadline_ms - serverNow())}`);
      else if (kind === "release") toast(`released ${what}`);
      else toast(`cleared ${reply.cleared} timer(s) of ${what}`);
      poll(true);
    } catch (error) {
      toast(`${kind} failed: ${error}`, true);
    }
  }

  // -- timers table ----------------------------------------------------------------------------------------------

  function makeRow(item) {
    const tr = el("tr");
    tr.dataset.id = item.id;
    tr.dataset.worker = item.worker;
    tr.dataset.scope = item.scope_id;
    const left = el("td", "left");
    left.append(el("div", "countdown"), el("div", "bar"));
    left.lastChild.append(el("i"));
    const owner = el("td", "owner");
    const state = el("div", "state");
    state.append(el("span", "badge"), el("span", "pid"));
    owner.append(el("div", "node"), state);
    tr.append(left, el("td", "scope"), owner, el("td", "signal"), el("td", "deadline"));
    const cell = el("td", "actions");
    const extend = el("button", "extend", "Extend");
    extend.title = "Give this timer the time chosen above, from now";
    extend.addEventListener("click", () => act("extend", { worker: tr.item.worker, scope_id: tr.item.scope_id,
      ttl: Number($("extend-ttl").value) }, tr.item.scope_id));
    const release = el("button", "release danger", "Release");
    release.title = "Remove this timer; its process is not signalled";
    release.addEventListener("click", () => {
      if (confirm(`Release timer "${tr.item.scope_id}" of ${tr.item.worker}? Its process will not be signalled.`)) {
        act("release", { worker: tr.item.worker, scope_id: tr.item.scope_id }, tr.item.scope_id);
      }
    });
    const clear = el("button", "clear danger", "Clear");
    clear.title = "Remove every timer of this worker; it is not signalled";
    clear.addEventListener("click", () => {
      if (confirm(`Clear every timer of ${tr.item.worker}? It will not be signalled.`)) {
        act("clear", { worker: tr.item.worker }, tr.item.worker);
      }
    });
    cell.append(extend, release, clear);
    tr.append(cell);
    return tr;
  }

  function updateRow(tr, item) {
    const previous = tr.item;
    tr.item = item;
    if (previous && previous.deadline_ms === item.deadline_ms && previous.owner === item.owner
      && previous.group === item.group) return;
    const cells = tr.cells;
    cells[1].textContent = item.scope_id;
    if (item.group) cells[1].append(el("span", "tag", item.group));
    cells[1].title = `${item.scope_id}\nworker ${item.worker}${item.group ? `\ngroup ${item.group}` : ""}`;
    const node = cells[2].firstChild;
    const [badge, pid] = cells[2].lastChild.children;
    badge.className = `badge ${item.owner}`;
    badge.textContent = item.owner === "gone" ? "exited" : item.owner;
    badge.title = {
      running: "the process is running (pid and start time match)",
      gone: "no such process any more: its timers are dropped when due (owner-gone)",
      "other-node": "a process of another node: only that node's replicas can check it",
      malformed: "this worker id does not parse: a watchdog reports it as malformed",
    }[item.owner] || "";
    node.textContent = item.node || item.worker;
    node.title = `worker ${item.worker}`;
    pid.textContent = item.pid === null ? "" : `pid ${item.pid}`;
    cells[3].textContent = signalName(item.signal);
    if (item.kill_after_ms) cells[3].append(el("span", "escalation", `KILL +${duration(item.kill_after_ms)}`));
    cells[3].title = item.signed ? "signed: a watchdog with the namespace secret verifies it" : "not signed";
    cells[4].textContent = clock(item.deadline_ms, false);
    cells[4].title = new Date(item.deadline_ms - offsetMs).toString();
    cells[5].hidden = !actions;
    tickRow(tr, serverNow());
  }

  function tickRow(tr, now) {
    const item = tr.item;
    const left = item.deadline_ms - now;
    tr.cells[0].firstChild.textContent = left < 0 ? `overdue ${duration(-left)}` : duration(left);
    const total = item.acquired_ms ? item.deadline_ms - item.acquired_ms : 0;
    const fraction = total > 0 ? Math.max(0, Math.min(1, left / total)) : left > 0 ? 1 : 0;
    tr.cells[0].lastChild.firstChild.style.width = `${(fraction * 100).toFixed(1)}%`;
    tr.classList.toggle("overdue", left < 0);
    tr.classList.toggle("soon", left >= 0 && left < 5000);
  }

  function renderTimers(timers) {
    const tbody = $("timers").tBodies[0];
    const seen = new Set();
    let previous = null;
    for (const item of timers.items) {
      let tr = rows.get(item.id);
      if (!tr) {
        tr = makeRow(item);
        rows.set(item.id, tr);
      }
      updateRow(tr, item);
      seen.add(item.id);
      const wanted = previous ? previous.nextSibling : tbody.firstChild;
      if (wanted !== tr) tbody.insertBefore(tr, wanted);
      previous = tr;
      if (item.node) nodeOptions.add(item.node);
    }
    for (const [id, tr] of rows) {
      if (!seen.has(id)) {
        tr.remove();
        rows.delete(id);
      }
    }
    const shown = timers.items.length;
    $("timers-empty").hidden = shown > 0;
    $("timers-empty").textContent = timers.filtered ? "No live timer matches these filters." : "No live timers.";
    let text = `${number(timers.total)} live`;
    if (timers.filtered) text = `${number(shown)} matching shown, soonest first · ${number(timers.total)} live in all`;
    else if (shown < timers.total) text = `${number(shown)} soonest of ${number(timers.total)} live`;
    $("timers-count").textContent = text;
    document.querySelector("th.actions-col").hidden = !actions;
  }

  // -- nodes and replicas ----------------------------------------------------------------------------------------

  function renderNodes(stats) {
    const tbody = $("nodes").tBodies[0];
    const trs = stats.nodes.map((node) => {
      nodeOptions.add(node.node);
      const tr = el("tr", node.stuck ? "stuck" : "");
      tr.dataset.node = node.node;
      const name = el("td", "node-cell");
      name.append(el("span", "mono", node.node));
      if (node.stuck) {
        name.prepend(el("span", "badge stuck", "STUCK"));
        tr.title = "due timers or pending deliveries, and no live replica on this node: nothing will signal them";
      }
      tr.append(name, el("td", "num", node.live_replicas), el("td", "num", node.due_timers),
        el("td", "num", node.pending_deliveries));
      return tr;
    });
    tbody.replaceChildren(...trs);
    $("nodes-empty").hidden = trs.length > 0;

    const replicas = stats.replicas.map((replica) => {
      const tr = el("tr", replica.live ? "" : "dead");
      const name = el("td", "", replica.id);
      name.title = `${replica.id}\nnode ${replica.node}`;
      tr.append(name, el("td", "num mono", replica.pid), el("td", "", `${duration(replica.age_ms)} ago`),
        el("td", "", replica.live ? duration(replica.up_ms) : "not live"));
      return tr;
    });
    $("replicas").tBodies[0].replaceChildren(...replicas);
    $("replicas-box").querySelector("summary").textContent = `Replicas (${replicas.length})`;

    const select = $("filter-node");
    const have = new Set([...select.options].map((o) => o.value));
    for (const node of [...nodeOptions].sort()) {
      if (!have.has(node)) select.append(new Option(node, node));
    }
  }

  function renderKpis(stats) {
    const live = stats.live_timers;
    const next = stats.earliest_deadline_ms;
    setKpi("kpi-live", number(live), next !== null ? `next due in ${duration(next - serverNow())}` : "none due");
    setKpi("kpi-due", number(stats.due_timers), stats.due_timers ? "past their deadline" : "all claimed in time",
      stats.due_timers ? "warn" : "");
    setKpi("kpi-pending", number(stats.pending_deliveries), "orders not yet finished",
      stats.pending_deliveries ? "warn" : "");
    const liveReplicas = stats.replicas.filter((r) => r.live).length;
    const nodesWithReplicas = new Set(stats.replicas.filter((r) => r.live).map((r) => r.node)).size;
    setKpi("kpi-replicas", number(liveReplicas), `on ${nodesWithReplicas} node(s), ${stats.replicas.length} known`,
      liveReplicas ? "good" : "bad");
    const stuck = stats.stuck_nodes;
    setKpi("kpi-stuck", number(stuck.length), stuck.length ? stuck.join(", ") : "none", stuck.length ? "bad" : "");
  }

  // -- events feed -----------------------------------------------------------------------------------------------

  // Line one says what happened to whom, line two which timer and why.
  function eventLines(event) {
    const who = event.pid !== null ? `pid ${event.pid}` : event.worker;
    const detail = event.detail ? ` · ${event.detail}` : "";
    switch (event.type) {
      case "delivered": return [`SIG${signalName(event.fields.signal)} → ${who}`, event.scope_id];
      case "expired": return [event.worker, event.scope_id];
      case "released": return [`${event.fields.count || "?"} timer(s) of ${event.worker}`, event.detail];
      case "malformed": return ["an entry that does not parse", [event.fields.key || event.fields.member, event.detail]
        .filter(Boolean).join(" · ")];
      default: return [who, `${event.scope_id}${detail}`];
    }
  }

  function renderEvents(events, fresh) {
    const feed = $("feed");
    const items = [];
    if (events.gap && lastEventId !== null) {
      items.push(el("li", "gap-row"));
      items[0].append(el("span", "gap", "… a burst: older events of it are not shown"));
    }
    for (const event of events.items) {
      const li = el("li", fresh ? "fresh" : "");
      li.dataset.type = event.type;
      li.dataset.worker = event.worker;
      li.dataset.id = event.id;
      li.title = Object.entries(event.fields).map(([k, v]) => `${k}=${v}`).join("\n");
      const [first, second] = eventLines(event);
      const what = el("div", "what");
      const typeClass = /^[a-z-]+$/.test(event.type) ? event.type : "other";
      what.append(el("span", `kind ${typeClass}`, event.type), document.createTextNode(first || ""));
      li.append(el("span", "when", clock(event.time_ms, true)), what, el("span"), el("div", "detail", second || ""),
        el("span", "lag", event.lag_ms !== null ? `lag ${duration(event.lag_ms)}` : ""));
      items.push(li);
    }
    for (const li of items) feed.prepend(li); // oldest first in the reply, newest on top here
    while (feed.children.length > FEED_MAX) feed.lastChild.remove();
    if (events.items.length) lastEventId = events.items[events.items.length - 1].id;
    $("feed-empty").hidden = feed.children.length > 0;
  }

  // -- charts ----------------------------------------------------------------------------------------------------

  // A round step for about four grid lines (1, 2 or 5 times a power of ten), so every label is a round number.
  function niceStep(max) {
    const rough = Math.max(max, 1) / 4;
    const power = Math.pow(10, Math.floor(Math.log10(rough)));
    for (const step of [1, 2, 5, 10]) if (step * power >= rough) return Math.max(1, step * power);
    return 10 * power;
  }

  function chart(svg, series, opts) {
    const width = Math.max(200, svg.clientWidth || 600);
    const height = Math.max(100, svg.clientHeight || 150);
    const pad = { left: 46, right: 10, top: 8, bottom: 20 };
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const now = opts.now;
    const x0 = now - HOUR_MS;
    const all = series.flatMap((s) => s.points.map((p) => p[1]));
    const step = niceStep(Math.max(0, ...all));
    const yMax = step * Math.max(1, Math.ceil(Math.max(0, ...all) / step));
    const x = (t) => pad.left + ((t - x0) / HOUR_MS) * (width - pad.left - pad.right);
    const y = (v) => height - pad.bottom - (v / yMax) * (height - pad.top - pad.bottom);
    const parts = [];
    for (let value = 0; value <= yMax; value += step) {
      parts.push(svgEl("line", { class: "grid-line", x1: pad.left, x2: width - pad.right, y1: y(value), y2: y(value) }));
      const label = svgEl("text", { class: "axis-label", x: pad.left - 6, y: y(value) + 3.5, "text-anchor": "end" });
      label.textContent = opts.format(value);
      parts.push(label);
    }
    for (const minutes of [60, 45, 30, 15, 0]) {
      const label = svgEl("text", { class: "axis-label", x: x(now - minutes * 60000), y: height - 5,
        "text-anchor": minutes === 60 ? "start" : minutes === 0 ? "end" : "middle" });
      label.textContent = minutes ? `-${minutes}m` : "now";
      parts.push(label);
    }
    for (const s of series) {
      const points = s.points.filter((p) => p[0] >= x0);
      if (!points.length) continue;
      const line = points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
      if (s.area) {
        const first = x(points[0][0]).toFixed(1);
        const last = x(points[points.length - 1][0]).toFixed(1);
        parts.push(svgEl("path", { class: s.area, d: `${line}L${last},${y(0)}L${first},${y(0)}Z` }));
      }
      parts.push(svgEl("path", { class: s.cls, d: line }));
      if (s.dots) {
        for (const p of points) parts.push(svgEl("circle", { class: s.dots, cx: x(p[0]), cy: y(p[1]), r: 2.6 }));
      }
    }
    if (!all.length) {
      const label = svgEl("text", { class: "empty-label", x: width / 2, y: height / 2, "text-anchor": "middle" });
      label.textContent = opts.empty;
      parts.push(label);
    }
    svg.replaceChildren(...parts);
  }

  function renderCharts() {
    if (!historyData) return;
    const samples = historyData.samples;
    chart($("chart-live"), [
      { points: samples.map((s) => [s.time_ms, s.live_timers]), cls: "s-live", area: "a-live" },
      { points: samples.map((s) => [s.time_ms, s.due_timers]), cls: "s-due" },
      { points: samples.map((s) => [s.time_ms, s.pending_deliveries]), cls: "s-pending" },
    ], { now: historyData.now_ms, format: (v) => number(Math.round(v)),
      empty: "no samples yet: each watchdog replica writes one every 10 s" });
    const lag = historyData.lag;
    chart($("chart-lag"), [
      { points: lag.map((b) => [b.time_ms + 30000, b.max]), cls: "s-max", dots: "d-max" },
      { points: lag.map((b) => [b.time_ms + 30000, b.p50]), cls: "s-p50", dots: "d-p50" },
    ], { now: historyData.now_ms, format: (v) => duration(v), empty: "no kills in the last hour" });
  }

  function renderKills() {
    if (!historyData) return;
    const count = historyData.lag.reduce((sum, b) => sum + b.count, 0);
    const worst = historyData.lag.reduce((m, b) => Math.max(m, b.max), 0);
    setKpi("kpi-kills", number(count), count ? `worst lag ${duration(worst)}` : "no signal sent", "");
  }

  // -- polling ---------------------------------------------------------------------------------------------------

  function query() {
    const params = new URLSearchParams();
    const node = $("filter-node").value;
    const scope = $("filter-scope").value.trim();
    const group = $("filter-group").value.trim();
    if (node) params.set("node", node);
    if (scope) params.set("scope", scope);
    if (group) params.set("group", group);
    params.set("limit", $("limit").value);
    if (lastEventId) params.set("after", lastEventId);
    return params.toString();
  }

  let polling = false;
  let pollTimer = null;
  async function poll(now) {
    if (polling) return;
    polling = true;
    clearTimeout(pollTimer);
    const started = performance.now();
    try {
      const response = await fetch(`/api/state?${query()}`, { cache: "no-store" });
      const reply = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
      if (!response.ok) throw new Error(reply.error || `HTTP ${response.status}`);
      const rtt = performance.now() - started;
      offsetMs = reply.now_ms + rtt / 2 - Date.now();
      render(reply, lastOkAt > 0);
      lastOkAt = Date.now();
    } catch (error) {
      banner(`Cannot read the namespace: ${error.message || error}. Retrying…`, true);
    } finally {
      polling = false;
      const wait = now === true ? POLL_MS : Math.max(0, POLL_MS - (performance.now() - started));
      pollTimer = setTimeout(poll, wait);
    }
  }

  function render(reply, fresh) {
    actions = Boolean(reply.actions);
    $("token-box").hidden = !actions;
    $("extend-box").hidden = !actions;
    $("namespace").textContent = reply.namespace;
    $("redis").textContent = reply.redis;
    $("this-node").textContent = reply.dashboard_node;
    document.title = `timer-redis · ${reply.namespace}`;
    if (reply.stats) {
      renderKpis(reply.stats);
      renderNodes(reply.stats);
    }
    if (reply.timers) renderTimers(reply.timers);
    if (reply.events) renderEvents(reply.events, fresh);
    const problems = Object.entries(reply.errors || {}).map(([part, message]) => `${part}: ${message}`);
    if (problems.length) banner(`Some of the namespace could not be read (garbage in Redis?) — ${problems.join("; ")}`);
    else if (reply.stats && reply.stats.may_evict) {
      banner(`Redis' maxmemory-policy is ${reply.stats.eviction_policy}: when Redis is full it may delete timers, `
        + "silently. Use noeviction.");
    } else banner("");
  }

  async function pollHistory() {
    try {
      const response = await fetch("/api/history", { cache: "no-store" });
      if (response.ok) {
        historyData = await response.json();
        renderCharts();
        renderKills();
      }
    } catch (error) {
      // the state poll reports outages; the charts keep their last picture
    } finally {
      setTimeout(pollHistory, HISTORY_MS);
    }
  }

  function tick() {
    const now = serverNow();
    for (const tr of rows.values()) tickRow(tr, now);
    const status = $("status");
    const age = Date.now() - lastOkAt;
    const stale = !lastOkAt || age > STALE_MS;
    status.classList.toggle("ok", !stale);
    status.classList.toggle("stale", stale && lastOkAt > 0);
    $("status-text").textContent = !lastOkAt ? "connecting…" : stale ? `stale: last update ${duration(age)} ago`
      : `live · ${clock(now, false)}`;
  }

  function start() {
    readToken();
    for (const id of ["filter-node", "limit"]) $(id).addEventListener("change", () => poll(true));
    let typing = null;
    for (const id of ["filter-scope", "filter-group"]) {
      $(id).addEventListener("input", () => {
        clearTimeout(typing);
        typing = setTimeout(() => poll(true), 250);
      });
    }
    window.addEventListener("resize", renderCharts);
    poll();
    pollHistory();
    setInterval(tick, TICK_MS);
  }

  start();
})();
