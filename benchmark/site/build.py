"""Writes the static site: HTML pages whose tables and plots are drawn in the browser from data embedded in each
page, the vendored libraries that draw them, every table as CSV and JSON, the result records and the study files.

Pages (see ``docs/site.md``): ``index.html`` (the question, the best estimator per task and ground truth, the claims
with verdicts), ``task-<name>.html`` (every row of the task's leaderboard, sortable and filterable, and its accuracy
against cost), ``studies.html`` (the study figures with captions and claims), ``timing.html`` (the asv history and
the Table 2 view). The site makes no network request: every asset is a file beside the pages.
"""

from __future__ import annotations

import dataclasses
import html
import json
import shlex
import shutil
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import pluggy

from benchmark.common.errors import UsageError
from benchmark.common.provenance import git_commit
from benchmark.contracts import records
from benchmark.contracts.plugins import Registry
from benchmark.evaluation import timing as timing_module
from benchmark.site import data
from benchmark.studies import report

MARKER = ".bench-site"
"""A file in every directory ``bench site`` writes, so that it rewrites only directories it wrote."""
ASSETS = (
    "tabulator.min.js",
    "tabulator_simple.min.css",
    "tabulator.LICENSE",
    "chart.umd.min.js",
    "chart.js.LICENSE.md",
    "site.js",
    "site.css",
)
QUESTION = (
    "How well does each influence-function estimator predict what re-training without a training point actually "
    "does, on which model, at what cost?"
)


@dataclasses.dataclass
class Sources:
    """Where the site reads from: result records, study CSVs and figures, asv's results (each may be absent)."""

    results: Path
    studies: Path
    asv: Path
    asv_html: Path | None = None
    """asv's own published site (``asv publish``'s ``html_dir``), copied under ``asv/`` and linked where present."""


def _json(value: Any) -> str:
    """JSON to embed in a ``<script>`` element (no ``</script>`` can end it early)."""
    return json.dumps(value, default=str).replace("<", "\\u003c")


def _page(title: str, kind: str, body: str, payload: Mapping[str, Any], tasks: list[str]) -> str:
    nav = " · ".join(
        ['<a href="index.html">Home</a>']
        + [f'<a href="task-{html.escape(t)}.html">{html.escape(t)}</a>' for t in tasks]
        + ['<a href="studies.html">Studies</a>', '<a href="timing.html">Timing</a>']
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(title)} · influence-bench</title>",
            '<link rel="icon" href="data:,">',
            '<link rel="stylesheet" href="assets/tabulator_simple.min.css">',
            '<link rel="stylesheet" href="assets/site.css">',
            "</head>",
            f'<body data-page="{kind}">',
            f"<nav>{nav}</nav>",
            "<main>",
            body,
            "</main>",
            f'<script id="payload" type="application/json">{_json(payload)}</script>',
            '<script src="assets/tabulator.min.js"></script>',
            '<script src="assets/chart.umd.min.js"></script>',
            '<script src="assets/site.js"></script>',
            "</body>",
            "</html>",
            "",
        ]
    )


def _downloads(name: str) -> str:
    return (
        f'<p class="downloads">Download this table: <a href="data/{name}.csv" download>CSV</a> · '
        f'<a href="data/{name}.json" download>JSON</a></p>'
    )


