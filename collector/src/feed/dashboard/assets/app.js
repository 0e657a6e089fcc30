// Muster dashboard: plain JS, no build step, no external resources.
// Reads the collector's /api/v1 feed with the token kept in sessionStorage
// and follows /api/v1/stream (SSE) for live changes.
"use strict";

const TOKEN_KEY = "muster.token";
// Worst first. `off` (announced: shut down, stopped, asleep) is neutral,
// not a fault: it sorts after the faults, before ok.
const STATUS_ORDER = { lost: 0, critical: 1, overdue: 2, degraded: 3, off: 4, ok: 5 };
const STATUS_LABEL = { lost: "Lost", critical: "Critical", overdue: "Overdue", degraded: "Degraded", off: "Off", ok: "OK", info: "Info" };
const STATUSES = ["lost", "critical", "overdue", "degraded", "off", "ok"];
/** Filter values from before wire schema v2. */
const STATUS_ALIAS = { offline: "lost" };

const state = {
  units: new Map(),      // "agency/unit" -> UnitView
  incidents: new Map(),  // id -> Incident
  problems: [],
  stream: null,
  detail: null,          // "agency/unit" shown in the unit view
  flashed: new Set(),
  refreshTimer: null,
  rollouts: [],          // newest first; null: this collector runs none (cluster mode)
  rolloutError: null,
  rolloutSeq: 0,         // the latest request: an older answer is dropped
  rolloutTimer: null,
  rolloutsOpen: new Set(), // ids whose per-metric verdicts are expanded
  runbooksOpen: new Set(), // "agency/unit rule": runbooks expanded in the unit view
  runbooks: new Map(),     // runbook page URL -> Promise of its parsed <article>
  rolloutFlash: new Set(),
  me: null,                // {role, agency} of this token (/api/v1/me); null: unknown, no actions offered
  actionOf: new Map(),     // rule -> Promise of the action its runbook suggests (or null)
  actionRuns: new Map(),   // "agency/unit rule" -> the latest run asked for there (see runAction)
  actionSent: [],          // every run this page sent (a request nonce), oldest first; at most 50
  actionSteps: new Map(),  // request nonce -> Map(id -> logged step), from the stream or /api/v1/actions
  actionTimer: null,       // polls /api/v1/actions while a run is pending and the stream is down
};

const $ = (id) => document.getElementById(id);

/** Builds an element; children are nodes or strings (always text, never HTML). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVGNS = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// ---------------------------------------------------------------- time

function ago(ms) {
  if (!ms) return "never";
  const d = Math.max(0, Date.now() - ms) / 1000;
  if (d < 45) return "just now";
  if (d < 90) return "1 min ago";
  if (d < 3600) return Math.round(d / 60) + " min ago";
  if (d < 5400) return "1 h ago";
  if (d < 86400) return Math.round(d / 3600) + " h ago";
  return Math.round(d / 86400) + " d ago";
}

function absolute(ms) {
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** A relative time with the absolute one on hover; re-rendered every 15 s. */
function when(ms, prefix) {
  if (!ms) return h("span", { class: "when" }, "never");
  return h("time", { datetime: new Date(ms).toISOString(), title: absolute(ms), "data-ms": ms, "data-prefix": prefix || "" }, (prefix || "") + ago(ms));
}

function tickTimes() {
  for (const t of document.querySelectorAll("time[data-ms]")) {
    t.textContent = t.dataset.prefix + ago(Number(t.dataset.ms));
  }
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  const u = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function badge(status) {
  return h("span", { class: "badge " + status, "data-status": status }, STATUS_LABEL[status] || status);
}

// ---------------------------------------------------------------- access

function token() { return sessionStorage.getItem(TOKEN_KEY); }

class AuthError extends Error {}

/** A refused request other than auth: its HTTP status and the API's error code. */
class HttpError extends Error {
  constructor(message, status, code) { super(message); this.status = status; this.code = code; }
}

async function api(path) {
  const t = token();
  if (!t) throw new AuthError("no token");
  const r = await fetch(path, { headers: { Authorization: "Bearer " + t }, cache: "no-store" });
  if (r.status === 401 || r.status === 403) {
    let msg = r.status === 401 ? "That token is not valid." : "That token may not see this.";
    try { msg = (await r.json()).error.message || msg; } catch (_) { /* keep the default */ }
    throw new AuthError(msg);
  }
  if (!r.ok) {
    let msg = "HTTP " + r.status, code = null;
    try { const e = (await r.json()).error; msg = e.message || msg; code = e.code || null; } catch (_) { /* keep */ }
    throw new HttpError(msg, r.status, code);
  }
  return r.json();
}

/** Every page of a list endpoint (at most `maxPages`). */
async function all(path, maxPages) {
  const out = [];
  let cursor = null;
  for (let i = 0; i < (maxPages || 50); i++) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(path + sep + "limit=1000" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
    out.push(...page.items);
    cursor = page.next_cursor;
    if (!cursor) break;
  }
  return out;
}

function askToken(message) {
  stopStream();
  sessionStorage.removeItem(TOKEN_KEY);
  $("main").hidden = true;
  $("detail").hidden = true;
  $("signout").hidden = true;
  $("scope").textContent = "";
  // Another token may be someone else: forget who, and what they ran.
  state.me = null;
  state.actionOf.clear();
  state.actionRuns.clear();
  state.actionSent = [];
  state.actionSteps.clear();
  clearInterval(state.actionTimer);
  state.actionTimer = null;
  // Another token may see other agencies' rollouts: forget these.
  state.rollouts = [];
  state.rolloutSeq++;
  $("rollouts").hidden = true;
  $("rollout-list").replaceChildren();
  setLive("connecting", "signed out");
  $("login-error").textContent = message || "";
  $("login").hidden = false;
  $("token").value = "";
  $("token").focus();
}

function handleError(e) {
  if (e instanceof AuthError) askToken(e.message);
  else console.error(e);
}

// ---------------------------------------------------------------- loading

async function loadAll() {
  const [units, incidents, me] = await Promise.all([all("/api/v1/units"), all("/api/v1/incidents?state=open"),
    // Who this token is decides which actions the page offers; a collector
    // without /api/v1/me offers none.
    api("/api/v1/me").catch(() => null)]);
  state.me = me;
  state.units = new Map(units.map((u) => [u.agency + "/" + u.unit, u]));
  state.incidents = new Map(incidents.map((i) => [i.id, i]));
  $("login").hidden = true;
  $("main").hidden = false;
  $("signout").hidden = false;
  const agencies = [...new Set(units.map((u) => u.agency))].sort();
  $("scope").textContent = (agencies.length ? "Showing: " + agencies.join(", ") : "No units visible to this token")
    + (me ? " · signed in as " + me.role : "");
  renderAll();
  loadProblems();
  state.rollouts = [];
  state.rolloutError = null;
  state.rolloutsOpen.clear();
  loadRollouts();
}

async function loadProblems() {
  try {
    const page = await api("/api/v1/problems?hours=24&limit=10");
    state.problems = page.items;
    renderProblems();
  } catch (e) { handleError(e); }
}

async function refreshUnits() {
  try {
    const units = await all("/api/v1/units");
    state.units = new Map(units.map((u) => [u.agency + "/" + u.unit, u]));
    renderAll();
  } catch (e) { handleError(e); }
}

// ---------------------------------------------------------------- live stream

function setLive(st, text) {
  const el = $("live");
  el.dataset.state = st;
  el.textContent = text;
}

function stopStream() {
  if (state.stream) { state.stream.close(); state.stream = null; }
}

function startStream() {
  stopStream();
  const es = new EventSource("/api/v1/stream?access_token=" + encodeURIComponent(token()));
  state.stream = es;
  setLive("connecting", "connecting…");
  es.addEventListener("ready", () => {
    setLive("live", "live");
    // Catch up on whatever happened while we were not subscribed.
    refreshUnits();
    loadIncidents();
    loadRollouts();
    pollActions(true);
  });
  es.addEventListener("transition", (ev) => onTransition(JSON.parse(ev.data)));
  es.addEventListener("incident", (ev) => onIncident(JSON.parse(ev.data)));
  es.addEventListener("rollout", (ev) => onRollout(JSON.parse(ev.data)));
  es.addEventListener("action", (ev) => addSteps([JSON.parse(ev.data)]));
  es.addEventListener("lagged", () => { refreshUnits(); loadIncidents(); loadRollouts(); pollActions(true); });
  es.onerror = async () => {
    if (es.readyState === EventSource.CLOSED) {
      setLive("down", "disconnected");
      // Closed for good: a refused token, or the collector is gone. Check which.
      try {
        await api("/api/v1/units?limit=1");
        setTimeout(() => { if (state.stream === es) startStream(); }, 3000);
      } catch (e) {
        if (e instanceof AuthError) askToken(e.message);
        else setTimeout(() => { if (state.stream === es) startStream(); }, 5000);
      }
    } else {
      setLive("down", "reconnecting…");
    }
  };
}

async function loadIncidents() {
  try {
    const incidents = await all("/api/v1/incidents?state=open");
    state.incidents = new Map(incidents.map((i) => [i.id, i]));
    renderIncidents();
  } catch (e) { handleError(e); }
}

async function onTransition(t) {
  const key = t.agency + "/" + t.unit;
  const u = state.units.get(key);
  if (u) {
    u.status = t.to;
    u.reasons = t.reasons;
    if (t.from !== t.to) u.since_ms = t.at_ms;
    u.last_seen_ms = Math.max(u.last_seen_ms || 0, t.at_ms);
    u.incidents = [...new Set(t.reasons.map((r) => r.incident).filter(Boolean))].sort();
  } else {
    try {
      const d = await api(`/api/v1/units/${encodeURIComponent(t.agency)}/${encodeURIComponent(t.unit)}`);
      state.units.set(key, d);
    } catch (e) { handleError(e); return; }
  }
  state.flashed.add(key);
  scheduleRender();
  if (state.detail === key) openDetail(key, true);
}

function onIncident(i) {
  if (i.ended_ms) state.incidents.delete(i.id);
  else state.incidents.set(i.id, i);
  renderIncidents();
}

// ---------------------------------------------------------------- rendering

const filters = { agency: "", status: "", text: "", sort: "severity" };

function matches(u) {
  if (filters.agency && u.agency !== filters.agency) return false;
  if (filters.status === "problem" && (u.status === "ok" || u.status === "off")) return false;
  if (filters.status && filters.status !== "problem" && u.status !== filters.status) return false;
  if (filters.text) {
    const hay = [u.agency, u.unit, u.status, ...u.reasons.map((r) => r.rule + " " + r.message)].join(" ").toLowerCase();
    if (!hay.includes(filters.text.toLowerCase())) return false;
  }
  return true;
}

function backlog(u) { return u.agent ? u.agent.backlog_records : null; }

const SORTS = {
  severity: (a, b) => STATUS_ORDER[a.status] - STATUS_ORDER[b.status] || a.since_ms - b.since_ms || a.unit.localeCompare(b.unit),
  unit: (a, b) => a.unit.localeCompare(b.unit, undefined, { numeric: true }),
  since: (a, b) => a.since_ms - b.since_ms,
  seen: (a, b) => a.last_seen_ms - b.last_seen_ms,
  backlog: (a, b) => (backlog(b) || 0) - (backlog(a) || 0),
};

/** Coalesces renders: a burst of transitions re-renders once per frame. */
let renderPending = false;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => { renderPending = false; renderAll(); });
}

