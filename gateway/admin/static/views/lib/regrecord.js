// One register record: its form (create, edit, archive/restore), its workflow steps as buttons
// (only those allowed from its state and for the user's role; a step that needs fields asks
// for them in a dialog, with a note and a photo), its attachments (upload with progress,
// preview of images and PDFs, download) and its history (who changed what, when).

import { RANK, buildForm, download, fieldTitle, transitionTitle, typeTitle, valueText, word } from "./regform.js";

const PREVIEWABLE = ["image/png", "image/jpeg", "application/pdf"];

function base(rtype) { return "/registers/" + encodeURIComponent(rtype); }

export async function mountRecord(root, ctx, rtype, spec, rid) {
  const { el, t } = ctx;
  const canWrite = RANK[ctx.role] >= RANK.operator;
  const urls = [];  // object URLs of previews, freed when leaving
  const back = el("a", "← " + typeTitle(ctx, spec));
  back.href = "#/registers/" + encodeURIComponent(rtype);

  if (rid === "new") {
    if (!canWrite) { root.append(back, el("p", t("common.needs_role", { role: t("role.operator") }), "error")); return; }
    root.append(back, el("h2", t("reg.new") + ": " + typeTitle(ctx, spec)));
    const form = el("form");
    form.id = "record-form";
    const built = await buildForm(ctx, spec, {});
    const save = el("button", t("common.save"), "primary");
    save.type = "submit";
    save.id = "rec-save";
    const err = el("p", "", "error");
    err.setAttribute("role", "alert");
    form.append(built.node, save, err);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const data = Object.fromEntries(Object.entries(built.values()).filter(([, v]) => v !== null));
      save.disabled = true;
      try {
        const doc = await ctx.api(base(rtype), { method: "POST", json: data });
        ctx.navigate("#/registers/" + encodeURIComponent(rtype) + "/" + doc.id);
      } catch (e) {
        err.textContent = e.message;
        save.disabled = false;
      }
    });
    root.append(form);
    return;
  }

  const path = base(rtype) + "/" + encodeURIComponent(rid);
  const doc = await ctx.api(path);
  const editable = canWrite && !doc.archived;

  // ---------------------------------------------------------------- head
  const h2 = el("h2", typeTitle(ctx, spec) + " #" + doc.id + (doc.label ? " · " + doc.label : ""));
  const badges = el("p", null, "badges");
  if (doc.state) {
    const b = el("span", word(ctx, "state.", doc.state), "badge state");
    b.id = "rec-state";
    b.dataset.state = doc.state;
    badges.append(b);
  }
  if (doc.overdue) badges.append(el("span", t("reg.overdue"), "badge overdue"));
  if (doc.archived) badges.append(el("span", t("reg.archived_badge"), "badge archived"));
  for (const d of doc.due) {
    badges.append(el("span", fieldTitle(ctx, d.field, spec.fields[d.field]) + ": " + d.date + " (" +
      (d.days_left < 0 ? t("reg.overdue_days", { days: -d.days_left }) : t("reg.days_left", { days: d.days_left })) + ")",
    "badge " + (d.days_left < 0 ? "overdue" : d.days_left <= 30 ? "due-soon" : "")));
  }
  badges.append(el("span", t("reg.created_by", { who: doc.created_by, when: ctx.fmtTime(doc.created) }), "muted"));
  root.append(back, h2, badges);

  // ---------------------------------------------------------------- workflow
  if (spec.workflow && canWrite && !doc.archived) {
    const wf = el("div", null, "workflow");
    wf.id = "workflow";
    wf.setAttribute("role", "group");
    wf.setAttribute("aria-label", t("reg.workflow"));
    for (const [name, tr] of Object.entries(spec.workflow.transitions)) {
      if (!tr.from.includes(doc.state)) continue;
      if (RANK[ctx.role] < RANK[tr.role || "operator"]) continue;  // the API would refuse it
      const b = el("button", transitionTitle(ctx, name, tr) + " → " + word(ctx, "state.", tr.to), "transition");
      b.dataset.transition = name;
      if (tr.title) b.title = tr.title;
      b.addEventListener("click", () => transitionDialog(ctx, rtype, spec, doc, name, tr));
      wf.append(b);
    }
    if (wf.children.length) root.append(wf);
  }

  // ---------------------------------------------------------------- fields
  const sec = el("section");
  sec.append(el("h3", t("reg.fields")));
  const form = el("form");
  form.id = "record-form";
  const built = await buildForm(ctx, spec, doc.data, { readOnly: !editable });
  form.append(built.node);
  const err = el("p", "", "error");
  err.setAttribute("role", "alert");
  if (editable) {
    const save = el("button", t("common.save"), "primary");
    save.type = "submit";
    save.id = "rec-save";
    form.append(save);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const changed = built.changed(doc.data);
      if (!Object.keys(changed).length) { err.textContent = t("reg.nothing_changed"); return; }
      save.disabled = true;
      try {
        await ctx.api(path + "?version=" + doc.version, { method: "PATCH", json: changed });
        ctx.navigate(location.hash);
      } catch (e) {
        err.textContent = e.message;
        save.disabled = false;
      }
    });
  }
  if (canWrite) {
    const arch = el("button", doc.archived ? t("reg.restore") : t("reg.archive"));
    arch.type = "button";
    arch.id = "rec-archive";
    arch.addEventListener("click", async () => {
      try {
        await ctx.api(path + (doc.archived ? "/restore" : "/archive"), { method: "POST", json: {} });
        ctx.navigate(location.hash);
      } catch (e) { err.textContent = e.message; }
    });
    form.append(arch);
  }
  form.append(err);
  sec.append(form);
  root.append(sec);

  // ---------------------------------------------------------------- attachments
  root.append(attachments(ctx, path, doc, editable, urls));

  // ---------------------------------------------------------------- history
  const hist = await ctx.api(path + "/history");
  const hs = el("section");
  hs.append(el("h3", t("reg.history")));
  const ht = el("table");
  ht.id = "history";
  const hh = el("tr");
  for (const h of [t("reg.when"), t("reg.who"), t("reg.action"), t("reg.changes"), t("reg.comment")]) hh.append(el("th", h));
  ht.append(el("thead"), el("tbody"));
  ht.tHead.append(hh);
  for (const c of hist.slice().reverse()) {
    const tr = el("tr");
    const before = (c.before && c.before.data) || {};
    const after = (c.after && c.after.data) || {};
    const diffs = [];
    for (const k of new Set([...Object.keys(before), ...Object.keys(after)])) {
      if (JSON.stringify(before[k]) === JSON.stringify(after[k])) continue;
      diffs.push(fieldTitle(ctx, k, spec.fields[k]) + ": " + valueText(ctx, spec.fields[k], before[k]) + " → " +
        valueText(ctx, spec.fields[k], after[k]));
    }
    if (c.before && c.after && c.before.state !== c.after.state) {
      diffs.unshift(t("reg.state") + ": " + word(ctx, "state.", c.before.state) + " → " + word(ctx, "state.", c.after.state));
    }
    const changes = el("td");
    for (const d of diffs) changes.append(el("div", d));
    tr.append(el("td", ctx.fmtTime(c.ts)), el("td", c.actor), el("td", word(ctx, "action.", c.action)), changes,
      el("td", c.comment || ""));
    ht.tBodies[0].append(tr);
  }
  hs.append(ht);
  root.append(hs);
  return () => urls.forEach((u) => URL.revokeObjectURL(u));
}

