// switchboard dashboard: every number comes from the service's own /v1 API, called with the
// API key the user logged in with (kept in this tab's sessionStorage only).
"use strict";

const PAGES = [
  ["overview", "Overview"], ["spend", "Spend"], ["routing", "Routing"], ["quality", "Quality"],
  ["budgets", "Budgets"], ["experiments", "Experiments"], ["requests", "Requests"],
];
const KEY = "switchboard-key";
const page = document.body.dataset.page;
const params = new URLSearchParams(location.search);
const main = document.getElementById("main");
const PLOT = { displayModeBar: false, responsive: true };

// --- helpers -------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// dollars with 4 decimals, 6 below one cent (model calls often cost fractions of a cent)
const usd = (v) => (v === null || v === undefined ? "-" : "$" + Number(v).toFixed(Math.abs(v) < 0.01 ? 6 : 4));
// a time bucket as a category label: 2026-11-26 (day), 2026-11-26 14:00 (hour), 2026-11 (month)
const bucketLabel = (bucket, group) => (group === "hour" ? bucket.slice(0, 10) + " " + bucket.slice(11, 16) : group === "month" ? bucket.slice(0, 7) : bucket.slice(0, 10));
const pct = (v) => (v === null || v === undefined ? "-" : (100 * v).toFixed(1) + " %");
const num = (v, digits = 0) => (v === null || v === undefined ? "-" : Number(v).toFixed(digits));

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = false;
}

async function api(path, query = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const response = await fetch(url, {
    headers: { Authorization: "Bearer " + sessionStorage.getItem(KEY) },
  });
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    location.href = "/dashboard/login?next=" + encodeURIComponent(page);
    throw new Error("not logged in");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error((body && body.error && body.error.message) || "HTTP " + response.status);
  }
  return body;
}

function range() {
  return { start: params.get("start") || "", end: params.get("end") || "" };
}

function farNote(far) {
  if (!far.routed) return "no routed requests";
  const note = num(far.far) + " of " + num(far.routed) + " routed prompts";
  return far.share >= 0.25 ? note + ": calibrate the router on your prompts (switchboard calibrate)" : note;
}

function card(testid, label, value, note) {
  return el("div", { class: "card", "data-testid": testid },
    el("div", { class: "label", text: label }),
    el("div", { class: "value", text: value }),
    el("div", { class: "note", text: note || "" }));
}

function table(testid, columns, rows) {
  const head = el("tr", {}, ...columns.map(([label, , cls]) => el("th", { class: cls, text: label })));
  const body = rows.map((row) =>
    el("tr", {}, ...columns.map(([, cell, cls]) => {
      const value = cell(row);
      return value instanceof Node ? el("td", { class: cls }, value) : el("td", { class: cls, text: value });
    })));
  return el("table", { "data-testid": testid }, el("thead", {}, head), el("tbody", {}, ...body));
}

function chart(testid, traces, layout) {
  const div = el("div", { class: "chart", "data-testid": testid });
  main.append(div);
  Plotly.newPlot(div, traces, { margin: { t: 40, r: 20, b: 50, l: 60 }, ...layout }, PLOT);
  return div;
}

function empty(testid, text) {
  return el("div", { class: "empty", "data-testid": testid, text });
}

function todayUTC() {
  return new Date().toISOString().slice(0, 10);
}

// --- pages ---------------------------------------------------------------------------------

