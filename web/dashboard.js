// The live dashboard: everything comes from the server's `$sys.>` feed over /ws
// (through tinywasm.js); nothing is polled. `$sys.status` carries the whole picture
// (health, modules, files, hub, history) when something changes and once a second.
import { connect, patternError } from "/tinywasm.js";

const $ = (id) => document.getElementById(id);
const tokenInput = $("token");
tokenInput.value = sessionStorage.getItem("tinywasm-admin-token") || "";
tokenInput.addEventListener("change", () => {
  sessionStorage.setItem("tinywasm-admin-token", tokenInput.value);
  feed.close();
  feed = openFeed();
});

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function short(sha) {
  return sha ? sha.slice(0, 12) : "–";
}

function timeOf(iso) {
  const d = new Date(iso);
  return isNaN(d) ? "" : d.toLocaleTimeString();
}

function rate(value) {
  if (value === undefined) return "–";
  return value >= 100 ? Math.round(value).toLocaleString() + "/s" : value.toFixed(1) + "/s";
}

const STATE_CLASS = { live: "ok", starting: "warn", draining: "warn", quarantined: "bad", closed: "bad" };

// ---- the feed ------------------------------------------------------------------------

let previous = null; // the last status, for rates
let feed = openFeed();

function feedUrl() {
  const url = new URL("/ws", location.href);
  if (tokenInput.value) url.searchParams.set("admin_token", tokenInput.value);
  return url.href;
}

function openFeed() {
  const client = connect(feedUrl(), { topics: ["$sys.>"] });
  client.onState((s) => {
    const pill = $("feed");
    pill.dataset.state = s.state;
    pill.className = "pill " + (s.state === "connected" ? "ok" : s.state === "closed" ? "bad" : "warn");
    pill.textContent = s.state === "connected" ? "live" :
      s.state === "closed" ? s.words + " (" + s.code + "), retrying in " + (s.retryIn / 1000).toFixed(1) + " s" :
      "connecting…";
  });
  client.subscribe("$sys.status", (msg) => render(msg.json()));
  return client;
}

// ---- rendering -----------------------------------------------------------------------

function render(status) {
  const now = performance.now();
  const rates = {};
  if (previous) {
    const seconds = (now - previous.at) / 1000;
    for (const m of status.modules) {
      const before = previous.modules[m.name];
      if (before && before.sha256 === m.sha256 && seconds > 0) {
        rates[m.name] = {
          delivered: (m.counters.delivered - before.counters.delivered) / seconds,
          published: (m.counters.published - before.counters.published) / seconds,
        };
      }
    }
  }
  previous = { at: now, modules: Object.fromEntries(status.modules.map((m) => [m.name, m])) };
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  renderHealth(status.health);
  renderModules(status, rates);
  renderHub(status.hub);
  renderTimeline(status.history);
}

function renderHealth(health) {
  const pill = $("health-status");
  pill.className = "pill " + (health.status === "ok" ? "ok" : "warn");
  pill.textContent = health.status === "ok" ? "ok: everything serves" : "degraded";
  pill.dataset.status = health.status;
  const list = $("problems");
  list.replaceChildren(...health.problems.map((p) =>
    el("li", {}, el("b", { text: p.module }), " ", el("span", { class: "pill bad", text: p.problem.replace("_", " ") }), " ", p.detail)));
}

function renderModules(status, rates) {
  const files = status.files || {};
  const modules = status.modules.slice().sort((a, b) => a.name.localeCompare(b.name));
  $("module-count").textContent = modules.length + " running · " + status.health.modules + " live";
  const cards = modules.map((m) => moduleCard(m, files[m.name] || {}, rates[m.name]));
  for (const [name, reason] of Object.entries(status.refused)) {
    if (!status.modules.some((m) => m.name === name)) cards.push(refusedCard(name, reason, files[name] || {}));
  }
  $("modules").replaceChildren(...(cards.length ? cards : [el("p", { class: "empty", text: "No modules loaded." })]));
}

function moduleCard(m, file, rates) {
  const state = m.state;
  const card = el("article", { class: "card " + state, "data-module": m.name });
  card.append(el("div", { class: "top" },
    el("span", { class: "name", text: m.name }),
    el("span", { class: "pill", text: m.role || "module" }),
    el("span", { class: "pill " + (STATE_CLASS[state] || ""), "data-field": "state", text: state })));
  const sha = el("div", { class: "sha" }, "sha256 ", el("span", { "data-field": "sha", title: m.sha256, text: short(m.sha256) }));
  card.append(sha);
  if (file.file_differs) {
    card.append(el("div", { class: "differs", "data-field": "differs" },
      "file differs (" + short(file.file_sha256) + "): " + file.why));
  }
  const mailbox = m.mailbox || { depth: 0, capacity: 1 };
  const fill = Math.min(100, (100 * mailbox.depth) / Math.max(1, mailbox.capacity));
  const counters = m.counters || {};
  const dl = el("dl", {},
    el("dt", { text: "rule" }), el("dd", { text: m.rule ? m.rule : "none (an ordinary module)" }),
    el("dt", { text: "exports" }), el("dd", {}, chips(m.exports)),
    el("dt", { text: "subscribes" }), el("dd", {}, m.subscriptions && m.subscriptions.length ? chips(m.subscriptions) : "nothing"),
    el("dt", { text: "mailbox" }), el("dd", {}, mailbox.depth + " / " + mailbox.capacity,
      el("div", { class: "bar" }, el("span", { style: "width:" + fill + "%" }))),
    el("dt", { text: "rates" }), el("dd", { text: rates ? "in " + rate(rates.delivered) + " · out " + rate(rates.published) : "measuring…" }),
    el("dt", { text: "counts" }), el("dd", { text: (counters.delivered || 0) + " delivered · " + (counters.requests || 0) + " requests" }),
    el("dt", { text: "traps" }), el("dd", { "data-field": "traps", text: String(counters.traps || 0) }));
  card.append(dl);
  if (m.last_error) {
    const firstLine = m.last_error.split("\n")[0];
    card.append(el("details", { class: "error" }, el("summary", { text: "last error: " + firstLine }), el("pre", { text: m.last_error })));
  }
  card.append(actions(m.name));
  return card;
}