function attachments(ctx, path, doc, editable, urls) {
  const { el, t } = ctx;
  const sec = el("section");
  sec.id = "attachments";
  sec.append(el("h3", t("reg.attachments")));
  const list = el("ul", null, "attachments");
  list.id = "att-list";
  const preview = el("div", null, "preview");
  preview.id = "att-preview";

  function fill(items) {
    list.replaceChildren();
    for (const a of items) {
      const li = el("li");
      li.dataset.attachment = String(a.id);
      const dl = el("button", a.filename, "link");
      dl.dataset.action = "download";
      dl.addEventListener("click", async () => {
        const r = await ctx.fetchRaw(path + "/attachments/" + a.id);
        if (r.ok) download(ctx, await r.blob(), a.filename);
      });
      li.append(dl, el("span", " " + a.mime + ", " + Math.ceil(a.size / 1024) + " KiB, " + a.by + ", " + ctx.fmtTime(a.uploaded) + " ", "muted"));
      if (PREVIEWABLE.includes(a.mime)) {
        const pv = el("button", t("reg.preview"), "small");
        pv.dataset.action = "preview";
        pv.addEventListener("click", async () => {
          const r = await ctx.fetchRaw(path + "/attachments/" + a.id);
          if (!r.ok) return;
          // the file as the server typed it by its content, shown from a blob: URL (the CSP allows blob: images and frames)
          const u = URL.createObjectURL(new Blob([await r.arrayBuffer()], { type: a.mime }));
          urls.push(u);
          let node;
          if (a.mime === "application/pdf") {
            node = el("iframe");
            node.title = a.filename;
          } else {
            node = el("img");
            node.alt = a.filename;
          }
          node.src = u;
          preview.replaceChildren(node);
        });
        li.append(pv);
      }
      list.append(li);
    }
    if (!items.length) list.append(el("li", t("reg.no_attachments"), "muted"));
  }
  fill(doc.attachments || []);
  sec.append(list);
  if (editable) {
    const lab = el("label", t("reg.upload") + " ");
    const file = el("input");
    file.type = "file";
    file.id = "att-file";
    file.accept = "image/png,image/jpeg,application/pdf";
    lab.append(file);
    const bar = el("progress");
    bar.id = "att-progress";
    bar.max = 100;
    bar.value = 0;
    bar.hidden = true;
    const err = el("p", "", "error");
    err.id = "att-error";
    err.setAttribute("role", "alert");
    file.addEventListener("change", async () => {
      const f = file.files[0];
      if (!f) return;
      err.textContent = "";
      try {
        await uploadFile(ctx, path, f, bar);
        fill(await ctx.api(path + "/attachments"));
        file.value = "";
      } catch (e) { err.textContent = e.message; }
    });
    sec.append(lab, bar, err);
  }
  sec.append(preview);
  return sec;
}