async function overview() {
  main.append(el("h1", { text: "Overview" }));
  const today = todayUTC();
  const monthStart = today.slice(0, 8) + "01";
  const [summary, day, month, spend, budgets] = await Promise.all([
    api("/v1/analytics/summary", range()),
    api("/v1/analytics/summary", { start: today }),
    api("/v1/analytics/summary", { start: monthStart }),
    api("/v1/analytics/spend", { ...range(), group_by: "day" }),
    api("/v1/analytics/budgets"),
  ]);
  const monthly = budgets.data.filter((b) => b.period === "month");
  const monthNote = monthly.length ? "of " + usd(monthly[0].limit_usd) + " budget" : "no monthly budget";
  const saving = summary.savings;
  main.append(el("div", { class: "cards" },
    card("card-spend-today", "Spend today (UTC)", usd(day.spend_usd)),
    card("card-spend-month", "Spend this month", usd(month.spend_usd), monthNote),
    card("card-saved", "Saved vs " + saving.reference_model, usd(saving.saved_usd), pct(saving.saved_pct)),
    card("card-requests", "Requests", num(summary.requests), summary.range.start.slice(0, 10) + " to " + summary.range.end.slice(0, 10)),
    card("card-error-rate", "Error rate", pct(summary.error_rate), num(summary.errors) + " errors"),
    card("card-fallback-rate", "Fallback rate", pct(summary.fallback_rate)),
    card("card-latency", "Latency p50 / p95", num(summary.latency_ms.p50, 1) + " / " + num(summary.latency_ms.p95, 1) + " ms"),
    card("card-far-from-training", "Far from training data", pct(summary.far_from_training.share),
      farNote(summary.far_from_training)),
  ));
  if (spend.data.length) {
    chart("chart-daily-spend", [{
      type: "bar", x: spend.data.map((r) => bucketLabel(r.bucket, "day")), y: spend.data.map((r) => r.spend_usd), name: "spend",
    }], { title: { text: "Spend per day (USD)" }, xaxis: { type: "category" } });
  } else {
    main.append(empty("empty-spend", "No requests in this range."));
  }
}

async function spendPage() {
  const group = params.get("group_by") || "day";
  main.append(el("h1", { text: "Spend" }));
  const picker = el("select", { "data-testid": "group-by" },
    ...["hour", "day", "month"].map((g) => {
      const option = el("option", { value: g, text: "per " + g });
      if (g === group) option.selected = true;
      return option;
    }));
  picker.addEventListener("change", () => {
    params.set("group_by", picker.value);
    location.search = params.toString();
  });
  main.append(picker);
  const [byModel, byTenant] = await Promise.all([
    api("/v1/analytics/spend", { ...range(), group_by: group, by: "model" }),
    api("/v1/analytics/spend", { ...range(), group_by: group, by: "tenant" }),
  ]);
  if (!byModel.data.length) {
    main.append(empty("empty-spend", "No requests in this range."));
    return;
  }
  const models = [...new Set(byModel.data.map((r) => r.key))];
  chart("chart-spend-by-model", models.map((model) => {
    const rows = byModel.data.filter((r) => r.key === model);
    return { type: "bar", name: model, x: rows.map((r) => bucketLabel(r.bucket, group)), y: rows.map((r) => r.spend_usd) };
  }), { barmode: "stack", title: { text: "Spend per " + group + " by model (USD)" }, xaxis: { type: "category", categoryorder: "category ascending" } });
  const totals = {};
  for (const row of byModel.data) {
    totals[row.key] = totals[row.key] || { key: row.key, spend_usd: 0, requests: 0 };
    totals[row.key].spend_usd += row.spend_usd;
    totals[row.key].requests += row.requests;
  }
  main.append(el("h2", { text: "By model" }), table("table-spend-by-model", [
    ["model", (r) => r.key], ["requests", (r) => num(r.requests), "num"], ["spend", (r) => usd(r.spend_usd), "num"],
  ], Object.values(totals).sort((a, b) => b.spend_usd - a.spend_usd)));
  const tenants = {};
  for (const row of byTenant.data) tenants[row.key] = (tenants[row.key] || 0) + row.spend_usd;
  main.append(el("h2", { text: "By tenant" }), table("table-spend-by-tenant", [
    ["tenant", (r) => r[0]], ["spend", (r) => usd(r[1]), "num"],
  ], Object.entries(tenants)));
}

