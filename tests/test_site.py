"""``bench site`` in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

The site is generated twice, once from a small synthetic set of records (copies of committed records with chosen
estimators, configurations and scores, so every expected row, order and filter result is known) and once from the
committed ``leaderboards/`` (``--publish``); every page of both is opened from ``file://``. The tests check that the
tables show the expected rows, that sorting and filtering change them as expected, that the plots draw their points,
that no page logs a console error or an uncaught exception, and that no page requests anything but its own files.
Each page's screenshot goes to ``$BENCH_ARTIFACTS/site`` (CI keeps that folder), else to pytest's temporary
directory.

Without Chromium or Playwright the tests skip, except where ``CI=true``: there they fail, saying what to install.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmark.cli import main
from benchmark.contracts import records

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "leaderboards" / "results" / "iris" / "20261206T050902Z-4d6b82-cg-top.json"
LDS_TEMPLATE = REPO / "leaderboards" / "results" / "mnist-lr" / "20261206T182924Z-5a5610-cg-lds.json"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
INSTALL = "apt-get install -y chromium chromium-driver; pip install -e '.[test]' (Playwright)"

# (estimator, weight_decay, Spearman, prepare_s): the synthetic Iris rows, all with selection `top`
SYNTHETIC = [
    ("exact", 0.001, 0.95, 0.5),
    ("cg", 0.001, 0.90, 0.05),
    ("lissa", 0.001, 0.60, 2.0),
    ("exact", 0.0, 0.40, 0.5),
    ("cg", 0.0, 0.70, 0.05),
    ("lissa", 0.0, 0.20, 2.0),
]


def _chromium() -> str | None:
    for name in (os.environ.get("BENCH_CHROMIUM"), *CHROMIUM_NAMES):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _missing(what: str) -> None:
    message = f"{what}: the site's browser tests need it ({INSTALL})"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright (the Python package `playwright`) is not installed")
    executable = _chromium()
    if executable is None:
        _missing(f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}, or $BENCH_CHROMIUM)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = os.environ.get("BENCH_ARTIFACTS")
    folder = Path(base) / "site" if base else tmp_path_factory.mktemp("site-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _record(template: dict[str, Any], estimator: str, weight_decay: float, spearman: float, prepare: float, n: int):
    record = copy.deepcopy(template)
    record["run_id"] = f"20260101T00000{n}Z-{n:06x}"
    record["date"] = f"2026-01-01T00:00:0{n}+00:00"
    record["estimator"]["name"] = record["estimator"]["plugin"] = estimator
    record["estimator"]["hyperparameters"] = {"damping": 0.001}
    record["task"]["config"]["weight_decay"] = weight_decay
    record["metrics"]["spearman"].update(value=spearman, interval=[spearman - 0.1, min(spearman + 0.05, 1.0)])
    record["timings"] = {"prepare_s": prepare, "query_s": 0.01}
    record["command"] = f"bench run --task iris --set iris.weight_decay={weight_decay}"
    return record


def _synthetic(root: Path) -> Path:
    """A results directory: the six Iris rows of :data:`SYNTHETIC`, one failed Iris record and one LDS record."""
    results = root / "results"
    template = json.loads(TEMPLATE.read_text())
    made = [_record(template, *row, n=n) for n, row in enumerate(SYNTHETIC)]
    failed = _record(template, "kfac", 0.001, 0.0, 0.0, n=7)
    failed.update(status="failed", failure="synthetic failure", metrics=None, points=None)
    failed["timings"] = {"prepare_s": None, "query_s": None}
    made.append(failed)
    made.append(json.loads(LDS_TEMPLATE.read_text()))
    for record in made:
        records.write(record, results)
    assert len(records.load(results, strict=True)) == len(made)
    return results


def _build(*argv: str | Path) -> None:
    assert main(["site", *map(str, argv)]) == 0


@pytest.fixture(scope="module")
def synthetic_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    asv = root / "asv" / "vm"
    asv.mkdir(parents=True)
    committed = REPO / "leaderboards" / "asv" / "vm"
    shutil.copyfile(committed / "machine.json", asv / "machine.json")
    for path in sorted(p for p in committed.glob("*.json") if p.name != "machine.json")[:2]:  # two commits
        shutil.copyfile(path, asv / path.name)
    _build(
        "--results-dir", _synthetic(root), "--studies-dir", root / "studies", "--asv-dir", root / "asv",
        "--output", root / "site",
    )  # fmt: skip
    return root / "site"


@pytest.fixture(scope="module")
def committed_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("committed") / "site"
    _build("--publish", "--output", output)
    return output


@pytest.fixture(scope="module")
def bare_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One failed record, no study, no asv result: every page still draws (empty tables and plots say so)."""
    root = tmp_path_factory.mktemp("bare")
    failed = _record(json.loads(TEMPLATE.read_text()), "kfac", 0.001, 0.0, 0.0, n=1)
    failed.update(status="failed", failure="synthetic failure", metrics=None, points=None)
    records.write(failed, root / "results")
    _build(
        "--results-dir", root / "results", "--studies-dir", root / "studies", "--asv-dir", root / "asv",
        "--output", root / "site",
    )  # fmt: skip
    return root / "site"


