// The registers (台账) in the browser, driven by the schema: #/registers lists every type
// (built-in and plant-defined), #/registers/<type> a type's records (search, filters, sort and
// paging asked of the server; export of the view as CSV/XLSX; import with a preview), and
// #/registers/<type>/<id> or /new one record (lib/regrecord.js).

import { RANK, download, enumWord, fieldTitle, typeTitle, valueText, word } from "./lib/regform.js";
import { mountRecord } from "./lib/regrecord.js";

const PAGE = 50;
const XLSX_MEDIA = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

export async function mount(root, ctx) {
  const [rtype, rid] = ctx.route.parts;
  if (!rtype) return mountTypes(root, ctx);
  const spec = await ctx.api("/registers/" + encodeURIComponent(rtype) + "/schema");
  spec.type = rtype;
  if (rid) return mountRecord(root, ctx, rtype, spec, rid);
  return mountList(root, ctx, rtype, spec);
}

async function mountTypes(root, ctx) {
  const { el, t } = ctx;
  const types = await ctx.api("/registers");
  root.append(el("h2", t("reg.types")));
  const tb = el("table");
  tb.id = "register-types";
  const head = el("tr");
  for (const h of [t("reg.type"), t("reg.records"), t("reg.workflow")]) head.append(el("th", h));
  tb.append(el("thead"), el("tbody"));
  tb.tHead.append(head);
  for (const x of types) {
    const tr = el("tr");
    tr.dataset.type = x.type;
    const a = el("a", typeTitle(ctx, x));
    a.href = "#/registers/" + encodeURIComponent(x.type);
    const name = el("td");
    name.append(a, el("span", " " + x.type, "muted"));
    tr.append(name, el("td", String(x.records), "num"),
      el("td", x.workflow ? x.workflow.states.map((s) => word(ctx, "state.", s)).join(" → ") : ""));
    tb.tBodies[0].append(tr);
  }
  root.append(tb);
}

// the columns a list shows: the label field, then required fields, then due dates (at most 7)
function columns(spec) {
  const names = Object.keys(spec.fields).filter((n) => !["table", "list"].includes(spec.fields[n].type));
  const cols = [];
  const add = (n) => { if (n && spec.fields[n] && !cols.includes(n) && cols.length < 7) cols.push(n); };
  add(spec.label);
  names.filter((n) => spec.fields[n].required).forEach(add);
  names.filter((n) => spec.fields[n].due).forEach(add);
  if (spec.workflow && spec.workflow.overdue) add(spec.workflow.overdue.field);
  names.forEach((n) => { if (cols.length < 5) add(n); });
  return cols;
}