function renderAll() {
  renderCounts();
  renderIncidents();
  renderFleet();
}

function renderCounts() {
  const visible = [...state.units.values()].filter((u) => !filters.agency || u.agency === filters.agency);
  const n = Object.fromEntries(STATUSES.map((st) => [st, 0]));
  for (const u of visible) n[u.status] = (n[u.status] || 0) + 1;
  const tile = (st, label, count) => h("button", {
    type: "button", class: `count ${st}${count ? "" : " zero"}`, id: "count-" + st,
    "aria-pressed": filters.status === (st === "total" ? "" : st) ? "true" : "false",
    onclick: () => { filters.status = st === "total" ? "" : (filters.status === st ? "" : st); $("f-status").value = filters.status; renderAll(); },
  }, h("span", { class: "n" }, count), h("span", { class: "l" }, label));
  $("counts").replaceChildren(
    ...STATUSES.map((st) => tile(st, STATUS_LABEL[st], n[st])),
    tile("total", "All units", visible.length),
  );
}

function renderIncidents() {
  const list = [...state.incidents.values()].sort((a, b) => a.since_ms - b.since_ms);
  const box = $("incident-list");
  if (!list.length) {
    box.replaceChildren(h("p", { class: "empty" }, "No open incidents."));
    return;
  }
  box.replaceChildren(...list.map((i) => h("div", { class: "incident", "data-incident": i.id },
    h("h3", {}, i.summary),
    h("div", { class: "meta" }, i.agency, " · ", i.probe, " → ", i.target, " · since ", when(i.since_ms),
      ` · ${i.affected.length} of ${i.of_units} units`),
    h("div", { class: "chips" }, i.affected.map((id) => h("button", {
      type: "button", class: "chip", onclick: () => openDetail(id.includes("/") ? id : i.agency + "/" + id),
    }, id))),
  )));
}

/** `probe["cad-api"].total_ms` -> `cad-api`. */
function probeName(field) {
  const m = /^probe\["((?:[^"\\]|\\.)*)"\]/.exec(field || "");
  return m ? m[1].replace(/\\(.)/g, "$1") : null;
}

/** One line per reason; an agency-wide incident is already explained at the top. */
function reasonText(r) {
  if (r.rule === "incident" && r.incident) return (probeName(r.field) || "a probe") + " failing for many units (see Incidents)";
  return r.message;
}

function reasonsCell(u) {
  if (!u.reasons.length) return h("td", { class: "reasons" }, u.presence && !u.presence.online ? presenceText(u.presence) : "—");
  return h("td", { class: "reasons" }, h("ul", {}, u.reasons.map((r) =>
    h("li", { "data-rule": r.rule, title: r.message }, h("strong", {}, r.rule), ": ", reasonText(r)))));
}

function staleness(u) {
  const iv = u.interval_ms || 30000;
  return Date.now() - u.last_seen_ms > 3 * iv;
}

function unitRow(u) {
  const key = u.agency + "/" + u.unit;
  const b = backlog(u);
  const tr = h("tr", {
    class: "unit " + u.status + (state.flashed.has(key) ? " flash" : ""), tabindex: 0, "data-unit": key, "data-status": u.status,
    onclick: () => openDetail(key),
    onkeydown: (e) => { if (e.key === "Enter") openDetail(key); },
  },
  h("td", {}, badge(u.status)),
  h("td", { class: "name" }, u.unit),
  reasonsCell(u),
  h("td", { class: "when" }, when(u.since_ms)),
  h("td", { class: "when" + (staleness(u) ? " stale" : "") }, when(u.last_seen_ms)),
  h("td", { class: "num", title: b === null ? "no heartbeat yet" : bytes(u.agent.backlog_bytes) + " waiting on the unit" }, b === null ? "—" : b.toLocaleString()),
  h("td", { class: "num opt", title: "records that never arrived" }, u.seq.missing ? u.seq.missing.toLocaleString() : "0"),
  );
  return tr;
}

