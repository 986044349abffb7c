// The admin console: flags to review, usage with a chart, access rules, channel settings and
// conversation search. Everything from the server is shown with textContent, never as HTML.
import { api, h, show, signIn, when } from "./common.js";

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
const SVG = "http://www.w3.org/2000/svg";

const signOut = signIn({
  elements: {
    form: $("sign-in"),
    input: $("key"),
    error: $("sign-in-error"),
    signOut: $("sign-out"),
    who: $("who"),
  },
  accept: (me) =>
    me.admin
      ? null
      : `An admin key is needed for the console: the key of ${me.name} is not an admin key.`,
  onSignedIn: start,
  onSignedOut: () => {
    show($("console"), false);
    show($("nav"), false);
  },
});

let personas = [];

async function start() {
  show($("console"), true);
  show($("nav"), true);
  await Promise.all([
    loadFlags(),
    loadUsage(),
    loadRules(),
    api("/api/v1/personas").then(
      (answer) => (personas = answer.personas.map((p) => p.name)),
      () => {},
    ),
  ]);
}

// An error in one section: shown at its top; a 401 signs out.
function sectionError(section, error) {
  let p = section.querySelector(":scope > p.error");
  if (!p) {
    p = h("p", { className: "error", role: "alert" });
    section.querySelector("h2").after(p);
  }
  if (error && error.status === 401) {
    signOut("Your key is no longer accepted. Sign in again.");
    return;
  }
  p.textContent = error ? error.message : "";
  show(p, Boolean(error));
}

// Runs `work` for a section, showing its error there.
async function guarded(section, work) {
  try {
    await work();
    sectionError(section, null);
  } catch (e) {
    sectionError(section, e);
  }
}

const cell = (text, className) => h("td", { className, textContent: text ?? "" });

// --- flags ---------------------------------------------------------------------------------

const flagsSection = $("flags");
const flagsBody = $("flags-table").querySelector("tbody");

function loadFlags() {
  return guarded(flagsSection, async () => {
    const review = $("flags-review").value;
    const answer = await api(`/api/v1/admin/flags?review=${enc(review)}&limit=50`);
    flagsBody.replaceChildren(...answer.flags.map(flagRow));
    show($("flags-table"), answer.flags.length > 0);
    show($("flags-empty"), answer.flags.length === 0);
  });
}

function flagRow(flag) {
  const where = [flag.platform, flag.workspace, flag.channel].filter(Boolean).join(" / ");
  const review = h("td", { className: "review" });
  if (flag.review) {
    const by = flag.reviewed_by ? ` by ${flag.reviewed_by}` : "";
    const at = flag.reviewed_at ? `, ${when(flag.reviewed_at)}` : "";
    review.textContent = `${flag.review}${by}${at}`;
  } else {
    const decide = (decision) => async (event) => {
      for (const b of review.querySelectorAll("button")) b.disabled = true;
      await guarded(flagsSection, async () => {
        const updated = await api(`/api/v1/admin/flags/${enc(flag.id)}/review`, {
          method: "POST",
          body: { decision },
        });
        row.replaceWith(flagRow(updated));
      });
      if (event.target.isConnected) {
        for (const b of review.querySelectorAll("button")) b.disabled = false;
      }
    };
    review.append(
      h("button", { type: "button", textContent: "Dismiss", onclick: decide("dismiss") }),
      " ",
      h("button", { type: "button", textContent: "Confirm", onclick: decide("confirm") }),
    );
  }
  const row = h(
    "tr",
    { className: flag.review ? "reviewed" : "", dataset: { id: flag.id } },
    cell(when(flag.created_at)),
    cell(flag.user),
    cell(where),
    cell(flag.direction),
    cell(flag.action),
    cell((flag.categories || []).join(", ")),
    cell(flag.excerpt, "text"),
    review,
  );
  return row;
}

$("flags-form").addEventListener("submit", (event) => {
  event.preventDefault();
  loadFlags();
});
$("flags-review").addEventListener("change", () => loadFlags());

// --- usage ---------------------------------------------------------------------------------

