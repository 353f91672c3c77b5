// bmd dashboard: one page over bmd's own API, no framework, no build step, nothing fetched from elsewhere.
//
// The node list comes from GET /v1/nodes (paged by `next`); changes arrive on GET /v1/events/stream
// (server-sent events, read with fetch() so the bearer header can be sent, which EventSource cannot):
// `hello` (subscribed: reload the list), `nodes` (views: id, version, states; applied when newer than what
// the page holds), `resync` (the stream dropped batches: reload the list). Every text from the API goes
// into the page through textContent, never as HTML.
"use strict";

const TOKEN_KEY = "bmd.token";
const HEALTH_EVERY_MS = 5000;
const CONSOLE_TAIL = 16384;
const EVENTS_SHOWN = 20;
const MAX_SINGLE_FETCHES = 20;
const DETAIL_EVERY_MS = 300;
const VIEW_FIELDS = ["uuid", "name", "power_state", "provision_state", "maintenance", "instance_uuid", "power_failures"];
const PROVISION_LEGEND = [
  ["available", "prov-available"], ["active", "prov-active"], ["deploying / cleaning", "prov-deploying"],
  ["inspecting", "prov-inspecting"], ["error / failed", "prov-error"],
];
const POWER_LEGEND = [["power on", "sw-on"], ["power off", "sw-off"], ["power error", "sw-error"], ["unknown", "sw-unknown"]];

const state = {
  nodes: new Map(), // id -> node (the API's node, plus _version once an event told it)
  tiles: new Map(), // id -> its element in the grid
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  loading: null, // the list load under way (a Promise), events meanwhile wait in `pending`
  pending: new Map(), // id -> newest view seen while loading
  selected: null,
  detailSeq: 0,
  detailTimer: null,
  wake: null, // ends the stream's wait before a reconnect
  stream: null, // AbortController of the open stream
  heartbeatMs: 15000,
};

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role" || key === "title") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function headers(extra = {}) {
  return state.token ? { ...extra, Authorization: `Bearer ${state.token}` } : extra;
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function request(path, { json = true, allowError = false } = {}) {
  const response = await fetch(path, { headers: headers(), cache: "no-store" });
  if (!response.ok && !allowError) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).message || message;
    } catch (_) { /* not a JSON error body */ }
    if (response.status === 401) showBanner(`${path}: ${message} — paste a token above`);
    throw new HttpError(response.status, message);
  }
  return json ? response.json() : response.text();
}

function showBanner(text) {
  const banner = $("banner");
  banner.textContent = text || "";
  banner.hidden = !text;
}

// ---- the node list ------------------------------------------------------------------------------------

async function loadAll() {
  const nodes = new Map();
  let marker = null;
  do {
    const page = await request(`/v1/nodes?limit=1000${marker === null ? "" : `&marker=${encodeURIComponent(marker)}`}`);
    for (const node of page.nodes) nodes.set(node.id, node);
    marker = page.next;
  } while (marker !== null && marker !== undefined);
  return nodes;
}

function resync() {
  if (state.loading) return state.loading;
  state.loading = (async () => {
    try {
      const nodes = await loadAll();
      const known = state.nodes;
      state.nodes = nodes;
      for (const [id, node] of nodes) {
        const before = known.get(id);
        if (before && before._version !== undefined) node._version = before._version;
      }
      showBanner("");
    } catch (err) {
      if (!(err instanceof HttpError && err.status === 401)) showBanner(`could not load the nodes: ${err.message}`);
    } finally {
      state.loading = null;
    }
    const pending = [...state.pending.values()];
    state.pending.clear();
    applyViews(pending, true);
    renderAll();
    if (state.selected !== null) showDetail(state.selected);
  })();
  return state.loading;
}