function modelsSection(models) {
  // the router's models (scored from graded answers): calibrated or not, served now or not
  const scored = models.data.filter((m) => m.switchboard && m.switchboard.routable);
  main.append(el("h2", { text: "Models the router scores" }));
  main.append(table("table-models", [
    ["model", (m) => m.id],
    ["graded prompts", (m) => num(m.switchboard.graded_prompts), "num"],
    ["calibrated", (m) => (m.switchboard.calibrated ? "yes" : "no: explores and falls back only")],
    ["served now", (m) => (m.switchboard.not_served_because ? "no: " + m.switchboard.not_served_because
      : m.switchboard.served ? "yes" : "no configured upstream")],
  ], scored));
}

async function routing() {
  main.append(el("h1", { text: "Routing" }));
  const [mix, curve, models] = await Promise.all([
    api("/v1/analytics/mix", range()), api("/v1/analytics/curve", range()), api("/v1/models"),
  ]);
  if (!mix.data.length) {
    main.append(empty("empty-mix", "No answered requests in this range."));
    modelsSection(models);
    return;
  }
  chart("chart-mix", [{
    type: "pie", labels: mix.data.map((r) => r.model + " (" + r.router + ")"), values: mix.data.map((r) => r.requests), hole: 0.4,
    // names in the legend, only the share on the slices: long model names never overlap
    textinfo: "percent", textposition: "inside", insidetextorientation: "horizontal", sort: true,
  }], { title: { text: "Share of answered requests by model (router)" }, showlegend: true,
        legend: { orientation: "v", x: 1.02, y: 0.5, font: { size: 11 } }, uniformtext: { minsize: 9, mode: "hide" } });
  main.append(table("table-mix", [
    ["model", (r) => r.model], ["router", (r) => r.router], ["requests", (r) => num(r.requests), "num"],
    ["share", (r) => pct(r.share), "num"], ["spend", (r) => usd(r.spend_usd), "num"],
  ], mix.data));
  if (curve.data.length) {
    main.append(el("h2", { text: "The router's cost-quality curve on this traffic" }));
    chart("chart-curve", [{
      type: "scatter", mode: "lines+markers", x: curve.data.map((p) => p.expected_cost_usd),
      y: curve.data.map((p) => p.expected_pass_rate), text: curve.data.map((p) => "threshold " + p.threshold),
    }], { xaxis: { title: { text: "expected cost per request (USD)" } }, yaxis: { title: { text: "expected pass rate" } } });
  }
  modelsSection(models);
}

async function quality() {
  main.append(el("h1", { text: "Quality and feedback" }));
  const q = await api("/v1/analytics/quality", range());
  if (!q.feedback) {
    main.append(empty("empty-quality", "No feedback in this range: POST /v1/feedback rates answers."));
    return;
  }
  chart("chart-feedback-by-model", [{
    type: "bar", x: q.by_model.map((r) => r.model), y: q.by_model.map((r) => r.mean),
    error_y: {
      type: "data", symmetric: false,
      array: q.by_model.map((r) => (r.ci_high === null ? 0 : r.ci_high - r.mean)),
      arrayminus: q.by_model.map((r) => (r.ci_low === null ? 0 : r.mean - r.ci_low)),
    },
  }], { title: { text: "Mean feedback by model (95 % interval)" }, yaxis: { range: [0, 1] } });
  const columns = (name) => [
    [name, (r) => r[name]], ["feedback", (r) => num(r.n), "num"], ["mean", (r) => num(r.mean, 3), "num"],
    ["95 % interval", (r) => (r.ci_low === null ? "-" : num(r.ci_low, 3) + " to " + num(r.ci_high, 3)), "num"],
  ];
  main.append(el("h2", { text: "By model" }), table("table-quality-by-model", columns("model"), q.by_model));
  main.append(el("h2", { text: "By router" }), table("table-quality-by-router", columns("router"), q.by_router));
  if (q.calibration.length) {
    main.append(el("h2", { text: "Calibration: predicted P(pass) against feedback" }));
    chart("chart-calibration", [
      { type: "scatter", mode: "markers+lines", name: "observed", x: q.calibration.map((b) => b.mean_p_pass), y: q.calibration.map((b) => b.mean_feedback), text: q.calibration.map((b) => b.n + " answers") },
      { type: "scatter", mode: "lines", name: "perfect", x: [0, 1], y: [0, 1], line: { dash: "dot" } },
    ], { xaxis: { title: { text: "P(pass)" }, range: [0, 1] }, yaxis: { title: { text: "mean feedback" }, range: [0, 1] } });
  }
}

