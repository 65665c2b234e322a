/* influence-bench site: draws each page's tables (Tabulator) and plots (Chart.js) from the JSON the page embeds.
   Written by `bench site` (benchmark/site); no network access, every asset is a file beside the page. */
"use strict";

const bench = { tables: {}, charts: {} };
window.bench = bench;

const payload = JSON.parse(document.getElementById("payload").textContent);
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"];

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
    "'": "&#39;" })[c]);
}

function fixed(digits) {
  return (cell) => {
    const v = cell.getValue();
    return v === null || v === undefined ? "-" : Number(v).toFixed(digits);
  };
}

function seconds(cell) {
  const v = cell.getValue();
  if (v === null || v === undefined) return "-";
  return v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(2) : v.toPrecision(2);
}

/* A correlation with its interval, drawn on [-1, 1]: the interval a line, the value a dot, the ceiling and the
   paper's figure ticks. Rows without a value show why (the record's text). */
function intervalBar(field) {
  return (cell) => {
    const row = cell.getRow().getData();
    const v = row[field];
    if (v === null || v === undefined) return `<span class="why">${esc(row[field + "_text"])}</span>`;
    const pos = (x) => Math.max(0, Math.min(100, (x + 1) * 50));
    const low = row[field + "_low"], high = row[field + "_high"];
    let marks = `<span class="zero"></span>`;
    if (low !== null && low !== undefined && high !== null && high !== undefined) {
      marks += `<span class="ci" style="left:${pos(low)}%;width:${pos(high) - pos(low)}%"></span>`;
    }
    if (field === "spearman" && row.ceiling !== null && row.ceiling !== undefined) {
      marks += `<span class="tick ceiling" style="left:${pos(row.ceiling)}%" title="ceiling ${row.ceiling.toFixed(2)}"></span>`;
    }
    if (field === "spearman" && row.paper !== null && row.paper !== undefined) {
      marks += `<span class="tick paper" style="left:${pos(row.paper)}%" title="paper ${row.paper}"></span>`;
    }
    marks += `<span class="dot" style="left:${pos(v)}%"></span>`;
    const interval = low !== null && low !== undefined ? ` <span class="ivl">[${low.toFixed(2)}, ${high.toFixed(2)}]</span>` : "";
    return `<span class="num">${v.toFixed(3)}</span>${interval}<span class="bar">${marks}</span>`;
  };
}

/* Select boxes above a table, one per field, each filtering the rows to one value (or all). */
function filterBar(table, fields, container) {
  const rows = table.getData();
  const selects = {};
  const apply = () => {
    const active = Object.entries(selects).filter(([, s]) => s.value !== "").map(([f, s]) => ({ field: f, type: "=", value: s.value }));
    table.setFilter(active);
  };
  for (const [field, title] of fields) {
    const values = [...new Set(rows.map((r) => r[field]))].sort();
    const label = document.createElement("label");
    label.textContent = title + " ";
    const select = document.createElement("select");
    select.id = "filter-" + field;
    select.innerHTML = `<option value="">all</option>` + values.map((v) => `<option>${esc(v)}</option>`).join("");
    select.addEventListener("change", apply);
    label.appendChild(select);
    container.appendChild(label);
    selects[field] = select;
  }
}

function counter(table) {
  const out = document.getElementById("row-count");
  const update = () => { if (out) out.textContent = String(table.getDataCount("active")); };
  table.on("dataFiltered", () => setTimeout(update, 0));
  table.on("tableBuilt", update);
}

function makeTable(id, rows, columns, options = {}) {
  const table = new Tabulator("#" + id, {
    data: rows,
    columns,
    layout: "fitData",
    renderVertical: "basic",
    placeholder: "No rows",
    columnDefaults: { headerSortStartingDir: "desc", tooltip: false, sorterParams: { alignEmptyValues: "bottom" } },
    ...options,
  });
  bench.tables[id] = table;
  return table;
}

function secondsText(v) {
  return v === null || v === undefined ? "-" : `${v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(2) : v.toPrecision(2)} s`;
}

