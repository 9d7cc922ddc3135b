// MeterFlow dashboard: one page, no build step.
//
// It reads the API with a customer's key, sent as the X-API-Key header and
// kept in localStorage (never in a URL, where it would reach logs and
// history), draws two Chart.js charts and polls the alert list, so that an
// alert shows up within seconds without a reload. Every call counts against
// the customer's rate limit (100 a minute, shared with its other clients),
// hence the slow chart refresh and no polling while the tab is hidden.
"use strict";

const ALERT_POLL_MS = 2000;
const DATA_REFRESH_MS = 15000;
const ALERT_LIMIT = 50;
const NEW_FOR_MS = 15000; // how long an alert that arrived while watching is marked new
const STORAGE_KEY = "meterflow.dashboard";
const COLORS = { normal: "#3e7cb1", anomaly: "#d64545", baseline: "#9aa5b1" };
const KIND_NAMES = { fraud_pattern: "Fraud pattern", usage_spike: "Usage spike", daily_anomaly: "Daily anomaly" };
// Refusals that retrying cannot fix: the customer, key or metric must change first.
const FINAL_STATUSES = new Set([400, 401, 403, 404]);

const $ = (id) => document.getElementById(id);

/** A failed API call: the HTTP status (0 when the API was unreachable) and the API's reason. */
class ApiError extends Error {
  constructor(status, reason, retryAfterS = 0) {
    super(reason);
    this.status = status;
    this.retryAfterS = retryAfterS;
  }
}

let settings = loadSettings(); // {customerId, apiKey, metric, days, alertKind}
let units = {}; // metric code -> unit, from the public catalog
let session = 0; // bumped on every (re)start: answers to an older session are dropped
let timers = {};
let errors = {};
let firstSeen = null; // alert id -> when this page first listed it; null before the first list
const charts = {};

function loadSettings() {
  try {
    return JSON.parse(localStorage.getItem(STORAGE_KEY)) || {};
  } catch {
    return {};
  }
}

async function api(path, params = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params)) url.searchParams.set(name, value);
  const headers = settings.apiKey ? { "X-API-Key": settings.apiKey } : {};
  let response;
  try {
    response = await fetch(url, { headers, cache: "no-store" });
  } catch {
    throw new ApiError(0, "the API cannot be reached");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const retryAfterS = Number(response.headers.get("Retry-After")) || 0;
    throw new ApiError(response.status, body.error || response.statusText, retryAfterS);
  }
  return body;
}

// -- polling ------------------------------------------------------------------

const LOOPS = {
  alerts: {
    everyMs: ALERT_POLL_MS,
    load: () => {
      const kind = settings.alertKind ? { kind: settings.alertKind } : {};
      return api("/v1/alerts", { customer_id: settings.customerId, limit: ALERT_LIMIT, ...kind });
    },
    render: renderAlerts,
  },
  data: {
    everyMs: DATA_REFRESH_MS,
    load: () =>
      api("/v1/dashboard/data", { customer_id: settings.customerId, metric: settings.metric, days: settings.days }),
    render: renderData,
  },
};

function schedule(name, delayMs) {
  clearTimeout(timers[name]);
  timers[name] = setTimeout(() => poll(name), delayMs);
}

/** One round of a loop, then the next one; a final refusal stops the loop. */
async function poll(name) {
  const loop = LOOPS[name];
  const mine = session;
  let delayMs = loop.everyMs;
  if (!document.hidden) {
    try {
      const body = await loop.load();
      if (mine !== session) return;
      loop.render(body);
      errors[name] = null;
    } catch (error) {
      if (mine !== session) return;
      errors[name] = error;
      delayMs = Math.max(delayMs, error.retryAfterS * 1000);
    }
    showStatus();
  }
  if (running(name)) schedule(name, delayMs);
}

/** A loop runs until the API refused it for good. */
function running(name) {
  return !FINAL_STATUSES.has(errors[name]?.status);
}

function start() {
  stop();
  firstSeen = null;
  for (const name of Object.keys(LOOPS)) poll(name);
}

function stop() {
  session += 1;
  Object.values(timers).forEach(clearTimeout);
  timers = {};
  errors = {};
}