const usageSection = $("usage");
let usageRows = [];
let metricChosen = false;

function loadUsage() {
  return guarded(usageSection, async () => {
    const days = Number($("usage-days").value);
    const answer = await api(`/api/v1/admin/usage?days=${days}`);
    usageRows = answer.days;
    if (!metricChosen) {
      // Cost is unknown (0) for models without a price: chart tokens then.
      const cost = usageRows.reduce((sum, r) => sum + (r.cost_usd || 0), 0);
      const tokens = usageRows.reduce((sum, r) => sum + tokensOf(r), 0);
      $("usage-metric").value = cost === 0 && tokens > 0 ? "tokens" : "cost";
    }
    renderUsageTable();
    renderChart(days);
  });
}

const tokensOf = (r) => (r.prompt_tokens || 0) + (r.completion_tokens || 0);
const USD = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
// Small costs keep two significant digits: $0.000036, not $0.00.
const USD_SMALL = new Intl.NumberFormat("en-US", {
  style: "currency",
  currency: "USD",
  maximumSignificantDigits: 2,
});
const money = (value) => {
  if (value == null) return "";
  const number = Number(value);
  return number > 0 && number < 0.01 ? USD_SMALL.format(number) : USD.format(number);
};
const count = (value) => (value == null ? "" : Number(value).toLocaleString());

function renderUsageTable() {
  const rows = [...usageRows].sort(
    (a, b) => String(b.day).localeCompare(String(a.day)) || String(a.user).localeCompare(b.user),
  );
  const table = $("usage-table");
  table.tBodies[0].replaceChildren(
    ...rows.map((r) =>
      h(
        "tr",
        {},
        cell(r.day),
        cell(r.user),
        cell(r.platform),
        cell(count(r.calls), "num"),
        cell(count(r.prompt_tokens), "num"),
        cell(count(r.completion_tokens), "num"),
        cell(money(r.cost_usd), "num"),
      ),
    ),
  );
  const total = (name) => rows.reduce((sum, r) => sum + (r[name] || 0), 0);
  table.tFoot.replaceChildren(
    h(
      "tr",
      {},
      h("th", { textContent: "Total", colSpan: 3 }),
      cell(count(total("calls")), "num"),
      cell(count(total("prompt_tokens")), "num"),
      cell(count(total("completion_tokens")), "num"),
      cell(money(total("cost_usd")), "num"),
    ),
  );
  show(table, rows.length > 0);
  show($("usage-empty"), rows.length === 0);
}

// The last `days` UTC days, oldest first, as YYYY-MM-DD.
function dayRange(days) {
  const today = new Date();
  const result = [];
  for (let n = days - 1; n >= 0; n -= 1) {
    const day = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - n));
    result.push(day.toISOString().slice(0, 10));
  }
  return result;
}