async function mountList(root, ctx, rtype, spec) {
  const { el, t } = ctx;
  const canWrite = RANK[ctx.role] >= RANK.operator;
  const q = ctx.route.query;
  const view = {
    q: q.get("q") || "", state: q.get("state") || "", archived: q.get("archived") || "false",
    overdue: q.get("overdue") === "true", sort: q.get("sort") || "id", desc: q.get("desc") === "true",
    offset: Number(q.get("offset")) || 0, filters: {},
  };
  for (const [k, v] of q.entries()) if (spec.fields[k] && spec.fields[k].type === "enum") view.filters[k] = v;

  const head = el("div", null, "view-head");
  const back = el("a", "← " + t("reg.types"));
  back.href = "#/registers";
  const h2 = el("h2", typeTitle(ctx, spec));
  head.append(back, h2);
  const tools = el("div", null, "filters");
  tools.id = "register-tools";

  const search = el("input");
  search.id = "reg-search";
  search.type = "search";
  search.maxLength = 200;
  search.placeholder = t("common.search");
  search.setAttribute("aria-label", t("common.search"));
  search.value = view.q;
  tools.append(search);

  const selects = [];
  function select(id, label, options, value, onchange) {
    const lab = el("label", label + " ");
    const s = el("select");
    s.id = id;
    for (const [v, text] of options) s.append(Object.assign(el("option", text), { value: v }));
    s.value = value;
    s.addEventListener("change", () => onchange(s.value));
    lab.append(s);
    tools.append(lab);
    selects.push(s);
    return s;
  }
  if (spec.workflow) {
    select("reg-state", t("reg.state"), [["", t("common.all")], ...spec.workflow.states.map((s) => [s, word(ctx, "state.", s)])],
      view.state, (v) => { view.state = v; reload(); });
  }
  for (const [n, f] of Object.entries(spec.fields)) {
    if (f.type !== "enum") continue;
    select("reg-filter-" + n, fieldTitle(ctx, n, f), [["", t("common.all")], ...f.values.map((v) => [v, enumWord(ctx, f, v)])],
      view.filters[n] || "", (v) => { if (v) view.filters[n] = v; else delete view.filters[n]; reload(); });
  }
  select("reg-archived", t("reg.archived"), [["false", t("reg.current")], ["true", t("reg.archived_only")], ["all", t("common.all")]],
    view.archived, (v) => { view.archived = v; reload(); });
  const odLab = el("label");
  const od = el("input");
  od.type = "checkbox";
  od.id = "reg-overdue";
  od.checked = view.overdue;
  od.addEventListener("change", () => { view.overdue = od.checked; reload(); });
  odLab.append(od, el("span", " " + t("reg.overdue_only")));
  tools.append(odLab);

  const actions = el("div", null, "actions");
  if (canWrite) {
    const create = el("a", t("reg.new"), "button primary");
    create.id = "reg-new";
    create.href = "#/registers/" + encodeURIComponent(rtype) + "/new";
    actions.append(create);
  }
  for (const fmt of ["csv", "xlsx"]) {
    const b = el("button", t("reg.export_" + fmt));
    b.id = "reg-export-" + fmt;
    b.addEventListener("click", async () => {
      try {
        const r = await ctx.fetchRaw("/registers/" + encodeURIComponent(rtype) + "/export?" + params(true, fmt));
        if (!r.ok) throw new Error((await r.json()).detail || r.statusText);
        download(ctx, await r.blob(), rtype + "." + fmt);
      } catch (e) { ctx.message(t("common.error", { error: e.message })); }
    });
    actions.append(b);
  }
  if (canWrite) actions.append(importBox(ctx, rtype, spec, () => reload()));

  const tb = el("table");
  tb.id = "records";
  const cols = columns(spec);
  const htr = el("tr");
  const sortable = [["id", "#"], ...(spec.workflow ? [["state", t("reg.state")]] : []),
    ...cols.map((c) => [c, fieldTitle(ctx, c, spec.fields[c])]), ["updated", t("reg.updated")]];
  for (const [key, label] of sortable) {
    const th = el("th");
    th.setAttribute("aria-sort", view.sort === key ? (view.desc ? "descending" : "ascending") : "none");
    if (key === "state") { th.textContent = label; htr.append(th); continue; }
    const b = el("button", label + (view.sort === key ? (view.desc ? " ▼" : " ▲") : ""), "sort");
    b.dataset.sort = key;
    b.addEventListener("click", () => {
      if (view.sort === key) view.desc = !view.desc; else { view.sort = key; view.desc = false; }
      ctx.navigate("#/registers/" + encodeURIComponent(rtype) + "?" + params(false));
    });
    th.append(b);
    htr.append(th);
  }
  tb.append(el("thead"), el("tbody"));
  tb.tHead.append(htr);
  const pager = el("div", null, "filters");
  const prev = el("button", t("common.prev"));
  const next = el("button", t("common.next"));
  const info = el("span", "", "muted");
  info.id = "reg-page";
  pager.append(prev, info, next);
  const empty = el("p", t("common.none"), "muted");
  root.append(head, tools, actions, tb, empty, pager);

  function params(forExport, fmt) {
    const p = new URLSearchParams();
    if (fmt) p.set("format", fmt);
    if (view.q) p.set("q", view.q);
    if (view.state) p.set("state", view.state);
    if (view.archived !== "false") p.set("archived", view.archived);
    if (view.overdue) p.set("overdue", "true");
    if (view.sort !== "id") p.set("sort", view.sort);
    if (view.desc) p.set("desc", "true");
    for (const [k, v] of Object.entries(view.filters)) p.set(k, v);
    if (!forExport && view.offset) p.set("offset", String(view.offset));
    return p.toString();
  }

  let seq = 0;
  async function reload() {
    const my = ++seq;
    const p = new URLSearchParams(params(true));
    p.set("limit", String(PAGE));
    p.set("offset", String(view.offset));
    history.replaceState(null, "", "#/registers/" + encodeURIComponent(rtype) + (params(false) ? "?" + params(false) : ""));
    let data;
    try {
      data = await ctx.api("/registers/" + encodeURIComponent(rtype) + "?" + p.toString());
    } catch (e) {
      if (e.status !== 401) ctx.message(e.message);
      return;
    }
    if (my !== seq) return;
    ctx.message("");
    const body = el("tbody");
    for (const d of data.items) {
      const soon = d.due.some((x) => x.days_left >= 0 && x.days_left <= 30);
      const tr = el("tr", null, d.overdue ? "overdue" : soon ? "due-soon" : "");
      tr.dataset.id = String(d.id);
      if (d.archived) tr.classList.add("archived");
      const idc = el("td");
      const a = el("a", "#" + d.id);
      a.href = "#/registers/" + encodeURIComponent(rtype) + "/" + d.id;
      idc.append(a);
      tr.append(idc);
      if (spec.workflow) tr.append(el("td", word(ctx, "state.", d.state), "state"));
      for (const c of cols) {
        const td = el("td", valueText(ctx, spec.fields[c], d.data[c]));
        td.dataset.field = c;
        const due = d.due.find((x) => x.field === c);
        if (due && due.days_left < 0) td.classList.add("overdue");
        tr.append(td);
      }
      tr.append(el("td", ctx.fmtTime(d.updated) + " " + (d.updated_by || ""), "muted"));
      body.append(tr);
    }
    tb.tBodies[0].replaceWith(body);
    empty.hidden = data.total > 0;
    info.textContent = data.total ? t("common.page", { from: view.offset + 1, to: view.offset + data.items.length, total: data.total }) : "";
    prev.disabled = view.offset === 0;
    next.disabled = view.offset + data.items.length >= data.total;
  }
  let typing;
  search.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { view.q = search.value.trim(); view.offset = 0; reload(); }, 250);
  });
  prev.addEventListener("click", () => { view.offset = Math.max(0, view.offset - PAGE); reload(); });
  next.addEventListener("click", () => { view.offset += PAGE; reload(); });
  await reload();
  return () => clearTimeout(typing);
}