function renderFleet() {
  const units = [...state.units.values()].filter(matches).sort(SORTS[filters.sort]);
  const byAgency = new Map();
  for (const u of units) {
    if (!byAgency.has(u.agency)) byAgency.set(u.agency, []);
    byAgency.get(u.agency).push(u);
  }
  // Agency picker keeps every agency the token sees.
  const sel = $("f-agency");
  const agencies = [...new Set([...state.units.values()].map((u) => u.agency))].sort();
  const have = [...sel.options].map((o) => o.value).slice(1);
  if (have.join("\n") !== agencies.join("\n")) {
    sel.replaceChildren(h("option", { value: "" }, "All"), ...agencies.map((a) => h("option", { value: a }, a)));
    sel.value = agencies.includes(filters.agency) ? filters.agency : "";
  }
  const box = $("fleet");
  if (!units.length) {
    box.replaceChildren(h("p", { class: "empty" }, state.units.size ? "No unit matches the filters." : "No units have reported yet."));
    return;
  }
  // Agencies with the worst units first.
  const worst = (list) => Math.min(...list.map((u) => STATUS_ORDER[u.status]));
  const groups = [...byAgency.entries()].sort((a, b) => worst(a[1]) - worst(b[1]) || a[0].localeCompare(b[0]));
  box.replaceChildren(...groups.map(([agency, list]) => {
    const tally = Object.fromEntries(STATUSES.map((st) => [st, 0]));
    for (const u of list) tally[u.status] = (tally[u.status] || 0) + 1;
    const t = Object.entries(tally).filter(([, c]) => c).map(([st, c]) => `${c} ${STATUS_LABEL[st].toLowerCase()}`).join(" · ");
    return h("section", { class: "agency", "data-agency": agency },
      h("h3", {}, agency, h("span", { class: "tally" }, t)),
      h("table", {},
        h("thead", {}, h("tr", {},
          h("th", {}, "Status"), h("th", {}, "Unit"), h("th", {}, "Why"), h("th", {}, "Since"),
          h("th", {}, "Last seen"), h("th", { class: "num" }, "Backlog"), h("th", { class: "num opt" }, "Missing"))),
        h("tbody", {}, list.map(unitRow))));
  }));
  setTimeout(() => state.flashed.clear(), 2500);
}

function renderProblems() {
  const box = $("problem-list");
  const list = state.problems;
  if (!list.length) {
    box.replaceChildren(h("p", { class: "empty" }, "No unit was degraded in the last 24 h."));
    return;
  }
  const max = Math.max(...list.map((p) => p.unit_minutes), 1);
  box.replaceChildren(h("table", {},
    h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "Cause"), h("th", { class: "num" }, "Unit-minutes"),
      h("th", {}, ""), h("th", { class: "num" }, "Units"), h("th", { class: "opt" }, "Agencies"))),
    h("tbody", {}, list.map((p, i) => {
      const bar = h("div", { class: "barfill" });
      bar.style.width = Math.max(2, (100 * p.unit_minutes) / max).toFixed(1) + "%";
      return h("tr", { class: "problem", "data-rule": p.rule },
        h("td", {}, i + 1),
        h("td", {}, h("span", { class: "cause" }, p.cause), " ", h("strong", {}, p.rule),
          p.probe ? [" · probe ", h("strong", {}, p.probe)] : null, p.target ? [" → ", p.target] : null),
        h("td", { class: "num" }, Math.round(p.unit_minutes).toLocaleString()),
        h("td", { class: "bar" }, bar),
        h("td", { class: "num" }, p.units),
        h("td", { class: "opt" }, p.agencies.join(", ")));
    }))));
}

// ---------------------------------------------------------------- rollouts

const PHASE_LABEL = {
  applying: "Applying", soaking: "Soaking", paused: "Paused", rolling_back: "Rolling back",
  completed: "Completed", rolled_back: "Rolled back", aborted: "Aborted",
};
/** Phases whose `reason` says why the rollout stopped or turned back. */
const PHASE_WHY = new Set(["paused", "rolling_back", "rolled_back", "aborted"]);
const VERDICT_LABEL = { pass: "Pass", fail: "Fail", inconclusive: "Inconclusive", no_data: "No data" };

/** `r12` -> 12: ids are given in order, so this breaks ties in time. */
function rolloutNo(r) { return Number(String(r.id).replace(/\D/g, "")) || 0; }
const unitCount = (n) => `${n} unit${n === 1 ? "" : "s"}`;
const newestFirst = (a, b) => (b.created_ms || 0) - (a.created_ms || 0) || rolloutNo(b) - rolloutNo(a);

/**
 * The rollouts this token sees. A collector that runs none (cluster mode
 * answers 501) hides the panel quietly until the next sign-in.
 */
async function loadRollouts() {
  if (state.rollouts === null) return;
  const n = ++state.rolloutSeq;
  try {
    const page = await api("/api/v1/rollouts");
    if (n !== state.rolloutSeq || state.rollouts === null) return;
    state.rollouts = page.items.slice().sort(newestFirst);
    state.rolloutError = null;
  } catch (e) {
    if (n !== state.rolloutSeq) return;
    if (e instanceof AuthError) { handleError(e); return; }
    if (e instanceof HttpError && (e.status === 501 || e.status === 404)) {
      state.rollouts = null;
      $("rollouts").hidden = true;
      return;
    }
    state.rolloutError = e.message;
  }
  renderRollouts();
}

/** Coalesces a burst of steps into one reload. */
function scheduleRollouts() {
  clearTimeout(state.rolloutTimer);
  state.rolloutTimer = setTimeout(loadRollouts, 250);
}

/** A step on the stream: show the new phase at once, then reload the rollout's figures. */
function onRollout(ev) {
  if (state.rollouts === null) return;
  const r = state.rollouts.find((x) => x.id === ev.rollout);
  if (r) {
    if (r.phase !== ev.phase) delete r.reason; // the reload brings the new one
    r.phase = ev.phase;
    r.wave = ev.wave;
    r.wave_count = ev.waves;
    r.updated_ms = Math.max(r.updated_ms || 0, ev.at_ms);
  }
  state.rolloutFlash.add(ev.rollout);
  renderRollouts();
  scheduleRollouts();
}

function phaseBadge(r) {
  const title = r.phase === "soaking" && r.until_ms ? "soaks until " + absolute(r.until_ms) : r.reason || null;
  return h("span", { class: "badge phase ph-" + r.phase, "data-phase": r.phase, title }, PHASE_LABEL[r.phase] || r.phase);
}

function verdictBadge(v) {
  return h("span", { class: "badge verdict v-" + v, "data-verdict": v }, VERDICT_LABEL[v] || v);
}

/** The latest verdict, its reason, and each metric's on expand (and on hover). */
function verdictCell(r) {
  const v = r.verdicts && r.verdicts.length ? r.verdicts[r.verdicts.length - 1] : null;
  if (!v) {
    return h("td", { class: "verdict" }, h("span", { class: "empty" },
      r.phase === "soaking" ? "Soaking: not judged yet" : "No verdict yet"));
  }
  const metricText = (m) => `${m.name}: ${VERDICT_LABEL[m.verdict] || m.verdict} (${m.reason})`;
  const id = r.id;
  return h("td", { class: "verdict", "data-verdict": v.verdict, "data-wave": v.wave },
    h("div", { class: "vline", title: v.metrics.map(metricText).join("\n") || null },
      verdictBadge(v.verdict), " ",
      h("span", { class: "vwave" }, `wave ${v.wave}`, v.final ? "" : ", during the soak"), " · ", when(v.at_ms)),
    h("div", { class: "vreason" }, v.reason),
    v.metrics.length ? h("details", {
      open: state.rolloutsOpen.has(id),
      ontoggle: (e) => { if (e.target.open) state.rolloutsOpen.add(id); else state.rolloutsOpen.delete(id); },
    },
    h("summary", {}, `${v.metrics.length} metrics · ${unitCount(v.canary_units)} updated against ${v.baseline_units}`),
    h("ul", { class: "metrics" }, v.metrics.map((m) => h("li", { "data-metric": m.name },
      verdictBadge(m.verdict), h("strong", {}, m.name), h("span", {}, m.reason))))) : null);
}

/** How the target narrows its agency's units, if it does. */
function targetNote(t) {
  if (!t) return null;
  const parts = [];
  if (t.units) parts.push(t.units.length === 1 ? "unit " + t.units[0] : t.units.length + " listed units");
  if (t.labels) parts.push(labelsText(t.labels));
  return parts.length ? h("div", { class: "sub" }, parts.join("; ")) : null;
}

