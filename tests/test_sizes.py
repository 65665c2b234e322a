"""The README's Table 1 at two sizes (``benchmark.studies.sizes``): rows from records, readings by rule."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from benchmark.studies.sizes import reading, sizes_markdown

RESULTS = Path(__file__).resolve().parents[1] / "leaderboards" / "results" / "mnist"


def template() -> dict:
    """A committed ``cg`` top-k record of LeNet on MNIST (test point A, no weight decay), as a valid starting point."""
    for path in sorted(RESULTS.glob("*-cg-top.json")):
        record = json.loads(path.read_text())
        config = record["task"]["config"]
        if config.get("model") == "lenet" and config.get("test_point") == "max-loss" and not config["weight_decay"]:
            return record
    raise AssertionError("no committed LeNet cg record")


def variant(preset: str, spearman: float, ceiling: float, date: str, **truth) -> dict:
    record = copy.deepcopy(template())
    record["task"]["config"]["preset"] = preset
    record["metrics"]["spearman"]["value"] = spearman
    record["metrics"]["ceiling"]["spearman"]["value"] = ceiling
    record["date"] = date
    record["run_id"] = f"{date}-{preset}"
    record["diagnostics"]["problem"].update(converged=True, gradient_norm=1e-8)
    record["ground_truth"].update({"drift_to_effect": 1.0, **truth})
    return record


def write(results: Path, *found: dict) -> Path:
    (results / "mnist").mkdir(parents=True, exist_ok=True)
    for record in found:
        (results / "mnist" / f"{record['run_id']}-cg-top.json").write_text(json.dumps(record))
    return results


def test_no_section_without_a_paper_size_record(tmp_path):
    assert sizes_markdown(write(tmp_path, variant("cpu", 0.9, 0.95, "2026-01-01T00:00:00Z"))) == []


def test_rows_and_readings_come_from_the_newest_records(tmp_path):
    results = write(
        tmp_path,
        variant("cpu", 0.1, 0.2, "2026-01-01T00:00:00Z"),  # older: replaced by the next
        variant("cpu", 0.9, 0.95, "2026-01-02T00:00:00Z"),
        variant(
            "paper",
            0.4,
            0.6,
            "2026-01-03T00:00:00Z",
            median_abs_effect=2.0**-17,
            reference_test_loss=78.5,
            cache_key={"dtype": "torch.float32"},
        ),
    )
    lines = "\n".join(sizes_markdown(results)).splitlines()
    (row,) = [line for line in lines if line.startswith("| mnist | lenet | A | no |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    n_train = f"{template()['diagnostics']['problem']['n_train']:,}"
    assert cells[4:11] == ["0.12", "0.900", "0.950", n_train, "0.400", "0.600", n_train]
    assert cells[11] == (
        "lower at the paper's size by 0.50; the seed ceiling falls too (0.95 to 0.60); "
        "paper size: median effect 1 float32 step of the test loss"
    )


def test_float64_test_losses_are_not_read_as_rounded():
    paper = variant(
        "paper",
        0.9,
        0.95,
        "2026-01-03T00:00:00Z",
        median_abs_effect=2.0**-17,
        reference_test_loss=78.5,
        cache_key={"dtype": "torch.float32"},
        test_loss_dtype="float64",
    )
    cpu = variant("cpu", 0.92, 0.95, "2026-01-02T00:00:00Z")
    assert reading(cpu, paper) == "about the same at both sizes"


def test_limits_name_a_non_stationary_optimum_and_drift():
    cpu = variant("cpu", 0.5, 0.9, "2026-01-02T00:00:00Z", drift_to_effect=250.0)
    cpu["diagnostics"]["problem"].update(converged=False, gradient_norm=2.3e-3)
    assert reading(cpu, None) == (
        "not run at the paper's size; `cpu`: optimum not stationary (|grad| 0.0023), drift 250x the median effect"
    )