async function budgetsPage() {
  main.append(el("h1", { text: "Budgets and alerts" }));
  const [budgets, alerts] = await Promise.all([api("/v1/analytics/budgets"), api("/v1/alerts")]);
  if (!budgets.data.length) {
    main.append(empty("empty-budgets", "No budgets: switchboard budget set --scope tenant:NAME --period month --limit-usd X"));
  } else {
    main.append(table("table-budgets", [
      ["scope", (r) => r.scope], ["period", (r) => r.period], ["limit", (r) => usd(r.limit_usd), "num"],
      ["spent", (r) => usd(r.spent_usd), "num"], ["held", (r) => usd(r.reserved_usd), "num"],
      ["projected at period end", (r) => usd(r.projected_end_usd), "num"],
      ["pacing", (r) => (r.pacing_state ? r.pacing_state.status + (r.pacing_state.threshold === null ? "" : " at " + r.pacing_state.threshold) : r.pacing ? "waiting" : "off")],
      ["alerts", (r) => num(r.alerts_sent), "num"], ["resets", (r) => (r.resets_at ? r.resets_at.slice(0, 16) : "never")],
    ], budgets.data));
    chart("chart-budgets", [
      { type: "bar", name: "spent", x: budgets.data.map((b) => b.scope + " " + b.period), y: budgets.data.map((b) => b.spent_usd) },
      { type: "bar", name: "limit", x: budgets.data.map((b) => b.scope + " " + b.period), y: budgets.data.map((b) => b.limit_usd) },
    ], { barmode: "group", title: { text: "Spend against limits (USD)" } });
  }
  main.append(el("h2", { text: "Alerts" }));
  main.append(alerts.data.length
    ? table("table-alerts", [
      ["when", (r) => r.created_at.slice(0, 19)], ["scope", (r) => r.scope], ["message", (r) => r.message],
      ["webhook", (r) => r.webhook_status || "-"], ["email", (r) => r.email_status || "-"],
    ], alerts.data)
    : empty("empty-alerts", "No alerts sent."));
}