function rolloutRow(r) {
  const c = r.counts || { issued: 0, applied: 0, failed: 0, reverting: 0, reverted: 0 };
  const back = [c.reverting && `${c.reverting} reverting`, c.reverted && `${c.reverted} reverted`].filter(Boolean).join(" · ");
  return h("tr", {
    class: "rollout ph-" + r.phase + (state.rolloutFlash.has(r.id) ? " flash" : ""), "data-rollout": r.id, "data-phase": r.phase,
  },
  h("td", { class: "phase" }, phaseBadge(r), PHASE_WHY.has(r.phase) && r.reason ? h("div", { class: "why" }, r.reason) : null),
  h("td", { class: "rname" }, h("span", { class: "rollout-name" }, r.name), h("span", { class: "rid" }, r.id)),
  h("td", { class: "ragency" }, r.target ? r.target.agency : "—", targetNote(r.target)),
  h("td", { class: "num wave" }, `${r.wave} of ${r.wave_count}`),
  h("td", { class: "num applied", title: `${c.applied} of the ${c.issued} units issued the change applied it; ${r.target_units} units in the target` },
    `${c.applied} / ${c.issued}`, h("div", { class: "sub" }, `of ${unitCount(r.target_units)}`),
    c.failed ? h("div", { class: "stale" }, `${c.failed} failed`) : null,
    back ? h("div", { class: "sub" }, back) : null),
  verdictCell(r),
  h("td", { class: "when opt" }, when(r.updated_ms)),
  );
}

function renderRollouts() {
  const box = $("rollout-list");
  if (state.rollouts === null) { $("rollouts").hidden = true; return; }
  $("rollouts").hidden = false;
  const error = state.rolloutError ? h("p", { class: "error" }, "Could not load rollouts: " + state.rolloutError) : null;
  if (!state.rollouts.length) {
    box.replaceChildren(error || h("p", { class: "empty" }, "No rollouts."));
    return;
  }
  box.replaceChildren(...(error ? [error] : []), h("table", {},
    h("thead", {}, h("tr", {},
      h("th", {}, "Phase"), h("th", {}, "Rollout"), h("th", {}, "Agency"), h("th", { class: "num" }, "Wave"),
      h("th", { class: "num" }, "Applied"), h("th", {}, "Latest verdict"), h("th", { class: "opt" }, "Updated"))),
    h("tbody", {}, state.rollouts.map(rolloutRow))));
  setTimeout(() => state.rolloutFlash.clear(), 2500);
}

// ---------------------------------------------------------------- unit view

async function openDetail(key, refresh, tries) {
  const [agency, unit] = key.split("/");
  state.detail = key;
  const hours = Number($("d-hours").value);
  if (!refresh) {
    $("detail-title").replaceChildren(agency + " / " + unit);
    $("detail-body").replaceChildren(h("p", { class: "empty" }, "Loading…"));
    $("detail").hidden = false;
    history.replaceState(null, "", "#unit=" + encodeURIComponent(key));
  }
  const base = `/api/v1/units/${encodeURIComponent(agency)}/${encodeURIComponent(unit)}`;
  try {
    // resolution=auto: raw samples within the store's raw retention (2 h by
    // default), minute rollups for the 6 h and 24 h charts.
    const [d, hostItems, probeItems, events, strip] = await Promise.all([
      api(base),
      all(`${base}/samples?since=${hours}h&kind=host&resolution=auto`, 20),
      all(`${base}/samples?since=${hours}h&kind=probe&resolution=auto`, 20),
      api(`/api/v1/events?unit=${encodeURIComponent(key)}&limit=50`),
      api(`${base}/timeline?hours=24`).catch((e) => { if (e instanceof AuthError) throw e; return null; }),
    ]);
    if (state.detail !== key) return;
    // A transition reaches the stream a moment before the unit's view has
    // it (the view follows the store's commit): until the view agrees with
    // the stream, ask again shortly.
    const u = state.units.get(key);
    const flags = (x) => x.status + " " + x.reasons.map((r) => r.rule).join();
    if (refresh && u && flags(u) !== flags(d) && (tries || 0) < 10) {
      setTimeout(() => { if (state.detail === key) openDetail(key, true, (tries || 0) + 1); }, 200);
      return;
    }
    const host = hostItems.flatMap((x) => (x.start_ms !== undefined ? rolledHost(x) : [x]));
    const probes = probeItems.flatMap((x) => (x.start_ms !== undefined ? rolledProbes(x) : [x]));
    renderDetail(d, host, probes, events.items, hours, strip);
  } catch (e) {
    if (e instanceof AuthError) handleError(e);
    else $("detail-body").replaceChildren(h("p", { class: "error" }, "Could not load this unit: " + e.message));
  }
}

/** A minute or hour rollup's host means, shaped as a host sample for the charts. */
function rolledHost(r) {
  const h = r.host;
  if (!h) return [];
  const mean = (st) => (st.n ? st.sum / st.n : null);
  const pct = (st) => (st.n ? { used_kib: mean(st), total_kib: 100 } : null);
  const disk = pct(h.disk_max_pct);
  return [{ at_ms: r.start_ms, rolled: true, data: {
    cpu: h.cpu_pct.n ? { total_bp: mean(h.cpu_pct) * 100 } : null,
    memory: pct(h.memory_pct),
    disks: disk ? [{ mount: "fullest disk", ...disk }] : [],
  } }];
}

/** A rollup's probes (mean phases, failed if any failed), shaped as probe results. */
function rolledProbes(r) {
  const us = (st) => (st.n ? (st.sum / st.n) * 1000 : null);
  return r.probes.map((p) => ({ at_ms: r.start_ms, rolled: true, data: {
    name: p.name, target: "", outcome: p.failures ? "Fail" : "Ok",
    phases: { dns_us: us(p.dns_ms), connect_us: us(p.connect_ms), tls_us: us(p.tls_ms), ttfb_us: us(p.ttfb_ms), total_us: us(p.total_ms) || 0 },
  } }));
}

function closeDetail() {
  state.detail = null;
  $("detail").hidden = true;
  history.replaceState(null, "", location.pathname);
}