// import: choose a CSV, XLSX or JSON file, see what would change (dry run), then apply it
function importBox(ctx, rtype, spec, done) {
  const { el, t } = ctx;
  const box = el("span", null, "import");
  const lab = el("label", t("reg.import") + " ");
  const file = el("input");
  file.type = "file";
  file.id = "reg-import-file";
  file.accept = ".csv,.xlsx,.json,text/csv,application/json," + XLSX_MEDIA;
  lab.append(file);
  const out = el("div", null, "import-preview");
  out.id = "reg-import-preview";
  out.setAttribute("aria-live", "polite");
  box.append(lab, out);
  file.addEventListener("change", async () => {
    out.replaceChildren();
    const f = file.files[0];
    if (!f) return;
    const fmt = /\.json$/i.test(f.name) ? "json" : /\.xlsx$/i.test(f.name) ? "xlsx" : "csv";
    const body = fmt === "xlsx" ? await f.arrayBuffer() : await f.text();
    const headers = { "Content-Type": { csv: "text/csv", json: "application/json", xlsx: XLSX_MEDIA }[fmt] };
    const path = "/registers/" + encodeURIComponent(rtype) + "/import?format=" + fmt;
    let plan;
    try {
      plan = await ctx.api(path + "&dry_run=true", { method: "POST", body, headers });
    } catch (e) {
      out.append(el("p", e.message, "error"));
      return;
    }
    out.append(el("p", t("reg.import_summary", plan)));
    for (const w of plan.warnings || []) out.append(el("p", w, "warning"));
    const tbl = el("table");
    tbl.id = "reg-import-changes";
    for (const c of plan.changes) {
      if (c.action === "unchanged") continue;
      const tr = el("tr", null, c.action);
      const what = c.action === "create"
        ? Object.entries(c.data).map(([k, v]) => fieldTitle(ctx, k, spec.fields[k]) + " = " + valueText(ctx, spec.fields[k], v)).join("; ")
        : Object.entries(c.changes).map(([k, [a, b]]) => fieldTitle(ctx, k, spec.fields[k]) + ": " + valueText(ctx, spec.fields[k], a) + " → " + valueText(ctx, spec.fields[k], b)).join("; ");
      tr.append(el("td", t("reg.import_" + c.action)), el("td", c.action === "create" ? "" : "#" + c.id), el("td", what));
      tbl.append(tr);
    }
    out.append(tbl);
    const apply = el("button", t("reg.import_apply"), "primary");
    apply.id = "reg-import-apply";
    const cancel = el("button", t("common.cancel"));
    apply.addEventListener("click", async () => {
      apply.disabled = true;
      try {
        const r = await ctx.api(path, { method: "POST", body, headers });
        out.replaceChildren(el("p", t("reg.import_done", r), "ok"));
        file.value = "";
        done();
      } catch (e) {
        out.append(el("p", e.message, "error"));
        apply.disabled = false;
      }
    });
    cancel.addEventListener("click", () => { out.replaceChildren(); file.value = ""; });
    out.append(apply, cancel);
  });
  return box;
}