function refusedCard(name, reason, file) {
  const card = el("article", { class: "card quarantined", "data-module": name });
  card.append(el("div", { class: "top" }, el("span", { class: "name", text: name }),
    el("span", { class: "pill bad", "data-field": "state", text: "refused" })));
  card.append(el("div", { class: "sha", text: "file " + (file.file || "?") + " sha256 " + short(file.file_sha256) }));
  card.append(el("details", { class: "error", open: "" }, el("summary", { text: "not loaded" }), el("pre", { text: reason })));
  card.append(actions(name));
  return card;
}

function chips(items) {
  return el("span", { class: "chips" }, ...(items || []).map((x) => el("span", { class: "chip", text: x })));
}

function actions(name) {
  const result = el("div", { class: "result", role: "status" });
  const reload = el("button", { type: "button", class: "primary", "data-action": "reload", text: "Reload" });
  const rollback = el("button", { type: "button", "data-action": "rollback", text: "Roll back" });
  for (const button of [reload, rollback]) {
    button.addEventListener("click", () => act(name, button.dataset.action, [reload, rollback], result));
  }
  return el("div", {}, el("div", { class: "actions" }, reload, rollback), result);
}

async function act(name, action, buttons, result) {
  buttons.forEach((b) => (b.disabled = true));
  result.className = "result";
  result.textContent = action === "reload" ? "reloading…" : "rolling back…";
  const headers = tokenInput.value ? { Authorization: "Bearer " + tokenInput.value } : {};
  try {
    const response = await fetch("/api/modules/" + encodeURIComponent(name) + "/" + action, { method: "POST", headers });
    const text = await response.text();
    if (!response.ok) {
      result.className = "result bad";
      result.textContent = response.status + ": " + text.trim();
    } else {
      const body = JSON.parse(text);
      result.textContent = body.result ? body.result.outcome + " " + short(body.result.sha256) : body.note || "done";
    }
  } catch (error) {
    result.className = "result bad";
    result.textContent = "request failed: " + error.message;
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

function renderHub(hub) {
  const items = [
    ["clients", hub.clients],
    ["frames sent", hub.frames_queued],
    ["slow closes", hub.slow_disconnects],
    ["  of which frames", hub.slow_frames],
    ["  of which bytes", hub.slow_bytes],
    ["inbound published", hub.inbound_published],
    ["inbound refused", hub.inbound_refused],
    ["origins refused", hub.origins_refused],
  ];
  $("hub").replaceChildren(...items.map(([label, value]) =>
    el("div", { class: "stat", "data-stat": label.trim() }, el("b", { text: (value ?? 0).toLocaleString() }), el("span", { text: label.trim() }))));
}

const OUTCOME_CLASS = { loaded: "ok", swapped: "ok", "timed out draining": "warn", refused: "bad", "rolled back": "bad", unloaded: "", quarantined: "bad" };

function renderTimeline(history) {
  const list = $("timeline");
  if (!history.length) {
    list.replaceChildren(el("li", { class: "empty", text: "No history yet." }));
    return;
  }
  list.replaceChildren(...history.map((r) => {
    const item = el("li", { "data-module": r.module, "data-sha": r.sha256 },
      el("time", { datetime: r.at, text: timeOf(r.at) }),
      el("span", { class: "what" }, el("b", { text: r.module }), " ",
        el("span", { class: "pill " + (OUTCOME_CLASS[r.outcome] || ""), text: r.outcome }), " ",
        el("span", { class: "sha", text: short(r.sha256) }), " · " + r.trigger + " · " + r.duration_ms + " ms" +
        (r.held ? " · " + r.held + " held" : "")));
    if (r.error) item.append(el("span", { class: "err", text: r.error.split("\n")[0] }));
    return item;
  }));
}

// ---- live tail ---------------------------------------------------------------------------

let tail = null;
const decoder = new TextDecoder();
$("tail-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const pattern = $("tail-topic").value.trim();
  stopTail();
  const problem = patternError(pattern);
  if (problem) {
    $("tail-state").className = "result bad";
    $("tail-state").textContent = "not a valid pattern: " + problem + " (e.g. chat, chat.*, >)";
    return;
  }
  const log = $("tail-log");
  log.replaceChildren();
  tail = connect("/ws", { topics: [pattern] });
  tail.onState((s) => {
    $("tail-state").className = "result" + (s.state === "closed" ? " bad" : "");
    $("tail-state").textContent = s.state === "connected" ? "Tailing " + pattern + "…" :
      s.state === "closed" ? "closed: " + s.words + (s.reason ? " (" + s.reason + ")" : "") : "connecting…";
  });
  tail.subscribe(pattern, (msg) => {
    const text = decoder.decode(msg.payload);
    const line = el("li", {}, el("span", { class: "t", text: msg.topic }), text.length > 300 ? text.slice(0, 300) + "…" : text,
      el("span", { class: "n", text: msg.payload.length + " B" }));
    log.prepend(line);
    while (log.children.length > 200) log.lastChild.remove();
  });
  $("tail-stop").disabled = false;
});
$("tail-stop").addEventListener("click", stopTail);

function stopTail() {
  if (tail) tail.close();
  tail = null;
  $("tail-stop").disabled = true;
  $("tail-state").className = "result";
  $("tail-state").textContent = "Not tailing.";
}
