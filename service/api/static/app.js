// harken dashboard: plain JavaScript, no build step, nothing loaded from outside this server.
//
// Data: GET /api/status and /api/events once, then WS /api/live for scores (~10 Hz),
// level, events, clips and control changes. With api.token set, the token is read from
// the page's #token=… fragment (never sent to the server as part of the URL) or asked
// for, kept in localStorage, sent as `Authorization: Bearer` and, on the WebSocket, as
// the subprotocol `bearer.<token>` (browsers cannot set WebSocket headers).
//
// Every URL is relative to the page, so the dashboard works under any path prefix: Home
// Assistant's ingress (/api/hassio_ingress/<token>/) or a reverse proxy at /harken/.
"use strict";

const HISTORY_S = 60;
const EXTRA_COLOURS = ["#f472b6", "#facc15", "#4ade80", "#60a5fa", "#fb7185"];
const PAGE = 25;

const state = {
  token: null,
  classes: new Map(), // name -> {control, card, history: [[t, score, active]], score}
  sources: [],
  source: null, // the source whose scores are shown
  events: new Map(), // id -> {event, row}
  cursor: null,
  filter: "",
  peakLevel: -90,
  peakAt: 0,
  playing: null, // {audio, button, url}
  ws: null,
  retryMs: 500,
};

const $ = (sel, root = document) => root.querySelector(sel);

// The folder the page was served from: harken's root as this browser reaches it.
const BASE = new URL("./", location.href);

/** An API path ("/api/status", as the API itself names its links) resolved under BASE. */
function url(path) {
  return new URL(path.replace(/^\/+/, ""), BASE).href;
}

/** The live WebSocket's URL under BASE (ws: or wss: like the page). */
function liveUrl() {
  const u = new URL("api/live", BASE);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  return u.href;
}

// ------------------------------------------------------------------ helpers
function colour(name) {
  // Known classes have a colour per theme in style.css (--class-<name>); others get one of a few.
  const themed = getComputedStyle(document.documentElement).getPropertyValue(`--class-${name}`).trim();
  if (themed) return themed;
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return EXTRA_COLOURS[h % EXTRA_COLOURS.length];
}

function label(name) {
  const s = name.replace(/_/g, " ");
  return s.charAt(0).toUpperCase() + s.slice(1);
}

function fmtTime(iso) {
  // The time alone for today's events; with the date (and the year, when not this one) for older ones.
  if (!iso) return "";
  const d = new Date(iso);
  const today = new Date();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  if (d.toDateString() === today.toDateString()) return time;
  const date = { month: "short", day: "numeric" };
  if (d.getFullYear() !== today.getFullYear()) date.year = "numeric";
  return `${d.toLocaleDateString([], date)}, ${time}`;
}

function fmtClock(iso) {
  const d = new Date(iso);
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return d.toDateString() === new Date().toDateString() ? time : `${d.toLocaleDateString([], { weekday: "short" })} ${time}`;
}

function fmtDuration(s) {
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

// ------------------------------------------------------------------ token + fetch
function loadToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    localStorage.setItem("harken.token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  state.token = localStorage.getItem("harken.token");
}

function askToken(rejected) {
  const dialog = $("#token-dialog");
  $("#token-error").hidden = !rejected;
  if (!dialog.open) dialog.showModal();
  return new Promise((resolve) => {
    $("#token-form").onsubmit = () => {
      state.token = $("#token-input").value.trim();
      localStorage.setItem("harken.token", state.token);
      resolve();
    };
  });
}

async function api(path, options = {}) {
  for (;;) {
    const headers = { ...(options.headers || {}) };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      options = { ...options, body: JSON.stringify(options.json) };
    }
    const response = await fetch(url(path), { ...options, headers });
    if (response.status === 401) {
      await askToken(Boolean(state.token));
      continue;
    }
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
      throw new Error(`${response.status}: ${detail}`);
    }
    return response;
  }
}

