"use strict";
// The organiser's page: one read of GET /api/dashboard on opening (a page of events and the one
// in focus, with its sales so far), then only the WebSocket's seat messages. Nothing polls: the
// per-second rates are worked out in the page from the line each message carries.

const PAGE_SIZE = 10;
const RATE_WINDOW = 5000;       // ms over which requests and decisions per second are averaged
const RATE_POINTS = 300;        // five minutes of the rates chart, one point a second
const RECENT_ROWS = 10;

const state = { q: "", offset: 0, total: 0, focusId: null, events: new Map(), rows: new Map(),
                subscribed: new Set(), socket: null, sales: [[], []], rates: [[], [], []],
                samples: [], salesChart: null, ratesChart: null, chartEventId: null,
                holds: null, webhooks: [], clockSkew: 0 };

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "message error" : "message";
}

// The line's figures whatever carried them: the snapshot (with ``arrived``) or a seat message
// (with the cursor: every request numbered has left, in ``through``/``gone``, or still waits).
function lineFigures(line) {
  if (!line) return null;
  const arrived = line.arrived ?? line.through + line.gone.length + line.waiting;
  return { waiting: line.waiting, waitlisted: line.waitlisted, arrived, departed: arrived - line.waiting };
}

wireLogin($("login"), $("login-error"), start);
$("logout").addEventListener("click", () => {
  sessionStorage.removeItem("token");
  if (state.socket) state.socket.stop();
  location.reload();
});
$("search").addEventListener("submit", (e) => {
  e.preventDefault();
  state.q = $("q").value.trim();
  state.offset = 0;
  state.focusId = null;
  load();
});
$("previous").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE_SIZE); load(); });
$("next").addEventListener("click", () => { state.offset += PAGE_SIZE; load(); });

async function start() {
  const user = await api("/api/auth/me");
  $("who").textContent = user.email;
  $("login").hidden = true;
  $("app").hidden = false;
  $("title").focus();
  await load();
  state.socket = new LiveSocket({
    // A reconnect starts again from the snapshot: whatever was published meanwhile is gone.
    onOpen: (reconnected) => (reconnected ? load() : follow()),
    onMessage: handle,
    onState: (s) => setConnection($("connection"), s),
    onExpired: () => { sessionStorage.removeItem("token"); location.reload(); },
  });
  state.socket.connect();
  setInterval(tick, 1000);
}

async function load() {
  const params = new URLSearchParams({ limit: PAGE_SIZE, offset: state.offset });
  if (state.q) params.set("q", state.q);
  if (state.focusId) params.set("focus", state.focusId);
  let data;
  try {
    data = await api(`/api/dashboard?${params}`);
  } catch (err) {
    say(`Could not load your events: ${explain(err)}`, true);
    return;
  }
  state.total = data.total;
  state.events = new Map(data.events.map((e) => [e.id, e]));
  if (data.focus) state.events.set(data.focus.event.id, { ...data.focus.event, ...(state.events.get(data.focus.event.id) || {}) });
  renderList(data.events);
  showFocus(data.focus, data.readAt);
  if (!data.events.length) say(state.q ? `No event of yours matches “${state.q}”.` : "You have no events to watch yet: the events you create appear here.");
  follow();
}

// Follow exactly the listed events and the focused one (a socket follows at most 20).
function follow() {
  if (!state.socket) return;
  const wanted = new Set(state.events.keys());
  for (const id of state.subscribed) if (!wanted.has(id)) state.socket.send("unsubscribe_event", { eventId: id });
  for (const id of wanted) state.socket.send("subscribe_event", { eventId: id });
  state.subscribed = wanted;
}