async function experiments() {
  main.append(el("h1", { text: "Experiments" }));
  const list = await api("/v1/experiments");
  if (!list.data.length) {
    main.append(empty("empty-experiments", "No experiments yet: switchboard experiment start --name NAME --arms champion:50,heuristic:50"));
    return;
  }
  const interval = (m, f = (v) => num(v, 3)) => (m.mean === null ? "-" : f(m.mean) + (m.ci_low === null ? "" : " (" + f(m.ci_low) + " to " + f(m.ci_high) + ")"));
  list.data.forEach((x, i) => {
    main.append(el("h2", { text: x.name + ": " + x.status + (x.stop_reason ? " (" + x.stop_reason + ")" : "") }));
    const over = x.unit === "request" ? "requests" : x.unit + " means (each " + x.unit + " counts once)";
    main.append(el("p", { text: "started " + (x.started_at || "").slice(0, 19) + ", arms by " + x.unit + " (" + (x.unit === "request" ? "" : x.balance.units + " " + x.unit + "s, ") + x.balance.requests + " requests), intervals and tests over " + over + ", stop margin " + x.margin + ", at least " + x.min_feedback + " rated requests per arm" + (x.max_requests ? ", at most " + x.max_requests + " requests" : "") }));
    const diff = (d, f) => (d.diff === null ? "-" : f(d.diff) + (d.ci_low === null ? "" : " (" + f(d.ci_low) + " to " + f(d.ci_high) + ")"));
    const units = x.unit === "request" ? [] : [[x.unit + "s", (a) => num(a.units), "num"]];
    main.append(table("table-experiment-" + i, [
      ["arm", (a) => a.arm], ["router", (a) => a.router], ["share", (a) => pct(a.expected_share), "num"],
      ...units, ["requests", (a) => num(a.requests), "num"], ["explored", (a) => num(a.explored), "num"],
      ["cost per request", (a) => interval(a.cost_per_request_usd, usd), "num"],
      ["feedback (rated)", (a) => interval(a.feedback) + " (" + a.feedback_n + ")", "num"],
      ["latency ms", (a) => num(a.latency_ms.mean, 1), "num"], ["fallback rate", (a) => pct(a.fallback_rate.mean), "num"],
      ["feedback - control", (a) => (a.test ? diff(a.test.feedback_diff, (v) => num(v, 3)) : "-"), "num"],
      ["cost - control", (a) => (a.test ? diff(a.test.cost_diff_usd, (v) => num(v, 8)) : "-"), "num"],
      ["p (worse than control)", (a) => (a.test && a.test.p_worse_beyond_margin !== null ? num(a.test.p_worse_beyond_margin, 4) : "-"), "num"],
    ], x.results));
    x.warnings.forEach((w, j) => main.append(el("p", { class: "warning", "data-testid": "experiment-" + i + "-warning-" + j, text: "Warning: " + w })));
    const rated = x.results.filter((a) => a.feedback.mean !== null);
    if (rated.length) {
      chart("chart-experiment-" + i, [{
        type: "bar", x: rated.map((a) => a.arm), y: rated.map((a) => a.feedback.mean),
        error_y: { type: "data", symmetric: false, array: rated.map((a) => (a.feedback.ci_high === null ? 0 : a.feedback.ci_high - a.feedback.mean)), arrayminus: rated.map((a) => (a.feedback.ci_low === null ? 0 : a.feedback.mean - a.feedback.ci_low)) },
      }], { title: { text: "Feedback by arm (95 % interval)" }, yaxis: { range: [0, 1.1] } });
    }
  });
}

async function requestsPage() {
  const id = params.get("id");
  if (id) return requestDetail(id);
  main.append(el("h1", { text: "Requests" }));
  const status = params.get("status") || "";
  const list = await api("/v1/requests", { limit: 100, status });
  main.append(el("p", { "data-testid": "requests-summary", text: list.summary.requests + " requests, " + list.summary.errors + " errors, " + usd(list.summary.cost_usd) + " in all" }));
  if (!list.data.length) {
    main.append(empty("empty-requests", "No requests yet."));
    return;
  }
  main.append(table("table-requests", [
    ["request", (r) => el("a", { class: "request", href: "/dashboard/requests?id=" + encodeURIComponent(r.id), text: r.id.slice(0, 16) })],
    ["when", (r) => r.created_at.slice(0, 19)], ["model", (r) => r.served_model || r.chosen_model || "-"],
    ["router", (r) => r.router || "-"], ["status", (r) => r.status + " " + r.http_status],
    ["cost", (r) => usd(r.cost_usd), "num"], ["latency ms", (r) => num(r.latency_ms, 1), "num"],
  ], list.data));
}

