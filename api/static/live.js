"use strict";
// The buyer's page. Rows are kept per event and per booking and updated in place, never
// redrawn, so keyboard focus and what was typed survive every live update.

const state = { user: null, events: new Map(), bookings: new Map(), names: new Map(),
                socket: null, eventRows: new Map(), bookingRows: new Map() };
const IN_LINE = new Set(["pending", "waitlisted"]);
const STATUS_WORDS = { pending: "in line", waitlisted: "waitlisted", held: "held for you", confirmed: "confirmed",
                       rejected: "refused", cancelled: "cancelled", expired: "expired" };
const CANCELLABLE = new Set(["pending", "waitlisted", "held", "confirmed"]);
const REASON_WORDS = { sold_out: "sold out", limit_exceeded: "over the limit per person",
                       event_past: "the event has started" };

function say(text, isError = false) {
  const message = $("message");
  message.textContent = text;
  message.className = isError ? "message error" : "message";
}

function eventName(eventId) {
  const event = state.events.get(eventId);
  return event ? event.name : state.names.get(eventId) || "an event";
}

wireLogin($("login"), $("login-error"), start);

$("logout").addEventListener("click", () => {
  sessionStorage.removeItem("token");
  if (state.socket) state.socket.stop();
  location.reload();
});

async function start() {
  state.user = await api("/api/auth/me");
  $("who").textContent = state.user.email;
  $("login").hidden = true;
  $("app").hidden = false;
  $("title").focus();
  const page = await api("/api/events?upcoming=true&limit=20");
  for (const event of page.events) state.events.set(event.id, event);
  await refreshBookings();
  renderEvents();
  state.socket = new LiveSocket({
    onOpen: (reconnected) => {
      for (const id of state.events.keys()) state.socket.send("subscribe_event", { eventId: id });
      if (reconnected) refreshBookings();  // a booking_status may have been lost meanwhile
    },
    onMessage: handle,
    onState: (s) => setConnection($("connection"), s),
    onExpired: () => { sessionStorage.removeItem("token"); location.reload(); },
  });
  state.socket.connect();
  setInterval(tickHolds, 1000);
}

function handle(message) {
  const data = message.data || {};
  if (SEAT_MESSAGES.has(message.type)) {
    const event = state.events.get(data.eventId);
    if (event && applyEventState(event, data)) {
      if (event.line) event.waitlistLength = event.line.waitlisted;
      updateEvent(event);
    }
    return;
  }
  switch (message.type) {
    case "subscribed":
      snapshot(data);
      break;
    case "resync":
      for (const s of data.events) snapshot(s);
      refreshBookings();
      break;
    case "event_updated": {
      const event = state.events.get(data.eventId);
      if (event && data.version > event.version) { Object.assign(event, data); updateEvent(event); }
      break;
    }
    case "event_deleted": {
      const row = state.eventRows.get(data.eventId);
      state.events.delete(data.eventId);
      if (row) { row.remove(); state.eventRows.delete(data.eventId); }
      break;
    }
    case "booking_status":
      if (data.warning === "hold_expiring") warned(data);
      else decided(data);
      break;
    case "queue_position": {
      const booking = state.bookings.get(data.bookingId);
      if (!booking) { refreshBookings(); break; }  // booked elsewhere: read it
      if (!IN_LINE.has(booking.status)) break;     // the decision outranks a late place
      Object.assign(booking, { status: data.status, queuePosition: data.queuePosition });
      updateBooking(booking);
      break;
    }
    case "error":
      if (data.code === "RATE_LIMITED") say("Too many updates requested at once; the page will catch up.", true);
      break;
  }
}

function snapshot(s) {
  const event = state.events.get(s.eventId);
  if (!event || s.version < event.version) return;
  Object.assign(event, { availableSeats: s.availableSeats, seatCapacity: s.seatCapacity, version: s.version });
  updateEvent(event);
}