function svg(tag, attributes = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

// A bar per day of the chosen metric, drawn as inline SVG.
function renderChart(days) {
  const metric = $("usage-metric").value;
  const value = {
    cost: (r) => r.cost_usd || 0,
    tokens: tokensOf,
    calls: (r) => r.calls || 0,
  }[metric];
  const label = { cost: money, tokens: count, calls: count }[metric];
  const totals = new Map(dayRange(days).map((d) => [d, 0]));
  for (const r of usageRows) totals.set(String(r.day), (totals.get(String(r.day)) || 0) + value(r));
  const series = [...totals.entries()].sort(([a], [b]) => a.localeCompare(b));

  const width = 720;
  const height = 220;
  const left = 70;
  const bottom = 28;
  const top = 12;
  const plotWidth = width - left - 10;
  const plotHeight = height - top - bottom;
  const max = Math.max(...series.map(([, v]) => v), 0);
  const scale = max > 0 ? plotHeight / max : 0;
  const slot = plotWidth / Math.max(series.length, 1);
  const sum = series.reduce((s, [, v]) => s + v, 0);
  const names = { cost: "Cost", tokens: "Tokens", calls: "Model calls" };

  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart",
    role: "img",
    "aria-label": `${names[metric]} per day over the last ${days} days: ${label(sum)} in all`,
  });
  chart.append(
    svg("line", { x1: left, y1: top + plotHeight, x2: width - 10, y2: top + plotHeight, class: "axis" }),
    svg("line", { x1: left, y1: top, x2: left, y2: top + plotHeight, class: "axis" }),
    svg("text", { x: left - 6, y: top + 4, "text-anchor": "end" }, label(max)),
    svg("text", { x: left - 6, y: top + plotHeight, "text-anchor": "end" }, label(0)),
  );
  series.forEach(([day, v], n) => {
    const barHeight = v * scale;
    const bar = svg("rect", {
      x: (left + n * slot + slot * 0.15).toFixed(1),
      y: (top + plotHeight - barHeight).toFixed(1),
      width: Math.max(slot * 0.7, 1).toFixed(1),
      height: barHeight.toFixed(1),
      class: "bar",
      "data-day": day,
      "data-value": v,
    });
    bar.append(svg("title", {}, `${day}: ${label(v)}`));
    chart.append(bar);
  });
  const ticks = new Set([0, Math.floor((series.length - 1) / 2), series.length - 1]);
  for (const n of ticks) {
    if (!series[n]) continue;
    chart.append(
      svg(
        "text",
        {
          x: (left + n * slot + slot / 2).toFixed(1),
          y: height - 8,
          "text-anchor": n === 0 ? "start" : n === series.length - 1 ? "end" : "middle",
        },
        series[n][0],
      ),
    );
  }
  $("usage-chart").replaceChildren(chart);
}

$("usage-form").addEventListener("submit", (event) => {
  event.preventDefault();
  loadUsage();
});
$("usage-days").addEventListener("change", () => loadUsage());
$("usage-metric").addEventListener("change", () => {
  metricChosen = true;
  renderChart(Number($("usage-days").value));
});

// --- access rules --------------------------------------------------------------------------

const accessSection = $("access");

function loadRules() {
  return guarded(accessSection, async () => {
    const answer = await api("/api/v1/admin/access-rules");
    $("rules-table").tBodies[0].replaceChildren(...answer.rules.map(ruleRow));
    show($("rules-table"), answer.rules.length > 0);
    show($("rules-empty"), answer.rules.length === 0);
  });
}

function ruleRow(rule) {
  const remove = h("button", {
    type: "button",
    textContent: "Remove",
    "aria-label": `Remove ${rule.list} ${rule.kind} ${rule.value}`,
    onclick: () =>
      guarded(accessSection, async () => {
        await api("/api/v1/admin/access-rules", { method: "DELETE", body: rule });
        await loadRules();
      }),
  });
  return h(
    "tr",
    {},
    cell(rule.platform || "all"),
    cell(rule.kind),
    cell(rule.value),
    cell(rule.list),
    h("td", {}, remove),
  );
}

$("rule-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const rule = {
    platform: $("rule-platform").value.trim(),
    kind: $("rule-kind").value,
    value: $("rule-value").value.trim(),
    list: $("rule-list").value,
  };
  guarded(accessSection, async () => {
    await api("/api/v1/admin/access-rules", { method: "POST", body: rule });
    $("rule-value").value = "";
    await loadRules();
  });
});

// --- channel settings ----------------------------------------------------------------------

const channelsSection = $("channels");
let channelPath = null;
let loadedSettings = null;

// How each known field is edited; a field the server adds later is edited as JSON.
const FIELDS = {
  persona: { kind: "persona", label: "Persona" },
  scope: { kind: "choice", label: "Scope", choices: ["thread", "channel", "user"] },
  tools: { kind: "list", label: "Tools (comma-separated; “none” for no tools)" },
  buffer_output: { kind: "bool", label: "Buffer output" },
  merge_queued: { kind: "bool", label: "Merge queued messages" },
  require_mention: { kind: "bool", label: "Require a mention" },
  user_rpm: { kind: "int", label: "Requests per user per minute" },
  user_tokens_per_day: { kind: "int", label: "Tokens per user per day" },
};