class Page:
    """A page opened in the browser, with what it logged and requested."""

    def __init__(self, browser: Any, site: Path, name: str, artefacts: Path) -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto((site / name).as_uri())
        self.page.wait_for_function("window.bench !== undefined")
        self.page.screenshot(path=str(artefacts / f"{site.parent.name}-{name}.png"), full_page=True)

    def rows(self, table: str = "table-rows") -> list[str]:
        """The estimator cell of every row the table shows, top to bottom."""
        return self.page.eval_on_selector_all(
            f"#{table} .tabulator-row .tabulator-cell[tabulator-field='estimator']",
            "cells => cells.map(c => c.innerText)",
        )

    def offsite(self) -> list[str]:
        return [url for url in self.requests if not url.startswith(("file://", "data:"))]


@pytest.fixture
def open_page(browser: Any, artefacts: Path) -> Iterator[Any]:
    opened: list[Page] = []

    def make(site: Path, name: str) -> Page:
        opened.append(Page(browser, site, name, artefacts))
        return opened[-1]

    yield make
    for page in opened:
        page.page.close()


def _pages(site: Path) -> list[str]:
    return sorted(p.name for p in site.glob("*.html"))


@pytest.mark.parametrize("which", ["synthetic_site", "committed_site", "bare_site"])
def test_every_page_renders_without_errors_or_network(which: str, request: pytest.FixtureRequest, open_page) -> None:
    site: Path = request.getfixturevalue(which)
    pages = _pages(site)
    tasks = sorted(p.name for p in (site / "records").iterdir())
    assert pages == sorted(["index.html", "studies.html", "timing.html", *(f"task-{t}.html" for t in tasks)])
    for name in pages:
        page = open_page(site, name)
        assert page.errors == [], f"{name}: console errors {page.errors}"
        assert page.offsite() == [], f"{name}: requests outside the site {page.offsite()}"
        counts = page.page.evaluate(
            "Object.fromEntries(Object.entries(bench.tables).map(([k, t]) => [k, t.getDataCount('active')]))"
        )
        for table, count in counts.items():
            shown = page.page.eval_on_selector_all(f"#{table} .tabulator-row", "rows => rows.length")
            assert shown == count, f"{name}: table {table} draws {shown} of its {count} rows"
        if name.startswith("task-"):
            rows = json.loads((site / "data" / f"{name[:-5]}.json").read_text())
            assert counts == {"table-rows": len(rows)}
            for row in rows:  # every row links its record, a copy of the committed file
                assert (site / row["record"]).is_file()


def test_task_table_has_the_expected_rows(synthetic_site: Path, open_page) -> None:
    page = open_page(synthetic_site, "task-iris.html")
    # initial sort: Spearman descending; the failed record (no Spearman) last
    assert page.rows() == ["exact", "cg", "cg", "lissa", "exact", "lissa", "kfac"]
    assert page.page.inner_text("#row-count") == "7"
    spearman = page.page.eval_on_selector_all(
        "#table-rows .tabulator-cell[tabulator-field='spearman'] .num", "cells => cells.map(c => c.innerText)"
    )
    assert spearman == ["0.950", "0.900", "0.700", "0.600", "0.400", "0.200"]
    intervals = page.page.eval_on_selector_all("#table-rows .bar .ci", "bars => bars.length")
    assert intervals == 2 * 6  # Spearman and Pearson, each scored row
    failed = page.page.inner_text("#table-rows .tabulator-row:last-child")
    assert "failed" in failed


def test_sorting_changes_the_order(synthetic_site: Path, open_page) -> None:
    page = open_page(synthetic_site, "task-iris.html")
    title = "#table-rows .tabulator-col[tabulator-field='total_s'] .tabulator-col-title"
    page.page.click(title)  # descending first (headerSortStartingDir)
    assert page.rows()[:2] == ["lissa", "lissa"]
    page.page.click(title)
    assert page.rows()[:4] == ["cg", "cg", "exact", "exact"]
    page.page.click("#table-rows .tabulator-col[tabulator-field='estimator'] .tabulator-col-title")
    assert page.rows() == sorted(page.rows(), reverse=True)


def test_filtering_changes_the_rows(synthetic_site: Path, open_page) -> None:
    page = open_page(synthetic_site, "task-iris.html")
    page.page.select_option("#filter-estimator", "cg")
    assert page.rows() == ["cg", "cg"]
    assert page.page.inner_text("#row-count") == "2"
    page.page.select_option("#filter-configuration", "weight_decay=0.0")
    assert page.rows() == ["cg"]
    page.page.select_option("#filter-estimator", "")
    assert page.rows() == ["cg", "exact", "lissa"]
    page.page.select_option("#filter-configuration", "")
    page.page.select_option("#filter-status", "failed")
    assert page.rows() == ["kfac"]
    page.page.select_option("#filter-status", "")
    assert len(page.rows()) == 7