function applyViews(views, quiet = false) {
  const unknown = [];
  let changedSelected = false;
  for (const view of views) {
    if (state.loading) {
      const held = state.pending.get(view.id);
      if (!held || view.version > held.version) state.pending.set(view.id, view);
      continue;
    }
    const node = state.nodes.get(view.id);
    if (view.deleted) {
      if (node) state.nodes.delete(view.id);
    } else if (!node) {
      unknown.push(view.id);
      continue;
    } else if (node._version === undefined || view.version > node._version) {
      for (const field of VIEW_FIELDS) node[field] = view[field];
      node._version = view.version;
    } else {
      continue;
    }
    if (view.id === state.selected) changedSelected = true;
    if (!quiet) renderTile(view.id);
  }
  if (state.loading) return;
  if (unknown.length > MAX_SINGLE_FETCHES) {
    resync(); // many new nodes (an import): one list load rather than a fetch each
    return;
  }
  for (const id of unknown) {
    request(`/v1/nodes/${id}`).then((node) => {
      state.nodes.set(node.id, node);
      renderAll();
    }, () => { /* deleted meanwhile: its deleted view follows */ });
  }
  if (!quiet) {
    renderFilters();
    renderSummary();
  }
  if (changedSelected) refreshDetailSoon();
}

function refreshDetailSoon() {
  // a node that changes often (a deploy's heartbeats) is refetched at most every DETAIL_EVERY_MS
  if (state.detailTimer) return;
  state.detailTimer = setTimeout(() => {
    state.detailTimer = null;
    if (state.selected !== null) showDetail(state.selected);
  }, DETAIL_EVERY_MS);
}

// ---- the grid -----------------------------------------------------------------------------------------

function provClass(provision) {
  return `prov-${String(provision || "unknown").replace(/\s+/g, "-")}`;
}

function powClass(power) {
  if (power === "power on") return "pow-on";
  if (power === "power off") return "pow-off";
  if (power === "error") return "pow-error";
  return "";
}

function label(node) {
  return node.name || node.uuid;
}

function matches(node) {
  const text = $("filter-name").value.trim().toLowerCase();
  if (text && !label(node).toLowerCase().includes(text) && !String(node.uuid).startsWith(text)) return false;
  const key = $("filter-key").value;
  const value = $("filter-value").value;
  if (key) {
    const specs = node.extra_specs || {};
    if (!(key in specs)) return false;
    if (value && specText(specs[key]) !== value) return false;
  }
  return true;
}

