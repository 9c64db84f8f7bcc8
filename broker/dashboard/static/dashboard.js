// labctl dashboard: one WebSocket (/ws) carries the lab state and every event (a snapshot
// first, then updates: the devices that changed, leases, queue, and the events since); the device
// page adds its console (/ws/console/<name>). No polling, no framework, no network beyond
// this broker. Rendering rebuilds small tables; a clock tick updates the relative times.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const BUILTIN = new Set(["name", "kind", "driver", "host"]);
const TAIL = 300;

const state = {
  devices: [], leases: [], queue: [], events: [],
  skew: 0,                  // server time - local time, seconds
  filter: null,             // Set of device names the selector matched, or null
  filterText: "",
  paused: false, missed: 0, // event tail
  topic: null,              // RegExp from the topic glob, or null
  device: null,             // name, on the device page
  detail: null,             // /api/devices/<name> for the device page
};

const now = () => Date.now() / 1000 + state.skew;

function ago(ts) {
  if (!ts) return "—";
  let s = Math.max(0, Math.round(now() - ts));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d${Math.floor(s % 86400 / 3600)}h`;
}
function left(end) {
  const s = Math.round(end - now());
  if (s <= 0) return "ending";
  if (s < 3600) return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  return `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`;
}
function clock(ts) {
  return new Date(ts * 1000).toLocaleTimeString([], {hour12: false});
}
function brief(v) {
  if (v === null || v === undefined) return "";
  if (typeof v !== "object") return String(v);
  return Object.entries(v).map(([k, x]) => `${k}=${typeof x === "object" && x !== null ? JSON.stringify(x) : x}`).join(" ");
}
function globRe(glob) {
  const re = glob.replace(/[.+^${}()|\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${re}$`);
}

// -- the live connection ---------------------------------------------------------------------
let backoff = 500;
function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.onopen = () => { backoff = 500; setConn("live", "up"); };
  ws.onclose = () => {
    setConn("reconnecting", "down");
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 10000);
  };
  ws.onmessage = (m) => receive(JSON.parse(m.data));
}
function setConn(text, cls) {
  const el = $("#conn");
  el.textContent = text;
  el.className = `conn ${cls}`;
}

