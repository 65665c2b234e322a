"""The README's headline tables: each estimator's Spearman correlation with leave-one-out re-training, per setting,
and its linear datamodeling score where a setting has one.

    python scripts/headline.py [--results-dir leaderboards/results] [--readme README.md] [--check]

Reads the committed result records (``bench run --publish`` writes them), keeps for each task configuration the
records of its newest run per built-in estimator (the paper's top-k selection; whole-model runs only, not
``layers: last`` variants, which the leaderboards list as rows of their own; not the peer libraries' adapters or other
plugins' estimators, which the task leaderboards list beside ours), and writes the table between the markers
``<!-- headline:start -->`` and ``<!-- headline:end -->`` of the README; the same for the linear datamodeling score
(selection ``lds``, with the reference another system publishes in parentheses) between ``<!-- lds:start -->`` and
``<!-- lds:end -->``, where the README has those markers. ``--check`` exits 1 if a table differs from what the
records give, so a stale headline is caught.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from benchmark.common import markdown
from benchmark.contracts import records
from benchmark.contracts.plugins import BUILTIN_PLUGINS

START, END = "<!-- headline:start -->", "<!-- headline:end -->"
LDS_START, LDS_END = "<!-- lds:start -->", "<!-- lds:end -->"
IGNORED = ("data_dir", "download")
"""Config fields that do not change what is measured."""


def setting(record: dict[str, Any]) -> str:
    """A short name of the record's task configuration, as the paper names its settings."""
    config = record["task"]["config"]
    decay = "with weight decay" if config.get("weight_decay") else "no weight decay"
    if record["task"]["name"] in ("mnist-lr", "mnist-mlp"):
        return (
            f"dattri's setting, {config.get('train_size'):,} training images, {decay}, `{config.get('preset')}` preset"
        )
    if "model" in config:
        point = {"max-loss": "A", "p50": "B"}.get(str(config.get("test_point")), str(config.get("test_point")))
        return f"{config['model']}, test point {point}, {decay}, `{config.get('preset')}` preset"
    return f"depth {config.get('depth')}, width {config.get('width')}, {config.get('activation')}, {decay}"


def newest_runs(found: list[dict[str, Any]], kind: str = "top") -> dict[tuple, dict[str, dict[str, Any]]]:
    """Per (task, configuration): the newest leave-one-out or LDS record of selection ``kind`` of each built-in
    estimator over the whole model; for ``top``, at its default number of models (``trak`` with ``models=50`` is a
    leaderboard row of its own), for ``lds`` also with more, named apart (``trak (50 models)``, as dattri's TRAK-50)."""
    out: dict[tuple, dict[str, dict[str, Any]]] = {}
    for record in sorted(found, key=lambda r: r["date"]):
        hyperparameters = record["estimator"]["hyperparameters"]
        if record["selection"]["kind"] != kind or hyperparameters.get("layers", "all") != "all":
            continue
        if record["ground_truth"].get("kind", "loo") not in ("loo", "lds"):
            continue  # the paper's leave-one-out and the LDS; the other ground truths are in the leaderboards
        name = record["estimator"]["name"]
        if hyperparameters.get("models", 1) != 1:
            if kind == "top":
                continue
            name += f" ({hyperparameters['models']} models)"
        if record["estimator"].get("plugin") not in BUILTIN_PLUGINS:
            continue
        config = tuple(sorted((k, repr(v)) for k, v in record["task"]["config"].items() if k not in IGNORED))
        precision = records.test_loss_dtype(record["ground_truth"])  # effects in float32 and float64 never share a row
        out.setdefault((record["task"]["name"], config, precision), {})[name] = record
    return out


def cell(record: dict[str, Any] | None) -> str:
    if record is None:
        return ""
    if record["status"] != "ok":
        return record["status"]
    value = record["metrics"]["spearman"]["value"]
    return "undefined" if value is None else f"{value:.2f}"


