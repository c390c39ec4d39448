// safegw page shell: sign-in, navigation, language, and a router on the URL hash that mounts
// one view at a time (static/views/<name>.js, `export async function mount(root, ctx)`).
// Plain ES modules, no build step. The token lives in sessionStorage (this tab only) and goes
// out as a bearer header; the chosen language in localStorage. Nothing is inserted as HTML:
// server data goes through textContent / createElement only (the CSP forbids inline script).

const TOKEN_KEY = "safegw.token";
const LANG_KEY = "safegw.lang";
const LANGS = ["zh-CN", "en"];
// every route's view; a view whose module is missing shows "not available"
const VIEWS = ["start", "registers", "users", "trends", "alarms", "report"];

const state = {
  settings: { language: "en", timezone: "UTC", gateway: "" },
  lang: "en",
  strings: {},        // file name -> {en: {...}, "zh-CN": {...}}
  messages: {},       // language -> [[pattern, words], ...]: the API's messages translated
  me: null,           // {name, role}
  cleanup: null,      // the mounted view's cleanup function
  mounting: 0,        // the latest mount; an older one that finishes late is dropped
};

function $(id) { return document.getElementById(id); }

export function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

// ------------------------------------------------------------------ strings
async function loadStrings(file) {
  if (state.strings[file]) return state.strings[file];
  let table = {};
  try {
    const r = await fetch("/static/i18n/" + file + ".json");
    if (r.ok) table = await r.json();
  } catch (e) { /* no strings: keys fall back to English, then to the key */ }
  state.strings[file] = table;
  return table;
}

// a key looked up in the view's strings, then the shell's, in the current language, then in English
function translate(files, key, vars) {
  let s;
  for (const lang of [state.lang, "en"]) {
    for (const f of files) {
      const t = state.strings[f];
      if (t && t[lang] && Object.prototype.hasOwnProperty.call(t[lang], key)) { s = t[lang][key]; break; }
    }
    if (s !== undefined) break;
  }
  if (s === undefined) s = key;
  if (vars) s = s.replace(/\{(\w+)\}/g, (m, k) => (vars[k] === undefined ? m : String(vars[k])));
  return s;
}

const t = (key, vars) => translate(["core"], key, vars);

function applyStaticStrings() {
  document.documentElement.lang = state.lang;
  for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
  $("lang").value = state.lang;
  if (!state.me) $("conn").textContent = t("conn.signed_out");
  if (state.me) $("who").textContent = state.me.name + " (" + state.me.role + ")";
}

// ------------------------------------------------------------------ time
const fmtCache = {};