function detail(row) {
  return `<div class="detail"><div><b>hyperparameters</b> ${esc(row.hyperparameters_full)}</div>` +
    `<div><b>task config</b> ${esc(row.config_full)}</div>` +
    `<div><b>Spearman</b> ${esc(row.spearman_text)} · <b>Pearson</b> ${esc(row.pearson_text)} · <b>paper</b> ` +
    `Spearman ${esc(row.paper ?? "-")}, Pearson ${esc(row.paper_pearson ?? "-")} ${esc(row.paper_source)} · ` +
    `<b>‖Δθ‖ Spearman</b> ${esc(row.param_norm_spearman_text)} · <b>iHVP residual</b> ${esc(row.ihvp_residual_text)}</div>` +
    `<div><b>prepare</b> ${secondsText(row.prepare_s)} · <b>extra models</b> ${secondsText(row.models_s)} · ` +
    `<b>query</b> ${secondsText(row.query_s)}</div>` +
    `<div><b>command</b> <code>${esc(row.command)}</code></div>` +
    `<div><b>status</b> ${esc(row.status_text)} · <b>commit</b> ${esc(row.commit)} · <b>date</b> ${esc(row.date)}</div></div>`;
}

function taskPage() {
  const table = makeTable("table-rows", payload.rows, [
    { title: "estimator", field: "estimator", frozen: true },
    { title: "configuration", field: "configuration" },
    { title: "ground truth", field: "ground_truth" },
    { title: "selection", field: "selection" },
    { title: "Spearman [95%]", field: "spearman", formatter: intervalBar("spearman"), sorter: "number", minWidth: 230 },
    { title: "ceiling", field: "ceiling", formatter: fixed(2), sorter: "number" },
    { title: "paper", field: "paper", formatter: fixed(2), sorter: "number" },
    { title: "Pearson [95%]", field: "pearson", formatter: intervalBar("pearson"), sorter: "number", minWidth: 230 },
    { title: "time (s)", field: "total_s", formatter: seconds, sorter: "number" },
    { title: "status", field: "status", tooltip: (e, cell) => cell.getRow().getData().status_text },
    { title: "hyperparameters", field: "hyperparameters", headerSort: false, maxWidth: 260,
      tooltip: (e, cell) => cell.getRow().getData().hyperparameters_full },
    { title: "record", field: "record", headerSort: false,
      formatter: (cell) => `<a href="${esc(cell.getValue())}">JSON</a>` },
    { title: "command", field: "command", headerSort: false, maxWidth: 320,
      formatter: (cell) => `<code>${esc(cell.getValue())}</code>`, tooltip: (e, cell) => cell.getValue() },
  ], {
    initialSort: [{ column: "spearman", dir: "desc" }],
    rowFormatter: (row) => {
      const holder = document.createElement("div");
      holder.className = "detail-holder";
      holder.style.display = "none";
      holder.innerHTML = detail(row.getData());
      row.getElement().appendChild(holder);
    },
  });
  table.on("rowClick", (e, row) => {
    if (e.target.closest("a")) return;
    const holder = row.getElement().querySelector(".detail-holder");
    holder.style.display = holder.style.display === "none" ? "block" : "none";
    row.normalizeHeight();
  });
  counter(table);
  table.on("tableBuilt", () => filterBar(table, [["estimator", "estimator"], ["configuration", "configuration"],
    ["ground_truth", "ground truth"], ["status", "status"]], document.getElementById("filters")));
  scatterPlot();
}

function scatterPlot() {
  const select = document.getElementById("scatter-group");
  const groups = Object.keys(payload.scatter);
  select.innerHTML = groups.map((g) => `<option>${esc(g)}</option>`).join("");
  const estimators = [...new Set(payload.rows.map((r) => r.estimator))].sort();
  const draw = () => {
    const points = payload.scatter[select.value] || [];
    const datasets = estimators.map((name, i) => ({
      label: name,
      data: points.filter((p) => p.estimator === name),
      backgroundColor: COLORS[i % COLORS.length],
      pointRadius: points.filter((p) => p.estimator === name).map((p) => (p.pareto ? 7 : 4)),
      pointStyle: points.filter((p) => p.estimator === name).map((p) => (p.pareto ? "rectRot" : "circle")),
    })).filter((d) => d.data.length);
    const front = points.filter((p) => p.pareto).sort((a, b) => a.x - b.x);
    datasets.push({ label: "Pareto front", data: front, type: "line", borderColor: "#444", borderDash: [4, 3],
      pointRadius: 0, fill: false });
    if (bench.charts.scatter) bench.charts.scatter.destroy();
    bench.charts.scatter = new Chart(document.getElementById("scatter"), {
      type: "scatter",
      data: { datasets },
      options: {
        animation: false,
        maintainAspectRatio: false,
        scales: {
          x: { type: "logarithmic", title: { display: true, text: "preparation + query (s, log scale)" } },
          y: { title: { display: true, text: "Spearman" } },
        },
        plugins: {
          tooltip: { callbacks: { label: (c) => `${c.raw.estimator ?? c.dataset.label} (${c.raw.hyperparameters ?? ""}): ` +
            `${Number(c.raw.y).toFixed(3)} in ${Number(c.raw.x).toPrecision(3)} s` } },
        },
      },
    });
  };
  select.addEventListener("change", draw);
  if (groups.length) draw();
}