function specText(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

function tileFor(node) {
  const faulty = node.power_state === "error" || node.power_failures > 0;
  return el("button", {
    type: "button",
    class: `node ${provClass(node.provision_state)} ${powClass(node.power_state)}`,
    role: "listitem",
    "data-id": String(node.id),
    "data-name": label(node),
    "data-power": node.power_state || "unknown",
    "data-provision": node.provision_state,
    "data-maintenance": String(Boolean(node.maintenance)),
    "aria-pressed": String(node.id === state.selected),
    title: `${label(node)}: ${node.power_state || "power unknown"}, ${node.provision_state}${node.maintenance ? ", maintenance" : ""}`,
    onclick: () => select(node.id),
  },
  el("span", { class: "name", text: label(node) }),
  el("span", { class: "states", text: node.power_state || "power unknown" }),
  el("span", { class: "states", text: node.provision_state }),
  el("span", { class: "flags" },
    node.maintenance ? el("span", { class: "maint", text: "M", title: node.maintenance_reason || "maintenance" }) : null,
    faulty ? el("span", { class: "fault", text: " !", title: "power faults" }) : null));
}

function renderTile(id) {
  const node = state.nodes.get(id);
  const old = state.tiles.get(id);
  if (!node || !matches(node)) {
    if (old) old.remove();
    state.tiles.delete(id);
    if (node && old) renderCount();
    return;
  }
  const tile = tileFor(node);
  if (old) {
    old.replaceWith(tile);
  } else {
    renderAll(); // a node now shown: keep the grid in id order
    return;
  }
  state.tiles.set(id, tile);
}

function sortedNodes() {
  return [...state.nodes.values()].sort((a, b) => a.id - b.id);
}

function renderAll() {
  renderFilters();
  const grid = $("grid");
  const tiles = [];
  state.tiles.clear();
  for (const node of sortedNodes()) {
    if (!matches(node)) continue;
    const tile = tileFor(node);
    state.tiles.set(node.id, tile);
    tiles.push(tile);
  }
  grid.replaceChildren(...tiles);
  renderSummary();
}

function renderCount() {
  $("count").textContent = `${state.tiles.size} of ${state.nodes.size} nodes`;
}

function renderSummary() {
  renderCount();
  const counts = new Map();
  const bump = (key) => counts.set(key, (counts.get(key) || 0) + 1);
  for (const node of state.nodes.values()) {
    if (!matches(node)) continue;
    bump(node.power_state || "power unknown");
    bump(node.provision_state);
    if (node.maintenance) bump("maintenance");
  }
  $("summary").replaceChildren(...[...counts].sort().map(([key, n]) => el("span", { text: `${key}: ${n}` })));
}

function renderFilters() {
  const keySelect = $("filter-key");
  const valueSelect = $("filter-value");
  const specs = new Map();
  for (const node of state.nodes.values()) {
    for (const [key, value] of Object.entries(node.extra_specs || {})) {
      if (!specs.has(key)) specs.set(key, new Set());
      specs.get(key).add(specText(value));
    }
  }
  syncOptions(keySelect, [...specs.keys()].sort());
  const values = specs.get(keySelect.value);
  valueSelect.disabled = !values;
  syncOptions(valueSelect, values ? [...values].sort() : []);
}

function syncOptions(select, values) {
  const current = select.value;
  const have = [...select.options].slice(1).map((o) => o.value);
  if (have.length === values.length && have.every((v, i) => v === values[i])) return;
  select.replaceChildren(el("option", { value: "", text: "any" }), ...values.map((v) => el("option", { value: v, text: v })));
  select.value = values.includes(current) ? current : "";
}

function renderLegend() {
  const item = (text, cls) => el("span", {}, el("span", { class: `sw ${cls}` }), text);
  $("legend").replaceChildren(
    el("strong", { text: "provision state (tile):" }),
    ...PROVISION_LEGEND.map(([text, cls]) => item(text, cls)),
    el("strong", { text: "power state (left bar):" }),
    ...POWER_LEGEND.map(([text, cls]) => item(text, cls)),
    el("span", { text: "M maintenance · ! power faults" }),
  );
}

// ---- one node's detail --------------------------------------------------------------------------------

function select(id) {
  state.selected = id;
  for (const [tid, tile] of state.tiles) tile.setAttribute("aria-pressed", String(tid === id));
  showDetail(id);
}

function closeDetail() {
  state.selected = null;
  $("detail").hidden = true;
  for (const tile of state.tiles.values()) tile.setAttribute("aria-pressed", "false");
}

function when(iso, timeOnly = false) {
  // the API's timestamps are UTC ISO 8601; shown as UTC, to the second (a step's start to the millisecond)
  const date = new Date(iso);
  if (!iso || Number.isNaN(date.getTime())) return iso || "";
  const text = date.toISOString().replace("T", " ");
  return timeOnly ? text.slice(11, 23) : `${text.slice(0, 19)} UTC`;
}

function kv(pairs) {
  const out = el("dl", { class: "kv" });
  for (const [key, value, cls] of pairs) {
    if (value === undefined || value === null || value === "") continue;
    out.append(el("dt", { text: key }), el("dd", { text: String(value), class: cls }));
  }
  return out;
}

function table(columns, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, ...columns.map((c) => el("th", { text: c })))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((v) => el("td", { text: v === null || v === undefined ? "" : String(v) }))))));
}

function section(title, id, ...body) {
  return el("section", { "data-section": id }, el("h3", { text: title }), ...body);
}

