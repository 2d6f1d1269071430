// Users page (administrators): accounts and API tokens, through the admin API (/api/v1/admin) with
// the session cookie, as a script with a token would call it. Changes that reshape the page (a new
// user, deactivation) reload it with a note; a new token is shown in place, once: a reload would lose it.
"use strict";

(() => {
  const root = document.getElementById("users-page");
  if (!root) return;
  const { send, say } = window.IO;
  const NOTE = "io-note"; // survives the reload (admin.js shows the detector-deleted note the same way)
  const PASSWORD_ROLES = (root.dataset.passwordRoles || "").split(",");
  const API = "/api/v1/admin";

  function reloadWith(note) {
    window.sessionStorage.setItem(NOTE, note);
    window.location.reload();
  }

  function when(iso) {
    // The server's format (cloud.app.web.pages.when): "2025-01-31 14:02 UTC".
    return iso ? iso.slice(0, 16).replace("T", " ") + " UTC" : "–";
  }

  const note = window.sessionStorage.getItem(NOTE);
  if (note) {
    window.sessionStorage.removeItem(NOTE);
    say("users-status", note);
  }

  // New user: people get a password, devices and trainers none (the API refuses the other way round).
  const userForm = document.getElementById("user-form");
  const passwordField = document.getElementById("password-field");
  function syncPassword() {
    const needs = PASSWORD_ROLES.includes(userForm.elements.namedItem("role").value);
    passwordField.hidden = !needs;
    userForm.elements.namedItem("password").required = needs;
  }
  userForm.elements.namedItem("role").addEventListener("change", syncPassword);
  syncPassword();
  userForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = userForm.elements;
    const body = {
      username: f.namedItem("username").value.trim(),
      role: f.namedItem("role").value,
      email: f.namedItem("email").value.trim(),
    };
    if (PASSWORD_ROLES.includes(body.role)) body.password = f.namedItem("password").value;
    const r = await send("POST", API + "/users", body);
    if (r.ok) {
      reloadWith("Created the " + r.data.role + " " + r.data.username + ".");
    } else {
      say("user-form-status", r.detail || "could not create the user (" + r.status + ")", "error");
    }
  });

  // Per user: role change and deactivation (asked first, as promote and rollback are).
  for (const row of document.querySelectorAll("#users tbody tr[data-user-id]")) {
    const userId = row.dataset.userId;
    const username = row.dataset.username;
    const url = API + "/users/" + encodeURIComponent(userId);
    const roleForm = row.querySelector("form.role-form");
    if (roleForm) {
      const select = roleForm.elements.namedItem("role");
      let saved = select.value;
      roleForm.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        if (select.value === saved) {
          say("users-status", username + "'s role already is " + saved + ".");
          return;
        }
        const r = await send("PATCH", url, { role: select.value });
        if (r.ok) {
          saved = r.data.role;
          say("users-status", username + "'s role is now " + r.data.role + ", from their next request on.");
        } else {
          select.value = saved;
          say("users-status", r.detail || "could not change the role (" + r.status + ")", "error");
        }
      });
    }
    for (const button of row.querySelectorAll("button[data-action]")) {
      button.addEventListener("click", async () => {
        const deactivate = button.dataset.action === "deactivate";
        if (deactivate && !window.confirm(
          "Deactivate " + username + "? Their tokens and sessions stop working at once; the account and its history stay, and it can be activated again.",
        )) return;
        button.disabled = true;
        const r = await send("POST", url + (deactivate ? "/deactivate" : "/activate"));
        if (r.ok) {
          reloadWith((deactivate ? "Deactivated " : "Activated ") + username + ".");
        } else {
          button.disabled = false;
          say("users-status", r.detail || "could not change " + username + " (" + r.status + ")", "error");
        }
      });
    }
  }

  // Tokens: a new one is shown once, in a box to copy from; revoking asks first.
  const tokenForm = document.getElementById("token-form");
  const tokens = document.querySelector("#tokens tbody");
  const fresh = document.getElementById("new-token");
  const freshValue = document.getElementById("new-token-value");

  function countCell(userId) {
    const row = document.querySelector('#users tr[data-user-id="' + CSS.escape(userId) + '"]');
    return row ? row.querySelector('[data-field="tokens"]') : null;
  }

  function bump(userId, by) {
    const cell = countCell(userId);
    if (cell) cell.textContent = String(Math.max(0, Number(cell.textContent) + by));
  }

  function cell(label, text, klass) {
    const td = document.createElement("td");
    td.dataset.label = label;
    if (klass) td.className = klass;
    if (text !== undefined) td.textContent = text;
    return td;
  }

  function tokenRow(t) {
    const tr = document.createElement("tr");
    tr.dataset.tokenId = t.id;
    tr.dataset.userId = t.user_id;
    tr.dataset.name = t.name;
    tr.appendChild(cell("Name", t.name));
    tr.appendChild(cell("User", t.username));
    const snippet = cell("Snippet");
    const code = document.createElement("code");
    code.textContent = t.snippet + "…";
    snippet.appendChild(code);
    tr.appendChild(snippet);
    tr.appendChild(cell("Created", when(t.created_at), "nowrap"));
    tr.appendChild(cell("Last used", when(t.last_used_at), "nowrap"));
    const revoked = cell("Revoked", when(t.revoked_at), "nowrap");
    revoked.dataset.field = "revoked";
    tr.appendChild(revoked);
    const actions = cell("");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "danger";
    button.dataset.action = "revoke";
    button.textContent = "Revoke";
    actions.appendChild(button);
    tr.appendChild(actions);
    wireRevoke(tr);
    return tr;
  }

  function wireRevoke(tr) {
    const button = tr.querySelector('button[data-action="revoke"]');
    if (!button) return;
    button.addEventListener("click", async () => {
      const name = tr.dataset.name;
      if (!window.confirm("Revoke the token " + name + "? Whatever uses it is refused from now on; this cannot be undone.")) return;
      button.disabled = true;
      const r = await send("POST", API + "/tokens/" + encodeURIComponent(tr.dataset.tokenId) + "/revoke");
      if (r.ok) {
        tr.querySelector('[data-field="revoked"]').textContent = when(r.data.revoked_at);
        tr.classList.add("inactive");
        button.remove();
        bump(tr.dataset.userId, -1);
        say("token-status", "Revoked the token " + name + " of " + r.data.username + ".");
      } else {
        button.disabled = false;
        say("token-status", r.detail || "could not revoke (" + r.status + ")", "error");
      }
    });
  }

  for (const tr of tokens.querySelectorAll("tr[data-token-id]")) wireRevoke(tr);

  tokenForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = tokenForm.elements;
    const body = { user_id: f.namedItem("user_id").value, name: f.namedItem("name").value.trim() };
    const r = await send("POST", API + "/tokens", body);
    if (!r.ok) {
      say("token-status", r.detail || "could not create the token (" + r.status + ")", "error");
      return;
    }
    const none = tokens.querySelector("tr.none");
    if (none) none.remove();
    tokens.insertBefore(tokenRow(r.data), tokens.firstChild);
    bump(r.data.user_id, 1);
    fresh.querySelector('[data-field="username"]').textContent = r.data.username;
    freshValue.value = r.data.token;
    fresh.hidden = false;
    freshValue.focus();
    freshValue.select();
    f.namedItem("name").value = "";
    say("token-status", "Created the token " + r.data.name + ".");
  });

  document.getElementById("copy-token").addEventListener("click", async () => {
    freshValue.select();
    let copied = false;
    try {
      await navigator.clipboard.writeText(freshValue.value);
      copied = true;
    } catch (err) {
      // Plain HTTP to a host that is not localhost has no clipboard API: the old way still works.
      copied = document.execCommand("copy");
    }
    say("token-status", copied ? "Copied the token." : "Select the token and copy it (Ctrl+C).", copied ? "" : "warn");
  });
})();