$("channel-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const parts = ["channel-platform", "channel-workspace", "channel-channel"].map((id) =>
    $(id).value.trim(),
  );
  channelPath = `/api/v1/admin/channels/${parts.map(enc).join("/")}`;
  $("settings-status").textContent = "";
  guarded(channelsSection, async () => {
    renderSettings(await api(channelPath));
  });
});

function renderSettings(settings) {
  loadedSettings = settings;
  const fields = $("settings-fields");
  fields.replaceChildren();
  for (const [name, value] of Object.entries(settings)) {
    const spec = FIELDS[name] || { kind: "json", label: name };
    const id = `setting-${name}`;
    let input;
    if (spec.kind === "bool") {
      input = h(
        "select",
        {},
        h("option", { value: "", textContent: "default" }),
        h("option", { value: "true", textContent: "yes" }),
        h("option", { value: "false", textContent: "no" }),
      );
      input.value = value === null ? "" : String(value);
    } else if (spec.kind === "choice" || spec.kind === "persona") {
      const choices = spec.kind === "persona" ? [...personas] : [...spec.choices];
      if (value !== null && !choices.includes(value)) choices.push(value);
      input = h(
        "select",
        {},
        h("option", { value: "", textContent: "default" }),
        ...choices.map((c) => h("option", { value: c, textContent: c })),
      );
      input.value = value ?? "";
    } else if (spec.kind === "int") {
      input = h("input", { type: "number", min: "0", step: "1", placeholder: "default" });
      input.value = value ?? "";
    } else if (spec.kind === "list") {
      input = h("input", { type: "text", placeholder: "default" });
      input.value = value === null ? "" : value.length ? value.join(", ") : "none";
    } else {
      input = h("input", { type: "text", placeholder: "default (JSON)" });
      input.value = value === null ? "" : JSON.stringify(value);
    }
    input.id = id;
    input.name = name;
    input.dataset.kind = spec.kind;
    fields.append(h("label", { for: id, textContent: spec.label }), input);
  }
  show($("settings-form"), true);
}

function fieldValue(input) {
  const raw = input.value.trim();
  if (raw === "" || raw === "default") return null;
  switch (input.dataset.kind) {
    case "bool":
      return raw === "true";
    case "int":
      return Number.parseInt(raw, 10);
    case "list":
      return raw === "none" ? [] : raw.split(",").map((s) => s.trim()).filter(Boolean);
    case "json":
      return JSON.parse(raw);
    default:
      return raw;
  }
}

$("settings-form").addEventListener("submit", (event) => {
  event.preventDefault();
  guarded(channelsSection, async () => {
    const changes = {};
    for (const input of $("settings-fields").querySelectorAll("input, select")) {
      let value;
      try {
        value = fieldValue(input);
      } catch {
        throw new Error(`${input.name}: not valid JSON`);
      }
      if (JSON.stringify(value) !== JSON.stringify(loadedSettings[input.name])) {
        changes[input.name] = value;
      }
    }
    if (!Object.keys(changes).length) {
      $("settings-status").textContent = "Nothing changed.";
      return;
    }
    renderSettings(await api(channelPath, { method: "PATCH", body: changes }));
    $("settings-status").textContent = `Saved: ${Object.keys(changes).join(", ")}.`;
  });
});

// --- search --------------------------------------------------------------------------------

const searchSection = $("search");

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const q = $("search-q").value.trim();
  if (!q) return;
  guarded(searchSection, async () => {
    const answer = await api(`/api/v1/admin/search?q=${enc(q)}&limit=50`);
    $("search-table").tBodies[0].replaceChildren(
      ...answer.results.map((r) =>
        h(
          "tr",
          {},
          cell(when(r.created_at)),
          cell(r.platform),
          cell(r.user),
          cell(r.role),
          cell(r.conversation),
          cell(r.content, "text"),
        ),
      ),
    );
    show($("search-table"), answer.results.length > 0);
    show($("search-empty"), answer.results.length === 0);
  });
});
