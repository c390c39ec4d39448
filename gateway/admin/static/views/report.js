// Shift report (#/report?from=8h): for a period, the alarms with their acknowledgement times,
// the channels that were faulty and for how long, and the top alarm sources (chattering and
// standing alarms marked), from GET /reports/shift. Printable (views/report.css holds the
// print rules) and downloadable as PDF or XLSX (the server writes both, in the page's language).

const PRESETS = ["8h", "12h", "24h", "7d"];
const ALARM_COLS = ["channel", "area", "level", "raised", "acknowledged", "ack_by", "cleared", "duration_s"];
const FAULTY_COLS = ["channel", "area", "rules", "count", "faulty_s", "since", "still_faulty"];
const TOP_COLS = ["channel", "area", "count", "share", "chattering", "standing"];
const SUMMARY = ["alarms", "per_hour", "unacknowledged", "median_ack_s", "faulty_channels", "chattering", "standing"];

function query(ctx) {
  if (ctx.route && ctx.route.query) return ctx.route.query;
  return new URLSearchParams(location.hash.split("?", 2)[1] || "");
}

function addStyle() {
  if (document.getElementById("report-css")) return;
  const l = document.createElement("link");
  l.id = "report-css";
  l.rel = "stylesheet";
  l.href = "/static/views/report.css";
  document.head.append(l);
}

// a report value as text: the same words the PDF and the XLSX carry (gateway/admin/reportdoc.py)
export function cell(v, t) {
  if (v === null || v === undefined) return "";
  if (v === true) return t("report.yes");
  if (v === false) return "";
  return String(v);
}

export async function mount(root, ctx) {
  const { el, t } = ctx;
  addStyle();
  const q = query(ctx);
  const st = { from: (q.get("from") || "8h").slice(0, 40), to: (q.get("to") || "").slice(0, 40), gone: false };

  root.classList.add("report");
  const title = el("h2", t("report.title"));
  const form = el("form", null, "filters no-print");
  form.id = "report-form";
  const lFrom = el("label", t("report.from"));
  const iFrom = Object.assign(el("input"), { type: "text", maxLength: 40, value: st.from, id: "report-from" });
  lFrom.append(iFrom);
  const lTo = el("label", t("report.to"));
  const iTo = Object.assign(el("input"), { type: "text", maxLength: 40, value: st.to, id: "report-to",
                                           placeholder: t("report.now") });
  lTo.append(iTo);
  const presets = el("span", null, "presets");
  for (const p of PRESETS) {
    const b = el("button", t("report.last", { span: p }));
    b.type = "button";
    b.addEventListener("click", () => { iFrom.value = p; iTo.value = ""; form.requestSubmit(); });
    presets.append(b);
  }
  const run = Object.assign(el("button", t("report.show")), { type: "submit", id: "report-show" });
  const print = Object.assign(el("button", t("report.print")), { type: "button", id: "report-print" });
  const pdf = Object.assign(el("button", t("report.pdf")), { type: "button", id: "report-pdf" });
  const xlsx = Object.assign(el("button", t("report.xlsx")), { type: "button", id: "report-xlsx" });
  const link = Object.assign(el("a"), { id: "report-file", hidden: true });
  form.append(lFrom, lTo, run, presets, print, pdf, xlsx, link);
  const error = el("p", null, "error");
  error.setAttribute("role", "alert");
  const out = el("div", null, "report-body");
  out.id = "report-body";
  root.append(title, form, error, out);

  function params(format) {
    const p = new URLSearchParams({ from: st.from, format, lang: ctx.lang === "zh-CN" ? "zh-CN" : "en" });
    if (st.to) p.set("to", st.to);
    if (ctx.tz) p.set("tz", ctx.tz);
    return p;
  }

  function table(key, cols, rows) {
    const sec = el("section");
    sec.dataset.table = key;
    sec.append(el("h3", t("report." + key)));
    if (!rows.length) {
      sec.append(el("p", t("report.none"), "muted"));
      return sec;
    }
    const tb = el("table");
    tb.id = "report-" + key;
    const hr = el("tr");
    for (const c of cols) hr.append(el("th", t("report.col." + c)));
    tb.append(el("thead"));
    tb.tHead.append(hr);
    const body = el("tbody");
    for (const r of rows) {
      const tr = el("tr");
      if (r.priority) tr.className = "prio-" + r.priority;
      for (const c of cols) {
        const td = el("td", cell(r[c], t));
        if (c === "channel") {
          td.textContent = "";
          const a = el("a", r.channel);
          a.href = "#/trends?ch=" + encodeURIComponent(r.channel) + "&range=24h";
          td.append(a);
        }
        tr.append(td);
      }
      body.append(tr);
    }
    tb.append(body);
    sec.append(tb);
    return sec;
  }

  function render(rep) {
    out.replaceChildren();
    out.append(el("p", t("report.period", { from: rep.from, to: rep.to, tz: rep.tz }), "period"));
    out.append(el("p", t("report.generated", { time: rep.generated }), "muted"));
    if (!rep.complete) out.append(el("p", t("report.incomplete"), "error"));
    const dl = el("table", null, "summary");
    dl.id = "report-summary";
    for (const k of SUMMARY) {
      const tr = el("tr");
      tr.dataset.key = k;
      tr.append(el("th", t("report.s." + k)), el("td", cell(rep.summary[k], t)));
      dl.append(tr);
    }
    out.append(dl);
    out.append(table("alarms", ALARM_COLS, rep.alarms), table("faulty", FAULTY_COLS, rep.faulty),
               table("top", TOP_COLS, rep.top));
    const notes = el("ul", null, "muted thresholds");
    for (const v of Object.values(rep.thresholds)) notes.append(el("li", v));
    out.append(notes);
    out.dataset.loaded = String(Date.now());
  }

  async function load() {
    error.textContent = "";
    try {
      const rep = await ctx.api("/reports/shift?" + params("json").toString());
      if (!st.gone) render(rep);
    } catch (e) {
      if (!st.gone) error.textContent = e.message;
    }
  }

  async function download(format) {
    error.textContent = "";
    try {
      const r = await ctx.fetchRaw("/reports/shift?" + params(format).toString());
      if (!r.ok) {
        let msg = r.status + " " + r.statusText;
        try { const j = await r.json(); if (typeof j.detail === "string") msg = j.detail; } catch (e) { /* not JSON */ }
        throw new Error(msg);
      }
      const blob = await r.blob();
      if (link.href) URL.revokeObjectURL(link.href);
      link.href = URL.createObjectURL(blob);
      link.file = blob;  // the file as downloaded (the CSP keeps fetch() off blob: addresses)
      const m = /filename="([^"]+)"/.exec(r.headers.get("Content-Disposition") || "");
      link.download = m ? m[1] : "shift-report." + format;
      link.dataset.format = format;
      link.click();
    } catch (e) {
      if (!st.gone) error.textContent = e.message;
    }
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    st.from = iFrom.value.trim() || "8h";
    st.to = iTo.value.trim();
    const h = "#/report?" + new URLSearchParams(st.to ? { from: st.from, to: st.to } : { from: st.from });
    history.replaceState(null, "", h);
    load();
  });
  print.addEventListener("click", () => window.print());
  pdf.addEventListener("click", () => download("pdf"));
  xlsx.addEventListener("click", () => download("xlsx"));
  await load();
  return () => {
    st.gone = true;
    root.classList.remove("report");
    if (link.href) URL.revokeObjectURL(link.href);
  };
}