function renderDetail(d, host, probes, events, hours, strip) {
  $("detail-title").replaceChildren(badge(d.status), d.agency + " / " + d.unit);
  const a = d.agent;
  const facts = h("div", { class: "facts" },
    h("div", {}, h("span", {}, "Status since"), when(d.since_ms)),
    h("div", {}, h("span", {}, "Last seen"), when(d.last_seen_ms)),
    h("div", { id: "detail-presence", "data-reason": d.presence ? d.presence.reason : "" }, h("span", {}, "Connection"),
      d.online === null ? "unknown" : d.presence ? presenceText(d.presence) : d.online ? "online" : "lost (MQTT will)"),
    h("div", {}, h("span", {}, "Backlog on the unit"), a ? `${a.backlog_records.toLocaleString()} records (${bytes(a.backlog_bytes)})` : "—"),
    h("div", {}, h("span", {}, "Agent"), a ? a.version : d.facts ? d.facts.agent_version : "—"),
    h("div", { id: "detail-labels" }, h("span", {}, "Labels"), labelsText(d.labels)),
    h("div", { id: "detail-os" }, h("span", {}, "OS"), d.facts ? d.facts.os : "—"),
    h("div", { id: "detail-cad" }, h("span", {}, "CAD client"), d.facts && d.facts.cad_version ? d.facts.cad_version : "—"),
    h("div", {}, h("span", {}, "Records"), `${d.seq.received.toLocaleString()} received, ${d.seq.missing} missing, ${d.seq.duplicates} duplicate`),
    h("div", {}, h("span", {}, "First seen"), when(d.first_seen_ms)),
    h("div", {}, h("span", {}, "Reconnects"), a ? a.reconnects : "—"),
  );
  const reasons = d.reasons.length
    ? h("ul", { class: "reason-list", id: "detail-reasons" }, d.reasons.map((r) => h("li", { "data-rule": r.rule },
      badge(r.severity), h("span", { class: "rule" }, r.rule), h("span", { class: "msg" }, r.message),
      h("span", {}, "since ", when(r.since_ms)),
      runbookView(r, d.agency + "/" + d.unit))))
    : h("p", { class: "empty", id: "detail-reasons" }, "No active flags: the unit is OK.");
  const now = Date.now();
  const t0 = now - hours * 3600000;
  W = chartWidth();
  const hostPts = host.map((x) => ({ t: x.at_ms, d: x.data }));
  const pct = (f) => hostPts.map((p) => [p.t, f(p.d)]).filter((p) => p[1] !== null && p[1] !== undefined);
  const cpu = pct((d) => (d.cpu ? d.cpu.total_bp / 100 : null));
  const mem = pct((d) => (d.memory && d.memory.total_kib ? (100 * d.memory.used_kib) / d.memory.total_kib : null));
  const mounts = [...new Set(hostPts.flatMap((p) => p.d.disks.map((x) => x.mount)))].slice(0, 5);
  const disks = mounts.map((m) => ({
    name: m,
    points: pct((d) => { const x = d.disks.find((k) => k.mount === m); return x && x.total_kib ? (100 * x.used_kib) / x.total_kib : null; }),
  }));
  const byProbe = new Map();
  for (const p of probes) {
    if (!byProbe.has(p.data.name)) byProbe.set(p.data.name, []);
    byProbe.get(p.data.name).push(p);
  }
  const charts = h("div", { class: "charts" },
    chart("CPU (%)", [{ name: "cpu", points: cpu }], t0, now, 100),
    chart("Memory used (%)", [{ name: "memory", points: mem }], t0, now, 100),
    chart("Disk used (%)", disks, t0, now, 100),
    ...[...byProbe.entries()].map(([name, list]) => probeChart(name, list, t0, now)),
  );
  const transitions = events.filter((e) => e.type === "transition");
  const trTable = transitions.length
    ? h("table", { id: "detail-transitions" },
      h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th", {}, "From"), h("th", {}, "To"), h("th", {}, "Reasons"))),
      h("tbody", {}, transitions.map((t) => h("tr", {},
        h("td", { class: "when" }, when(t.at_ms)), h("td", {}, badge(t.from)), h("td", {}, badge(t.to)),
        h("td", {}, t.reasons.map((r) => r.rule).join(", ") || "cleared")))))
    : h("p", { class: "empty", id: "detail-transitions" }, "No transitions stored.");
  $("detail-body").replaceChildren(facts, h("h3", {}, "Active flags"), reasons,
    h("div", { id: "detail-actions" }, pastActions(d.agency + "/" + d.unit, d.reasons)),
    h("h3", {}, "Network"), networkView(host.length && !host[host.length - 1].rolled ? host[host.length - 1].data.network : d.latest && d.latest.host ? d.latest.host.data.network : null),
    h("h3", {}, `Last ${strip ? Math.round((strip.to_ms - strip.from_ms) / 3600000) || "<1" : 24} h: on, off, asleep, lost`),
    stripView(strip),
    h("h3", {}, `Last ${hours} h`), charts, h("h3", {}, "Transitions"), trTable);
}

// ---------------------------------------------------------------- runbooks

/**
 * A flag's runbook: this collector's own (`/runbooks/{rule}`) expands inline
 * under the flag; another site's URL is a link; none says so.
 */
function runbookView(r, key) {
  if (!r.runbook) return h("span", { class: "empty" }, "no runbook");
  if (!r.runbook.startsWith("/runbooks/")) {
    return h("a", { href: r.runbook, target: "_blank", rel: "noopener noreferrer", class: "runbook" }, "Runbook ↗");
  }
  const id = key + " " + r.rule;
  const body = h("div", { class: "runbook-body" });
  const act = h("div", { class: "runbook-action", "data-unit": key, "data-rule": r.rule, hidden: true });
  // An `open` details element fires `toggle` once it is built too, so a
  // runbook left open survives the unit view's re-renders.
  return h("details", {
    class: "runbook-inline", "data-rule": r.rule, open: state.runbooksOpen.has(id),
    ontoggle: (e) => {
      if (e.target.open) {
        state.runbooksOpen.add(id);
        fillAction(act);
        fillRunbook(body, r.runbook);
      } else state.runbooksOpen.delete(id);
    },
  }, h("summary", {}, "Runbook"), act, body);
}

/** The runbook page's `<article id="runbook">`, fetched once per page load (no token needed). */
function loadRunbook(url) {
  if (!state.runbooks.has(url)) {
    const p = fetch(url, { cache: "no-cache" }).then(async (r) => {
      if (!r.ok) throw new Error(r.status === 404 ? "this collector has no runbook for this rule" : "HTTP " + r.status);
      // DOMParser's document is inert: nothing in it runs or loads.
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const article = doc.getElementById("runbook");
      if (!article) throw new Error("not a runbook page");
      return article;
    });
    p.catch(() => state.runbooks.delete(url));
    state.runbooks.set(url, p);
  }
  return state.runbooks.get(url);
}

/** Elements a runbook may show; anything else is replaced by its text. */
const RUNBOOK_TAGS = new Set(["H1", "H2", "H3", "H4", "H5", "H6", "P", "UL", "OL", "LI", "CODE", "PRE", "EM",
  "STRONG", "DEL", "BLOCKQUOTE", "HR", "BR", "A", "TABLE", "THEAD", "TBODY", "TR", "TH", "TD"]);

/**
 * The runbook rebuilt with `h()`: the server already escaped it, and this
 * keeps the page's rule anyway: only the elements above, no attributes but
 * a link's http(s), mailto, tel or same-site address (opened in a new tab),
 * text always as text.
 */
function runbookNodes(src) {
  const out = [];
  for (const n of src.childNodes) {
    if (n.nodeType === Node.TEXT_NODE) { out.push(n.textContent); continue; }
    if (n.nodeType !== Node.ELEMENT_NODE) continue;
    const kids = runbookNodes(n);
    if (!RUNBOOK_TAGS.has(n.tagName)) { out.push(...kids); continue; }
    const attrs = {};
    const href = n.tagName === "A" ? n.getAttribute("href") || "" : "";
    if (/^(https?:|mailto:|tel:|\/(?!\/))/i.test(href)) Object.assign(attrs, { href, target: "_blank", rel: "noopener noreferrer" });
    out.push(h(n.tagName.toLowerCase(), attrs, kids));
  }
  return out;
}

async function fillRunbook(body, url) {
  if (body.dataset.state === "loading" || body.dataset.state === "loaded") return;
  body.dataset.state = "loading";
  body.replaceChildren(h("p", { class: "empty" }, "Loading the runbook…"));
  try {
    const article = await loadRunbook(url);
    body.replaceChildren(
      h("article", { class: "runbook", "data-source": article.dataset.source || "" }, runbookNodes(article)),
      h("p", { class: "runbook-open" }, article.dataset.source === "site" ? "This centre's runbook. " : "Built-in runbook. ",
        h("a", { href: url, target: "_blank", rel: "noopener noreferrer", class: "runbook" }, "Open as a page ↗")));
    body.dataset.state = "loaded";
  } catch (e) {
    body.replaceChildren(h("p", { class: "error" }, "Could not load the runbook: " + e.message));
    body.dataset.state = "";
  }
}

// ---------------------------------------------------------------- actions

/** Steps after which a request is over. */
const ACTION_DONE = new Set(["finished", "failed", "refused", "expired_unanswered", "denied"]);
const ACTION_HTTP = { 400: "Refused", 403: "Not allowed", 404: "Unknown unit", 413: "Refused", 429: "Too many requests", 501: "Not available here", 503: "Unavailable" };

/**
 * Whether this token may ask a unit of `agency` to run an action: the
 * admin, or that agency's operator. The API decides anyway (a viewer gets
 * a 403); this only keeps the button from those who cannot use it.
 */
function mayAct(agency) {
  const me = state.me;
  return !!me && (me.role === "admin" || (me.role === "operator" && me.agency === agency));
}