// one file attached with a progress bar; the server checks its type by content and its size
async function uploadFile(ctx, path, f, bar) {
  bar.hidden = false;
  bar.value = 0;
  try {
    return await ctx.upload(path + "/attachments?filename=" + encodeURIComponent(f.name.slice(0, 200)), f,
      (done, total) => { bar.value = Math.round((100 * done) / total); bar.dataset.done = String(done); });
  } finally {
    bar.dataset.finished = "1";
  }
}

// whether a step runs a gas analysis (as the server's needs_gas): `check: gas` on a permit kind
// that requires one, or one where it is optional and the permit names an area or channels
function needsGas(spec, tr, data) {
  const gas = spec.permit && spec.permit.gas;
  if (tr.check !== "gas" || !gas || gas === "none") return false;
  return gas === "required" || !!data.area || (Array.isArray(data.channels) && data.channels.length > 0);
}

const PREVIEW_EVERY_MS = 3000;

// the permit's gas analysis on live readings now (GET …/analysis: shown, not recorded): the
// verdict, then each channel's reading, limit and verdict; asked again every few seconds until
// stop() (the dialog closed)
function gasPreview(ctx, rtype, id) {
  const { el, t } = ctx;
  const node = el("section", null, "gas-preview");
  node.id = "tr-analysis";
  node.setAttribute("aria-live", "polite");
  const verdict = el("p", t("reg.preview_loading"), "muted");
  verdict.id = "tr-analysis-verdict";
  const table = el("table", null, "readings");
  table.id = "tr-analysis-readings";
  const when = el("p", "", "muted");
  when.id = "tr-analysis-at";
  node.append(el("h4", t("reg.preview_title")), verdict, table, when, el("p", t("reg.preview_note"), "muted"));
  let timer = null;
  let stopped = false;
  async function refresh() {
    timer = null;
    let a;
    try {
      a = await ctx.api(base(rtype) + "/" + encodeURIComponent(id) + "/analysis");
    } catch (e) {
      if (stopped) return;
      verdict.className = "error";
      verdict.textContent = t("reg.preview_failed", { error: e.message });
      delete verdict.dataset.ok;
      if (e.status !== 401) timer = setTimeout(refresh, PREVIEW_EVERY_MS);
      return;
    }
    if (stopped || !node.isConnected) return;
    verdict.className = a.ok ? "ok" : "error";
    verdict.dataset.ok = String(!!a.ok);
    verdict.textContent = (a.ok ? t("reg.preview_pass") : t("reg.preview_fail")) + " " + ctx.words(a.message || "");
    const hr = el("tr");
    for (const h of ["reg.channel", "reg.value", "reg.criterion", "reg.verdict"]) hr.append(el("th", t(h)));
    const rows = [hr];
    for (const r of a.readings || []) {
      const row = el("tr", null, r.verdict === "pass" ? "" : "refused");
      row.dataset.channel = r.channel;
      row.dataset.verdict = r.verdict;
      const value = r.value === null || r.value === undefined ? "—" : [r.value, r.unit].filter((x) => x !== null && x !== undefined && x !== "").join(" ");
      row.append(el("td", r.channel), el("td", value), el("td", [r.criterion, r.clause].filter(Boolean).join(" · ")),
        el("td", r.verdict === "pass" ? t("reg.preview_verdict_pass") : ctx.words(r.reason || r.verdict)));
      rows.push(row);
    }
    table.replaceChildren(...rows);
    table.hidden = rows.length === 1;
    when.textContent = t("reg.preview_at", { when: ctx.fmtTime(a.at) });
    timer = setTimeout(refresh, PREVIEW_EVERY_MS);
  }
  refresh();
  return { node, stop: () => { stopped = true; if (timer !== null) clearTimeout(timer); timer = null; } };
}

