"use strict";
// Shared by /live and /dashboard: the API's envelope, the token, and one WebSocket that follows
// docs/websockets.md (versions, heartbeats, reconnecting with jitter).

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

// Words for an error a person can act on; the server's own message when it has one.
function explain(err) {
  if (err instanceof ApiError) return err.message;
  return "The service could not be reached. Check your connection and try again.";
}

async function api(path, options = {}) {
  const token = sessionStorage.getItem("token");
  const headers = { "Content-Type": "application/json", ...(options.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = body.error || {};
    throw new ApiError(response.status, error.code || "HTTP_" + response.status,
                       error.message || `The server answered ${response.status} ${response.statusText}.`);
  }
  return body.data;
}

// The wait before reconnect attempt n (0, 1, 2, ...), the rule of docs/websockets.md: full
// jitter over min(30 s, 1 s x 2^n), so the pages a server dropped at once come back spread out.
// A 1001 close says how long to spread over ("... reconnect within 2000 ms").
function backoff(attempt, closeEvent) {
  const within = closeEvent && closeEvent.code === 1001 && /within (\d+) ?ms/.exec(closeEvent.reason || "");
  const ceiling = within ? Number(within[1]) : Math.min(30000, 1000 * 2 ** attempt);
  return Math.random() * ceiling;
}

// One socket: authenticates with its first message (the token stays out of URLs and logs),
// reconnects after anything but 1000/1008, and closes a silent one after three heartbeats.
// onOpen(reconnected) runs on every connection_established; the page subscribes and resyncs.
class LiveSocket {
  constructor({ onOpen, onMessage, onState, onExpired }) {
    Object.assign(this, { onOpen, onMessage, onState, onExpired });
    this.attempt = 0; this.opened = 0; this.lastHeard = 0; this.ws = null; this.stopped = false;
    this.watchdog = setInterval(() => this.checkAlive(), 5000);
  }
  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws`);
    this.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token: sessionStorage.getItem("token") }));
    ws.onmessage = (e) => {
      this.lastHeard = Date.now();
      let message;
      try { message = JSON.parse(e.data); } catch { return; }
      if (message.type === "connection_established") {
        this.attempt = 0;
        this.onState("live");
        this.onOpen(this.opened++ > 0);
      } else {
        this.onMessage(message);
      }
    };
    ws.onclose = (e) => {
      if (this.ws !== ws || this.stopped) return;
      this.onState("offline");
      if (e.code === 1008) { this.onExpired(); return; }
      const delay = backoff(this.attempt++, e);
      this.onState("reconnecting");
      setTimeout(() => this.connect(), delay);
    };
  }
  checkAlive() {
    const ws = this.ws;
    if (ws && ws.readyState === WebSocket.OPEN && Date.now() - this.lastHeard > 3 * 25000) ws.close(4000);
  }
  send(type, fields) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type, ...fields }));
  }
  stop() { this.stopped = true; clearInterval(this.watchdog); if (this.ws) this.ws.close(1000); }
}

const SEAT_MESSAGES = new Set(["booking_created", "booking_cancelled", "seat_update", "line_update"]);

// The versions rule of docs/websockets.md, tolerant of coalescing: every seat message carries the
// whole state after it (seats, version, line), so a newer version is taken as it is even when
// versions were skipped (the server sends at most the latest per event every ~100 ms); an older
// or equal one is dropped. A line_update may carry the version already known: its line is news.
// Returns "seats" (new seats and line), "line" (the line only) or null (stale).
function applyEventState(known, data) {
  if (data.version < known.version) return null;
  const line = data.line;
  if (data.version === known.version) {
    if (!line) return null;
    known.line = line;
    return "line";
  }
  known.version = data.version;
  if (data.availableSeats !== undefined) known.availableSeats = data.availableSeats;
  if (data.seatCapacity !== undefined) known.seatCapacity = data.seatCapacity;
  if (line) known.line = line;
  return "seats";
}

function setConnection(element, state) {
  element.textContent = state;
  element.className = state === "live" ? "badge live" : "badge";
}

// A login form shared by both pages: resolves once a token is stored.
function wireLogin(form, errorElement, onSignedIn) {
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    errorElement.textContent = "";
    try {
      const data = await api("/api/auth/login", { method: "POST",
        body: JSON.stringify({ email: form.elements.email.value, password: form.elements.password.value }) });
      sessionStorage.setItem("token", data.token);
      await onSignedIn();
    } catch (err) {
      errorElement.textContent = err.status === 401 ? "That email and password do not match an account." : explain(err);
    }
  });
}

function cell(row, label, className) {
  const td = row.insertCell();
  td.dataset.label = label;
  if (className) td.className = className;
  return td;
}