// ns since the epoch (number, bigint or digit string), an ISO string or a Date, as
// "YYYY-MM-DD HH:MM:SS" in the site's time zone
export function fmtTime(x, tz) {
  if (x === null || x === undefined || x === "") return "";
  let d;
  if (x instanceof Date) d = x;
  else if (typeof x === "bigint") d = new Date(Number(x / 1000000n));
  else if (typeof x === "number") d = new Date(x / 1e6);
  else if (/^\d{12,}$/.test(String(x))) d = new Date(Number(BigInt(x) / 1000000n));
  else d = new Date(String(x));
  if (isNaN(d.getTime())) return String(x);
  const zone = tz || state.settings.timezone;
  let f = fmtCache[zone];
  if (!f) {
    f = fmtCache[zone] = new Intl.DateTimeFormat("en-CA", {
      timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
    });
  }
  const p = {};
  for (const part of f.formatToParts(d)) p[part.type] = part.value;
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}`;
}

// ------------------------------------------------------------------ API
// a server message in the page's language: in Chinese, the known ones (static/messages.json)
// translated with the server's own words after them; otherwise as the server words it
function serverWords(msg) {
  const list = state.lang !== "en" && state.messages[state.lang];
  if (!list || typeof msg !== "string") return msg;
  for (const [pattern, words] of list) {
    const re = new RegExp(pattern);
    if (re.test(msg)) return msg.replace(re, words) + "（" + msg + "）";
  }
  return msg;
}

// where a validation error is: "grade", "row.3.grade" (CSV), or a workbook's cell as a
// spreadsheet names it: ["sheet", "ppe", "row", 3, "column", "C", "kind"] is "ppe!C3 kind"
function placeOf(loc) {
  if (loc[0] === "sheet" && loc[2] === "row") {
    const cell = loc[4] === "column" ? loc[5] + loc[3] : "row " + loc[3];
    return [loc[1] + "!" + cell, ...loc.slice(loc[4] === "column" ? 6 : 4)].join(" ");
  }
  return loc.join(".");
}

function errorText(status, statusText, j) {
  if (j && typeof j.detail === "string") return serverWords(j.detail);
  if (j && Array.isArray(j.detail)) {
    // validation errors: "where: why" for each, as the server words them
    return j.detail.map((d) => {
      const where = placeOf((d.loc || []).filter((x) => x !== "body"));
      return (where ? where + ": " : "") + serverWords(d.msg);
    }).join("; ");
  }
  return status + " " + statusText;
}

export async function fetchRaw(path, opts = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = Object.assign({ "Authorization": "Bearer " + token }, opts.headers || {});
  const r = await fetch(path, Object.assign({}, opts, { headers }));
  if (r.status === 401) {
    logout(t("login.refused"));
    const err = new Error("unauthorized");
    err.status = 401;
    throw err;
  }
  return r;
}

export async function api(path, opts = {}) {
  const o = Object.assign({}, opts);
  if (o.json !== undefined) {
    o.body = JSON.stringify(o.json);
    o.headers = Object.assign({ "Content-Type": "application/json" }, o.headers || {});
    delete o.json;
  }
  const r = await fetchRaw(path, o);
  let j = null;
  try { j = await r.json(); } catch (e) { /* not JSON */ }
  if (!r.ok) {
    const err = new Error(errorText(r.status, r.statusText, j));
    err.status = r.status;
    err.body = j;
    throw err;
  }
  return j;
}

// a body sent with XMLHttpRequest, whose upload reports progress (fetch cannot):
// resolves with the parsed JSON answer, rejects with the server's own wording
export function upload(path, body, onProgress, contentType = "application/octet-stream") {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open("POST", path);
    x.setRequestHeader("Authorization", "Bearer " + sessionStorage.getItem(TOKEN_KEY));
    x.setRequestHeader("Content-Type", contentType);
    if (onProgress) x.upload.addEventListener("progress", (e) => { if (e.lengthComputable) onProgress(e.loaded, e.total); });
    x.addEventListener("load", () => {
      let j = null;
      try { j = JSON.parse(x.responseText); } catch (e) { /* not JSON */ }
      if (x.status === 401) { logout(t("login.refused")); reject(Object.assign(new Error("unauthorized"), { status: 401 })); return; }
      if (x.status >= 200 && x.status < 300) resolve(j);
      else reject(Object.assign(new Error(errorText(x.status, x.statusText, j)), { status: x.status, body: j }));
    });
    x.addEventListener("error", () => reject(new Error(t("common.network"))));
    x.send(body);
  });
}

export function setConn(ok, text) {
  const c = $("conn");
  c.textContent = text;
  c.className = "conn " + (ok ? "ok" : "down");
}

// ------------------------------------------------------------------ router
// "#/registers/hidden_danger/3?x=1" -> {name: "registers", parts: ["hidden_danger", "3"], query}
export function parseHash(hash) {
  const h = (hash || "").replace(/^#\/?/, "");
  const [path, qs] = h.split("?", 2);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const name = parts.length ? parts.shift() : "start";
  return { name, parts, query: new URLSearchParams(qs || "") };
}

function makeCtx(view, route) {
  return {
    api, fetchRaw, el, setConn, upload,
    t: (key, vars) => translate([view, "core"], key, vars),
    lang: state.lang,
    role: state.me.role,
    user: state.me.name,
    tz: state.settings.timezone,
    settings: state.settings,
    fmtTime: (x) => fmtTime(x),
    words: (msg) => serverWords(msg),  // a server's message in the page's language
    navigate: (hash) => { if (location.hash === hash) route_(); else location.hash = hash; },
    route,
    message: (text) => { $("message").textContent = text || ""; },
  };
}

async function unmount() {
  const c = state.cleanup;
  state.cleanup = null;
  if (typeof c === "function") {
    try { c(); } catch (e) { console.warn("view cleanup failed", e); }
  }
}

async function route_() {
  if (!state.me) return;
  const route = parseHash(location.hash);
  const my = ++state.mounting;
  await unmount();
  $("message").textContent = "";
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("current", a.dataset.view === route.name);
    if (a.dataset.view === route.name) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const old = $("view");
  const root = el("div");
  root.id = "view";
  root.dataset.view = route.name;
  old.replaceWith(root);
  if (!VIEWS.includes(route.name)) {
    root.append(el("p", t("view.not_available"), "muted not-available"));
    return;
  }
  let mod;
  try {
    [mod] = await Promise.all([import("./views/" + route.name + ".js"), loadStrings(route.name)]);
  } catch (e) {
    if (my === state.mounting) root.append(el("p", t("view.not_available"), "muted not-available"));
    return;
  }
  if (my !== state.mounting) return;
  try {
    const cleanup = await mod.mount(root, makeCtx(route.name, route));
    if (my !== state.mounting) { if (typeof cleanup === "function") cleanup(); return; }
    state.cleanup = cleanup;
  } catch (e) {
    if (e.status === 401) return;
    console.warn("view failed", e);
    if (my === state.mounting) root.append(el("p", t("view.failed", { error: e.message }), "error"));
  }
}

// ------------------------------------------------------------------ sign-in
async function start() {
  try {
    state.me = await api("/whoami");
  } catch (e) {
    state.me = null;
    if (e.status !== 401) $("login-error").textContent = e.message;
    return;
  }
  $("who").textContent = state.me.name + " (" + state.me.role + ")";
  // the start page turns this into "live HH:MM:SS" as it polls; the other views leave it
  setConn(true, t("conn.signed_in"));
  document.body.dataset.role = state.me.role;
  // what the role may not use is hidden, as the API would refuse it
  for (const a of document.querySelectorAll("#nav [data-role]")) a.hidden = a.dataset.role !== state.me.role;
  $("login").hidden = true;
  $("app").hidden = false;
  $("nav").hidden = false;
  $("logout").hidden = false;
  $("login-error").textContent = "";
  await route_();
}

function logout(msg) {
  state.me = null;
  state.mounting++;
  unmount();
  sessionStorage.removeItem(TOKEN_KEY);
  $("view").replaceChildren();
  $("app").hidden = true;
  $("nav").hidden = true;
  $("login").hidden = false;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login-error").textContent = msg || "";
  setConn(false, t("conn.signed_out"));
}

async function loadSettings() {
  try {
    const r = await fetch("/page/settings");
    if (r.ok) state.settings = await r.json();
  } catch (e) { /* defaults: English, UTC */ }
  const chosen = localStorage.getItem(LANG_KEY);
  state.lang = LANGS.includes(chosen) ? chosen : (LANGS.includes(state.settings.language) ? state.settings.language : "en");
  await loadStrings("core");
  try {
    const r = await fetch("/static/messages.json");
    if (r.ok) state.messages = await r.json();
  } catch (e) { /* messages shown as the server words them */ }
  applyStaticStrings();
  $("gw-id").textContent = state.settings.gateway || "";
}

function init() {
  // the handlers first, so a sign-in as soon as the form shows is never lost; the settings
  // and strings load meanwhile, and signing in waits for them
  const settled = loadSettings();
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    await settled;
    start();
  });
  $("logout").addEventListener("click", () => logout(""));
  $("lang").addEventListener("change", () => {
    state.lang = $("lang").value;
    localStorage.setItem(LANG_KEY, state.lang);
    applyStaticStrings();
    route_();  // the view is mounted again in the new language
  });
  window.addEventListener("hashchange", route_);
  const stored = !!sessionStorage.getItem(TOKEN_KEY);
  if (!stored) $("login").hidden = false;
  settled.then(async () => {
    if (stored) await start();
    if (!state.me) $("login").hidden = false;
    document.body.dataset.ready = "1";
  });
}

init();
