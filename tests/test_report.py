"""``bench report``: a well-formed, self-contained HTML page whose every figure exists, and the claims table."""

from __future__ import annotations

import base64
import html.parser
from pathlib import Path

import pytest

from benchmark.common.errors import UsageError
from benchmark.studies.declaration import available, load_study
from benchmark.studies.report import BANNER, markdown_to_html, render
from tests.test_study import write_study

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Structure(html.parser.HTMLParser):
    """Checks nesting while parsing; collects ids, images, figures and links."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.counts: dict[str, int] = {}
        self.ids: list[str] = []
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.doctype = False
        self.figures: list[list[str]] = []

    def handle_decl(self, decl: str) -> None:
        self.doctype = self.doctype or decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if "id" in values:
            self.ids.append(values["id"])
        if tag == "img":
            self.images.append(values)
        if tag == "a":
            self.links.append(values.get("href", ""))
        if tag == "figure":
            self.figures.append([])
        if self.figures and tag in ("img", "figcaption"):
            self.figures[-1].append(tag)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
            return
        self.stack.pop()


def parse(page: str) -> Structure:
    parser = Structure()
    parser.feed(page)
    parser.close()
    assert parser.doctype, "no <!DOCTYPE html>"
    assert not parser.errors, parser.errors
    assert not parser.stack, f"unclosed: {parser.stack}"
    for tag in ("html", "head", "body", "title"):
        assert parser.counts.get(tag) == 1, tag
    assert len(parser.ids) == len(set(parser.ids)), "duplicate ids"
    for link in parser.links:
        if link.startswith("#"):
            assert link[1:] in parser.ids, f"dangling link {link}"
        assert not link.startswith(("http://", "https://")), f"the page must not need the network: {link}"
    return parser


@pytest.fixture
def tiny_outputs(bench, tmp_path: Path) -> tuple[Path, Path]:
    """A declarations directory with the tiny study, and its results directory after one run."""
    declarations = tmp_path / "declared"
    declarations.mkdir()
    path = write_study(declarations)
    studies = tmp_path / "leaderboards" / "studies"
    result = bench(
        "study", path, "--seeds", "0", "--output-dir", studies, "--cache-dir", tmp_path / "cache", "--no-progress"
    )
    assert result.code == 0, result.err
    return declarations, studies


def test_page_is_well_formed_and_every_figure_exists(tiny_outputs: tuple[Path, Path], tmp_path: Path) -> None:
    declarations, studies = tiny_outputs
    boards = studies.parent
    (boards / "iris.md").write_text(
        "<!-- generated -->\n# Leaderboard: `iris`\n\n- a <b>bullet</b>\n\n"
        "| estimator | Spearman |\n|---|---|\n| `exact` | 0.97 |\n"
    )
    page, readme = render(boards, studies, tmp_path / "no-results", declarations)
    parser = parse(page)
    for section in (
        "claims",
        "studies",
        "leaderboards",
        "timings",
        "study-tiny",
        "fig-tiny-spearman",
        "fig-tiny-norms",
        "board-iris",
    ):
        assert section in parser.ids, section
    assert len(parser.images) == 2
    for image in parser.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        figure = studies / image["data-file"]
        assert figure.exists(), figure
        assert base64.b64decode(image["src"][len(prefix) :]) == figure.read_bytes()
        assert image["alt"]
    assert parser.figures == [["img", "figcaption"], ["img", "figcaption"]]
    assert "a caption for the report" in page
    assert "falls with depth" in page and ("agrees" in page or "disagrees" in page or "not evaluable" in page)
    assert "&lt;b&gt;bullet&lt;/b&gt;" in page and "<b>bullet" not in page  # leaderboard text is escaped
    assert parser.counts.get("table", 0) >= 2  # the claims table and the leaderboard's
    assert "Missing" in page and "timing.md" in page
    assert readme.startswith(BANNER)
    assert "| 5.1 | Fig. 1c | falls with depth | falls |" in readme


def test_timings_are_included_when_present(tiny_outputs: tuple[Path, Path], tmp_path: Path) -> None:
    declarations, studies = tiny_outputs
    (studies.parent / "timing.md").write_text(
        "# Table 2\n\n| arch | ours s | paper s |\n|---|---|---|\n| LeNet | 1.5 | 162.6 |\n"
    )
    page, _ = render(studies.parent, studies, tmp_path / "none", declarations)
    parse(page)
    assert "162.6" in page and "Missing" not in page


def test_a_study_without_results_is_not_run(tmp_path: Path) -> None:
    page, readme = render(tmp_path / "boards", tmp_path / "studies", tmp_path / "results")
    parser = parse(page)
    assert not parser.images
    claims = [claim for path in available().values() for _, claim in load_study(path).claims()]
    table, side_by_side = readme.split("## Each claim under each ground truth")
    rows = [line for line in table.splitlines() if line.startswith("| 5.")]
    assert len(rows) == len(claims)
    assert all(line.split(" | ")[5] == "not run" for line in rows)
    sections = {line.split(" | ")[0][2:] for line in rows}
    assert sections == {claim.section for claim in claims} and {"5.1", "5.2", "5.3"} <= sections
    # the shipped restatements: the depth claim (ReLU, weight decay) is read under four ground truths
    head = next(line for line in side_by_side.splitlines() if line.startswith("| section"))
    assert head.endswith("| `loo` | `lds` | `pbrf` | `loo-scratch` |")
    depth = next(line for line in side_by_side.splitlines() if "falls with depth (ReLU, weight decay)" in line)
    assert depth.split(" | ")[4:] == ["not run: no results"] * 3 + ["not run: no results |"]
    restated = {claim.restates for path in available().values() for _, claim in load_study(path).claims()}
    assert len([line for line in side_by_side.splitlines() if line.startswith("| 5.")]) == len(restated - {None})


def test_a_claim_restating_an_undeclared_one_is_a_one_line_error(tmp_path: Path) -> None:
    declarations = tmp_path / "declared"
    declarations.mkdir()
    path = write_study(declarations)
    text = path.read_text()
    assert "paper: falls," in text
    path.write_text(text.replace("paper: falls,", "paper: falls, restates: no-such-study/depth,", 1))
    with pytest.raises(UsageError, match=r"restates 'no-such-study/depth', which no study declares"):
        render(tmp_path / "boards", tmp_path / "studies", tmp_path / "results", declarations)


def test_claims_fall_back_to_result_records(bench, tmp_path: Path, tiny) -> None:
    """Without a study CSV, a study's claims are decided on the matching records of `bench run` (as for MNIST), once
    the records cover every point a claim reads."""
    declarations = tmp_path / "declared"
    declarations.mkdir()
    write_study(declarations)
    results = tmp_path / "results"

    def run(depth: int, activation: str) -> None:
        result = bench(
            "run",
            "--task",
            "iris",
            "--estimator",
            "exact",
            "--selection",
            "top",
            "--set",
            "iris.width=4",
            "--set",
            f"iris.depth={depth}",
            "--set",
            f"iris.activation={activation}",
            "--set",
            "iris.train_steps=400",
            "--set",
            "iris.retrain_steps=60",
            "--cache-dir",
            tmp_path / "cache",
            "--results-dir",
            results,
            "--no-progress",
            "--no-leaderboard",
        )
        assert result.code == 0, result.err

    def claim_row() -> list[str]:
        _, readme = render(tmp_path / "boards", tmp_path / "studies", results, declarations)
        (row,) = [line for line in readme.splitlines() if line.startswith("| 5.1 | Fig. 1c")]
        return row.split(" | ")

    run(1, "relu")
    run(2, "relu")
    bench(
        "run",
        "--task",
        "iris",
        "--estimator",
        "exact",
        "--selection",
        "top",
        *tiny,
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        results,
        "--no-leaderboard",
    )  # width 5: not a point of the study
    row = claim_row()
    assert row[5] == "not run" and "cover 2 of the 4 points" in row[4] and "(2 records)" in row[7]
    run(1, "tanh")
    run(2, "tanh")
    row = claim_row()
    assert "(4 records)" in row[7]
    assert row[5] == "not evaluable" and "only 2 x values" in row[4]  # two depths: too few for a trend


def test_report_command_writes_both_files(bench, tmp_path: Path) -> None:
    output, readme = tmp_path / "out" / "report.html", tmp_path / "README.md"
    result = bench(
        "report",
        "--output",
        output,
        "--readme",
        readme,
        "--studies-dir",
        tmp_path / "s",
        "--leaderboards-dir",
        tmp_path / "b",
        "--results-dir",
        tmp_path / "r",
    )
    assert result.code == 0, result.err
    parse(output.read_text())
    assert readme.read_text().startswith(BANNER)


def test_markdown_subset() -> None:
    out = markdown_to_html("# Title\n\nSome `code` and **bold** [link](#x).\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert "<h2>Title</h2>" in out and "<code>code</code>" in out and "<strong>bold</strong>" in out
    assert '<a href="#x">link</a>' in out and "<td>1</td><td>2</td>" in out and "<th>a</th>" in out


def test_claims_table_names_sources_relative_to_where_it_is_made(tmp_path: Path, monkeypatch) -> None:
    """A committed claims table names no absolute path of the machine that made it: sources under the checkout or the
    working directory are shown relative to it; others as they are."""
    from benchmark.common.paths import PUBLISHED_DIR
    from benchmark.studies.report import _shown

    assert _shown(f"{PUBLISHED_DIR}/studies/iris-depth.csv") == "leaderboards/studies/iris-depth.csv"
    monkeypatch.chdir(tmp_path)
    assert _shown(f"{tmp_path.resolve()}/results/mnist (3 records)") == "results/mnist (3 records)"
    assert _shown("/elsewhere/studies/x.csv") == "/elsewhere/studies/x.csv"