// ------------------------------------------------------------------ classes
function ensureClass(control) {
  let entry = state.classes.get(control.name);
  if (!entry) {
    const card = $("#class-card").content.firstElementChild.cloneNode(true);
    card.dataset.class = control.name;
    card.id = `class-${control.name}`;
    $(".class-name", card).textContent = label(control.name);
    // Its one-line summary (narrow screens): a link down to the card.
    const chip = document.createElement("a");
    chip.className = "chip";
    chip.href = `#${card.id}`;
    chip.dataset.class = control.name;
    chip.innerHTML = '<span class="swatch"></span><span class="chip-name"></span><span class="badge state">idle</span><span class="score">0.00</span>';
    $(".chip-name", chip).textContent = label(control.name);
    $("#class-summary").append(chip);
    entry = { control, card, chip, history: [], score: 0, active: false, colour: "" };
    paintClass(entry);
    state.classes.set(control.name, entry);
    bindControls(entry);
    $("#classes").append(card);
    new ResizeObserver(() => sizeCanvas(entry)).observe($(".chart", card));
    const option = document.createElement("option");
    option.value = control.name;
    option.textContent = label(control.name);
    $("#event-filter").append(option);
  }
  entry.control = control;
  renderControl(entry);
  return entry;
}

function paintClass(entry) {
  entry.colour = colour(entry.control.name);
  entry.card.style.setProperty("--c", entry.colour);
  entry.chip.style.setProperty("--c", entry.colour);
}

function renderControl(entry) {
  const { control, card } = entry;
  $(".enabled", card).checked = control.enabled;
  const slider = $(".sensitivity", card);
  if (document.activeElement !== slider) slider.value = control.sensitivity;
  $(".sens-value", card).textContent = Number(control.sensitivity).toFixed(2);
  const snoozed = control.snoozed && control.snoozed_until;
  $(".snooze-select", card).hidden = Boolean(snoozed);
  $(".snooze-note", card).hidden = !snoozed;
  $(".wake", card).hidden = !snoozed;
  if (snoozed) $(".snooze-note", card).textContent = `Snoozed until ${fmtClock(control.snoozed_until)}`;
  card.classList.toggle("off", !control.enabled || Boolean(snoozed));
  renderState(entry);
}

function renderState(entry) {
  const badge = $(".badge.state", entry.card);
  const { control } = entry;
  let text = "idle", cls = "";
  if (!control.enabled) { text = "off"; cls = "disabled"; }
  else if (control.snoozed) { text = "snoozed"; cls = "snoozed"; }
  else if (entry.active) { text = "heard"; cls = "on"; }
  for (const b of [badge, $(".badge.state", entry.chip)]) {
    b.textContent = text;
    b.className = `badge state ${cls}`;
  }
  entry.card.classList.toggle("active", entry.active && control.enabled);
  entry.chip.classList.toggle("active", entry.active && control.enabled);
}

async function patchClass(name, body) {
  try {
    const response = await api(`/api/classes/${encodeURIComponent(name)}`, { method: "PATCH", json: body });
    ensureClass(await response.json());
  } catch (err) {
    console.error(err);
    ensureClass(state.classes.get(name).control); // put the widgets back
  }
}

function bindControls(entry) {
  const { card } = entry;
  const name = () => entry.control.name;
  $(".enabled", card).addEventListener("change", (e) => patchClass(name(), { enabled: e.target.checked }));
  const slider = $(".sensitivity", card);
  slider.addEventListener("input", () => { $(".sens-value", card).textContent = Number(slider.value).toFixed(2); });
  slider.addEventListener("change", () => patchClass(name(), { sensitivity: Number(slider.value) }));
  $(".snooze-select", card).addEventListener("change", (e) => {
    const minutes = Number(e.target.value);
    e.target.value = "";
    if (minutes) patchClass(name(), { snooze_minutes: minutes });
  });
  $(".wake", card).addEventListener("click", () => patchClass(name(), { snooze_minutes: 0 }));
}

