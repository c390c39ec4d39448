// The start page: active alarms (with acknowledge), live channels (one page of the table at a
// time, asked of the server, so 10,000 channels cost no more than 100), and the registers'
// due dates and overdue records.

const PAGE = 100;          // channel rows shown at once
const MAX_ALARM_ROWS = 500; // a flood of alarms is counted, not drawn in full

// the gateway sends numbers as a person reads them: shown as sent, never re-rounded
function fmtValue(v) { return v === null || v === undefined ? "—" : String(v); }

function fmtAge(s) {
  if (s === null || s === undefined) return "—";
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}

// an alarm's figure and its limit, each in its own unit: for stale and bad the time so far
// and the threshold; for frozen the stuck reading and the threshold; for predict the time
// to the limit and the limit; otherwise the reading and the limit in the channel's unit
function alarmFigures(a, t) {
  const u = a.unit ? " " + a.unit : "";
  const withUnit = (v) => (v === null || v === undefined ? "—" : fmtValue(v) + u);
  if (a.rule === "stale" || a.rule === "bad") return [fmtAge(a.duration_s), fmtAge(a.threshold_s)];
  if (a.rule === "frozen") return [withUnit(a.value), fmtAge(a.threshold_s)];
  if (a.rule === "predict") return [t("start.in", { time: fmtAge(a.time_to_limit_s) }), withUnit(a.limit)];
  return [withUnit(a.value), withUnit(a.limit)];
}

function table(el, id, heads) {
  const tb = el("table");
  tb.id = id;
  const tr = el("tr");
  for (const h of heads) tr.append(el("th", h));
  const thead = el("thead");
  thead.append(tr);
  tb.append(thead, el("tbody"));
  return tb;
}