def table(results_dir: Path) -> str:
    found = records.load(results_dir)
    runs = newest_runs(found)
    estimators = sorted({name for group in runs.values() for name in group})
    header = [
        "task",
        "setting",
        *(f"`{name}`" for name in estimators),
        "ceiling",
        "paper",
        "optimum \\|grad\\|",
        "test losses",
    ]
    rows = []

    def order(item: tuple[tuple, dict[str, dict[str, Any]]]) -> tuple[str, str, str]:
        return item[0][0], setting(next(iter(item[1].values()))), item[0][2]

    for (task, _, precision), group in sorted(runs.items(), key=order):
        first = next(r for r in group.values())
        ok = [r for r in group.values() if r["status"] == "ok"]
        ceiling = ok[0]["metrics"]["ceiling"]["spearman"].get("value") if ok else None
        problem = first["diagnostics"]["problem"]
        norm = problem.get("gradient_norm")
        flag = "" if problem.get("converged") else " (not converged)"
        paper = next((r["paper"]["spearman"] for r in group.values() if (r.get("paper") or {}).get("spearman")), None)
        rows.append(
            [
                task,
                setting(first),
                *(cell(group.get(e)) for e in estimators),
                "" if ceiling is None else f"{ceiling:.2f}",
                "" if paper is None else paper,
                ("" if norm is None else f"{norm:.1e}") + flag,
                precision,
            ]
        )
    commits = sorted({r["commit"][:10] for group in runs.values() for r in group.values() if r.get("commit")})
    return "\n".join(
        [
            START,
            "<!-- generated by `python scripts/headline.py` from leaderboards/results, do not edit -->",
            "",
            markdown.table(header, rows),
            "",
            "Spearman correlation of each estimator's predicted test-loss changes with leave-one-out re-training, "
            "over its top-k training points (the paper's protocol), newest run of each setting; *ceiling*: what a "
            "noise-free estimator can reach given two ground-truth seeds; *paper*: its Spearman for the setting; "
            "*test losses*: the precision the leave-one-out effects were measured in (float64 since the ground truth "
            "evaluates them so, docs/ground-truth.md; a setting measured both ways has a row for each); runs "
            f"at commits {', '.join(commits)}. Every row, its command and its hyperparameters: "
            "[leaderboards/](leaderboards/).",
            END,
        ]
    )


def lds_table(results_dir: Path) -> str:
    """The linear datamodeling scores: per setting with ``lds`` records, each built-in estimator's score (the
    published reference, e.g. dattri's, in parentheses), and the noise ceiling."""
    runs = newest_runs(records.load(results_dir), "lds")
    estimators = sorted({name for group in runs.values() for name in group})
    header = ["task", "setting", *(f"`{name}`" for name in estimators), "ceiling", "subsets x seeds, test points"]
    rows = []
    for (task, *_), group in sorted(runs.items(), key=lambda item: (item[0][0], setting(next(iter(item[1].values()))))):
        first = next(iter(group.values()))
        ok = [r for r in group.values() if r["status"] == "ok"]
        ceiling = ok[0]["metrics"]["ceiling"]["spearman"].get("value") if ok else None
        cells = []
        for name in estimators:
            record = group.get(name)
            reference = ((record or {}).get("paper") or {}).get("spearman")
            cells.append(cell(record) + ("" if reference is None else f" ({reference:.2f})"))
        gt = first["ground_truth"]
        rows.append(
            [
                task,
                setting(first),
                *cells,
                "" if ceiling is None else f"{ceiling:.2f}",
                f"{gt['subsets']} x {gt.get('seeds', 1)}, {gt['test_points']}",
            ]
        )
    commits = sorted({r["commit"][:10] for group in runs.values() for r in group.values() if r.get("commit")})
    return "\n".join(
        [
            LDS_START,
            "<!-- generated by `python scripts/headline.py` from leaderboards/results, do not edit -->",
            "",
            markdown.table(header, rows) if rows else "No linear-datamodeling record yet.",
            "",
            "Linear datamodeling score (`bench run --truth lds`): per test point, the Spearman correlation over random "
            "half-size subsets of the training set between the estimator's summed predictions and the test loss of "
            "models trained from scratch on them, averaged over the test points; in parentheses the score dattri "
            "publishes for its implementation in the same setting (read off its charts); *ceiling*: from two "
            f"training seeds; runs at commits {', '.join(commits) or '-'}. Details: "
            "[docs/ground-truth.md](docs/ground-truth.md) and the task leaderboards.",
            LDS_END,
        ]
    )


def replace_block(text: str, start: str, end: str, block: str) -> str:
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    return before + block + after


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=Path("leaderboards") / "results")
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's table is stale")
    args = parser.parse_args()
    text = args.readme.read_text()
    if START not in text or END not in text:
        print(f"headline: {args.readme} has no {START} ... {END} block", file=sys.stderr)
        return 2
    updated = replace_block(text, START, END, table(args.results_dir))
    if LDS_START in updated and LDS_END in updated:
        updated = replace_block(updated, LDS_START, LDS_END, lds_table(args.results_dir))
    if args.check:
        if updated != text:
            print(f"headline: the table in {args.readme} is stale: run python scripts/headline.py", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