def _write_table(output: Path, name: str, rows: list[dict[str, Any]]) -> None:
    (output / "data" / f"{name}.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
    pd.DataFrame(rows).to_csv(output / "data" / f"{name}.csv", index=False)


def _defaults(registry: Registry, task: str) -> data.Defaults:
    task_defaults = (
        dataclasses.asdict(registry.tasks[task].cls.Config()) if task in registry.tasks else None  # a plugin's task
    )
    estimators = {name: dataclasses.asdict(entry.cls.Config()) for name, entry in registry.estimators.items()}
    return data.Defaults(task_defaults, estimators)


def _prepare(output: Path) -> None:
    """Make ``output`` ready to be (re)written: empty or new, or a site this command wrote before."""
    if output.exists() and not output.is_dir():
        raise UsageError(f"site directory {output} is a file: pass --output DIR")
    if output.is_dir() and any(output.iterdir()) and not (output / MARKER).exists():
        raise UsageError(
            f"site directory {output} is not empty and was not written by `bench site`: pass --output DIR "
            "(a new or empty directory)"
        )
    for sub in ("assets", "data", "records", "studies"):
        shutil.rmtree(output / sub, ignore_errors=True)
    for old in output.glob("*.html"):
        old.unlink()
    for sub in ("assets", "data", "records", "studies"):
        (output / sub).mkdir(parents=True, exist_ok=True)
    (output / MARKER).write_text("written by `bench site`; rewritten by each run\n")


def _assets(output: Path) -> None:
    folder = resources.files("benchmark.site") / "assets"
    for name in ASSETS:
        (output / "assets" / name).write_bytes((folder / name).read_bytes())


def _records(output: Path, results: Path, task: str, found: list[dict[str, Any]]) -> None:
    target = output / "records" / task
    target.mkdir(parents=True, exist_ok=True)
    for record in found:
        name = data.record_file(record)
        source = results / task / name
        if source.is_file():
            shutil.copyfile(source, target / name)
        else:
            (target / name).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def _task_page(task: str, rows: list[dict[str, Any]], count: int, tasks: list[str]) -> str:
    body = f"""
<h1>Leaderboard: <code>{html.escape(task)}</code></h1>
<p>Every estimator x configuration x selection x ground truth of the {count} result records of this task (the latest
of repeated runs, as the Markdown leaderboard <code>leaderboards/{html.escape(task)}.md</code> shows them). Bars: the
Spearman or Pearson correlation (dot) and its 95% bootstrap interval (line) on the scale -1 to 1; the grey tick is
the noise ceiling, the red tick the paper's figure. Click a column title to sort; click a row for its full
hyperparameters, task config and command.</p>
<div class="filters" id="filters"></div>
<p class="count">Rows shown: <span id="row-count"></span></p>
<div id="table-rows"></div>
{_downloads(f"task-{task}")}
<h2>Accuracy against cost</h2>
<p>Spearman against the time one score cost (preparation, with any extra models it trained, plus the query;
seconds, log scale), one point per scored row of the chosen setting; the line joins the Pareto front (no other point
is both cheaper and more accurate). Timings come from each record, on the machine that ran it.</p>
<label>Setting <select id="scatter-group"></select></label>
<div class="plot"><canvas id="scatter"></canvas></div>
"""
    return _page(
        f"Leaderboard {task}", "task", body, {"task": task, "rows": rows, "scatter": data.scatter(rows)}, tasks
    )


def _home_page(best: list[dict[str, Any]], claims: list[dict[str, Any]], tasks: list[str], commit: str) -> str:
    links = "".join(f'<li><a href="task-{html.escape(t)}.html">{html.escape(t)}</a></li>' for t in tasks)
    body = f"""
<h1>influence-bench</h1>
<p class="question">{html.escape(QUESTION)}</p>
<p>The protocol of "Influence Functions in Deep Learning Are Fragile" (Basu, Pope, Feizi, ICLR 2021): each estimator
predicts how the loss of a test point changes when one training point is removed; leave-one-out re-training measures
it; the score is their correlation. Beside it, the linear datamodeling score (LDS) against models trained on random
halves of the training set, leave-one-out with every model trained from scratch, and the proximal Bregman response
(PBRF), the question a damped influence function answers. Generated by <code>bench site</code> at commit
<code>{html.escape(commit)}</code>.</p>
<h2>Best estimator per task and ground truth</h2>
<p>Per task configuration and ground truth: the estimator with the highest Spearman under the paper's protocol
(its own top k for leave-one-out; the datamodeling score for LDS), with its 95% bootstrap interval, the noise
ceiling and the paper's figure; <em>compared</em>: how many scored rows (estimators and hyperparameter settings)
it was chosen from.</p>
<div id="table-headline"></div>
{_downloads("headline")}
<h2>The paper's claims, measured</h2>
<p>Each verdict is computed by the rule declared with the claim in its study (<code>bench study NAME</code>), on the
study's CSV; figures and captions: <a href="studies.html">Studies</a>.</p>
<div id="table-claims"></div>
{_downloads("claims")}
<h2>Pages</h2>
<ul><li>Task leaderboards:<ul>{links}</ul></li>
<li><a href="studies.html">Study figures, captions and claims</a></li>
<li><a href="timing.html">Timing history (asv) and the paper's Table 2</a></li></ul>
"""
    return _page("Home", "home", body, {"headline": best, "claims": claims}, tasks)


def _claims(verdicts: list[Any]) -> list[dict[str, Any]]:
    from benchmark.studies.claims import rule_text

    return [
        {
            "section": v.claim.section,
            "figure": v.claim.figure,
            "claim": v.claim.text,
            "paper": v.claim.paper,
            "ours": v.measured,
            "verdict": v.verdict,
            "agrees": report.AGREES[v.verdict],
            "rule": rule_text(v.claim.rule),
            "study": v.study,
        }
        for _, vs in verdicts
        for v in sorted(vs, key=lambda v: v.claim.section)
    ]


def _studies_page(verdicts: list[Any], studies_dir: Path, output: Path, tasks: list[str]) -> str:
    for csv in sorted(studies_dir.glob("*.csv")) if studies_dir.is_dir() else []:
        shutil.copyfile(csv, output / "studies" / csv.name)
    csvs = sorted(p.name for p in (output / "studies").glob("*.csv"))
    sections = [report._study_section(study, vs, studies_dir) for study, vs in verdicts]
    body = "\n".join(
        [
            "<h1>Studies</h1>",
            "<p>Each study sweeps one setting of the paper and draws its figures (<code>bench study NAME</code>); each"
            " caption lists the claims the figure tests, with the verdict of the rule declared with the claim.</p>",
            *(sections or ["<p>No study declared.</p>"]),
            "<h2>Study data</h2>",
            "<ul>"
            + "".join(f'<li><a href="studies/{html.escape(n)}" download>{html.escape(n)}</a></li>' for n in csvs)
            + "</ul>"
            if csvs
            else "<p>No study CSV here yet.</p>",
        ]
    )
    return _page("Studies", "studies", body, {}, tasks)


def _timing_page(
    files: list[Any], history: list[dict[str, Any]], asv_dir: Path, output: Path, tasks: list[str], asv_site: bool
) -> str:
    if files:
        latest = files[-1]
        words = ["bench", "timing", "--results-dir", report._shown(str(asv_dir)), "--commit", latest.commit[:8]]
        markdown = timing_module.render(latest, shlex.join(words))
        (output / "data" / "timing-table2.md").write_text(markdown)
        table2 = report.markdown_to_html(markdown, shift=1) + (
            '<p class="downloads">Download this view: <a href="data/timing-table2.md" download>Markdown</a></p>'
        )
        commits = ", ".join(f"<code>{html.escape(f.commit[:8])}</code>" for f in files)
        intro = (
            f"<p>asv results of {len(files)} commits ({commits}) on machine "
            f"<code>{html.escape(str(files[-1].machine.get('machine', '?')))}</code>, read from "
            f"<code>{html.escape(report._shown(str(asv_dir)))}</code>. Pick a case to plot its runtime, peak host "
            "memory and Spearman at each commit, one line per estimator (a missing point: the benchmark was skipped, "
            "declined or failed at that commit). "
            + (
                'asv\'s own site of the same files: <a href="asv/index.html">asv/index.html</a> (its pages load their '
                "data over HTTP: serve the site's folder, e.g. <code>python -m http.server</code>).</p>"
                if asv_site
                else "asv's own site of the same files: <code>asv publish</code>, then <code>bench site</code> links "
                "it (docs/site.md).</p>"
            )
        )
    else:
        table2 = "<p>No asv results: run the suite (docs/timing.md).</p>"
        intro = f"<p>No asv result files under <code>{html.escape(report._shown(str(asv_dir)))}</code>.</p>"
    body = f"""
<h1>Timing history</h1>
{intro}
<label>Case <select id="timing-case"></select></label>
<div class="plots">
<div class="plot small"><canvas id="timing-total"></canvas></div>
<div class="plot small"><canvas id="timing-memory"></canvas></div>
<div class="plot small"><canvas id="timing-spearman"></canvas></div>
</div>
<div class="filters" id="filters"></div>
<p class="count">Rows shown: <span id="row-count"></span></p>
<div id="table-timing"></div>
{_downloads("timing-history")}
<section id="table2">
{table2}
</section>
"""
    return _page("Timing", "timing", body, {"history": history}, tasks)


def build(output: Path, sources: Sources, registry: Registry, pm: pluggy.PluginManager | None = None) -> dict[str, Any]:
    """Write the site into ``output``; a summary: pages, tasks, rows, asv commits, claims."""
    output = Path(output)
    tasks = sorted(p.name for p in sources.results.glob("*") if p.is_dir()) if sources.results.is_dir() else []
    found = {task: records.load(sources.results, task) for task in tasks}
    tasks = [task for task in tasks if found[task]]
    if not tasks:
        raise UsageError(f"nothing to show: no result records under {str(sources.results)!r}")
    _prepare(output)
    _assets(output)
    commit, dirty = git_commit()
    pages, best, total = [], [], 0
    for task in tasks:
        rows = data.task_rows(found[task], _defaults(registry, task))
        total += len(rows)
        best += data.headline(task, rows)
        _records(output, sources.results, task, found[task])
        _write_table(output, f"task-{task}", rows)
        (output / f"task-{task}.html").write_text(_task_page(task, rows, len(found[task]), tasks))
        pages.append(f"task-{task}.html")
    verdicts = report.all_verdicts(sources.studies, sources.results, pm=pm) if pm is not None else []
    claims = _claims(verdicts)
    _write_table(output, "headline", best)
    _write_table(output, "claims", claims)
    (output / "index.html").write_text(
        _home_page(best, claims, tasks, (commit or "unknown")[:10] + ("+dirty" if dirty else ""))
    )
    (output / "studies.html").write_text(_studies_page(verdicts, sources.studies, output, tasks))
    files = data.asv_files(sources.asv)
    history = data.timing_history(files)
    _write_table(output, "timing-history", history)
    asv_site = sources.asv_html is not None and (sources.asv_html / "index.html").is_file()
    if asv_site:
        assert sources.asv_html is not None
        shutil.copytree(sources.asv_html, output / "asv", dirs_exist_ok=True)
    (output / "timing.html").write_text(_timing_page(files, history, sources.asv, output, tasks, asv_site))
    pages = ["index.html", *pages, "studies.html", "timing.html"]
    return {"pages": pages, "tasks": tasks, "rows": total, "asv_commits": len(files), "claims": len(claims)}
