// Alarm history (#/alarms?channel=..&area=..&level=..&state=..&transition=..&range=24h): the
// alarm journal newest first, filtered by time, area, channel, level, state and transition
// (GET /alarms/history), a page at a time ("more" continues from next_before). Channel names
// link to their trend.

const RANGES = ["1h", "8h", "24h", "7d", "30d"];
const LEVELS = ["hh", "h", "l", "ll", "roc", "trend", "predict", "twa", "stel", "mac", "peak", "impulse",
                "stale", "bad", "range", "frozen", "normal"];
const STATES = ["active_unacked", "active_acked", "cleared_unacked", "normal", "suppressed"];
const TRANSITIONS = ["raise", "clear", "escalate", "deescalate", "ack", "shelve", "unshelve", "suppress",
                     "unsuppress"];
const COLUMNS = ["time", "channel", "area", "rule", "level", "transition", "state", "value", "limit", "who"];

function query(ctx) {
  if (ctx.route && ctx.route.query) return ctx.route.query;
  return new URLSearchParams(location.hash.split("?", 2)[1] || "");
}

// the API's query string for the filters (and the page's address keeps the same words)
export function filterQuery(f) {
  const q = new URLSearchParams();
  q.set("from", f.range);
  for (const k of ["channel", "area", "level", "state", "transition"]) if (f[k]) q.set(k, f[k]);
  q.set("limit", String(f.limit));
  return q;
}

export async function mount(root, ctx) {
  const { el, t } = ctx;
  const q = query(ctx);
  const f = {
    range: RANGES.includes(q.get("range")) ? q.get("range") : "24h",
    channel: (q.get("channel") || "").slice(0, 200), area: (q.get("area") || "").slice(0, 128),
    level: LEVELS.includes(q.get("level")) ? q.get("level") : "",
    state: STATES.includes(q.get("state")) ? q.get("state") : "",
    transition: TRANSITIONS.includes(q.get("transition")) ? q.get("transition") : "",
    limit: Math.min(1000, Math.max(1, parseInt(q.get("limit") || "100", 10) || 100)),
  };
  let next = null;
  let gone = false;

  root.append(el("h2", t("alarms.title")));
  const form = el("form", null, "filters no-print");
  form.id = "alarm-filters";
  function field(name, control) {
    const wrap = el("label", t("alarms.f." + name));
    control.name = name;
    control.id = "alarm-f-" + name;
    wrap.append(control);
    form.append(wrap);
    return control;
  }
  function select(name, values, current, blank) {
    const s = el("select");
    if (blank) s.append(Object.assign(el("option", t("alarms.any")), { value: "" }));
    for (const v of values) {
      const o = el("option", t("alarms.v." + v));
      o.value = v;
      s.append(o);
    }
    s.value = current;
    return field(name, s);
  }
  const fRange = select("range", RANGES, f.range, false);
  const fChannel = field("channel", Object.assign(el("input"), { type: "text", maxLength: 200, value: f.channel }));
  const fArea = field("area", Object.assign(el("input"), { type: "text", maxLength: 128, value: f.area }));
  const fLevel = select("level", LEVELS, f.level, true);
  const fState = select("state", STATES, f.state, true);
  const fTransition = select("transition", TRANSITIONS, f.transition, true);
  const apply = el("button", t("alarms.apply"));
  apply.type = "submit";
  apply.id = "alarm-apply";
  form.append(apply);
  root.append(form);
  const error = el("p", null, "error");
  error.setAttribute("role", "alert");
  const info = el("p", null, "muted");
  info.id = "alarm-info";
  const table = el("table", null, "alarm-history");
  table.id = "alarm-history";
  const head = el("tr");
  for (const c of COLUMNS) head.append(el("th", t("alarms.col." + c)));
  table.append(el("thead"));
  table.tHead.append(head);
  const body = el("tbody");
  table.append(body);
  const more = el("button", t("alarms.more"), "no-print");
  more.type = "button";
  more.id = "alarm-more";
  more.hidden = true;
  root.append(error, info, table, more);

  function row(ev) {
    const tr = el("tr", null, "prio-" + (ev.priority || "low"));
    tr.dataset.seq = String(ev.seq);
    tr.dataset.channel = ev.channel;
    tr.dataset.state = ev.state;
    const chan = el("td");
    const a = el("a", ev.channel);
    a.href = "#/trends?ch=" + encodeURIComponent(ev.channel) + "&range=" + (f.range === "30d" ? "7d" : f.range);
    chan.append(a);
    const num = (v, unit) => (v === null || v === undefined ? "" : String(v) + (unit ? " " + unit : ""));
    tr.append(el("td", ctx.fmtTime(ev.time)), chan, el("td", ev.area || ""), el("td", ev.rule),
              el("td", ev.level), el("td", t("alarms.v." + ev.transition)), el("td", t("alarms.v." + ev.state)),
              el("td", num(ev.value, ev.unit)), el("td", num(ev.limit, ev.unit)), el("td", ev.who || ""));
    return tr;
  }

  async function load(append) {
    error.textContent = "";
    const qs = filterQuery(f);
    if (append && next !== null) qs.set("before", String(next));
    try {
      const page = await ctx.api("/alarms/history?" + qs.toString());
      if (gone) return;
      if (!append) body.replaceChildren();
      for (const ev of page.events) body.append(row(ev));
      next = page.next_before;
      more.hidden = next === null;
      const n = body.rows.length;
      info.textContent = t("alarms.count", { n }) + (page.complete ? "" : " " + t("alarms.incomplete"));
      table.dataset.loaded = String(Date.now());
    } catch (e) {
      if (!gone) error.textContent = e.message;
    }
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    Object.assign(f, { range: fRange.value, channel: fChannel.value.trim(), area: fArea.value.trim(),
                       level: fLevel.value, state: fState.value, transition: fTransition.value });
    const h = "#/alarms?" + new URLSearchParams(Object.entries({ range: f.range, channel: f.channel, area: f.area,
      level: f.level, state: f.state, transition: f.transition }).filter(([, v]) => v)).toString();
    history.replaceState(null, "", h);
    next = null;
    load(false);
  });
  more.addEventListener("click", () => load(true));
  await load(false);
  return () => { gone = true; };
}