function homePage() {
  makeTable("table-headline", payload.headline, [
    { title: "task", field: "task", formatter: (cell) => `<a href="${esc(cell.getRow().getData().page)}">${esc(cell.getValue())}</a>` },
    { title: "configuration", field: "configuration" },
    { title: "ground truth", field: "ground_truth" },
    { title: "best estimator", field: "estimator" },
    { title: "hyperparameters", field: "hyperparameters", maxWidth: 220, tooltip: true },
    { title: "Spearman [95%]", field: "spearman", formatter: intervalBar("spearman"), sorter: "number", minWidth: 230 },
    { title: "ceiling", field: "ceiling", formatter: fixed(2), sorter: "number" },
    { title: "paper", field: "paper", formatter: fixed(2), sorter: "number" },
    { title: "compared", field: "compared", sorter: "number" },
  ]);
  makeTable("table-claims", payload.claims, [
    { title: "section", field: "section" },
    { title: "figure", field: "figure" },
    { title: "claim", field: "claim", formatter: "textarea", width: 320 },
    { title: "paper", field: "paper", formatter: "textarea", width: 160 },
    { title: "ours", field: "ours", formatter: "textarea", width: 280 },
    { title: "agrees", field: "agrees", formatter: (cell) => `<span class="${esc(cell.getRow().getData().verdict.replace(" ", "-"))}">${esc(cell.getValue())}</span>` },
    { title: "study", field: "study", formatter: (cell) => `<a href="studies.html#study-${esc(cell.getValue())}">${esc(cell.getValue())}</a>` },
  ]);
}

function lineChart(id, rows, commits, estimators, field, label) {
  const datasets = estimators.map((name, i) => ({
    label: name,
    data: commits.map((c) => { const r = rows.find((x) => x.commit === c && x.estimator === name); return r ? r[field] : null; }),
    borderColor: COLORS[i % COLORS.length],
    backgroundColor: COLORS[i % COLORS.length],
    spanGaps: false,
  })).filter((d) => d.data.some((v) => v !== null));
  if (bench.charts[id]) bench.charts[id].destroy();
  bench.charts[id] = new Chart(document.getElementById(id), {
    type: "line",
    data: { labels: commits, datasets },
    options: {
      animation: false,
      maintainAspectRatio: false,
      scales: { y: { type: field === "spearman" ? "linear" : "logarithmic", title: { display: true, text: label } },
        x: { title: { display: true, text: "commit (oldest first)" } } },
      plugins: { title: { display: true, text: datasets.length ? label : `${label}: not in these asv results` },
        legend: { labels: { boxWidth: 10 } } },
    },
  });
}

function timingPage() {
  const rows = payload.history;
  const table = makeTable("table-timing", rows, [
    { title: "commit", field: "commit" },
    { title: "case", field: "case" },
    { title: "estimator", field: "estimator" },
    { title: "prepare (s)", field: "prepare_s", formatter: seconds, sorter: "number" },
    { title: "query (s)", field: "query_s", formatter: seconds, sorter: "number" },
    { title: "total (s)", field: "total_s", formatter: seconds, sorter: "number" },
    { title: "peak memory (MiB)", field: "peak_memory_mib", formatter: fixed(0), sorter: "number" },
    { title: "Spearman", field: "spearman", formatter: fixed(2), sorter: "number" },
  ]);
  counter(table);
  table.on("tableBuilt", () => filterBar(table, [["case", "case"], ["estimator", "estimator"], ["commit", "commit"]],
    document.getElementById("filters")));
  const select = document.getElementById("timing-case");
  const cases = [...new Set(rows.map((r) => r.case))];
  select.innerHTML = cases.map((c) => `<option>${esc(c)}</option>`).join("");
  const commits = [...new Set(rows.map((r) => r.commit))];
  const draw = () => {
    const shown = rows.filter((r) => r.case === select.value);
    const estimators = [...new Set(shown.map((r) => r.estimator))].sort();
    lineChart("timing-total", shown, commits, estimators, "total_s", "preparation + query (s)");
    lineChart("timing-memory", shown, commits, estimators, "peak_memory_mib", "peak host memory (MiB)");
    lineChart("timing-spearman", shown, commits, estimators, "spearman", "Spearman");
  };
  select.addEventListener("change", draw);
  if (cases.length) draw();
}

const PAGES = { task: taskPage, home: homePage, timing: timingPage, studies: () => {} };
PAGES[document.body.dataset.page]();
