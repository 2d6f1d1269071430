// The alerts page: create and delete webhooks and alert rules, pause and resume them, send a dead
// delivery again. Every change is a call to the alerts API; the page reloads to show the result.
(function () {
  "use strict";

  const page = document.getElementById("alerts-page");
  if (!page) return;
  const { send } = window.IO;

  const say = (text, kind) => window.IO.say("alerts-status", text, kind);

  async function act(method, url, body, done) {
    const r = await send(method, url, body);
    if (r.ok) {
      if (done) done(r.data);
      else window.location.reload();
    } else {
      say(r.detail || "refused (" + r.status + ")", "error");
    }
  }

  // The rule form offers what the chosen detector can answer: its labels, counts for COUNT.
  const ruleForm = document.getElementById("rule-form");
  if (ruleForm) {
    const f = ruleForm.elements;
    const detector = f.namedItem("detector_id");
    const kind = f.namedItem("kind");
    const labelField = document.getElementById("rule-label");
    const countField = document.getElementById("rule-count");
    function refresh() {
      const option = detector.selectedOptions[0];
      const labels = option ? option.dataset.labels.split(",").filter(Boolean) : [];
      const isCount = option && option.dataset.mode === "COUNT";
      const select = f.namedItem("label");
      select.replaceChildren(...labels.map((l) => new Option(l, l)));
      for (const opt of kind.options) {
        if (opt.value !== "answer_is") opt.disabled = !isCount;
      }
      if (!isCount) kind.value = "answer_is";
      labelField.hidden = kind.value !== "answer_is";
      countField.hidden = kind.value === "answer_is";
    }
    detector.addEventListener("change", refresh);
    kind.addEventListener("change", refresh);
    refresh();
    ruleForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const condition = { kind: kind.value };
      if (kind.value === "answer_is") condition.label = f.namedItem("label").value;
      else condition.count = Number(f.namedItem("count").value);
      const body = {
        name: f.namedItem("name").value.trim(),
        condition,
        consecutive: Number(f.namedItem("consecutive").value),
        cooldown_s: Number(f.namedItem("cooldown_s").value),
        webhook_ids: [...ruleForm.querySelectorAll("input[name=webhook_ids]:checked")].map((el) => el.value),
      };
      act("POST", "/api/v1/detectors/" + encodeURIComponent(detector.value) + "/alert-rules", body);
    });
  }

  const hookForm = document.getElementById("webhook-form");
  if (hookForm) {
    hookForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const f = hookForm.elements;
      const body = {
        name: f.namedItem("name").value.trim(),
        url: f.namedItem("url").value.trim(),
        events: [...hookForm.querySelectorAll("input[name=events]:checked")].map((el) => el.value),
      };
      act("POST", "/api/v1/webhooks", body, (created) => {
        // The secret is shown once; the list is reloaded when the admin has copied it.
        document.getElementById("webhook-secret").hidden = false;
        const box = document.getElementById("webhook-secret-value");
        box.value = created.secret;
        box.select();
        hookForm.reset();
        say("Webhook " + created.name + " created. Copy its secret now; reload to see it in the list.", "ok");
      });
    });
  }

  page.addEventListener("click", (ev) => {
    const button = ev.target.closest("button");
    if (!button) return;
    const ruleRow = button.closest("tr[data-rule-id]");
    const hookRow = button.closest("tr[data-webhook-id]");
    if (button.classList.contains("toggle-rule") && ruleRow) {
      const rule = JSON.parse(ruleRow.dataset.rule);
      const spec = {
        name: rule.name,
        condition: rule.condition,
        consecutive: rule.consecutive,
        cooldown_s: rule.cooldown_s,
        enabled: !rule.enabled,
        webhook_ids: rule.webhook_ids,
      };
      act("PUT", "/api/v1/alert-rules/" + encodeURIComponent(rule.id), spec);
    } else if (button.classList.contains("delete-rule") && ruleRow) {
      const rule = JSON.parse(ruleRow.dataset.rule);
      if (window.confirm("Delete the alert rule " + rule.name + "? It stops firing on every edge at their next refresh.")) {
        act("DELETE", "/api/v1/alert-rules/" + encodeURIComponent(rule.id));
      }
    } else if (button.classList.contains("toggle-webhook") && hookRow) {
      const enabled = hookRow.dataset.enabled !== "true";
      act("PATCH", "/api/v1/webhooks/" + encodeURIComponent(hookRow.dataset.webhookId), { enabled });
    } else if (button.classList.contains("delete-webhook") && hookRow) {
      if (window.confirm("Delete the webhook " + hookRow.dataset.name + "? Deliveries not yet sent to it are dropped.")) {
        act("DELETE", "/api/v1/webhooks/" + encodeURIComponent(hookRow.dataset.webhookId));
      }
    } else if (button.classList.contains("redeliver")) {
      act("POST", "/api/v1/webhook-deliveries/" + encodeURIComponent(button.dataset.deliveryId) + "/redeliver");
    }
  });
})();