/** The action a rule's runbook suggests (its front matter), or null; asked once per page load. */
function runbookAction(rule) {
  if (!state.actionOf.has(rule)) {
    const p = api("/api/v1/runbooks/" + encodeURIComponent(rule)).then((b) => b.action || null);
    p.catch(() => state.actionOf.delete(rule));
    state.actionOf.set(rule, p);
  }
  return state.actionOf.get(rule);
}

/** Fills a runbook's action slot: a button for those who may use it, nothing for anyone else. */
async function fillAction(slot) {
  if (!mayAct(slot.dataset.unit.split("/")[0])) return;
  let action = null;
  try {
    action = await runbookAction(slot.dataset.rule);
  } catch (e) {
    if (e instanceof AuthError) handleError(e);
    else console.error(e);
    return;
  }
  if (!action) return;
  slot.dataset.action = action;
  renderAction(slot);
}

function runId(key, rule) { return key + " " + rule; }

/** The logged steps of a request, oldest first. */
function stepsOf(request) {
  const m = request ? state.actionSteps.get(request) : null;
  return m ? [...m.values()].sort((a, b) => a.id - b.id) : [];
}

function runDone(run) { return stepsOf(run.request).some((e) => ACTION_DONE.has(e.step)); }

/** Where a run stands, for the page and its tests: confirm, sending, error, or its latest step. */
function runState(run) {
  if (run.stage !== "sent") return run.stage;
  const steps = stepsOf(run.request);
  return steps.length ? steps[steps.length - 1].step : "sent";
}

/** `1.2 s`, `340 ms`, `2 min`. */
function secs(ms) {
  if (ms < 1000) return ms + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  return dur(ms);
}

/** One step in words: `finished, exit 0, 1.2 s`, `refused (rate_limited)`… */
function stepText(e) {
  switch (e.step) {
    case "requested": return "requested" + (e.requested_by ? " by " + e.requested_by : "");
    case "started": return "started on the unit";
    case "finished": {
      const how = e.timed_out ? "timed out" : e.exit_code === undefined || e.exit_code === null ? "killed" : "exit " + e.exit_code;
      return "finished, " + how + (e.duration_ms === undefined ? "" : ", " + secs(e.duration_ms));
    }
    case "refused": return `refused (${e.refusal || "unknown"})` + (e.reason ? ": " + e.reason : "");
    case "failed": return "failed" + (e.reason ? ": " + e.reason : "");
    case "expired_unanswered": return "expired unanswered: the unit did not answer in time";
    case "denied": return `denied (${e.reason || "unknown"})`;
    default: return e.summary || e.step;
  }
}

function stepClass(e) {
  if (e.step === "finished") return e.exit_code === 0 && !e.timed_out ? "good" : "bad";
  return ACTION_DONE.has(e.step) ? "bad" : "";
}

/** A request's steps as they arrived, and its output once finished. */
function stepsView(run) {
  const steps = stepsOf(run.request);
  const out = steps.filter((e) => e.step === "finished" && (e.stdout || e.stderr));
  return h("div", { class: "action-outcome", "data-request": run.request, "data-state": runState(run) },
    h("ol", { class: "action-steps", "aria-live": "polite" },
      steps.map((e) => h("li", { "data-step": e.step, class: stepClass(e), title: e.summary || null },
        h("span", { class: "step" }, stepText(e)), " ", when(e.at_ms))),
      runDone(run) ? null : h("li", { class: "pending" }, steps.length ? "waiting for the unit…" : "sent, waiting for the collector…")),
    out.map((e) => h("details", { class: "action-output" }, h("summary", {}, "Output"),
      e.stdout ? h("pre", { "data-stream": "stdout" }, e.stdout) : null,
      e.stderr ? h("pre", { "data-stream": "stderr" }, e.stderr) : null)));
}

/** The slot under a flag's runbook: its button, the confirmation, the outcome. */
function renderAction(slot) {
  const key = slot.dataset.unit, rule = slot.dataset.rule, action = slot.dataset.action;
  const run = state.actionRuns.get(runId(key, rule));
  const unit = key.split("/")[1];
  const label = `Run ${action} on ${unit}`;
  const busy = !!run && (run.stage === "confirm" || run.stage === "sending" || (run.stage === "sent" && !runDone(run)));
  slot.hidden = false;
  slot.dataset.state = run ? runState(run) : "idle";
  slot.dataset.request = run && run.request ? run.request : "";
  const kids = [
    h("div", { class: "action-head" },
      h("span", { class: "hint" }, "This runbook suggests:"),
      h("button", {
        type: "button", class: "action-run", disabled: busy,
        onclick: () => { state.actionRuns.set(runId(key, rule), { key, rule, action, stage: "confirm", prev: run }); renderAction(slot); },
      }, label)),
  ];
  if (run && run.stage === "confirm") {
    // Cancelled: the previous run's outcome, if any, shows again.
    const no = () => {
      if (run.prev) state.actionRuns.set(runId(key, rule), run.prev);
      else state.actionRuns.delete(runId(key, rule));
      renderAction(slot);
    };
    const title = "action-confirm-" + Math.random().toString(36).slice(2);
    const box = h("div", {
      class: "action-confirm", role: "alertdialog", "aria-labelledby": title,
      onkeydown: (e) => { if (e.key === "Escape") { e.stopPropagation(); no(); } },
    },
    h("p", { id: title }, h("strong", {}, `Run ${action} on ${key}?`),
      " The unit runs it as its agent's config defines it. Every step is logged in the action audit."),
    h("div", { class: "action-buttons" },
      h("button", { type: "button", class: "action-yes", onclick: () => runAction(key, rule, action) }, "Run it"),
      h("button", { type: "button", class: "action-no", onclick: no }, "Cancel")));
    kids.push(box);
    slot.replaceChildren(...kids);
    box.querySelector(".action-no").focus();
    return;
  }
  if (run && run.stage === "sending") kids.push(h("p", { class: "empty action-sending" }, "Sending the request…"));
  if (run && run.stage === "error") kids.push(h("p", { class: "error action-error", role: "alert" }, run.error));
  if (run && run.stage === "sent") kids.push(stepsView(run));
  slot.replaceChildren(...kids);
}

/** Asks the collector to send the signed request; the outcome follows from the audit. */
async function runAction(key, rule, action) {
  const id = runId(key, rule);
  const run = { key, rule, action, stage: "sending" };
  state.actionRuns.set(id, run);
  refreshActions(null);
  const [agency, unit] = key.split("/");
  try {
    const t = token();
    if (!t) throw new AuthError("no token");
    const r = await fetch(`/api/v1/units/${encodeURIComponent(agency)}/${encodeURIComponent(unit)}/actions`, {
      method: "POST", cache: "no-store",
      headers: { Authorization: "Bearer " + t, "Content-Type": "application/json" },
      body: JSON.stringify({ action }),
    });
    let body = null;
    try { body = await r.json(); } catch (_) { /* no JSON */ }
    const message = body && body.error && body.error.message;
    if (r.status === 401) throw new AuthError(message || "That token is not valid.");
    if (r.status !== 202) {
      // Refusals are the operator's to read, not a reason to sign out.
      let text = `${ACTION_HTTP[r.status] || "Failed"} (HTTP ${r.status}): ${message || "no reason given"}`;
      const retry = r.headers.get("Retry-After");
      // 429: when to try again, unless the message says it already.
      if (retry && !/retry in|try again/i.test(text)) text += ` Try again in ${retry} s.`;
      run.stage = "error";
      run.error = text;
    } else {
      run.stage = "sent";
      run.request = body.request;
      run.expires_ms = body.expires_ms;
      state.actionSent.push(run);
      if (state.actionSent.length > 50) state.actionSent.shift();
    }
  } catch (e) {
    if (e instanceof AuthError) { handleError(e); return; }
    run.stage = "error";
    run.error = "Could not reach the collector: " + e.message;
  }
  refreshActions(null);
  if (run.stage === "sent") {
    // Steps the stream brought before this answer are kept; whatever it
    // did not bring (not connected, lagged), the audit has.
    pollActions(true);
    if (!state.actionTimer) state.actionTimer = setInterval(() => pollActions(false), 2000);
  }
}

