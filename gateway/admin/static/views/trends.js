// Trend charts (#/trends?ch=A,B&range=1h): one or more channels of an area overlaid over the
// last 1 h / 8 h / 24 h / 7 d, with the alarm limits drawn as lines and the alarm periods
// shaded, zoom (a drag asks the server for that window again, at the finer interval it
// allows; double-click or the button goes back), and the shown data as CSV.
// Data: GET /trend/<channel> (InfluxDB when configured, else the journal; min/mean/max per
// interval for long ranges). Chart: uPlot, vendored (views/chart.js).

import { loadUPlot, LIMIT_COLOURS, SERIES_COLOURS, SPAN_COLOURS } from "./chart.js";

const RANGES = ["1h", "8h", "24h", "7d"];
const MAX_CHANNELS = 6;
// the 1 h view follows the plant; longer ones change slowly
const REFRESH_MS = { "1h": 5000, "8h": 30000, "24h": 60000, "7d": 300000 };

function query(ctx) {
  if (ctx.route && ctx.route.query) return ctx.route.query;
  const h = location.hash.split("?", 2)[1] || "";
  return new URLSearchParams(h);
}

// the trend documents of several channels as uPlot's columns: one x (seconds) shared by all,
// each channel's values (or mean, and min/max when alone and aggregated), then its limits
export function columns(docs, t) {
  // the window's ends are on the x axis too, so the limit lines span the whole range asked for
  const ends = docs.length ? [docs[0].from_t, docs[0].to_t] : [];
  const xs = Array.from(new Set([...ends, ...docs.flatMap((d) => d.points.map((p) => p.t))])).sort((a, b) => a - b);
  const at = new Map(xs.map((x, i) => [x, i]));
  const data = [xs];
  const series = [{}];
  docs.forEach((d, k) => {
    const colour = SERIES_COLOURS[k % SERIES_COLOURS.length];
    const agg = d.every_s !== null && d.every_s !== undefined;
    const cols = agg ? (docs.length === 1 ? ["mean", "min", "max"] : ["mean"]) : ["value"];
    for (const c of cols) {
      const ys = new Array(xs.length).fill(null);
      for (const p of d.points) ys[at.get(p.t)] = p[c];
      data.push(ys);
      const label = c === "value" ? d.channel : t("trends." + c, { channel: d.channel });
      series.push({ label, stroke: colour, width: c === "min" || c === "max" ? 1 : 2,
                    dash: c === "min" || c === "max" ? [4, 3] : undefined, spanGaps: false,
                    channel: d.channel, role: c });
    }
    for (const [level, v] of Object.entries(d.limits || {})) {
      if (v === null || v === undefined) continue;
      data.push(new Array(xs.length).fill(v));
      series.push({ label: t("trends.limit", { channel: d.channel, level: level.toUpperCase() }),
                    stroke: LIMIT_COLOURS[level] || "#c62828", width: 1, dash: [8, 4],
                    points: { show: false }, channel: d.channel, role: "limit", level });
    }
  });
  return { data, series };
}

function csvCell(v) {
  if (v === null || v === undefined) return "";
  let s = String(v);
  // a spreadsheet must not run a cell as a formula (channel names are plant text)
  if (typeof v === "string" && /^[=+\-@\t\r]/.test(s)) s = "'" + s;
  return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}

// the points shown (inside the zoomed x range), one row per channel and time
export function toCsv(docs, x0, x1, fmtTime) {
  const lines = ["channel,time,time_local,value,min,max,n"];
  for (const d of docs) {
    const agg = d.every_s !== null && d.every_s !== undefined;
    for (const p of d.points) {
      // an interval counts when it overlaps the window (its time is its start)
      if (p.t > x1 || p.t + (agg ? d.every_s : 0) <= x0) continue;
      const row = agg ? [d.channel, p.ts, fmtTime(p.ts), p.mean, p.min, p.max, p.n]
                      : [d.channel, p.ts, fmtTime(p.ts), p.value, "", "", ""];
      lines.push(row.map(csvCell).join(","));
    }
  }
  return lines.join("\r\n") + "\r\n";
}