function decided(data) {
  const booking = state.bookings.get(data.bookingId) ||
    { bookingId: data.bookingId, eventId: data.eventId, quantity: data.quantity };
  const before = booking.status;
  Object.assign(booking, { status: data.status, reason: data.reason, queuePosition: data.queuePosition ?? null,
                           promoted: data.promoted, expiresAt: data.expiresAt ?? booking.expiresAt });
  state.bookings.set(data.bookingId, booking);
  updateBooking(booking);
  if (before === data.status) return;
  const name = eventName(booking.eventId);
  const seats = `${booking.quantity} seat${booking.quantity === 1 ? "" : "s"}`;
  if (data.status === "held") say(`${seats} for ${name} ${booking.quantity === 1 ? "is" : "are"} held for you until ${clockTime(booking.expiresAt)}: confirm to keep ${booking.quantity === 1 ? "it" : "them"}.`);
  else if (data.status === "expired") say(`Your hold on ${seats} for ${name} ran out before it was confirmed; the seats are back on sale.`, true);
  else if (data.status === "confirmed" && before === "held") say(`Your ${seats} for ${name} are confirmed.`);
  else if (data.status === "confirmed") say(data.promoted ? `Good news: your ${seats} for ${name} came free and are confirmed.` : `Your ${seats} for ${name} are confirmed.`);
  else if (data.status === "waitlisted") say(`${name} is sold out: you are on its waitlist, number ${data.queuePosition} in line.`);
  else if (data.status === "rejected") say(`Your request for ${name} was refused: ${REASON_WORDS[data.reason] || data.reason}.`, true);
  else if (data.status === "cancelled") say(`Your booking for ${name} is cancelled.`);
}

// The hold_expiring warning: the hold is unchanged, the buyer is told (the message is a live
// region) and the row says so until the hold ends.
function warned(data) {
  const booking = state.bookings.get(data.bookingId);
  if (!booking || booking.status !== "held") return;
  booking.warned = true;
  updateBooking(booking);
  const seconds = Math.max(0, Math.round((Date.parse(data.expiresAt) - Date.now()) / 1000));
  say(`Hurry: your hold on ${eventName(booking.eventId)} ends in ${spell(seconds)}. Confirm it to keep your seats.`, true);
}

function spell(seconds) {
  if (seconds < 60) return `${seconds} second${seconds === 1 ? "" : "s"}`;
  const minutes = Math.round(seconds / 60);
  return `${minutes} minute${minutes === 1 ? "" : "s"}`;
}

function clockTime(iso) { return iso ? new Date(iso).toLocaleTimeString() : "its end"; }

// m:ss left; the row's text changes every second, so it is not a live region (the warning is).
function remaining(booking) {
  const ms = Date.parse(booking.expiresAt) - Date.now();
  if (!(ms > 0)) return "time is up";
  const total = Math.ceil(ms / 1000);
  const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
  const mmss = `${h ? `${h}:${String(m).padStart(2, "0")}` : m}:${String(s).padStart(2, "0")}`;
  return `${mmss} left`;
}

function tickHolds() {
  for (const booking of state.bookings.values()) if (booking.status === "held") updateCountdown(booking);
}

function updateCountdown(booking) {
  const row = state.bookingRows.get(booking.bookingId);
  if (!row) return;
  const countdown = row.querySelector(".countdown");
  if (booking.status !== "held" || !booking.expiresAt) { countdown.textContent = ""; return; }
  const text = remaining(booking);
  countdown.textContent = text;
  countdown.setAttribute("datetime", booking.expiresAt);
  countdown.classList.toggle("ending", Boolean(booking.warned) || text === "time is up");
}

async function confirmHold(booking, button) {
  button.disabled = true;
  button.textContent = "Confirming…";
  const name = eventName(booking.eventId);
  try {
    const read = await api(`/api/bookings/${booking.bookingId}/confirm`, { method: "POST" });
    // The socket's booking_status may come before or after this answer: both say confirmed.
    decided({ ...read, bookingId: booking.bookingId, eventId: booking.eventId });
  } catch (err) {
    button.disabled = false;
    button.textContent = "Confirm";
    if (err.code === "HOLD_EXPIRED") {
      decided({ bookingId: booking.bookingId, eventId: booking.eventId, quantity: booking.quantity, status: "expired" });
      say(`Too late to confirm ${name}: the hold ran out and its seats are back on sale. Book again if seats are left.`, true);
    } else {
      say(`Could not confirm your booking for ${name}: ${explain(err)}`, true);
    }
  }
}