function explain(error) {
  if (!(error instanceof ApiError)) return `Dashboard error: ${error.message}`;
  const what = error.status ? `${error.status} ${error.message}` : error.message;
  if (FINAL_STATUSES.has(error.status)) return `${what}. Check the customer, API key and metric.`;
  return `${what}; retrying${error.retryAfterS ? ` in ${error.retryAfterS} s` : ""}.`;
}

function showStatus() {
  const error = Object.values(errors).find(Boolean);
  const status = $("status");
  status.classList.toggle("error", Boolean(error));
  status.textContent = error
    ? explain(error)
    : `${settings.customerId} · ${settings.metric} · live: alerts checked every ${ALERT_POLL_MS / 1000} s.`;
}

// -- rendering ----------------------------------------------------------------

function utc(ms) {
  return new Date(ms).toISOString().slice(0, 16).replace("T", " ");
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Draw a chart the first time, then swap its data (no animation, no flicker). */
function draw(id, config) {
  if (charts[id]) {
    charts[id].data = config.data;
    charts[id].update("none");
  } else {
    charts[id] = new Chart($(id), config);
  }
}

const CHART_OPTIONS = { animation: false, maintainAspectRatio: false, scales: { y: { beginAtZero: true } } };

function renderData(data) {
  const unit = units[data.metric] || "";
  $("history-unit").textContent = unit && `(${unit})`;
  renderHistory(data.usage_history, unit);
  // Hours after the current one have not happened yet: no line, rather than a zero.
  const currentHour = data.latest_check.hours_checked; // today's closed hours come before it
  const lived = data.current_pattern.map((value, hour) => (hour <= currentHour ? value : null));
  renderPattern(lived, data.baseline_pattern);
  renderCheck(data.latest_check);
}

function renderHistory(days, unit) {
  draw("history-chart", {
    type: "bar",
    data: {
      labels: days.map((day) => day.date),
      datasets: [
        {
          label: unit || "total",
          data: days.map((day) => day.total),
          backgroundColor: days.map((day) => (day.is_anomaly ? COLORS.anomaly : COLORS.normal)),
          anomalyTypes: days.map((day) => (day.is_anomaly ? day.anomaly_type || "anomaly" : null)),
        },
      ],
    },
    options: {
      ...CHART_OPTIONS,
      plugins: {
        legend: { display: false },
        tooltip: { callbacks: { afterLabel: (item) => item.dataset.anomalyTypes[item.dataIndex] || "" } },
      },
    },
  });
  $("history-empty").hidden = days.some((day) => day.total > 0);
}

function renderPattern(current, baseline) {
  draw("pattern-chart", {
    type: "line",
    data: {
      labels: current.map((_, hour) => String(hour).padStart(2, "0")),
      datasets: [
        { label: "today so far", data: current, borderColor: COLORS.normal, backgroundColor: COLORS.normal },
        {
          label: "usual for this weekday",
          data: baseline,
          borderColor: COLORS.baseline,
          backgroundColor: COLORS.baseline,
          borderDash: [6, 4],
        },
      ],
    },
    options: CHART_OPTIONS,
  });
  $("pattern-empty").hidden = baseline.some((value) => value > 0);
}

function renderCheck(check) {
  const verdict = check.is_fraud
    ? `fraud: ${check.fraud_type}`
    : check.pattern
      ? `unusual: ${check.pattern.replaceAll("_", " ")}`
      : "usual";
  const change = check.volume_change_percent;
  const rows = [
    ["Day (UTC)", `${check.date}, ${check.hours_checked} of 24 hours checked`],
    ["Similarity", check.similarity.toFixed(3)],
    ["Volume change", `${change > 0 ? "+" : ""}${change.toFixed(1)} %`],
    ["Verdict", verdict],
  ];
  const list = $("latest-check");
  list.replaceChildren();
  for (const [name, value] of rows) {
    list.append(element("dt", "", name), element("dd", name === "Verdict" && check.is_fraud ? "fraud" : "", value));
  }
}

function alertFinding(alert) {
  if (alert.kind !== "fraud_pattern") return `z-score ${alert.score === null ? "unbounded" : alert.score.toFixed(2)}`;
  const pattern = (alert.evidence.pattern || "pattern").replaceAll("_", " ");
  return `${pattern}, similarity ${alert.score.toFixed(2)}`;
}

function alertRow(alert, isNew) {
  const row = element("tr", `${alert.severity} ${alert.kind}`);
  row.classList.toggle("new", isNew);
  row.dataset.alertId = alert.alert_id;
  row.dataset.kind = alert.kind;
  row.dataset.metric = alert.metric;
  const hours = Math.round((alert.window.end - alert.window.start) / 3600000);
  row.append(
    element("td", "", utc(alert.created_at)),
    element("td", "kind", KIND_NAMES[alert.kind] || alert.kind),
    element("td", "", alert.metric),
    element("td", "severity", alert.severity),
    element("td", "", alertFinding(alert)),
    element("td", "", `${utc(alert.window.start)}, ${hours} h`),
  );
  return row;
}

/** "2 fraud pattern · 9 usage spike" for the alerts listed. */
function countByKind(alerts) {
  const counts = new Map();
  for (const alert of alerts) counts.set(alert.kind, (counts.get(alert.kind) || 0) + 1);
  return [...counts].map(([kind, n]) => `${n} ${(KIND_NAMES[kind] || kind).toLowerCase()}`).join(" · ");
}

function renderAlerts(body) {
  const now = Date.now();
  const seen = new Map();
  const rows = body.alerts.map((alert) => {
    // The first list is what was there before the page looked: not new.
    const since = firstSeen ? (firstSeen.get(alert.alert_id) ?? now) : 0;
    seen.set(alert.alert_id, since);
    return alertRow(alert, now - since < NEW_FOR_MS);
  });
  const arrived = firstSeen !== null && [...seen.keys()].some((id) => !firstSeen.has(id));
  firstSeen = seen;
  $("alerts").replaceChildren(...rows);
  $("alerts-empty").hidden = rows.length > 0;
  const counts = countByKind(body.alerts);
  $("alerts-summary").textContent = `(${counts && `${counts}; `}checked ${new Date(now).toLocaleTimeString()})`;
  if (arrived) schedule("data", 0); // the charts show what the new alert is about
}

// -- the form -----------------------------------------------------------------

async function loadMetrics() {
  try {
    const catalog = await api("/v1/metrics");
    units = Object.fromEntries(catalog.metrics.map((m) => [m.code, m.unit]));
    $("metric").replaceChildren(...catalog.metrics.map((m) => new Option(`${m.name} (${m.code})`, m.code)));
  } catch (error) {
    $("status").textContent = `Metric catalog unavailable (${error.message}); showing api_calls only.`;
  }
  $("metric").value = settings.metric || "api_calls";
}

function readForm() {
  settings = {
    customerId: $("customer-id").value.trim(),
    apiKey: $("api-key").value.trim(),
    metric: $("metric").value,
    days: Number($("days").value),
    alertKind: $("alert-kind").value,
  };
  localStorage.setItem(STORAGE_KEY, JSON.stringify(settings));
}

function forget() {
  stop();
  localStorage.removeItem(STORAGE_KEY);
  settings = {};
  $("api-key").value = "";
  $("status").classList.remove("error");
  $("status").textContent = "The key is forgotten by this browser.";
}

async function main() {
  $("customer-id").value = settings.customerId || "";
  $("api-key").value = settings.apiKey || "";
  $("days").value = String(settings.days || 30);
  $("alert-kind").value = settings.alertKind || "";
  await loadMetrics();
  $("connect").addEventListener("submit", (event) => {
    event.preventDefault();
    readForm();
    start();
  });
  for (const id of ["metric", "days", "alert-kind"]) {
    $(id).addEventListener("change", () => {
      if (!settings.apiKey) return;
      readForm();
      start();
    });
  }
  $("forget").addEventListener("click", forget);
  document.addEventListener("visibilitychange", () => {
    if (document.hidden || !settings.apiKey) return;
    Object.keys(LOOPS).filter(running).forEach((name) => schedule(name, 0));
  });
  if (settings.customerId && settings.apiKey) start();
}

main();
