// Register forms generated from a type's schema (GET /registers/<type>/schema): one labelled
// input per field, by its type (text, int, number, bool, date, datetime, enum, list, ref,
// channel, channels, table), and the words shown for types, fields, states and enum values
// in the page's language. Values go back as the API takes them; an emptied field is null.

let uid = 0;

export const RANK = { viewer: 0, operator: 1, admin: 2 };

// a blob saved as a file by the browser
export function download(ctx, blob, name) {
  const a = ctx.el("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60000);
}

// a word looked up under a prefix ("state.", "enum.", "tr."), else shown as it is
export function word(ctx, prefix, v) {
  if (v === null || v === undefined) return "";
  const k = prefix + v;
  const s = ctx.t(k);
  return s === k ? String(v) : s;
}

// an enum value's words: the field's own (enum.<words>.<value>: "special" is 特级 as a hot-work
// level, 特种 as a kind of protective equipment), else the words all fields share
export function enumWord(ctx, f, v) {
  if (v === null || v === undefined) return "";
  if (f && f.words) {
    const k = "enum." + f.words + "." + v;
    const s = ctx.t(k);
    if (s !== k) return s;
  }
  return word(ctx, "enum.", v);
}

export function typeTitle(ctx, spec) {
  return (ctx.lang === "zh-CN" && spec.title_zh) ? spec.title_zh : (spec.title || spec.type || "");
}

export function fieldTitle(ctx, name, f) {
  if (ctx.lang === "zh-CN" && f && f.title_zh) return f.title_zh;
  return (f && f.title) || name.replace(/_/g, " ");
}

// a workflow step's short name for its button (its long title goes in the tooltip)
export function transitionTitle(ctx, name, tr) {
  if (ctx.lang === "zh-CN" && tr && tr.title_zh) return tr.title_zh;
  return word(ctx, "tr.", name).replace(/_/g, " ");
}

// a field's value as text for tables and read-only views
export function valueText(ctx, f, v) {
  if (v === null || v === undefined || v === "") return "";
  if (!f) return typeof v === "object" ? JSON.stringify(v) : String(v);
  switch (f.type) {
    case "enum": return enumWord(ctx, f, v);
    case "bool": return v ? ctx.t("common.yes") : ctx.t("common.no");
    case "list": case "channels": return Array.isArray(v) ? v.join(", ") : String(v);
    case "table": return Array.isArray(v) ? ctx.t("reg.rows", { n: v.length }) : String(v);
    case "datetime": return ctx.fmtTime(v);
    default: return String(v);
  }
}

async function refOptions(ctx, cache, to) {
  if (!cache[to]) {
    cache[to] = ctx.api("/registers/" + encodeURIComponent(to) + "?limit=1000&sort=id&desc=true")
      .then((r) => r.items.map((d) => [d.id, d.label || String(d.id)]))
      .catch(() => []);
  }
  return cache[to];
}

async function channelList(ctx, cache) {
  if (!cache.__channels) {
    cache.__channels = ctx.api("/channels?limit=2000").then((r) => r.channels.map((c) => c.name)).catch(() => []);
  }
  return cache.__channels;
}

// datetime-local wants "YYYY-MM-DDTHH:MM" in the site's zone; the API takes it as plant-local
function toLocalInput(ctx, v) {
  if (!v) return "";
  const s = ctx.fmtTime(v);
  return s ? s.slice(0, 16).replace(" ", "T") : "";
}

// one input for one field: {node (the input or a group), get() -> value | null}
export async function widget(ctx, name, f, value, opts) {
  const { el } = ctx;
  const cache = opts.cache;
  const id = "f-" + name + "-" + (++uid);
  let input;
  let get;
  const ro = !!opts.readOnly;
  switch (f.type) {
    case "enum": {
      input = el("select");
      input.append(Object.assign(el("option", "—"), { value: "" }));
      for (const v of f.values) input.append(Object.assign(el("option", enumWord(ctx, f, v)), { value: v }));
      input.value = value ?? "";
      get = () => input.value || null;
      break;
    }
    case "bool": {
      input = el("select");
      for (const [v, k] of [["", null], ["true", "common.yes"], ["false", "common.no"]]) {
        input.append(Object.assign(el("option", k ? ctx.t(k) : "—"), { value: v }));
      }
      input.value = value === true ? "true" : value === false ? "false" : "";
      get = () => (input.value === "" ? null : input.value === "true");
      break;
    }
    case "int": case "number": {
      input = el("input");
      input.type = "number";
      input.step = f.type === "int" ? "1" : "any";
      if (f.min !== undefined && f.min !== null) input.min = String(f.min);
      if (f.max !== undefined && f.max !== null) input.max = String(f.max);
      input.value = value ?? "";
      get = () => (input.value === "" ? null : Number(input.value));
      break;
    }
    case "date": {
      input = el("input");
      input.type = "date";
      input.value = value ?? "";
      get = () => input.value || null;
      break;
    }
    case "datetime": {
      input = el("input");
      input.type = "datetime-local";
      input.step = "1";
      input.value = toLocalInput(ctx, value);
      get = () => (input.value ? (input.value.length === 16 ? input.value + ":00" : input.value) : null);
      break;
    }
    case "list": {
      input = el("textarea");
      input.rows = 3;
      input.value = Array.isArray(value) ? value.join("\n") : "";
      get = () => { const a = input.value.split("\n").map((x) => x.trim()).filter(Boolean); return a.length ? a : null; };
      break;
    }
    case "ref": {
      input = el("select");
      input.append(Object.assign(el("option", "—"), { value: "" }));
      for (const [rid, label] of await refOptions(ctx, cache, f.to)) {
        input.append(Object.assign(el("option", "#" + rid + " " + label), { value: String(rid) }));
      }
      if (value !== null && value !== undefined && ![...input.options].some((o) => o.value === String(value))) {
        input.append(Object.assign(el("option", "#" + value), { value: String(value) }));
      }
      input.value = value === null || value === undefined ? "" : String(value);
      get = () => (input.value ? Number(input.value) : null);
      break;
    }
    case "channel": case "channels": {
      input = el("input");
      const dl = el("datalist");
      dl.id = id + "-list";
      for (const n of await channelList(ctx, cache)) dl.append(Object.assign(el("option"), { value: n }));
      input.setAttribute("list", dl.id);
      input.value = Array.isArray(value) ? value.join(", ") : (value ?? "");
      if (f.type === "channels") input.placeholder = "GT-1, GT-2";
      get = f.type === "channel"
        ? () => input.value.trim() || null
        : () => { const a = input.value.split(",").map((x) => x.trim()).filter(Boolean); return a.length ? a : null; };
      input.id = id;
      const g = el("span");
      g.append(input, dl);
      input.disabled = ro;
      input.required = !!f.required && !ro;
      return unchangedAsGiven({ node: g, input, get, id }, value);
    }
    case "table": {
      return tableWidget(ctx, name, f, value, opts, id);
    }
    default: {
      const long = (f.max_length || 4000) > 200 && /description|notes|summary|measures|rectification|content|findings|causes|actions|opinion|evaluation|handling/.test(name);
      input = el(long ? "textarea" : "input");
      if (!long) input.type = "text";
      if (long) input.rows = 3;
      input.maxLength = f.max_length || 4000;
      input.value = value ?? "";
      get = () => (input.value.trim() === "" ? null : input.value);
    }
  }
  input.id = id;
  input.name = name;
  input.disabled = ro;
  input.required = !!f.required && !ro;
  return unchangedAsGiven({ node: input, input, get, id }, value);
}

// a field nobody touched gives back the value it was given, exactly: the form's own
// rendering (a datetime in the site's zone, a table's empty cells) must not count as an edit
function unchangedAsGiven(w, value) {
  const initial = w.input.value;
  const read = w.get;
  w.dirty = () => w.input.value !== initial;
  w.get = () => (w.dirty() ? read() : (value === undefined ? null : value));
  return w;
}

async function tableWidget(ctx, name, f, value, opts, id) {
  const { el } = ctx;
  const box = el("div", null, "table-field");
  box.id = id;
  box.setAttribute("role", "group");
  const rowsBox = el("div");
  const rows = [];
  async function addRow(v) {
    const fs = el("fieldset", null, "table-row");
    const entry = { fs, cells: {} };
    for (const [c, cf] of Object.entries(f.columns)) {
      const w = await widget(ctx, name + "-" + c, cf, v ? v[c] : undefined, opts);
      const lab = el("label", fieldTitle(ctx, c, cf) + (cf.required ? " *" : ""));
      lab.htmlFor = w.id;
      const cell = el("span", null, "cell");
      cell.append(lab, w.node);
      fs.append(cell);
      entry.cells[c] = w;
    }
    if (!opts.readOnly) {
      const rm = el("button", ctx.t("reg.remove_row"), "small");
      rm.type = "button";
      rm.addEventListener("click", () => { fs.remove(); rows.splice(rows.indexOf(entry), 1); });
      fs.append(rm);
    }
    rows.push(entry);
    rowsBox.append(fs);
  }
  for (const v of Array.isArray(value) ? value : []) await addRow(v);
  const initialRows = rows.slice();
  box.append(rowsBox);
  if (!opts.readOnly) {
    const add = el("button", ctx.t("reg.add_row"), "small");
    add.type = "button";
    add.addEventListener("click", () => addRow(null));
    box.append(add);
  }
  // untouched (same rows, no cell edited): the table as it was given
  const dirty = () => rows.length !== initialRows.length || rows.some((r, i) => r !== initialRows[i]) ||
    rows.some((r) => Object.values(r.cells).some((w) => w.dirty && w.dirty()));
  const get = () => {
    if (!dirty()) return value === undefined ? null : value;
    const out = [];
    for (const r of rows) {
      const o = {};
      for (const [c, w] of Object.entries(r.cells)) { const v = w.get(); if (v !== null) o[c] = v; }
      if (Object.keys(o).length) out.push(o);
    }
    return out.length ? out : null;
  };
  return { node: box, input: box, get, id, dirty };
}

// a form of `names` (all fields by default) filled with `data`:
// {node, values() -> {field: value|null}, changed(orig) -> only what differs}
export async function buildForm(ctx, spec, data, opts = {}) {
  const { el } = ctx;
  const names = opts.only || Object.keys(spec.fields);
  const cache = opts.cache || {};
  const grid = el("div", null, "form-grid");
  const widgets = {};
  for (const n of names) {
    const f = spec.fields[n];
    if (!f) continue;
    const w = await widget(ctx, n, f, data ? data[n] : undefined, { readOnly: opts.readOnly, cache });
    const lab = el("label", fieldTitle(ctx, n, f) + (f.required && !opts.readOnly ? " *" : ""));
    lab.htmlFor = w.id;
    lab.dataset.field = n;
    w.input.dataset.field = n;
    const row = el("div", null, "form-row" + (f.due ? " due-field" : ""));
    row.append(lab, w.node);
    grid.append(row);
    widgets[n] = w;
  }
  const values = () => {
    const out = {};
    for (const [n, w] of Object.entries(widgets)) out[n] = w.get();
    return out;
  };
  const changed = (orig) => {
    const out = {};
    for (const [n, v] of Object.entries(values())) {
      const before = orig ? orig[n] : undefined;
      if (JSON.stringify(v ?? null) !== JSON.stringify(before ?? null)) out[n] = v;
    }
    return out;
  };
  return { node: grid, values, changed, widgets };
}