// a workflow step: the fields it needs (filled with what the record has), a note and a photo
async function transitionDialog(ctx, rtype, spec, doc, name, tr) {
  const { el, t } = ctx;
  const dlg = el("dialog", null, "transition-dialog");
  dlg.id = "transition-dialog";
  dlg.setAttribute("aria-label", transitionTitle(ctx, name, tr));
  const form = el("form");
  form.method = "dialog";
  form.append(el("h3", transitionTitle(ctx, name, tr) + " → " + word(ctx, "state.", tr.to)));
  // the fields the step needs, and the signatures table when it needs signatures (a permit's approval)
  const needs = (tr.requires || []).filter((n) => spec.fields[n]);
  if ((tr.signatures || []).length && spec.fields.signatures && !needs.includes("signatures")) needs.push("signatures");
  const built = await buildForm(ctx, spec, doc.data, { only: needs });
  for (const n of tr.requires || []) { const w = built.widgets[n]; if (w && w.input && "required" in w.input) w.input.required = true; }
  form.append(built.node);
  const noteId = "tr-note";
  const noteLab = el("label", t("reg.note"));
  noteLab.htmlFor = noteId;
  const note = el("textarea");
  note.id = noteId;
  note.maxLength = 2000;
  note.rows = 3;
  const photoLab = el("label", t("reg.photo"));
  const photo = el("input");
  photo.type = "file";
  photo.id = "tr-photo";
  photo.accept = "image/png,image/jpeg,application/pdf";
  photoLab.htmlFor = photo.id;
  const bar = el("progress");
  bar.id = "tr-progress";
  bar.max = 100;
  bar.hidden = true;
  const err = el("div", "", "error");
  err.id = "tr-error";
  err.setAttribute("role", "alert");
  const ok = el("button", t("reg.confirm"), "primary");
  ok.id = "tr-ok";
  ok.value = "ok";
  const cancel = el("button", t("common.cancel"));
  cancel.type = "button";
  cancel.id = "tr-cancel";
  cancel.addEventListener("click", () => dlg.close());
  const grid = el("div", null, "form-grid");
  for (const [lab, input] of [[noteLab, note], [photoLab, photo]]) {
    const row = el("div", null, "form-row");
    row.append(lab, input);
    grid.append(row);
  }
  // a step that takes a gas analysis: the analysis the server would take now, refreshed while the
  // dialog is open (shown only: the server takes its own at the step and decides). Below the
  // buttons: its rows come and change while the dialog is open, and must never move the button
  // the operator is about to press
  const preview = needsGas(spec, tr, doc.data) ? gasPreview(ctx, rtype, doc.id) : null;
  form.append(grid, bar, err, ok, cancel, ...(preview ? [preview.node] : []));
  dlg.append(form);
  document.body.append(dlg);
  dlg.addEventListener("close", () => { if (preview) preview.stop(); dlg.remove(); });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.replaceChildren();
    const fields = Object.fromEntries(Object.entries(built.values()).filter(([, v]) => v !== null));
    ok.disabled = true;
    const path = base(rtype) + "/" + doc.id;
    try {
      await ctx.api(path + "/transitions/" + encodeURIComponent(name), {
        method: "POST", json: { fields, comment: note.value.trim() || null },
      });
    } catch (e) {
      // the server's refusal as it words it (a gas reading above its criterion, a missing signature)
      err.append(el("p", e.message));
      const analysis = e.body && e.body.analysis;
      if (analysis && Array.isArray(analysis.readings) && analysis.readings.length) {
        // the live readings the step was judged on, each with its verdict and the clause behind it
        const tb = el("table", null, "readings");
        const hr = el("tr");
        for (const h of ["reg.channel", "reg.value", "reg.verdict", "reg.criterion"]) hr.append(el("th", t(h)));
        tb.append(hr);
        for (const r of analysis.readings) {
          const tr = el("tr", null, r.verdict === "pass" ? "" : "refused");
          tr.append(el("td", r.channel), el("td", [r.value, r.unit].filter((x) => x !== null && x !== undefined).join(" ")),
            el("td", r.reason || r.verdict), el("td", [r.criterion, r.clause].filter(Boolean).join(" · ")));
          tb.append(tr);
        }
        err.append(tb);
      }
      ok.disabled = false;
      return;
    }
    if (photo.files[0]) {
      try { await uploadFile(ctx, path, photo.files[0], bar); } catch (e) {
        err.append(el("p", t("reg.photo_failed", { error: e.message })));
        ok.disabled = false;
        dlg.addEventListener("close", () => ctx.navigate(location.hash));
        return;
      }
    }
    dlg.close();
    ctx.navigate(location.hash);
  });
  dlg.showModal();
  const first = form.querySelector("input, select, textarea");
  if (first) first.focus();
}