async function refreshBookings() {
  const mine = await api("/api/bookings/user/me?limit=20");
  for (const booking of mine.bookings.reverse()) {
    const known = state.bookings.get(booking.bookingId);
    // Read before a decision the socket already brought: never step back into the line.
    if (known && !IN_LINE.has(known.status) && IN_LINE.has(booking.status)) continue;
    state.bookings.set(booking.bookingId, known ? Object.assign(known, booking) : booking);
  }
  // Bookings for events not listed (past, or beyond the first page) still show their names.
  const unknown = [...new Set([...state.bookings.values()].map((b) => b.eventId))]
    .filter((id) => !state.events.has(id) && !state.names.has(id));
  await Promise.all(unknown.map(async (id) => {
    try { state.names.set(id, (await api(`/api/events/${id}`)).name); } catch { state.names.set(id, "a deleted event"); }
  }));
  for (const booking of state.bookings.values()) updateBooking(booking);
}

async function book(event, quantity, button) {
  if (!Number.isInteger(quantity) || quantity < 1) {
    say(`Choose how many seats for ${event.name}: a whole number, 1 or more.`, true);
    return;
  }
  if (quantity > event.maxSeatsPerUser) {
    say(`${event.name} allows at most ${event.maxSeatsPerUser} seats per person.`, true);
    return;
  }
  button.disabled = true;
  try {
    const booking = await api("/api/bookings", { method: "POST", body: JSON.stringify({ eventId: event.id, quantity }) });
    if (!state.bookings.has(booking.bookingId)) {
      state.bookings.set(booking.bookingId, booking);
      updateBooking(booking);
      say(`Request sent: ${quantity} seat${quantity === 1 ? "" : "s"} for ${event.name}.`);
    }
  } catch (err) {
    say(`Could not book ${event.name}: ${explain(err)}`, true);
  } finally {
    button.disabled = false;
  }
}

async function cancel(booking, button) {
  button.disabled = true;
  button.textContent = "Cancelling…";
  try {
    await api(`/api/bookings/${booking.bookingId}`, { method: "DELETE" });
    booking.cancelRequested = true;
    say(`Cancelling your booking for ${eventName(booking.eventId)}…`);
  } catch (err) {
    button.disabled = false;
    button.textContent = "Cancel";
    say(`Could not cancel your booking for ${eventName(booking.eventId)}: ${explain(err)}`, true);
  }
}

function renderEvents() {
  for (const event of state.events.values()) updateEvent(event);
}

// The action an event offers now: book, join its waitlist, or nothing when sold out without one.
function actionFor(event) {
  if (event.availableSeats > 0) return "book";
  return event.waitlistEnabled ? "waitlist" : "none";
}

function updateEvent(event) {
  let row = state.eventRows.get(event.id);
  if (!row) {
    row = $("events").insertRow();
    row.dataset.eventId = event.id;
    const name = cell(row, "Event", "name");
    const strong = document.createElement("strong");
    name.append(strong);
    cell(row, "When", "when").textContent = new Date(event.eventDate).toLocaleString();
    cell(row, "Seats left", "num available");
    cell(row, "Capacity", "num capacity");
    cell(row, "Waitlist", "num waitlist");
    cell(row, "In line", "num line");
    cell(row, "Book", "actions-cell");
    state.eventRows.set(event.id, row);
  }
  row.querySelector(".name strong").textContent = event.name;
  row.querySelector(".available").textContent = event.availableSeats;
  row.querySelector(".capacity").textContent = event.seatCapacity;
  row.querySelector(".waitlist").textContent = event.waitlistEnabled || event.waitlistLength ? event.waitlistLength ?? 0 : "none";
  row.querySelector(".line").textContent = event.line ? event.line.waiting : "—";
  const td = row.querySelector(".actions-cell");
  const action = actionFor(event);
  if (td.dataset.action === action) return;  // keep the controls, and the focus on them
  const hadFocus = td.contains(document.activeElement);
  td.dataset.action = action;
  td.replaceChildren();
  if (action === "none") {
    td.append(Object.assign(document.createElement("span"), { textContent: "Sold out", className: "note sold-out" }));
  } else {
    const wrap = Object.assign(document.createElement("div"), { className: "actions" });
    const label = Object.assign(document.createElement("label"), { className: "visually-hidden", textContent: `Seats for ${event.name}` });
    const quantity = Object.assign(document.createElement("input"),
      { type: "number", min: 1, max: event.maxSeatsPerUser, value: 1, className: "quantity", id: `quantity-${event.id}` });
    label.htmlFor = quantity.id;
    const button = Object.assign(document.createElement("button"), {
      type: "button", className: action === "book" ? "book primary" : "book join-waitlist",
      textContent: action === "book" ? "Book" : "Join the waitlist" });
    button.setAttribute("aria-label", `${button.textContent}: ${event.name}`);
    button.addEventListener("click", () => book(event, Number(quantity.value), button));
    wrap.append(label, quantity, button);
    td.append(wrap);
    if (hadFocus) button.focus();
  }
  if (hadFocus && action === "none") $("events-title").focus();
}