async function showDetail(id) {
  const seq = ++state.detailSeq;
  let node;
  try {
    node = await request(`/v1/nodes/${id}`);
  } catch (err) {
    if (seq === state.detailSeq) {
      if (err instanceof HttpError && err.status === 404) closeDetail();
      else showBanner(`node ${id}: ${err.message}`);
    }
    return;
  }
  const [events, consoleLog] = await Promise.all([nodeEvents(id), nodeConsole(id)]);
  if (seq !== state.detailSeq || state.selected !== id) return; // a newer click or change won
  $("detail-title").textContent = label(node);
  const body = [
    kv([
      ["uuid", node.uuid],
      ["power", node.power_state || "unknown"],
      ["provision", node.provision_state],
      ["maintenance", node.maintenance ? `yes: ${node.maintenance_reason || "no reason given"} (${node.maintenance_set_by || "?"})` : "no"],
      ["instance", node.instance_uuid],
      ["task", node.task_state],
      ["last power check", node.last_power_check && when(node.last_power_check)],
      ["hardware", `${node.cpus} cpus, ${node.memory_mb} MiB, ${node.local_gb} GB, ${node.boot_mode}`],
      ["BMC", `${node.pm_driver} ${node.pm_address || ""}`],
      ["service host", node.service_host],
    ]),
  ];
  const errors = [
    ["last error", node.last_error, "error"],
    ["last power error", node.last_power_error, "error"],
    ["power failures", node.power_failures || null, "error"],
  ];
  if (errors.some(([, v]) => v)) body.push(section("Errors", "errors", kv(errors)));
  const specs = Object.entries(node.extra_specs || {}).sort(([a], [b]) => a.localeCompare(b));
  body.push(section("Capabilities", "capabilities", table(["key", "value"], specs.map(([k, v]) => [k, specText(v)]))));
  body.push(section("Interfaces", "interfaces", table(["address", "datapath", "port", "vif"],
    (node.interfaces || []).map((i) => [i.address, i.datapath_id, i.port_no, i.vif_uuid]))));
  const steps = (node.deploy_steps || []).filter((s) => s && typeof s === "object");
  if (steps.length) {
    body.push(section("Deploy steps", "deploy-steps", table(["step", "started (UTC)", "s", "outcome", "detail"], steps.map((s) => [
      s.step, when(s.started_at, true), typeof s.seconds === "number" ? s.seconds.toFixed(3) : "",
      s.ok === null || s.ok === undefined ? "running" : s.ok ? "ok" : "FAILED", s.detail,
    ]))));
  }
  if (events) {
    body.push(section("Recent events", "events", events.length
      ? table(["at", "event", "state", "message"], events.map((e) => [
        when(e.at), [e.kind, e.event].filter(Boolean).join(" "),
        e.from_state || e.to_state ? `${e.from_state || ""} → ${e.to_state || ""}` : "", e.message,
      ]))
      : el("p", { class: "muted", text: "no events recorded" })));
  }
  body.push(section("Console log", "console", consoleLog));
  $("detail-body").replaceChildren(...body);
  $("detail").hidden = false;
}

async function nodeEvents(id) {
  // GET /v1/nodes/{node}/events: absent from older bmd (404), then the panel is not shown
  try {
    const page = await request(`/v1/nodes/${id}/events?limit=${EVENTS_SHOWN}`);
    return page.events || [];
  } catch (_) {
    return null;
  }
}

async function nodeConsole(id) {
  if (!state.token) return el("p", { class: "muted", text: "paste an operator token above to read the console log" });
  try {
    const text = await request(`/v1/nodes/${id}/console-log?tail=${CONSOLE_TAIL}`, { json: false });
    return text ? el("pre", { class: "console", text }) : el("p", { class: "muted", text: "nothing recorded" });
  } catch (err) {
    return el("p", { class: "error", text: `console log: ${err.message}` });
  }
}

// ---- health of the loops ------------------------------------------------------------------------------

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 90) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