export async function mount(root, ctx) {
  const { el, t } = ctx;
  const timers = [];
  let offset = 0;
  let alive = true;

  // ---------------------------------------------------------------- alarms
  const alarmSec = el("section");
  const alarmHead = el("h2", t("start.alarms") + " ");
  const alarmCount = el("span", "", "count");
  alarmCount.id = "alarm-count";
  alarmHead.append(alarmCount);
  const alarms = table(el, "alarms", [t("start.channel"), t("start.alarm"), t("start.state"), t("start.value"),
    t("start.limit"), t("start.since"), ""]);
  const noAlarms = el("p", t("start.no_alarms"), "muted");
  noAlarms.id = "no-alarms";
  alarmSec.append(alarmHead, alarms, noAlarms);

  // ---------------------------------------------------------------- channels
  const chanSec = el("section");
  const chanHead = el("h2", t("start.channels") + " ");
  const chanCount = el("span", "", "count");
  chanCount.id = "channel-count";
  chanHead.append(chanCount);
  const filters = el("div", null, "filters");
  const filter = el("input");
  filter.id = "filter";
  filter.placeholder = t("start.filter");
  filter.setAttribute("aria-label", t("start.filter"));
  filter.maxLength = 200;
  const stateSel = el("select");
  stateSel.id = "state-filter";
  stateSel.setAttribute("aria-label", t("start.state"));
  for (const [v, k] of [["", "common.all"], ["alarm", "start.in_alarm"], ["fault", "start.fault"], ["normal", "start.normal"]]) {
    const o = el("option", t(k));
    o.value = v;
    stateSel.append(o);
  }
  const prev = el("button", t("common.prev"));
  prev.id = "chan-prev";
  const next = el("button", t("common.next"));
  next.id = "chan-next";
  const pageInfo = el("span", "", "muted");
  pageInfo.id = "chan-page";
  const legend = el("span", null, "legend");
  for (const [c, k] of [["normal", "start.normal"], ["fault", "start.fault"], ["alarm", "start.in_alarm"]]) {
    legend.append(el("span", null, "sw " + c), el("span", t(k)));
  }
  filters.append(filter, stateSel, prev, pageInfo, next, legend);
  const channels = table(el, "channels", [t("start.channel"), t("start.kind"), t("start.value"), t("start.unit"),
    t("start.quality"), t("start.age"), t("start.device")]);
  chanSec.append(chanHead, filters, channels);

  // ---------------------------------------------------------------- due dates
  const dueSec = el("section");
  dueSec.append(el("h2", t("start.due")));
  const due = table(el, "due", [t("start.register"), t("start.record"), t("start.field"), t("start.due_date"),
    t("start.days_left")]);
  const noDue = el("p", t("start.no_due"), "muted");
  noDue.id = "no-due";
  dueSec.append(due, noDue);

  root.append(alarmSec, chanSec, dueSec);

  let chanSeq = 0;  // the newest request: an older answer arriving late (timer vs typing) is dropped
  async function refreshChannels() {
    const my = ++chanSeq;
    const params = new URLSearchParams();
    const f = filter.value.trim();
    if (f) params.set("q", f);
    if (stateSel.value) params.set("state", stateSel.value);
    params.set("limit", String(PAGE));
    params.set("offset", String(offset));
    try {
      const data = await ctx.api("/channels?" + params.toString());
      if (!alive || my !== chanSeq) return;
      if (data.total > 0 && offset >= data.total) { offset = Math.max(0, data.total - PAGE); return refreshChannels(); }
      const body = el("tbody");
      for (const c of data.channels) {
        const tr = el("tr", null, c.state);
        tr.dataset.channel = c.name;
        const name = el("td");
        const a = el("a", c.name);
        a.href = "#/trends?ch=" + encodeURIComponent(c.name);
        name.append(a);
        tr.append(name, el("td", c.kind), el("td", fmtValue(c.value), "num value"), el("td", c.unit),
          el("td", c.quality, "quality"), el("td", fmtAge(c.age_s), "num"), el("td", c.device));
        body.append(tr);
      }
      channels.tBodies[0].replaceWith(body);
      chanCount.textContent = "(" + data.total + ")";
      pageInfo.textContent = data.total
        ? t("common.page", { from: offset + 1, to: offset + data.count, total: data.total }) : "";
      prev.disabled = offset === 0;
      next.disabled = offset + data.count >= data.total;
      ctx.setConn(true, t("conn.live", { time: ctx.fmtTime(new Date()).slice(11) }));
    } catch (e) {
      if (e.status !== 401 && alive) ctx.setConn(false, t("conn.down", { error: e.message }));
    }
  }

  async function ack(a, btn) {
    btn.disabled = true;
    try {
      await ctx.api("/alarms/" + encodeURIComponent(a.channel) + "/ack",
        { method: "POST", json: a.rule ? { rule: a.rule } : {} });
      ctx.message("");
      await refreshAlarms();
    } catch (e) {
      ctx.message(t("start.ack_failed", { error: e.message }));
      btn.disabled = false;
    }
  }

  async function refreshAlarms() {
    try {
      const data = await ctx.api("/alarms?history=0");
      if (!alive) return;
      const body = el("tbody");
      for (const a of data.active.slice(0, MAX_ALARM_ROWS)) {
        const acked = !String(a.state || "").endsWith("unacked");
        const tr = el("tr", null, "alarm" + (acked ? " acked" : ""));
        tr.dataset.channel = a.channel;
        tr.dataset.state = a.state;
        const btnCell = el("td");
        if (!acked) {
          const b = el("button", t("start.ack"), "ack");
          // a viewer sees the alarm needs acknowledging, but cannot do it
          b.disabled = ctx.role === "viewer";
          b.title = ctx.role === "viewer" ? t("common.needs_role", { role: t("role.operator") }) : t("start.ack_title");
          b.addEventListener("click", () => ack(a, b));
          btnCell.append(b);
        }
        const [fig, lim] = alarmFigures(a, t);
        const name = el("td");
        const link = el("a", a.channel);
        link.href = "#/trends?ch=" + encodeURIComponent(a.channel);
        name.append(link);
        tr.append(name, el("td", [a.rule, a.level === a.rule ? null : a.level].filter(Boolean).join(" ")), el("td", a.state, "alarm-state"),
          el("td", fig, "num"), el("td", lim, "num"), el("td", ctx.fmtTime(a.since || a.raised || a.time || "")), btnCell);
        body.append(tr);
      }
      alarms.tBodies[0].replaceWith(body);
      alarmCount.textContent = "(" + data.active.length + ")";
      noAlarms.hidden = data.active.length > 0;
    } catch (e) {
      if (e.status !== 401 && alive) ctx.message(t("start.alarms") + ": " + e.message);
    }
  }

  async function refreshDue() {
    try {
      const items = await ctx.api("/due?within_days=60");
      if (!alive) return;
      const body = el("tbody");
      for (const d of items) {
        const tr = el("tr", null, d.days_left < 0 ? "overdue" : (d.days_left <= 7 ? "due-soon" : ""));
        const rec = el("td");
        const a = el("a", d.label);
        a.href = "#/registers/" + encodeURIComponent(d.register || d.type || "") + "/" + encodeURIComponent(d.id);
        rec.append(a);
        tr.append(el("td", d.title), rec, el("td", d.field), el("td", d.date),
          el("td", d.days_left < 0 ? t("start.overdue_days", { days: -d.days_left }) : String(d.days_left),
            "num" + (d.days_left < 0 ? " overdue" : "")));
        body.append(tr);
      }
      due.tBodies[0].replaceWith(body);
      noDue.hidden = items.length > 0;
    } catch (e) {
      if (e.status !== 401 && alive) ctx.message(t("start.due") + ": " + e.message);
    }
  }

  filter.addEventListener("input", () => { offset = 0; refreshChannels(); });
  stateSel.addEventListener("change", () => { offset = 0; refreshChannels(); });
  prev.addEventListener("click", () => { offset = Math.max(0, offset - PAGE); refreshChannels(); });
  next.addEventListener("click", () => { offset += PAGE; refreshChannels(); });

  await Promise.all([refreshChannels(), refreshAlarms(), refreshDue()]);
  timers.push(setInterval(refreshChannels, 1000), setInterval(refreshAlarms, 1000), setInterval(refreshDue, 30000));
  return () => { alive = false; timers.forEach(clearInterval); };
}