/** Steps from the stream or the audit; re-renders the runs they belong to. */
function addSteps(list) {
  const touched = new Set();
  for (const e of list) {
    if (!e.request || e.id === undefined) continue;
    let m = state.actionSteps.get(e.request);
    if (!m) {
      m = new Map();
      state.actionSteps.set(e.request, m);
    }
    if (!m.has(e.id)) { m.set(e.id, e); touched.add(e.request); }
  }
  // Kept: every run's steps, and the latest others (a step may come before
  // the answer that names its request).
  const mine = new Set(state.actionSent.map((r) => r.request));
  for (const k of state.actionSteps.keys()) {
    if (state.actionSteps.size <= 200) break;
    if (!mine.has(k)) state.actionSteps.delete(k);
  }
  if ([...touched].some((t) => mine.has(t))) refreshActions(touched);
}

/**
 * Catches up from `/api/v1/actions` on every unit with a pending run: at
 * once when `force`, else only while the stream is not open (its `action`
 * events bring the steps then). Stops once no run is pending.
 */
async function pollActions(force) {
  const pending = state.actionSent.filter((r) => !runDone(r));
  if (!pending.length) {
    clearInterval(state.actionTimer);
    state.actionTimer = null;
    return;
  }
  if (!force && state.stream && state.stream.readyState === EventSource.OPEN) return;
  for (const key of new Set(pending.map((r) => r.key))) {
    try {
      const page = await api(`/api/v1/actions?unit=${encodeURIComponent(key)}&limit=100`);
      addSteps(page.items);
    } catch (e) {
      if (e instanceof AuthError) { handleError(e); return; }
      console.error(e);
    }
  }
}

/** Re-renders the runs' slots (those of `requests`, or all) and the unit view's past runs. */
function refreshActions(requests) {
  for (const slot of document.querySelectorAll(".runbook-action[data-action]")) {
    const run = state.actionRuns.get(runId(slot.dataset.unit, slot.dataset.rule));
    if (!requests || (run && requests.has(run.request))) renderAction(slot);
  }
  const box = $("detail-actions");
  if (box && state.detail) {
    const d = state.units.get(state.detail);
    box.replaceChildren(...(pastActions(state.detail, d ? d.reasons : []) || []));
  }
}

/**
 * Runs from this page whose flag is no longer raised (the action fixed it,
 * most likely): their outcome stays in the unit view.
 */
function pastActions(key, reasons) {
  const flagged = new Set(reasons.map((r) => r.rule));
  const runs = state.actionSent.filter((r) => r.key === key && !flagged.has(r.rule)).reverse();
  if (!runs.length) return null;
  return [h("h3", {}, "Actions from this page"), h("ul", { class: "reason-list past-actions" }, runs.map((r) =>
    h("li", { class: "past-action", "data-rule": r.rule, "data-request": r.request },
      h("span", { class: "rule" }, r.action), h("span", { class: "msg" }, `for ${r.rule} (flag cleared)`), stepsView(r))))];
}