// ------------------------------------------------------------------ charts
function sizeCanvas(entry) {
  const canvas = $(".chart", entry.card);
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.max(1, Math.round(canvas.clientWidth * ratio));
  canvas.height = Math.max(1, Math.round(canvas.clientHeight * ratio));
  drawChart(entry, performance.now() / 1000);
}

function drawChart(entry, now) {
  const canvas = $(".chart", entry.card);
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  const ratio = window.devicePixelRatio || 1;
  const styles = getComputedStyle(document.documentElement);
  const c = entry.colour;
  ctx.clearRect(0, 0, w, h);
  const pad = 4 * ratio;
  const y = (v) => h - pad - v * (h - 2 * pad);
  const x = (t) => w - ((now - t) / HISTORY_S) * w;
  // Grid: quarters of the score range, and one line every 10 s.
  ctx.strokeStyle = styles.getPropertyValue("--grid");
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (const v of [0.25, 0.5, 0.75]) { ctx.moveTo(0, y(v)); ctx.lineTo(w, y(v)); }
  for (let s = 10; s < HISTORY_S; s += 10) { ctx.moveTo(x(now - s), 0); ctx.lineTo(x(now - s), h); }
  ctx.stroke();
  const points = entry.history;
  if (points.length < 2) return;
  // Active stretches (an event going on) as a soft band.
  ctx.fillStyle = c + "22";
  let bandStart = null;
  for (const [t, , active] of points) {
    if (active && bandStart === null) bandStart = t;
    if (!active && bandStart !== null) { ctx.fillRect(x(bandStart), 0, x(t) - x(bandStart), h); bandStart = null; }
  }
  if (bandStart !== null) ctx.fillRect(x(bandStart), 0, w - x(bandStart), h);
  // The score line with a gradient fill under it.
  ctx.beginPath();
  points.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
  const gradient = ctx.createLinearGradient(0, 0, 0, h);
  gradient.addColorStop(0, c + "66");
  gradient.addColorStop(1, c + "00");
  ctx.lineWidth = 2 * ratio;
  ctx.lineJoin = "round";
  ctx.strokeStyle = c;
  ctx.stroke();
  ctx.lineTo(x(points[points.length - 1][0]), h);
  ctx.lineTo(x(points[0][0]), h);
  ctx.closePath();
  ctx.fillStyle = gradient;
  ctx.fill();
}

function frame() {
  const now = performance.now() / 1000;
  for (const entry of state.classes.values()) {
    while (entry.history.length && entry.history[0][0] < now - HISTORY_S - 1) entry.history.shift();
    drawChart(entry, now);
  }
  requestAnimationFrame(frame);
}

// ------------------------------------------------------------------ live data
function onLive(message) {
  if (!state.source) selectSource(message.source);
  if (message.source !== state.source) return;
  const now = performance.now() / 1000;
  for (const [name, score] of Object.entries(message.scores)) {
    const entry = state.classes.get(name);
    if (!entry) continue;
    const active = Boolean(message.active && message.active[name]);
    entry.history.push([now, score, active]);
    entry.score = score;
    $(".score", entry.card).textContent = score.toFixed(2);
    $(".score", entry.chip).textContent = score.toFixed(2);
    if (active !== entry.active) { entry.active = active; renderState(entry); }
  }
  renderLevel(message.level_dbfs);
  document.body.dataset.live = "1"; // tests and humans: live data has arrived
}

function renderLevel(dbfs) {
  const clamp = Math.max(-90, Math.min(0, dbfs));
  const pct = ((clamp + 90) / 90) * 100;
  $("#level-bar").style.width = `${100 - pct}%`;
  $("#level-value").textContent = dbfs.toFixed(1);
  $("#level-meter").setAttribute("aria-valuenow", clamp.toFixed(0));
  const now = performance.now();
  if (clamp >= state.peakLevel || now - state.peakAt > 2000) { state.peakLevel = clamp; state.peakAt = now; }
  $("#level-peak").style.left = `calc(${((state.peakLevel + 90) / 90) * 100}% - 2px)`;
}