function handle(message) {
  const data = message.data || {};
  if (SEAT_MESSAGES.has(message.type) || message.type === "subscribed") {
    const event = state.events.get(data.eventId);
    if (!event) return;
    const previous = event.version;
    // A subscription answered after batches the read did not see: their held and expired
    // counts never come as messages, so the focused event is read again.
    if (message.type === "subscribed" && event.id === state.focusId && data.version > previous) {
      load();
      return;
    }
    const what = applyEventState(event, data);
    if (!what) return;
    event.sold = event.seatCapacity - event.availableSeats;
    updateRow(event);
    if (event.id !== state.focusId) return;
    if (what === "seats") addSalePoint(Date.parse(data.timestamp) / 1000, event.sold);
    if (SEAT_MESSAGES.has(message.type) && message.type !== "line_update") addBatch(data, data.version - previous - 1);
    if (SEAT_MESSAGES.has(message.type) && state.holds) {
      state.holds.made += data.held ?? 0;
      // A batch's holds share an end: holdSeconds after its decision (the message's time).
      if (data.held && state.holds.holdSeconds) {
        state.holds.ends.push({ at: Date.parse(data.timestamp) + state.holds.holdSeconds * 1000, bookings: data.held });
      }
      state.holds.expiredSince += data.expired ?? 0;
      showHolds();
    }
    showFigures(event);
    return;
  }
  switch (message.type) {
    case "resync":
      for (const s of data.events) handle({ type: "subscribed", data: { ...s, timestamp: data.timestamp } });
      break;
    case "event_updated": {
      const event = state.events.get(data.eventId);
      if (event && data.version > event.version) {
        Object.assign(event, { name: data.name, seatCapacity: data.seatCapacity, availableSeats: data.availableSeats, version: data.version });
        event.sold = event.seatCapacity - event.availableSeats;
        updateRow(event);
        if (event.id === state.focusId) { $("focus-title").textContent = event.name; showFigures(event); }
      }
      break;
    }
    case "event_deleted":
      if (data.eventId === state.focusId) state.focusId = null;
      load();
      break;
  }
}

// ---------------------------------------------------------------- the list

function renderList(events) {
  const body = $("events");
  body.replaceChildren();
  state.rows.clear();
  for (const event of events) {
    const row = body.insertRow();
    row.dataset.eventId = event.id;
    const name = cell(row, "Event", "name");
    const button = Object.assign(document.createElement("button"), { type: "button", className: "link", textContent: event.name });
    button.addEventListener("click", () => { state.focusId = event.id; load().then(() => $("focus-title").focus()); });
    name.append(button);
    cell(row, "When", "when").textContent = new Date(event.eventDate).toLocaleString();
    cell(row, "Sold", "num sold");
    cell(row, "Left", "num available");
    cell(row, "In line", "num line");
    cell(row, "Waitlist", "num waitlist");
    state.rows.set(event.id, row);
    updateRow(event);
  }
  const first = state.total ? state.offset + 1 : 0;
  const last = state.offset + events.length;
  $("range").textContent = `${first}–${last} of ${state.total.toLocaleString()}`;
  $("previous").disabled = state.offset === 0;
  $("next").disabled = last >= state.total;
}

function updateRow(event) {
  const row = state.rows.get(event.id);
  if (!row) return;
  const line = lineFigures(event.line);
  row.classList.toggle("focused", event.id === state.focusId);
  row.querySelector(".sold").textContent = event.seatCapacity - event.availableSeats;
  row.querySelector(".available").textContent = event.availableSeats;
  row.querySelector(".line").textContent = line ? line.waiting : "—";
  row.querySelector(".waitlist").textContent = event.waitlistEnabled ? (line ? line.waitlisted : 0) : "off";
}

// ---------------------------------------------------------------- the event in focus

function showFocus(focus, readAt) {
  if (!focus) { $("focus").hidden = true; state.focusId = null; return; }
  const event = state.events.get(focus.event.id);
  const changed = state.chartEventId !== event.id;
  state.focusId = state.chartEventId = event.id;
  for (const e of state.events.values()) updateRow(e);
  $("focus").hidden = false;
  $("focus-title").textContent = event.name;
  state.sales = [focus.sales.map((p) => Date.parse(p.at) / 1000), focus.sales.map((p) => p.sold)];
  // The chart reaches the moment of the read, at the figure read with it.
  addSalePoint(Date.parse(readAt) / 1000, event.sold, false);
  if (changed) { state.samples = []; state.rates = [[], [], []]; }
  $("decisions").replaceChildren();
  for (const batch of focus.decisions.slice().reverse()) {
    addBatchRow(batch.at, [batch.confirmed, "—", batch.rejected, "—", batch.cancelled, "—"], "");
  }
  drawCharts();
  showFigures(event);
  // The server's clock, as far as the read tells it: ages and countdowns are on its time.
  state.clockSkew = Date.parse(readAt) - Date.now();
  state.holds = { ...focus.holds, made: 0, expiredSince: 0, ends: [] };
  state.webhooks = focus.webhooks;
  showHolds();
  showWebhooks();
}