def test_a_row_shows_its_details_and_command(synthetic_site: Path, open_page) -> None:
    page = open_page(synthetic_site, "task-iris.html")
    first = "#table-rows .tabulator-row:first-child"
    assert not page.page.is_visible(f"{first} .detail-holder")
    page.page.click(f"{first} .tabulator-cell[tabulator-field='configuration']")
    detail = page.page.inner_text(f"{first} .detail-holder")
    assert "damping=0.001" in detail and "bench run --task iris --set iris.weight_decay=0.001" in detail


def test_plots_draw_every_scored_point_and_the_pareto_front(synthetic_site: Path, open_page) -> None:
    page = open_page(synthetic_site, "task-iris.html")
    groups = page.page.eval_on_selector_all("#scatter-group option", "options => options.map(o => o.value)")
    assert len(groups) == 2  # two configurations, selection top
    decayed = next(g for g in groups if g.startswith("weight_decay=0.001 "))
    page.page.select_option("#scatter-group", decayed)
    drawn = page.page.evaluate(
        "Object.fromEntries(bench.charts.scatter.data.datasets.map((d, i) => "
        "[d.label, bench.charts.scatter.getDatasetMeta(i).data.length]))"
    )
    # weight_decay=0.001: exact 0.95 in 0.51 s, cg 0.90 in 0.06 s, lissa 0.60 in 2.01 s; the front is cg, exact
    assert drawn == {"cg": 1, "exact": 1, "lissa": 1, "Pareto front": 2}
    front = page.page.evaluate("bench.charts.scatter.data.datasets.at(-1).data.map(p => p.estimator)")
    assert front == ["cg", "exact"]
    assert page.page.evaluate("bench.charts.scatter.options.scales.x.type") == "logarithmic"
    page.page.select_option("#scatter-group", next(g for g in groups if g != decayed))
    front = page.page.evaluate("bench.charts.scatter.data.datasets.at(-1).data.map(p => p.estimator)")
    assert front == ["cg"]  # cg dominates both at weight_decay=0.0

    timing = open_page(synthetic_site, "timing.html")
    cases = timing.page.eval_on_selector_all("#timing-case option", "options => options.map(o => o.value)")
    assert "iris (small)" in cases
    lines = timing.page.evaluate("bench.charts['timing-total'].data")
    assert len(lines["labels"]) == 2 and len(lines["datasets"]) > 3
    assert timing.page.locator("#table2 table").count() >= 1
    assert (synthetic_site / "data" / "timing-table2.md").read_text().startswith("<!-- generated by `bench timing`")


def test_home_page_names_the_best_estimator(synthetic_site: Path, open_page) -> None:
    page = open_page(synthetic_site, "index.html")
    best = page.page.evaluate(
        "bench.tables['table-headline'].getData().map(r => [r.task, r.configuration, r.estimator])"
    )
    assert ["iris", "weight_decay=0.001", "exact"] in best
    assert ["iris", "weight_decay=0.0", "cg"] in best
    assert any(row[0] == "mnist-lr" for row in best)


def test_downloads_hold_every_row(synthetic_site: Path) -> None:
    import pandas as pd

    table = pd.read_csv(synthetic_site / "data" / "task-iris.csv")
    assert len(table) == 7 and sorted(table["estimator"]) == ["cg", "cg", "exact", "exact", "kfac", "lissa", "lissa"]
    assert json.loads((synthetic_site / "data" / "headline.json").read_text())


def test_site_refuses_a_foreign_directory(tmp_path: Path, bench) -> None:
    (tmp_path / "mine.txt").write_text("not a site")
    result = bench("site", "--results-dir", TEMPLATE.parent.parent, "--output", tmp_path)
    assert result.code != 0 and "not written by `bench site`" in result.err
    assert (tmp_path / "mine.txt").exists()
    result = bench("site", "--publish", "--results-dir", tmp_path)
    assert result.code != 0 and "cannot be combined with --results-dir" in result.err


def test_a_missing_browser_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        _missing("no Chromium on PATH")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _missing("no Chromium on PATH")


def test_asv_own_site_is_copied_and_linked(tmp_path: Path, bench) -> None:
    """``--asv-html`` (what `asv publish` wrote) lands under asv/ and the timing page links it; a folder without
    asv's index.html is a one-line error."""
    published = tmp_path / "asv-html"
    published.mkdir()
    (published / "index.html").write_text("<html><body>asv's own site</body></html>")
    (published / "graphs").mkdir()
    (published / "graphs" / "summary.json").write_text("{}")
    results = _synthetic(tmp_path)
    _build("--results-dir", results, "--studies-dir", tmp_path / "studies", "--asv-dir", REPO / "leaderboards" / "asv",
           "--asv-html", published, "--output", tmp_path / "site")  # fmt: skip
    assert (tmp_path / "site" / "asv" / "graphs" / "summary.json").is_file()
    assert 'href="asv/index.html"' in (tmp_path / "site" / "timing.html").read_text()
    result = bench("site", "--results-dir", results, "--asv-html", tmp_path / "studies", "--output", tmp_path / "s2")
    assert result.code != 0 and "no index.html there" in result.err
