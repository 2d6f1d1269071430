// What the admin pages' scripts share: one JSON call to our API with the session cookie, answering
// { ok, status, data, detail } whatever happens (a network failure, a session that ran out), and the
// status line under a form. Loaded before each page's own script (window.IO).
"use strict";

window.IO = (() => {
  function detailOf(data) {
    if (!data || !data.detail) return "";
    if (typeof data.detail === "string") return data.detail;
    // FastAPI's validation errors: a list of {loc, msg}; say each message, not the JSON.
    if (Array.isArray(data.detail)) return data.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    return JSON.stringify(data.detail);
  }

  async function send(method, url, body) {
    let resp;
    try {
      resp = await fetch(url, {
        method,
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", accept: "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      return { ok: false, status: 0, data: null, detail: "cannot reach the cloud; try again" };
    }
    if (resp.status === 401) {
      // The session ran out: log in again and come back here.
      const here = window.location.pathname + window.location.search;
      window.location.assign("/login?next=" + encodeURIComponent(here));
    }
    let data = null;
    try {
      data = await resp.json();
    } catch (err) {
      data = null;
    }
    return { ok: resp.ok, status: resp.status, data, detail: detailOf(data) };
  }

  function say(id, text, kind) {
    const el = document.getElementById(id);
    if (!el) return;
    el.textContent = text;
    el.className = "status" + (kind ? " " + kind : "");
  }

  return { send, say };
})();