function serverNow() { return Date.now() + state.clockSkew; }

function duration(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function showHolds() {
  const h = state.holds;
  const off = h.holdSeconds == null && h.bookings === 0;
  $("holds-off").hidden = !off;
  $("holds-tiles").hidden = off;
  if (off) return;
  $("holds-outstanding").textContent = Math.max(0, h.bookings + h.made - h.expiredSince).toLocaleString();
  $("holds-seats").textContent = h.seats.toLocaleString();
  const now = serverNow();
  h.ends = h.ends.filter((e) => e.at > now);
  const soon = h.ends.filter((e) => e.at - now <= h.soonSeconds * 1000).reduce((n, e) => n + e.bookings, 0);
  $("holds-expiring").textContent = `${(h.expiringBookings + soon).toLocaleString()} holds`;
  const ends = h.ends.map((e) => e.at);
  if (h.nextExpiresAt && Date.parse(h.nextExpiresAt) > now) ends.push(Date.parse(h.nextExpiresAt));
  const next = ends.length ? Math.min(...ends) - now : null;
  $("holds-next").textContent = next == null ? "—" : next > 0 ? duration(next) : "now";
  $("holds-new").textContent = h.made.toLocaleString();
  $("holds-expired").textContent = h.expiredSince.toLocaleString();
}

function showWebhooks() {
  const body = $("webhook-rows");
  body.replaceChildren();
  $("webhooks-none").hidden = state.webhooks.length > 0;
  for (const w of state.webhooks) {
    const row = body.insertRow();
    row.dataset.endpointId = w.id;
    cell(row, "Endpoint", "url").textContent = w.url;
    cell(row, "Hears", "scope").textContent = w.eventId == null ? "all your events" : "this event";
    cell(row, "Delivered", "num delivered").textContent = w.delivered.toLocaleString();
    cell(row, "Failed", "num failed").textContent = w.failed.toLocaleString();
    cell(row, "Waiting", "num pending").textContent = w.pending.toLocaleString();
    cell(row, "Oldest waiting", "num age");
    const stateCell = cell(row, "State", "state");
    stateCell.textContent = w.enabled ? "enabled" : `disabled: ${w.disabledReason || "by its owner"}`;
    stateCell.classList.toggle("error", !w.enabled);
  }
  tickWebhooks();
}

function tickWebhooks() {
  for (const row of $("webhook-rows").rows) {
    const w = state.webhooks.find((x) => String(x.id) === row.dataset.endpointId);
    row.querySelector(".age").textContent = w && w.oldestPendingAt ? duration(serverNow() - Date.parse(w.oldestPendingAt)) : "—";
  }
}

function showFigures(event) {
  const line = lineFigures(event.line);
  $("sold").textContent = event.sold.toLocaleString();
  $("left").textContent = event.availableSeats.toLocaleString();
  $("capacity").textContent = event.seatCapacity.toLocaleString();
  $("in-line").textContent = line ? line.waiting.toLocaleString() : "—";
  $("waitlist").textContent = event.waitlistEnabled ? (line ? line.waitlisted : 0).toLocaleString() : "off";
  $("sales-summary").textContent = `${event.sold} of ${event.seatCapacity} seats sold, ${event.availableSeats} left.`;
}

function addSalePoint(t, sold, redraw = true) {
  const [xs, ys] = state.sales;
  if (xs.length && t < xs[xs.length - 1]) t = xs[xs.length - 1];  // two clocks: never go back
  xs.push(t);
  ys.push(sold);
  if (redraw && state.salesChart) publishChart(state.salesChart, state.sales, $("sales-chart"));
}

function addBatch(data, merged) {
  const cells = [data.confirmed ?? 0, data.held ?? 0, data.rejected ?? 0, data.waitlisted ?? 0,
                 (data.cancelled ?? 0) + (data.expired ?? 0), data.availableSeats];
  addBatchRow(data.timestamp, cells, merged > 0 ? `+${merged} merged` : "");
}

function addBatchRow(at, values, note) {
  const body = $("decisions");
  const row = body.insertRow(0);
  const time = cell(row, "Time", "time");
  time.textContent = new Date(at).toLocaleTimeString() + (note ? ` (${note})` : "");
  const labels = ["Confirmed", "Held", "Refused", "Waitlisted", "Cancelled or expired", "Seats left"];
  values.forEach((v, i) => { cell(row, labels[i], "num").textContent = v; });
  while (body.rows.length > RECENT_ROWS) body.deleteRow(body.rows.length - 1);
}

// Every second: requests and decisions per second over the last RATE_WINDOW, from how far the
// focused event's line has moved (both only grow, so merged or lost messages cost nothing).
function tick() {
  if (state.holds) showHolds();
  tickWebhooks();
  const event = state.events.get(state.focusId);
  const line = event && lineFigures(event.line);
  if (!line) return;
  const now = Date.now();
  state.samples.push({ t: now, arrived: line.arrived, departed: line.departed });
  while (state.samples.length > 2 && now - state.samples[1].t >= RATE_WINDOW) state.samples.shift();
  const first = state.samples[0];
  const seconds = (now - first.t) / 1000;
  const requests = seconds > 0 ? (line.arrived - first.arrived) / seconds : 0;
  const decisions = seconds > 0 ? (line.departed - first.departed) / seconds : 0;
  $("requests-rate").textContent = Math.round(requests).toLocaleString();
  $("decisions-rate").textContent = Math.round(decisions).toLocaleString();
  const [xs, rq, dc] = state.rates;
  xs.push(now / 1000); rq.push(requests); dc.push(decisions);
  if (xs.length > RATE_POINTS) { xs.shift(); rq.shift(); dc.shift(); }
  if (state.ratesChart) state.ratesChart.setData(state.rates);
}

// ---------------------------------------------------------------- charts (uPlot, vendored)

function chartWidth(element) { return Math.max(280, element.clientWidth); }

// The chart's data is also written on its element, so a test reads what the chart holds.
function publishChart(chart, data, element) {
  chart.setData(data);
  const ys = data[1];
  element.dataset.points = ys.length;
  element.dataset.lastSold = ys.length ? ys[ys.length - 1] : "";
}

function drawCharts() {
  const salesEl = $("sales-chart"), ratesEl = $("rates-chart");
  if (state.salesChart) state.salesChart.destroy();
  if (state.ratesChart) state.ratesChart.destroy();
  state.salesChart = new uPlot({
    width: chartWidth(salesEl), height: 240,
    series: [{}, { label: "Seats sold", stroke: "#1a5fb4", fill: "rgba(26,95,180,.12)", width: 2,
                   paths: uPlot.paths.stepped({ align: 1 }) }],
    axes: [{}, { label: "seats" }],
    scales: { x: { time: true, range: (u, min, max) => (max - min < 10 ? [max - 10, max + 1] : [min, max]) },
              y: { range: (u, min, max) => [0, Math.max(max, 1)] } },
  }, [[], []], salesEl);
  publishChart(state.salesChart, state.sales, salesEl);
  state.ratesChart = new uPlot({
    width: chartWidth(ratesEl), height: 200,
    series: [{}, { label: "Requests / s", stroke: "#c64600", width: 2 },
                 { label: "Decisions / s", stroke: "#137333", width: 2 }],
    axes: [{}, { label: "per second" }],
    // The last two minutes, whatever the points so far: one point alone is not a range.
    scales: { x: { time: true, range: (u, min, max) => [(max ?? Date.now() / 1000) - 120, max ?? Date.now() / 1000] },
              y: { range: (u, min, max) => [0, Math.max(max, 1)] } },
  }, state.rates, ratesEl);
}

window.addEventListener("resize", () => {
  for (const [chart, id] of [[state.salesChart, "sales-chart"], [state.ratesChart, "rates-chart"]]) {
    if (chart) chart.setSize({ width: chartWidth($(id)), height: chart.height });
  }
});

if (sessionStorage.getItem("token")) start().catch(() => sessionStorage.removeItem("token"));