function selectSource(name) {
  state.source = name;
  $("#source-select").value = name;
  $("#fact-source").textContent = name;
  for (const entry of state.classes.values()) entry.history = [];
}

function setSources(names) {
  state.sources = names;
  const select = $("#source-select");
  select.replaceChildren(...names.map((n) => Object.assign(document.createElement("option"), { value: n, textContent: n })));
  $("#source-pick").hidden = names.length < 2;
  if (!state.source && names.length) selectSource(names[0]);
}

// ------------------------------------------------------------------ events
function renderEvent(event, { prepend = true } = {}) {
  if (state.filter && event.class !== state.filter) return;
  let item = state.events.get(event.id);
  if (!item) {
    const row = $("#event-row").content.firstElementChild.cloneNode(true);
    row.dataset.id = event.id;
    item = { event, row };
    state.events.set(event.id, item);
    $(".play", row).addEventListener("click", () => togglePlay(item));
    $(".fa", row).addEventListener("click", () => toggleFalseAlarm(item));
    const list = $("#events");
    if (prepend) list.prepend(row); else list.append(row);
  }
  // Keep what only the API knows (feedback) when a live message updates the event.
  item.event = { ...item.event, ...event, feedback: event.feedback ?? item.event.feedback };
  const e = item.event;
  const row = item.row;
  row.style.setProperty("--c", colour(e.class));
  row.dataset.state = e.state;
  $(".ev-class", row).textContent = label(e.class);
  $(".ev-source", row).textContent = `· ${e.source}`;
  $(".badge.live", row).hidden = e.state === "closed";
  const parts = [fmtTime(e.started_at)];
  if (e.duration_s != null) parts.push(`${e.duration_s.toFixed(1)} s`);
  parts.push(`peak ${(e.peak_score ?? e.score).toFixed(2)}`);
  const when = $(".ev-when", row);
  when.textContent = parts.join(" · ");
  when.title = new Date(e.started_at).toLocaleString();
  // A disabled button alone does not say why (and phones show no tooltips): say it in the row too.
  const ongoing = e.state !== "closed";
  const play = $(".play", row);
  play.disabled = !e.clip_url;
  const why = e.clip_url ? "Play the clip" : ongoing ? "The clip is written when the event ends" : "No clip was kept for this event";
  play.title = why;
  play.setAttribute("aria-label", why);
  $(".clip-note", row).hidden = Boolean(e.clip_url) || !ongoing;
  const fa = e.feedback === "false_alarm";
  row.classList.toggle("false-alarm", fa);
  $(".fa", row).textContent = fa ? "Undo" : "False alarm";
  $(".fa", row).title = fa ? "It was right after all" : "Mark as a false alarm; its clip is kept for retraining";
  $("#events-empty").hidden = state.events.size > 0;
}

async function loadEvents(more = false) {
  const params = new URLSearchParams({ limit: String(PAGE) });
  if (state.filter) params.set("class", state.filter);
  if (more && state.cursor) params.set("cursor", state.cursor);
  const page = await (await api(`/api/events?${params}`)).json();
  for (const event of page.events) renderEvent(event, { prepend: false });
  state.cursor = page.next_cursor;
  $("#more").hidden = !page.next_cursor;
  $("#events-empty").hidden = state.events.size > 0;
}

function resetEvents() {
  state.events.clear();
  $("#events").replaceChildren();
  state.cursor = null;
  return loadEvents();
}

async function togglePlay(item) {
  const button = $(".play", item.row);
  if (state.playing) {
    const wasThis = state.playing.button === button;
    stopPlaying();
    if (wasThis) return;
  }
  try {
    const blob = await (await api(item.event.clip_url)).blob();
    const url = URL.createObjectURL(blob);
    const audio = new Audio(url);
    state.playing = { audio, button, url };
    button.classList.add("playing");
    audio.addEventListener("ended", stopPlaying);
    await audio.play();
  } catch (err) {
    console.error(err);
    stopPlaying();
  }
}