function receive(msg) {
  if (msg.type === "update") {
    if (msg.lab) {  // changed devices only; leases and queue whole
      const byName = new Map(state.devices.map((d) => [d.name, d]));
      msg.lab.devices.forEach((d) => byName.set(d.name, d));
      msg.lab.removed.forEach((n) => byName.delete(n));
      const devices = [...byName.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      receive({type: "lab", now: msg.lab.now, devices, leases: msg.lab.leases, queue: msg.lab.queue,
               storage: msg.lab.storage});
    }
    msg.events.forEach(onEvent);
  } else if (msg.type === "snapshot" || msg.type === "lab") {
    state.skew = msg.now - Date.now() / 1000;
    const before = state.devices.map((d) => d.name).join("\n");
    state.devices = msg.devices;
    state.leases = msg.leases;
    state.queue = msg.queue;
    showStorage(msg.storage);
    if (msg.insecure) $("#insecure").hidden = !msg.insecure.length;  // --insecure: say so
    if (msg.type === "snapshot") {
      state.events = msg.events.slice(-TAIL);
      state.missed = 0;
      renderEvents();
    }
    if (state.filterText && before !== state.devices.map((d) => d.name).join("\n")) applySelector();
    render();
  } else if (msg.type === "event") {
    onEvent(msg.event);
  }
}

// the broker's state disk: full -> lease changes are refused until it has space again
function showStorage(storage) {
  const full = storage && storage.full;
  $("#broker").textContent = full
    ? `${location.host} · STATE DISK FULL: lease changes refused (${storage.unjournaled || 0} events not journaled)`
    : location.host;
  $("#broker").className = full ? "conn down" : "muted";
}

function onEvent(ev) {
  if (ev.topic === "broker.storage") showStorage(ev.body);
  state.events.push(ev);
  if (state.events.length > TAIL * 2) state.events.splice(0, state.events.length - TAIL);
  if (state.paused) {
    state.missed += 1;
    $("#pause").textContent = `resume (${state.missed} new)`;
  } else {
    appendEvent(ev);
  }
  if (state.device && state.detail && ev.topic.startsWith(`device.${state.device}.`)) {
    state.detail.events.push(ev);
    if (ev.topic.endsWith(".status")) state.detail.status_history.push({ts: ev.ts, status: ev.body});
    renderDeviceTables();
  }
}

// -- the lab page ----------------------------------------------------------------------------
function render() {
  const online = state.devices.filter((d) => d.online).length;
  $("#n-online").textContent = online;
  $("#n-devices").textContent = state.devices.length;
  $("#n-leases").textContent = state.leases.length;
  $("#n-queue").textContent = state.queue.length;
  if (state.device) renderDevice(); else renderLab();
}

function leaseByRef(ref) {
  return state.leases.find((l) => l.ref === ref);
}

function renderLab() {
  const rows = state.devices.filter((d) => !state.filter || state.filter.has(d.name));
  $("#shown").textContent = state.filter ? `${rows.length} of ${state.devices.length}` : "";
  $("#devices tbody").innerHTML = rows.map((d) => {
    const labels = Object.entries(d.labels).filter(([k]) => !BUILTIN.has(k))
      .map(([k, v]) => `<span class="label">${esc(k)}=${esc(v)}</span>`).join("");
    const lease = d.lease ? leaseByRef(d.lease) : null;
    const leaseCell = d.lease
      ? `<span class="ref">${esc(d.lease)}</span> <span class="left" data-end="${lease ? lease.end : ""}">${lease ? left(lease.end) : ""}</span><div class="holder">${esc(d.holder)}</div>`
      : `<span class="muted">free</span>`;
    const onlineCell = d.online
      ? `<span class="dot on"></span>online <span class="since muted" data-since="${d.online_since || ""}">${d.online_since ? ago(d.online_since) : ""}</span>`
      : `<span class="dot off"></span>offline <span class="why">${esc(d.offline_reason)}</span>`;
    return `<tr data-device="${esc(d.name)}" class="${d.online ? "online" : "offline"} ${d.lease ? "leased" : ""}">
      <td class="name"><a href="/device/${encodeURIComponent(d.name)}">${esc(d.name)}</a></td>
      <td>${esc(d.kind)}</td><td class="muted">${esc(d.driver)}</td>
      <td class="labels">${labels}</td>
      <td class="online-cell">${onlineCell}</td>
      <td class="health"><span class="badge ${esc(d.health)}">${esc(d.health)}</span> <span class="why">${esc(d.health_reason)}</span></td>
      <td class="lease">${leaseCell}</td>
      <td class="status" title="${esc(JSON.stringify(d.status))}"><div class="clip">${esc(brief(d.status))}</div><span class="muted since" data-since="${d.status_ts || ""}">${d.status_ts ? ago(d.status_ts) : ""}</span></td>
    </tr>`;
  }).join("") || `<tr><td colspan="8" class="muted empty">${state.filter ? "no device matches" : "no devices registered"}</td></tr>`;

  $("#leases tbody").innerHTML = state.leases.map((l) => `<tr data-lease="${esc(l.ref)}">
      <td><span class="ref">${esc(l.ref)}</span><div class="holder">${esc(l.holder)}</div></td>
      <td class="devs">${l.devices.map(esc).join("<br>")}</td>
      <td class="left" data-end="${l.end}">${left(l.end)}</td></tr>`).join("")
    || `<tr><td colspan="3" class="muted empty">no leases</td></tr>`;
  $("#queue tbody").innerHTML = state.queue.map((w) => `<tr>
      <td>${w.position}</td><td class="sel">${esc(w.selector)}</td><td>${esc(w.holder)}</td>
      <td class="since" data-since="${w.since}">${ago(w.since)}</td></tr>`).join("")
    || `<tr><td colspan="4" class="muted empty">nobody waiting</td></tr>`;
}

function eventItem(ev) {
  const body = ev.body || {};
  const kind = body.online === false ? "offline" : ev.topic.split(".").pop();
  return `<li class="ev ${esc(kind)}" data-topic="${esc(ev.topic)}"><span class="t">${clock(ev.ts)}</span>
    <span class="topic">${esc(ev.topic)}</span> <span class="body">${esc(brief(ev.body))}</span></li>`;
}
function shown(ev) {
  return !ev.topic.startsWith("sync.") && (!state.topic || state.topic.test(ev.topic));
}
function renderEvents() {
  $("#events").innerHTML = state.events.filter(shown).slice(-TAIL).reverse().map(eventItem).join("");
}
function appendEvent(ev) {
  if (!shown(ev)) return;
  const list = $("#events");
  list.insertAdjacentHTML("afterbegin", eventItem(ev));
  while (list.children.length > TAIL) list.lastChild.remove();
}

// -- the selector box: parsed by the broker's own parser (/api/devices?selector=) --------
let selectorTimer = null;
async function applySelector() {
  const text = $("#selector").value.trim();
  state.filterText = text;
  const box = $("#selector-error");
  if (!text) {
    state.filter = null;
    box.hidden = true;
    $("#selector").classList.remove("bad");
    renderLab();
    return;
  }
  const res = await fetch(`/api/devices?selector=${encodeURIComponent(text)}`);
  const body = await res.json();
  if (text !== state.filterText) return; // typed on meanwhile
  if (res.ok) {
    state.filter = new Set(body.map((d) => d.name));
    box.hidden = true;
    $("#selector").classList.remove("bad");
  } else {
    $(".msg", box).textContent = body.error;
    $(".caret", box).textContent = `${body.selector}\n${" ".repeat(Math.max(0, (body.column || 1) - 1))}^`;
    box.hidden = false;
    $("#selector").classList.add("bad");
  }
  renderLab();
}

// -- the device page -------------------------------------------------------------------------
async function loadDevice() {
  const res = await fetch(`/api/devices/${encodeURIComponent(state.device)}`);
  const body = await res.json();
  if (!res.ok) {
    $("#d-name").textContent = `${state.device}: ${body.error}`;
    return;
  }
  state.detail = body;
  renderDevice();
  renderDeviceTables();
  if (body.kind === "serial") openConsole();
}

function renderDevice() {
  const live = state.devices.find((d) => d.name === state.device);
  const d = Object.assign({}, state.detail || {}, live || {});
  if (!d.name) return;
  document.title = `${d.name} · labctl`;
  $("#d-name").textContent = d.name;
  $("#d-online").innerHTML = d.online
    ? `<span class="dot on"></span>online <span class="muted">since ${d.online_since ? ago(d.online_since) : "—"}</span>`
    : `<span class="dot off"></span>offline <span class="why">${esc(d.offline_reason)}</span>`;
  $("#device-view").className = d.online ? "online" : "offline";
  const lease = d.lease ? leaseByRef(d.lease) : null;
  const labels = Object.entries(d.labels || {}).filter(([k]) => !BUILTIN.has(k))
    .map(([k, v]) => `<span class="label">${esc(k)}=${esc(v)}</span>`).join("");
  const rows = [
    ["kind", esc(d.kind)], ["driver", esc(d.driver)], ["service", esc(d.service)],
    ["host", esc((d.labels || {}).host)], ["labels", labels],
    ["health", `<span class="badge ${esc(d.health)}">${esc(d.health)}</span> ${esc(d.health_reason)}`],
    ["lease", d.lease ? `<span class="ref">${esc(d.lease)}</span> ${esc(d.holder)} ${lease ? `<span class="left" data-end="${lease.end}">${left(lease.end)}</span> left` : ""}` : `<span class="muted">free</span>`],
    ["on release", esc(d.on_release)],
    ["status", `<code>${esc(JSON.stringify(d.status))}</code> <span class="muted since" data-since="${d.status_ts || ""}">${d.status_ts ? ago(d.status_ts) : ""}</span>`],
  ];
  $("#d-summary").innerHTML = rows.map(([k, v]) => `<dt>${k}</dt><dd class="f-${k.replace(" ", "-")}">${v}</dd>`).join("");
}

function renderDeviceTables() {
  const d = state.detail;
  if (!d) return;
  $("#d-history tbody").innerHTML = d.status_history.slice(-60).reverse().map((h) =>
    `<tr><td class="t">${clock(h.ts)}</td><td>${esc(brief(h.status))}</td></tr>`).join("")
    || `<tr><td colspan="2" class="muted empty">no status published yet</td></tr>`;
  $("#d-events tbody").innerHTML = d.events.slice(-60).reverse().map((e) =>
    `<tr><td class="t">${clock(e.ts)}</td><td class="topic">${esc(e.topic.slice(d.name.length + 8))}</td><td>${esc(brief(e.body))}</td></tr>`).join("")
    || `<tr><td colspan="3" class="muted empty">no events</td></tr>`;
  const methods = Object.entries((d.interface || {}).methods || {});
  $("#d-methods tbody").innerHTML = methods.map(([name, m]) => {
    const args = (m.args || []).map((a) => a.default !== undefined ? `${a.name}=${JSON.stringify(a.default)}` : a.name).join(", ");
    return `<tr><td class="method">${esc(name)}(${esc(args)})</td><td>${m.mutating ? '<span class="badge lease">needs lease</span>' : '<span class="muted">anyone</span>'}</td><td>${esc(m.doc)}</td></tr>`;
  }).join("") || `<tr><td colspan="3" class="muted empty">no methods</td></tr>`;
}

function openConsole() {
  $("#d-console-panel").hidden = false;
  const term = new Terminal({
    convertEol: false, disableStdin: true, cursorBlink: false, scrollback: 5000, rows: 24,
    fontFamily: "ui-monospace, 'DejaVu Sans Mono', monospace", fontSize: 14,
    theme: {background: "#0b0e12", foreground: "#d6dde6"},
  });
  term.open($("#d-console"));
  window.labctlTerminal = term;
  const st = $("#d-console-state");
  const go = () => {
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/console/${encodeURIComponent(state.device)}`);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (m) => {
      if (typeof m.data !== "string") { term.write(new Uint8Array(m.data)); return; }
      const note = JSON.parse(m.data);
      if (note.type === "reset") term.reset();
      else if (note.type === "open") st.textContent = "· connected";
      else if (note.type === "closed") st.textContent = `· ${note.reason}`;
      else if (note.type === "error") st.textContent = `· ${note.error}`;
    };
    ws.onclose = () => { st.textContent = "· reconnecting"; setTimeout(() => { term.reset(); go(); }, 1000); };
  };
  go();
}

// -- wiring ----------------------------------------------------------------------------------
function tick() {
  $("#clock").textContent = clock(now());
  document.querySelectorAll("[data-end]").forEach((el) => { if (el.dataset.end) el.textContent = left(+el.dataset.end); });
  document.querySelectorAll("[data-since]").forEach((el) => { if (el.dataset.since) el.textContent = ago(+el.dataset.since); });
}

function start() {
  const m = location.pathname.match(/^\/device\/(.+)$/);
  if (m) {
    state.device = decodeURIComponent(m[1]);
    $("#device-view").hidden = false;
    loadDevice();
  } else {
    $("#lab-view").hidden = false;
    $("#selector").addEventListener("input", () => {
      clearTimeout(selectorTimer);
      selectorTimer = setTimeout(applySelector, 150);
    });
    $("#topic").addEventListener("input", () => {
      const t = $("#topic").value.trim();
      state.topic = t ? globRe(t.includes("*") || t.includes("?") ? t : `${t}*`) : null;
      renderEvents();
    });
    $("#pause").addEventListener("click", () => {
      state.paused = !state.paused;
      $("#pause").textContent = state.paused ? "resume" : "pause";
      $("#pause").classList.toggle("on", state.paused);
      if (!state.paused) { state.missed = 0; renderEvents(); }
    });
  }
  $("#broker").textContent = location.host;
  connect();
  tick();
  setInterval(tick, 1000);
}
start();