function ordinal(n) {
  const s = ["th", "st", "nd", "rd"], v = n % 100;
  return n + (s[(v - 20) % 10] || s[v] || s[0]);
}

function updateBooking(booking) {
  let row = state.bookingRows.get(booking.bookingId);
  if (!row) {
    row = $("bookings").insertRow(0);  // newest first
    row.dataset.bookingId = booking.bookingId;
    cell(row, "Event", "event");
    cell(row, "Seats", "num seats");
    cell(row, "Status", "status");
    const position = cell(row, "Place in line or time left", "position");
    position.append(document.createElement("span"));
    position.firstChild.className = "place";
    position.append(Object.assign(document.createElement("time"), { className: "countdown" }));
    cell(row, "Actions", "actions-cell");
    state.bookingRows.set(booking.bookingId, row);
    $("no-bookings").hidden = true;
  }
  row.querySelector(".event").textContent = eventName(booking.eventId);
  row.querySelector(".seats").textContent = booking.quantity;
  const status = row.querySelector(".status");
  const reason = booking.reason ? ` (${REASON_WORDS[booking.reason] || booking.reason})` : "";
  status.textContent = (STATUS_WORDS[booking.status] || booking.status) + reason;
  status.className = `status status-${booking.status}`;
  status.dataset.status = booking.status;
  const place = IN_LINE.has(booking.status) && booking.queuePosition != null;
  row.querySelector(".place").textContent = place ? `${ordinal(booking.queuePosition)} in line` : "";
  updateCountdown(booking);
  const td = row.querySelector(".actions-cell");
  const seats = `${booking.quantity} seat${booking.quantity === 1 ? "" : "s"} for ${eventName(booking.eventId)}`;
  // The controls a status offers, rebuilt only when that set changes (focus stays on them).
  const wanted = !CANCELLABLE.has(booking.status) ? "" : booking.status === "held" ? "confirm cancel" : "cancel";
  if (td.dataset.controls === wanted) return;
  const hadFocus = td.contains(document.activeElement);
  td.dataset.controls = wanted;
  td.replaceChildren();
  if (!wanted) { if (hadFocus) $("bookings-title").focus(); return; }
  const wrap = Object.assign(document.createElement("div"), { className: "actions" });
  if (booking.status === "held") {
    const confirm = Object.assign(document.createElement("button"), { type: "button", className: "confirm primary", textContent: "Confirm" });
    confirm.setAttribute("aria-label", `Confirm ${seats}`);
    confirm.addEventListener("click", () => confirmHold(booking, confirm));
    wrap.append(confirm);
  }
  const button = Object.assign(document.createElement("button"), { type: "button", className: "cancel", textContent: "Cancel" });
  button.setAttribute("aria-label", `Cancel ${seats}`);
  button.addEventListener("click", () => cancel(booking, button));
  wrap.append(button);
  td.append(wrap);
  if (hadFocus) (wrap.querySelector(".confirm") || button).focus();
}

if (sessionStorage.getItem("token")) start().catch(() => sessionStorage.removeItem("token"));