/** A unit's labels as `station=7, role=patrol` (— when it reported none). */
function labelsText(labels) {
  const kv = Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`);
  return kv.length ? kv.join(", ") : "—";
}

/** The presence in words: "online", "shut down 18:02 (OS shutdown)"... */
function presenceText(p) {
  const at = p.at_ms ? new Date(p.at_ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
  switch (p.reason) {
    case "connected": return "online";
    case "resumed": return "online, resumed" + (p.slept_ms ? " after sleeping " + dur(p.slept_ms) : "");
    case "shutdown": return `shut down ${at} (OS shutdown)`;
    case "stop": return `stopped ${at}` + (p.back_within_ms ? ` (restart, back within ${dur(p.back_within_ms)})` : " (service stopped)");
    case "sleep": return `asleep since ${at}`;
    case "lost": return `lost contact ${at} (MQTT will)`;
    default: return `gone ${at} (reason unknown to this collector: treated as lost)`;
  }
}

function dur(ms) {
  const m = Math.round(ms / 60000);
  if (m < 1) return Math.round(ms / 1000) + " s";
  if (m < 90) return m + " min";
  return (m / 60).toFixed(1).replace(/\.0$/, "") + " h";
}

const NET_LABEL = { ethernet: "Ethernet", wifi: "Wi-Fi", cellular: "Cellular", vpn: "VPN", other: "Other" };

/** The latest host sample's network context. */
function networkView(n) {
  if (!n) return h("p", { class: "empty", id: "detail-network" }, "No network context (an older agent, or every network family failed).");
  const db10 = (v) => (v === null || v === undefined ? null : (v / 10).toFixed(1) + " dB");
  const dbm = (v) => (v === null || v === undefined ? null : v + " dBm");
  const fact = (label, ...v) => h("div", {}, h("span", {}, label), ...(v.filter((x) => x !== null && x !== "").length ? v : ["—"]));
  const c = n.cellular, w = n.wifi;
  return h("div", { class: "facts net", id: "detail-network", "data-kind": n.route ? n.route.kind : "" },
    fact("Default route", n.route ? `${NET_LABEL[n.route.kind] || n.route.kind} (${n.route.interface})` : "none (no route)"),
    fact("Signal", dbm(n.signal_dbm)),
    fact("Wi-Fi", w ? `${w.ssid || "(hidden)"} on ${w.interface}${w.signal_dbm !== null ? ", " + dbm(w.signal_dbm) : ""}` : null),
    fact("Cellular", c ? [c.technology ? c.technology.toUpperCase() : "?", c.operator, c.interface].filter(Boolean).join(" · ") : null),
    c ? fact("Cellular signal", ["RSSI " + (dbm(c.rssi_dbm) || "—"), "RSRP " + (dbm(c.rsrp_dbm) || "—"),
      "RSRQ " + (db10(c.rsrq_db_x10) || "—"), "SINR " + (db10(c.sinr_db_x10) || "—")].join(", ")) : null,
    fact("VPN", n.vpns.length ? n.vpns.map((v) => `${v.name} ${v.up ? "up" : "DOWN"}`).join(", ") : "none configured"),
    fact("Route changes", String(n.route_changes) + (n.route_changes ? " since the previous sample (roaming)" : "")),
  );
}

const STRIP_LABEL = { on: "On", off: "Off", asleep: "Asleep", degraded: "Degraded", overdue: "Overdue", critical: "Critical", lost: "Lost" };

/** The unit's strip: a bar of coloured segments with the network kind. */
function stripView(t) {
  if (!t || !t.segments.length) return h("p", { class: "empty", id: "detail-strip" }, "No history for the strip.");
  const span = Math.max(1, t.to_ms - t.from_ms);
  const hm = (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const bar = h("div", { class: "strip-bar", role: "img", "aria-label": "status over time" },
    t.segments.map((g) => {
      const el = h("div", {
        class: `seg ${g.state}` + (g.net_kind ? " net-" + g.net_kind : ""), "data-state": g.state, "data-net": g.net_kind || "",
        title: `${hm(g.from_ms)}–${hm(g.to_ms)}: ${STRIP_LABEL[g.state] || g.state}${g.net_kind ? " on " + (NET_LABEL[g.net_kind] || g.net_kind) : ""}`,
      }, g.net_kind && (g.to_ms - g.from_ms) / span > 0.06 ? h("span", {}, NET_LABEL[g.net_kind] || g.net_kind) : null);
      el.style.width = ((100 * (g.to_ms - g.from_ms)) / span).toFixed(3) + "%";
      return el;
    }));
  const used = new Set(t.segments.map((g) => g.state));
  const nets = new Set(t.segments.map((g) => g.net_kind).filter(Boolean));
  return h("div", { class: "strip", id: "detail-strip" }, bar,
    h("div", { class: "strip-axis" }, h("span", {}, hm(t.from_ms)), h("span", {}, "now")),
    h("div", { class: "legend strip-legend" },
      Object.keys(STRIP_LABEL).map((st) => h("span", { class: used.has(st) ? "" : "unused" }, h("i", { class: "seg " + st }), STRIP_LABEL[st])),
      [...nets].map((k) => h("span", {}, h("i", { class: "seg on net-" + k }), "on " + (NET_LABEL[k] || k)))));
}

// Charts are drawn at their on-screen width (set per render), so text is
// never stretched.
let W = 520;
const H = 160, PL = 38, PR = 8, PT = 8, PB = 20;

function chartWidth() {
  const inner = $("detail-body").clientWidth || 1000;
  const twoCols = !window.matchMedia("(max-width: 1000px)").matches;
  return Math.max(300, Math.round((twoCols ? (inner - 16) / 2 : inner) - 24));
}

function frame(t0, t1, yMax, unit) {
  const g = [];
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4;
    const y = PT + (H - PT - PB) * (1 - i / 4);
    g.push(s("line", { class: "grid", x1: PL, x2: W - PR, y1: y, y2: y }));
    g.push(s("text", { class: "axis", x: PL - 4, y: y + 3, "text-anchor": "end" }, fmtNum(v) + unit));
  }
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    const x = PL + ((W - PL - PR) * i) / 4;
    const d = new Date(t);
    g.push(s("text", { class: "axis", x, y: H - 5, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" },
      String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0")));
  }
  return g;
}

function fmtNum(v) { return v >= 1000 ? (v / 1000).toFixed(1).replace(/\.0$/, "") + "k" : String(Math.round(v)); }

/** Averages points into at most `n` buckets so long ranges stay light. */
function thin(points, n) {
  if (points.length <= n) return points;
  const out = [];
  const step = points.length / n;
  for (let i = 0; i < n; i++) {
    const chunk = points.slice(Math.floor(i * step), Math.floor((i + 1) * step));
    if (!chunk.length) continue;
    out.push([chunk[chunk.length - 1][0], chunk.reduce((a, p) => a + p[1], 0) / chunk.length]);
  }
  return out;
}

function chart(title, series, t0, t1, yMax) {
  const x = (t) => PL + ((W - PL - PR) * (t - t0)) / (t1 - t0);
  const y = (v) => PT + (H - PT - PB) * (1 - Math.min(v, yMax) / yMax);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title }, frame(t0, t1, yMax, "%"));
  let any = false;
  series.forEach((se, i) => {
    const pts = thin(se.points.filter((p) => p[0] >= t0), 400);
    if (!pts.length) return;
    any = true;
    if (pts.length === 1) svg.append(s("circle", { class: "c" + i, cx: x(pts[0][0]), cy: y(pts[0][1]), r: 2.5 }));
    else svg.append(s("polyline", { class: "line c" + i, points: pts.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ") }));
  });
  const last = series.map((se) => se.points[se.points.length - 1]).filter(Boolean);
  return h("div", { class: "chart" },
    h("h4", {}, title, last.length === 1 ? ` — now ${last[0][1].toFixed(1)}` : ""),
    any ? svg : h("p", { class: "empty" }, "No samples in this range."),
    series.length > 1 ? h("div", { class: "legend" }, series.map((se, i) => h("span", {}, h("i", { class: "c" + i }), se.name))) : null);
}

const PHASES = [["dns_us", "DNS"], ["connect_us", "connect"], ["tls_us", "TLS"], ["ttfb_us", "first byte"], ["rest", "rest"]];

function probeChart(name, list, t0, t1) {
  const rows = list.filter((p) => p.at_ms >= t0).map((p) => {
    const ph = p.data.phases;
    const parts = PHASES.slice(0, 4).map(([k]) => (ph[k] || 0) / 1000);
    const known = parts.reduce((a, b) => a + b, 0);
    parts.push(Math.max(0, ph.total_us / 1000 - known));
    return { t: p.at_ms, parts, ok: p.data.outcome === "Ok" };
  });
  const target = list.length ? list[list.length - 1].data.target : "";
  const maxTotal = Math.max(10, ...rows.map((r) => r.parts.reduce((a, b) => a + b, 0)));
  const nice = [20, 40, 100, 200, 400, 1000, 2000, 4000, 10000, 20000, 40000, 60000].find((v) => v >= maxTotal) || maxTotal;
  const x = (t) => PL + ((W - PL - PR) * (t - t0)) / (t1 - t0);
  const y = (v) => PT + (H - PT - PB) * (1 - Math.min(v, nice) / nice);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "latency of " + name }, frame(t0, t1, nice, ""));
  const thinned = rows.length > 300 ? rows.filter((_, i) => i % Math.ceil(rows.length / 300) === 0) : rows;
  // Stacked areas, bottom phase first.
  for (let k = 0; k < PHASES.length; k++) {
    if (thinned.length < 2) break;
    const top = thinned.map((r) => [x(r.t), y(r.parts.slice(0, k + 1).reduce((a, b) => a + b, 0))]);
    const bottom = thinned.map((r) => [x(r.t), y(r.parts.slice(0, k).reduce((a, b) => a + b, 0))]).reverse();
    const d = "M" + top.concat(bottom).map((p) => p[0].toFixed(1) + "," + p[1].toFixed(1)).join("L") + "Z";
    svg.append(s("path", { class: "area c" + k, d }));
  }
  if (thinned.length === 1) {
    let base = 0;
    thinned[0].parts.forEach((v, k) => {
      svg.append(s("rect", { class: "c" + k, x: x(thinned[0].t) - 3, width: 6, y: y(base + v), height: Math.max(0, y(base) - y(base + v)) }));
      base += v;
    });
  }
  for (const r of rows.filter((r) => !r.ok)) {
    svg.append(s("line", { class: "fail", x1: x(r.t), x2: x(r.t), y1: H - PB, y2: H - PB - 8 }));
  }
  const failed = rows.filter((r) => !r.ok).length;
  return h("div", { class: "chart", "data-probe": name },
    h("h4", {}, `Probe ${name} latency (ms)`, target ? h("span", { class: "hint" }, target) : null),
    rows.length ? svg : h("p", { class: "empty" }, "No results in this range."),
    h("div", { class: "legend" }, PHASES.map(([, label], i) => h("span", {}, h("i", { class: "c" + i }), label)),
      failed ? h("span", { class: "stale" }, `${failed} failed (red ticks)`) : null));
}

// ---------------------------------------------------------------- wiring

function start() {
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const t = $("token").value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    $("login-error").textContent = "";
    await begin();
  });
  $("signout").addEventListener("click", () => askToken("Signed out."));
  $("f-agency").addEventListener("change", (e) => { filters.agency = e.target.value; renderAll(); });
  $("f-status").addEventListener("change", (e) => { filters.status = STATUS_ALIAS[e.target.value] || e.target.value; renderAll(); });
  for (const ev of ["input", "change"]) {
    $("f-text").addEventListener(ev, (e) => { filters.text = e.target.value.trim(); renderFleet(); });
  }
  $("f-sort").addEventListener("change", (e) => { filters.sort = e.target.value; renderFleet(); });
  $("detail-close").addEventListener("click", closeDetail);
  $("detail").addEventListener("click", (e) => { if (e.target === $("detail")) closeDetail(); });
  $("d-hours").addEventListener("change", () => { if (state.detail) openDetail(state.detail); });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.detail) closeDetail(); });
  let resize = null;
  window.addEventListener("resize", () => {
    clearTimeout(resize);
    resize = setTimeout(() => { if (state.detail) openDetail(state.detail, true); }, 250);
  });
  setInterval(tickTimes, 15000);
  if (token()) begin();
  else askToken("");
}

async function begin() {
  try {
    await loadAll();
  } catch (e) {
    if (e instanceof AuthError) { askToken(e.message); return; }
    $("login-error").textContent = "Could not reach the collector: " + e.message;
    $("login").hidden = false;
    return;
  }
  startStream();
  clearInterval(state.refreshTimer);
  // Last seen and backlog are not on the stream: refresh them quietly.
  state.refreshTimer = setInterval(() => { refreshUnits(); loadProblems(); loadRollouts(); }, 30000);
  const m = location.hash.match(/^#unit=(.+)$/);
  if (m) openDetail(decodeURIComponent(m[1]));
}

document.addEventListener("DOMContentLoaded", start);