function stopPlaying() {
  if (!state.playing) return;
  const { audio, button, url } = state.playing;
  audio.pause();
  button.classList.remove("playing");
  URL.revokeObjectURL(url);
  state.playing = null;
}

async function toggleFalseAlarm(item) {
  const verdict = item.event.feedback === "false_alarm" ? "true_positive" : "false_alarm";
  try {
    const result = await (await api(`/api/events/${item.event.id}/feedback`, { method: "POST", json: { verdict } })).json();
    renderEvent(result.event);
  } catch (err) {
    console.error(err);
  }
}

// ------------------------------------------------------------------ status + socket
async function refreshStatus() {
  try {
    const status = await (await api("/api/status")).json();
    $("#fact-model").textContent = `${status.model.name} ${status.model.version}`;
    $("#fact-uptime").textContent = fmtDuration(status.uptime_s);
    $("#version").textContent = `harken ${status.version}`;
    setSources(status.sources.map((s) => s.name));
    const current = status.sources.find((s) => s.name === state.source);
    $("#fact-state").textContent = current ? current.state + (current.error ? ` (${current.error})` : "") : "–";
    for (const control of status.classes) ensureClass(control);
  } catch (err) {
    console.error(err);
  }
}

function setConnection(kind, text) {
  $("#conn").dataset.state = kind;
  $("#conn-text").textContent = text;
}

function connect() {
  const protocols = state.token ? ["harken", `bearer.${state.token}`] : ["harken"];
  const ws = new WebSocket(liveUrl(), protocols);
  state.ws = ws;
  ws.onopen = () => { state.retryMs = 500; setConnection("live", "live"); };
  ws.onmessage = (msg) => {
    const data = JSON.parse(msg.data);
    switch (data.type) {
      case "hello":
        setSources(data.sources);
        data.classes.forEach(ensureClass);
        $("#fact-model").textContent = `${data.model.name} ${data.model.version}`;
        break;
      case "live": onLive(data); break;
      case "event": renderEvent(data.event); break;
      case "clip": {
        const item = state.events.get(data.id);
        if (item) renderEvent({ ...item.event, clip_url: `/api/events/${data.id}/clip.wav` });
        break;
      }
      case "control": ensureClass(data.control); break;
      case "feedback": {
        const item = state.events.get(data.id);
        if (item) renderEvent({ ...item.event, feedback: data.verdict });
        break;
      }
      default: break;
    }
  };
  ws.onclose = (e) => {
    setConnection("offline", "reconnecting…");
    const delay = state.retryMs;
    state.retryMs = Math.min(state.retryMs * 2, 10000);
    // 1008: the token was refused (or the handshake rejected); ask for it via a REST call.
    const next = e.code === 1008 || e.code === 1006 ? refreshStatus() : Promise.resolve();
    next.finally(() => setTimeout(connect, delay));
  };
}

// ------------------------------------------------------------------ theme
function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  $('meta[name="theme-color"]').content = theme === "light" ? "#f4f6f9" : "#0f1419";
  for (const entry of state.classes.values()) paintClass(entry);
  for (const item of state.events.values()) item.row.style.setProperty("--c", colour(item.event.class));
}

function initTheme() {
  const saved = localStorage.getItem("harken.theme");
  const prefersLight = window.matchMedia("(prefers-color-scheme: light)").matches;
  applyTheme(saved || (prefersLight ? "light" : "dark"));
  $("#theme-toggle").addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "light" ? "dark" : "light";
    localStorage.setItem("harken.theme", next);
    applyTheme(next);
  });
}

// ------------------------------------------------------------------ start
async function main() {
  initTheme();
  loadToken();
  $("#source-select").addEventListener("change", (e) => selectSource(e.target.value));
  $("#event-filter").addEventListener("change", (e) => { state.filter = e.target.value; resetEvents().catch(console.error); });
  $("#more").addEventListener("click", () => loadEvents(true).catch(console.error));
  await refreshStatus();
  await loadEvents().catch(console.error);
  connect();
  requestAnimationFrame(frame);
  setInterval(refreshStatus, 10000);
}

main();