async function requestDetail(id) {
  const r = await api("/v1/requests/" + encodeURIComponent(id));
  main.append(el("h1", { text: "Request " + r.id }));
  const fields = ["created_at", "endpoint", "requested_model", "router", "router_version", "threshold", "chosen_model", "served_model", "propensity", "attempts", "stream", "status", "http_status", "error_code", "error_message", "prompt_tokens", "completion_tokens", "cost_usd", "catalog_cost_usd", "upstream_cost_usd", "charged_usd", "spend_control", "latency_ms", "upstream_ms", "overhead_ms", "first_byte_ms"];
  const shown = (f) => {
    const v = r[f];
    if (v === null || v === undefined) return "-";
    if (f.endsWith("_usd")) return usd(v);  // never a raw float such as 0.00023894999999999998
    if (f.endsWith("_ms")) return num(v, 1);
    if (f === "propensity" || f === "threshold") return num(v, 4);
    return String(v);
  };
  main.append(table("table-request", [["field", (f) => f], ["value", shown]], fields));
  if (r.candidates && r.candidates.length) {
    main.append(el("h2", { text: "Candidates" }), table("table-candidates", [
      ["model", (c) => c.model + (c.model === r.chosen_model ? "  (chosen)" : "")],
      ["P(pass)", (c) => num(c.p_pass, 3), "num"], ["expected cost", (c) => usd(c.expected_cost_usd), "num"],
      ["graded prompts", (c) => (c.graded_prompts === undefined ? "-" : num(c.graded_prompts)), "num"],
      ["calibrated", (c) => (c.calibrated === undefined ? "-" : c.calibrated ? "yes" : "no (on a prior or few answers)")],
    ], [...r.candidates].sort((a, b) => b.p_pass - a.p_pass)));
  }
  if (r.left_out && r.left_out.length) {
    main.append(el("h2", { text: "Left out of the routing" }), table("table-left-out", [
      ["model", (m) => m.model], ["why", (m) => m.reason],
    ], r.left_out));
  }
  if (r.fallbacks && r.fallbacks.length) {
    main.append(el("h2", { text: "Fallbacks" }), table("table-fallbacks", [
      ["model", (f) => f.model], ["error", (f) => f.error], ["message", (f) => f.message || "-"],
    ], r.fallbacks));
  }
}

function login() {
  document.getElementById("range").hidden = true;
  const input = el("input", { type: "password", name: "key", placeholder: "sb-...", "data-testid": "login-key", autocomplete: "off" });
  const form = el("form", { class: "login" },
    el("h1", { text: "Log in with an API key" }),
    el("p", { text: "A tenant key shows that tenant's data; the admin key shows everyone's." }),
    input, el("button", { class: "primary", type: "submit", "data-testid": "login-submit", text: "log in" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, input.value.trim());
    try {
      await api("/v1/analytics/summary");
      const next = params.get("next");
      location.href = "/dashboard/" + (PAGES.some(([p]) => p === next) ? next : "overview");
    } catch (error) {
      showError(error.message);
    }
  });
  main.append(form);
}

// --- start -----------------------------------------------------------------------------------

const RENDER = {
  overview, spend: spendPage, routing, quality, budgets: budgetsPage, experiments, requests: requestsPage,
};

function frame() {
  const nav = document.getElementById("nav");
  for (const [name, label] of PAGES) {
    nav.append(el("a", { href: "/dashboard/" + name, class: name === page ? "active" : "", text: label }));
  }
  const form = document.getElementById("range");
  form.start.value = params.get("start") || "";
  form.end.value = params.get("end") || "";
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    for (const name of ["start", "end"]) {
      if (form[name].value) params.set(name, form[name].value);
      else params.delete(name);
    }
    location.search = params.toString();
  });
  document.getElementById("logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    location.href = "/dashboard/login";
  });
}

async function start() {
  if (page === "login") return login();
  if (!sessionStorage.getItem(KEY)) {
    location.href = "/dashboard/login?next=" + encodeURIComponent(page);
    return;
  }
  frame();
  try {
    await RENDER[page]();
    main.dataset.ready = "true";
  } catch (error) {
    showError(error.message);
    main.dataset.ready = "error";
  }
}

start();