export async function mount(root, ctx) {
  const { el, t } = ctx;
  const q = query(ctx);
  const st = {
    channels: (q.get("ch") || "").split(",").map((s) => s.trim()).filter(Boolean).slice(0, MAX_CHANNELS),
    range: RANGES.includes(q.get("range")) ? q.get("range") : "1h",
    docs: [], plot: null, zoom: null, timer: null, csvUrl: null, gone: false,
  };
  root.append(el("h2", t("trends.title")));

  // ---------------------------------------------------------------- controls
  const bar = el("div", null, "trend-controls no-print");
  const lab = el("label", t("trends.channels"));
  const input = el("input");
  input.id = "trend-channels";
  input.type = "text";
  input.maxLength = 1200;
  input.placeholder = t("trends.channels_hint");
  input.value = st.channels.join(",");
  lab.htmlFor = input.id;
  const show = el("button", t("trends.show"));
  show.type = "button";
  show.id = "trend-show";
  const ranges = el("div", null, "trend-ranges");
  ranges.setAttribute("role", "group");
  ranges.setAttribute("aria-label", t("trends.range"));
  for (const r of RANGES) {
    const b = el("button", r);
    b.type = "button";
    b.dataset.range = r;
    b.addEventListener("click", () => { st.range = r; st.zoom = null; load(); });
    ranges.append(b);
  }
  const addSel = el("select");
  addSel.id = "trend-add";
  addSel.setAttribute("aria-label", t("trends.add_area"));
  const addBtn = el("button", t("trends.add"));
  addBtn.type = "button";
  const reset = el("button", t("trends.reset_zoom"));
  reset.type = "button";
  reset.id = "trend-reset";
  const exportBtn = el("button", t("trends.export_csv"));
  exportBtn.type = "button";
  exportBtn.id = "trend-export";
  const link = el("a");
  link.id = "trend-csv";
  link.hidden = true;
  bar.append(lab, input, show, ranges, addSel, addBtn, reset, exportBtn, link);
  root.append(bar);
  const info = el("p", null, "muted trend-info");
  const error = el("p", null, "error");
  error.setAttribute("role", "alert");
  const chartBox = el("div", null, "trend-chart");
  root.append(error, info, chartBox, el("p", t("trends.zoom_hint"), "muted no-print"));
  root.append(el("h3", t("trends.periods")));
  const periods = el("table", null, "trend-periods");
  root.append(periods);

  const uPlot = await loadUPlot();

  function setHash() {
    const h = "#/trends?ch=" + st.channels.map(encodeURIComponent).join(",") + "&range=" + st.range;
    // the view keeps its own state: replace the address without a new mount
    if (location.hash !== h) history.replaceState(null, "", h);
    for (const b of ranges.children) b.setAttribute("aria-pressed", String(b.dataset.range === st.range));
  }

  async function fillAreaChoices() {
    addSel.replaceChildren();
    const area = st.docs.length ? st.docs[0].area : null;
    addSel.disabled = addBtn.disabled = !area;
    if (!area) return;
    const j = await ctx.api("/channels?limit=500&area=" + encodeURIComponent(area));
    for (const c of j.channels) {
      if (st.channels.includes(c.name)) continue;
      const o = el("option", c.name + (c.unit ? " (" + c.unit + ")" : ""));
      o.value = c.name;
      addSel.append(o);
    }
    addSel.disabled = addBtn.disabled = !addSel.options.length;
  }

  function renderPeriods() {
    periods.replaceChildren();
    const all = st.docs.flatMap((d) => d.alarms.map((a) => Object.assign({ channel: d.channel }, a)));
    if (!all.length) {
      periods.append(el("caption", t("trends.no_periods"), "muted"));
      return;
    }
    const head = el("tr");
    for (const k of ["channel", "rule", "level", "start", "end", "ack"]) head.append(el("th", t("trends.col." + k)));
    periods.append(el("thead"));
    periods.tHead.append(head);
    const body = el("tbody");
    for (const a of all) {
      const tr = el("tr", null, "prio-" + a.priority);
      tr.dataset.channel = a.channel;
      tr.dataset.start = a.start;
      // the channel's alarm history, for the events behind the period
      const chan = el("td");
      const link = el("a", a.channel);
      link.href = "#/alarms?channel=" + encodeURIComponent(a.channel) + "&range=" + (st.range === "7d" ? "7d" : "24h");
      chan.append(link);
      tr.append(chan, el("td", a.rule), el("td", a.level), el("td", ctx.fmtTime(a.start)),
                el("td", a.end ? ctx.fmtTime(a.end) : t("trends.active")),
                el("td", a.acknowledged ? ctx.fmtTime(a.acknowledged) : ""));
      body.append(tr);
    }
    periods.append(body);
  }

  function draw() {
    if (st.plot) { st.plot.destroy(); st.plot = null; }
    chartBox.replaceChildren();
    if (!st.docs.length) return;
    const { data, series } = columns(st.docs, t);
    const from = st.docs[0].from_t, to = st.docs[0].to_t;
    const spans = st.docs.flatMap((d) => d.alarms);
    const width = Math.max(320, Math.min(1200, (root.clientWidth || 900) - 8));
    const opts = {
      width, height: 360,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), ctx.tz || "UTC"),
      scales: { x: { time: true } },
      series,
      // times on the site's 24-hour clock, with the date when the range spans days
      axes: [{ values: (u, splits) => {
        const span = u.scales.x.max - u.scales.x.min;
        return splits.map((x) => {
          const s = ctx.fmtTime(new Date(x * 1e3));
          return span > 86400 ? s.slice(5, 16) : span < 1800 ? s.slice(11, 19) : s.slice(11, 16);
        });
      } }, { label: st.docs.map((d) => d.unit).filter((u, i, a) => u && a.indexOf(u) === i).join(" / ") }],
      cursor: { drag: { x: true, y: false } },
      hooks: {
        // the alarm periods, shaded under the lines
        drawClear: [(u) => {
          const c = u.ctx, xmin = u.scales.x.min, xmax = u.scales.x.max;
          for (const s of spans) {
            const a = Math.max(s.start_t, xmin), b = Math.min(s.end_t === null ? to : s.end_t, xmax);
            if (b <= a) continue;
            const x0 = u.valToPos(a, "x", true), x1 = u.valToPos(b, "x", true);
            c.fillStyle = SPAN_COLOURS[s.priority] || SPAN_COLOURS.low;
            c.fillRect(x0, u.bbox.top, Math.max(1, x1 - x0), u.bbox.height);
          }
        }],
        // a drag zooms: the window is asked of the server again, at the finer interval it allows
        setSelect: [(u) => {
          if (u.select.width < 2) return;
          const a = u.posToVal(u.select.left, "x"), b = u.posToVal(u.select.left + u.select.width, "x");
          if (b - a < 1) return;
          st.zoom = { from: a, to: b };
          load();
        }],
      },
    };
    st.plot = new uPlot(opts, data, chartBox);
    st.plot.setScale("x", { min: from, max: to });
    chartBox.uplot = st.plot;       // the chart's own data, for tests and tools
    chartBox.alarmPeriods = spans;
    chartBox.dataset.points = String(st.docs.reduce((n, d) => n + d.points.length, 0));
    // a double-click zooms out to the whole range asked for, not only the data's extent
    st.plot.over.addEventListener("dblclick", unzoom);
  }

  async function load() {
    clearTimeout(st.timer);
    setHash();
    error.textContent = "";
    if (!st.channels.length) {
      info.textContent = t("trends.none");
      st.docs = [];
      draw();
      renderPeriods();
      return;
    }
    try {
      const iso = (x) => new Date(x * 1e3).toISOString();
      const q = st.zoom ? "from=" + iso(st.zoom.from) + "&to=" + iso(st.zoom.to) : "range=" + st.range;
      const docs = await Promise.all(st.channels.map((c) =>
        ctx.api("/trend/" + encodeURIComponent(c) + "?" + q)));
      if (st.gone) return;
      st.docs = docs;
      const notes = [t("trends.source", { source: docs[0].source }),
                     t("trends.updated", { time: ctx.fmtTime(new Date()) })];
      for (const d of docs) {
        if (!d.points.length) notes.push(t("trends.no_data", { channel: d.channel }));
      }
      if (docs.some((d) => d.every_s)) notes.push(t("trends.aggregated", { every: docs.find((d) => d.every_s).every_s }));
      info.textContent = notes.join(" · ");
      draw();
      reset.disabled = !st.zoom;
      renderPeriods();
      await fillAreaChoices();
      chartBox.dataset.loaded = String(Date.now());
    } catch (e) {
      if (st.gone) return;
      error.textContent = e.message;
    }
    // a zoomed window is history: it is not reloaded
    if (!st.gone && !st.zoom) st.timer = setTimeout(load, REFRESH_MS[st.range]);
  }

  show.addEventListener("click", () => {
    st.zoom = null;
    st.channels = input.value.split(",").map((s) => s.trim()).filter(Boolean).slice(0, MAX_CHANNELS);
    load();
  });
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") show.click(); });
  addBtn.addEventListener("click", () => {
    if (!addSel.value || st.channels.length >= MAX_CHANNELS) return;
    st.channels.push(addSel.value);
    st.zoom = null;
    input.value = st.channels.join(",");
    load();
  });
  function unzoom() {
    if (!st.zoom) return;
    st.zoom = null;
    load();
  }
  reset.addEventListener("click", unzoom);
  exportBtn.addEventListener("click", () => {
    if (!st.docs.length || !st.plot) return;
    const csv = toCsv(st.docs, st.plot.scales.x.min, st.plot.scales.x.max, ctx.fmtTime);
    if (st.csvUrl) URL.revokeObjectURL(st.csvUrl);
    const blob = new Blob([csv], { type: "text/csv;charset=utf-8" });
    st.csvUrl = URL.createObjectURL(blob);
    link.href = st.csvUrl;
    link.file = blob;  // the file as downloaded (the CSP keeps fetch() off blob: addresses)
    link.download = "trend-" + st.channels.join("_").replace(/[^\w.-]+/g, "-") + "-" + st.range + ".csv";
    link.click();
  });

  await load();
  return () => {
    st.gone = true;
    clearTimeout(st.timer);
    if (st.plot) st.plot.destroy();
    if (st.csvUrl) URL.revokeObjectURL(st.csvUrl);
  };
}