async function loadHealth() {
  let report;
  try {
    report = await request("/healthz", { allowError: true }); // 503 still carries the report
  } catch (err) {
    $("health-status").textContent = "unreachable";
    $("health-status").className = "badge failing";
    return;
  }
  $("health-status").textContent = report.status;
  $("health-status").className = `badge ${report.status}`;
  $("service").textContent = `${report.service} · up ${ago(report.uptime_s).replace(" ago", "")}`;
  const checks = report.checks || {};
  const db = checks.database || {};
  const dhcp = checks.dhcp || {};
  $("health-checks").replaceChildren(...[
    ["database", `${db.status}${db.latency_ms !== undefined ? ` (${db.latency_ms} ms)` : ""}${db.error ? `: ${db.error}` : ""}`],
    ["dhcp", `${dhcp.status}${dhcp.error ? `: ${dhcp.error}` : ""}`],
  ].flatMap(([k, v]) => [el("span", { class: "k", text: k }), el("span", { text: v })]));
  const rows = Object.entries(report.tasks || {}).sort(([a], [b]) => a.localeCompare(b)).map(([name, t]) =>
    el("tr", { "data-loop": name },
      el("td", { text: name }),
      el("td", {}, el("span", { class: `badge ${t.status}`, text: t.status })),
      el("td", { text: ago(t.last_success_age) }),
      el("td", { text: `${t.passes}${t.failures ? ` (${t.failures} failed)` : ""}` }),
      el("td", { class: "error", text: t.last_error || "" })));
  $("loops").tBodies[0].replaceChildren(...rows);
}

// ---- the live stream ----------------------------------------------------------------------------------

function setLive(live, text) {
  $("live").dataset.live = String(live);
  $("live").textContent = text;
}

function onEvent(type, data) {
  if (type === "hello") {
    state.heartbeatMs = (data.heartbeat || 15) * 1000;
    resync();
  } else if (type === "nodes") {
    applyViews(data.nodes || []);
  } else if (type === "resync") {
    resync();
  }
}

function parseBlock(block) {
  let type = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // a comment: the server's heartbeat
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
  }
  if (data.length) onEvent(type, JSON.parse(data.join("\n")));
}

async function streamOnce(controller) {
  const response = await fetch("/v1/events/stream", {
    headers: headers({ Accept: "text/event-stream" }), cache: "no-store", signal: controller.signal,
  });
  if (!response.ok) throw new HttpError(response.status, `event stream: ${response.status} ${response.statusText}`);
  setLive(true, "live");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let quiet;
  const watchdog = () => { // nothing for three heartbeats: the connection is dead, reconnect
    clearTimeout(quiet);
    quiet = setTimeout(() => controller.abort(), 3 * state.heartbeatMs + 1000);
  };
  try {
    watchdog();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      watchdog();
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        parseBlock(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  } finally {
    clearTimeout(quiet);
  }
}

async function streamForever() {
  let backoff = 500;
  for (;;) {
    const controller = new AbortController();
    state.stream = controller;
    try {
      await streamOnce(controller);
      backoff = 500;
    } catch (err) {
      if (err instanceof HttpError && err.status === 401) showBanner(`${err.message} — paste a token above`);
    }
    if (state.stream === controller) resync(); // no stream (yet): the list at least, reloaded at each retry
    if (state.stream !== controller) continue; // restarted on purpose (a new token): reconnect at once
    setLive(false, "reconnecting…");
    await new Promise((resolve) => {
      state.wake = resolve; // a new token ends the wait
      setTimeout(resolve, backoff);
    });
    state.wake = null;
    backoff = Math.min(backoff * 2, 15000);
  }
}

function restartStream() {
  const old = state.stream;
  state.stream = null;
  if (old) old.abort();
  if (state.wake) state.wake();
}

// ---- wiring -------------------------------------------------------------------------------------------

function useToken(token) {
  state.token = token;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  $("token").value = "";
  $("token").placeholder = token ? "token in use (this tab only)" : "API token (optional)";
  $("token-forget").hidden = !token;
  showBanner("");
  restartStream(); // its hello reloads the list
  loadHealth();
  if (state.selected !== null) showDetail(state.selected);
}

function start() {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    useToken($("token").value.trim());
  });
  $("token-forget").addEventListener("click", () => useToken(""));
  $("detail-close").addEventListener("click", closeDetail);
  $("filter-name").addEventListener("input", renderAll);
  $("filter-key").addEventListener("change", () => {
    $("filter-value").value = "";
    renderAll();
  });
  $("filter-value").addEventListener("change", renderAll);
  $("token").placeholder = state.token ? "token in use (this tab only)" : "API token (optional)";
  $("token-forget").hidden = !state.token;
  renderLegend();
  loadHealth();
  setInterval(loadHealth, HEALTH_EVERY_MS);
  streamForever();
}

start();
