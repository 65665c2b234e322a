"""An example reporting plugin: adds ``--csv PATH`` to ``bench run`` and appends one row per finished result.

``bench run --task iris -p examples.csv_export --csv results.csv``
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from benchmark import hookimpl

FIELDS = ("run_id", "task", "estimator", "selection", "status", "pearson", "spearman")


class CsvExporter:
    """Appends each finished result to ``path``; registered at configure time only when ``--csv`` is given."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @hookimpl
    def bench_report_result(self, record: dict[str, Any]) -> None:
        metrics = record.get("metrics") or {}
        row = {
            "run_id": record["run_id"],
            "task": record["task"]["name"],
            "estimator": record["estimator"]["name"],
            "selection": record["selection"]["kind"],
            "status": record["status"],
            "pearson": (metrics.get("pearson") or {}).get("value"),
            "spearman": (metrics.get("spearman") or {}).get("value"),
        }
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)


@hookimpl
def bench_addoption(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--csv", type=Path, help="append one row per result to this CSV file")


@hookimpl
def bench_configure(config: Any) -> None:
    if getattr(config.options, "csv", None) is not None:
        config.pluginmanager.register(CsvExporter(config.options.csv), name="csv-exporter")
