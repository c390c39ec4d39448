// safegw status page: plain JavaScript, no build step. The token lives in sessionStorage
// (this tab only) and goes out as a bearer header; nothing is inserted as HTML.
"use strict";

const TOKEN_KEY = "safegw.token";
let timers = [];
let role = "viewer";

function $(id) { return document.getElementById(id); }

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

async function api(path, opts = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = Object.assign({ "Authorization": "Bearer " + token }, opts.headers || {});
  const r = await fetch(path, Object.assign({}, opts, { headers }));
  if (r.status === 401) { logout("token refused: sign in again"); throw new Error("unauthorized"); }
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try { const j = await r.json(); msg = typeof j.detail === "string" ? j.detail : JSON.stringify(j.detail); } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return r.json();
}

// the gateway sends numbers already as a person reads them (a float32 register at its
// shortest form, a scaled integer at its resolution): shown as sent, never re-rounded
function fmtValue(v) {
  if (v === null || v === undefined) return "—";
  return String(v);
}

function fmtSeconds(s) {
  return s === null || s === undefined ? "—" : fmtAge(s);
}

// an alarm's figure and its limit, each in its own unit: a reading and a limit in the
// channel's unit; for stale and bad the time so far and the threshold; for frozen the
// reading stuck and the threshold; for predict the time to the limit and the limit
function alarmFigures(a) {
  const u = a.unit ? " " + a.unit : "";
  const withUnit = (v) => (v === null || v === undefined ? "—" : fmtValue(v) + u);
  if (a.rule === "stale" || a.rule === "bad") return [fmtSeconds(a.duration_s), fmtSeconds(a.threshold_s)];
  if (a.rule === "frozen") return [withUnit(a.value), fmtSeconds(a.threshold_s)];
  if (a.rule === "predict") return ["in " + fmtSeconds(a.time_to_limit_s), withUnit(a.limit)];
  return [withUnit(a.value), withUnit(a.limit)];
}

function fmtAge(s) {
  if (s === null || s === undefined) return "never";
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function setConn(ok, text) {
  const c = $("conn");
  c.textContent = text;
  c.className = "conn " + (ok ? "ok" : "down");
}

async function refreshChannels() {
  const params = new URLSearchParams();
  const f = $("filter").value.trim();
  if (f) params.set("q", f);
  const st = $("state-filter").value;
  if (st) params.set("state", st);
  params.set("limit", "2000");
  try {
    const data = await api("/channels?" + params.toString());
    const body = document.createElement("tbody");
    for (const c of data.channels) {
      const tr = el("tr", null, c.state);
      tr.dataset.channel = c.name;
      tr.append(el("td", c.name), el("td", c.kind), el("td", fmtValue(c.value), "num value"), el("td", c.unit),
                el("td", c.quality, "quality"), el("td", fmtAge(c.age_s), "num"), el("td", c.device));
      body.append(tr);
    }
    $("channels").replaceChild(body, $("channels").tBodies[0]);
    $("channel-count").textContent = "(" + data.count + (data.total > data.count ? " of " + data.total : "") + ")";
    setConn(true, "live " + new Date().toLocaleTimeString());
  } catch (e) {
    if (e.message !== "unauthorized") setConn(false, "no connection: " + e.message);
  }
}

async function ack(channel, rule, btn) {
  btn.disabled = true;
  try {
    await api("/alarms/" + encodeURIComponent(channel) + "/ack", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(rule ? { rule } : {}),
    });
    $("message").textContent = "";
    await refreshAlarms();
  } catch (e) {
    $("message").textContent = "acknowledge failed: " + e.message;
    btn.disabled = false;
  }
}

async function refreshAlarms() {
  try {
    const data = await api("/alarms?history=0");
    const body = document.createElement("tbody");
    for (const a of data.active) {
      const acked = !String(a.state || "").endsWith("unacked");
      const tr = el("tr", null, "alarm" + (acked ? " acked" : ""));
      tr.dataset.channel = a.channel;
      tr.dataset.state = a.state;
      const btnCell = el("td");
      if (!acked) {
        const b = el("button", "acknowledge", "ack");
        b.disabled = role === "viewer";
        b.title = role === "viewer" ? "needs the operator role" : "acknowledge this alarm";
        b.addEventListener("click", () => ack(a.channel, a.rule, b));
        btnCell.append(b);
      }
      tr.append(el("td", a.channel), el("td", [a.rule, a.level].filter(Boolean).join(" ")),
                el("td", a.state, "alarm-state"), el("td", alarmFigures(a)[0], "num"),
                el("td", alarmFigures(a)[1], "num"), el("td", a.since || a.raised || a.time || ""), btnCell);
      body.append(tr);
    }
    $("alarms").replaceChild(body, $("alarms").tBodies[0]);
    $("alarm-count").textContent = "(" + data.active.length + ")";
    $("no-alarms").hidden = data.active.length > 0;
  } catch (e) {
    if (e.message !== "unauthorized") $("message").textContent = "alarms: " + e.message;
  }
}

async function refreshDue() {
  try {
    const items = await api("/due?within_days=60");
    const body = document.createElement("tbody");
    for (const d of items) {
      const tr = el("tr");
      tr.append(el("td", d.title), el("td", d.label), el("td", d.field), el("td", d.date),
                el("td", d.days_left < 0 ? "overdue " + (-d.days_left) + " d" : d.days_left,
                   "num" + (d.days_left < 0 ? " overdue" : "")));
      body.append(tr);
    }
    $("due").replaceChild(body, $("due").tBodies[0]);
    $("no-due").hidden = items.length > 0;
  } catch (e) {
    if (e.message !== "unauthorized") $("message").textContent = "registers: " + e.message;
  }
}

function stopTimers() { timers.forEach(clearInterval); timers = []; }

async function start() {
  try {
    const me = await api("/whoami");
    role = me.role;
    $("who").textContent = me.name + " (" + me.role + ")";
  } catch (e) {
    if (e.message !== "unauthorized") $("login-error").textContent = e.message;
    return;
  }
  try {
    const h = await (await fetch("/health")).json();
    $("gw-id").textContent = h.gateway;
  } catch (e) { /* cosmetic */ }
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  await Promise.all([refreshChannels(), refreshAlarms(), refreshDue()]);
  stopTimers();
  timers.push(setInterval(refreshChannels, 1000), setInterval(refreshAlarms, 1000), setInterval(refreshDue, 30000));
}

function logout(msg) {
  stopTimers();
  sessionStorage.removeItem(TOKEN_KEY);
  $("app").hidden = true;
  $("login").hidden = false;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login-error").textContent = msg || "";
  setConn(false, "not signed in");
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    start();
  });
  $("logout").addEventListener("click", () => logout(""));
  $("filter").addEventListener("input", refreshChannels);
  $("state-filter").addEventListener("change", refreshChannels);
  if (sessionStorage.getItem(TOKEN_KEY)) start();
});
