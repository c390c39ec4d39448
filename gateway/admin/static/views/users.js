// Users and their tokens (admins only, as the API): add a user, rotate a user's token, revoke
// it. A new token is shown once, here, and never again (the server keeps only its hash).

export async function mount(root, ctx) {
  const { el, t } = ctx;
  if (ctx.role !== "admin") {
    root.append(el("p", t("common.needs_role", { role: t("role.admin") }), "error"));
    return;
  }
  root.append(el("h2", t("users.title")));
  const shown = el("div", null, "token-once");
  shown.id = "token-once";
  shown.setAttribute("role", "status");
  shown.hidden = true;

  const form = el("form", null, "filters");
  form.id = "user-form";
  const nameLab = el("label", t("users.name") + " ");
  const name = el("input");
  name.id = "user-name";
  name.required = true;
  name.maxLength = 64;
  name.pattern = "[A-Za-z0-9][A-Za-z0-9._@\\-]{0,63}";
  nameLab.htmlFor = name.id;
  const roleLab = el("label", t("users.role") + " ");
  const role = el("select");
  role.id = "user-role";
  for (const r of ["viewer", "operator", "admin"]) role.append(Object.assign(el("option", t("role." + r)), { value: r }));
  roleLab.htmlFor = role.id;
  const add = el("button", t("users.add"), "primary");
  add.type = "submit";
  add.id = "user-add";
  const err = el("p", "", "error");
  err.id = "user-error";
  err.setAttribute("role", "alert");
  form.append(nameLab, name, roleLab, role, add);
  root.append(form, err, shown);

  const tb = el("table");
  tb.id = "users";
  const hr = el("tr");
  for (const h of [t("users.name"), t("users.role"), t("users.key"), t("users.created"), t("users.revoked"), ""]) hr.append(el("th", h));
  tb.append(el("thead"), el("tbody"));
  tb.tHead.append(hr);
  root.append(tb);

  function showToken(r) {
    // the token once: selectable text and a copy button; gone when the view is left
    shown.replaceChildren(el("p", t("users.token_once", { name: r.name, role: t("role." + r.role) })));
    const code = el("code", r.token, "token");
    code.id = "new-token";
    const copy = el("button", t("users.copy"));
    copy.addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(r.token));
    shown.append(code, copy);
    shown.hidden = false;
  }

  async function send(body) {
    err.textContent = "";
    try {
      showToken(await ctx.api("/users", { method: "POST", json: body }));
      await reload();
    } catch (e) { err.textContent = e.message; }
  }

  async function reload() {
    const users = await ctx.api("/users");
    const body = el("tbody");
    for (const u of users) {
      const tr = el("tr", null, u.revoked ? "revoked" : "");
      tr.dataset.user = u.name;
      const act = el("td");
      if (!u.revoked) {
        const rot = el("button", t("users.rotate"));
        rot.dataset.action = "rotate";
        rot.addEventListener("click", () => send({ name: u.name, role: u.role, rotate: true }));
        const rev = el("button", t("users.revoke"));
        rev.dataset.action = "revoke";
        rev.addEventListener("click", async () => {
          if (!confirm(t("users.confirm_revoke", { name: u.name }))) return;
          try {
            await ctx.api("/users/" + encodeURIComponent(u.name), { method: "DELETE" });
            await reload();
          } catch (e) { err.textContent = e.message; }
        });
        if (u.name === ctx.user) rev.disabled = true;  // the page would lock its own user out
        act.append(rot, rev);
      }
      tr.append(el("td", u.name), el("td", t("role." + u.role)), el("td", u.key_id, "muted"),
        el("td", ctx.fmtTime(u.created) + " " + (u.created_by || "")), el("td", u.revoked ? ctx.fmtTime(u.revoked) : ""), act);
      body.append(tr);
    }
    tb.tBodies[0].replaceWith(body);
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    send({ name: name.value.trim(), role: role.value });
    name.value = "";
  });
  await reload();
  return () => shown.replaceChildren();
}
