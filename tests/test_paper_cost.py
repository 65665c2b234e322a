"""The table of what Table 1's rows cost at another preset, stage by stage (``scripts/paper_cost.py``)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "paper_cost.py"


def test_each_stage_is_its_timed_unit_times_the_preset_schedule(tmp_path):
    config = tmp_path / "mnist-small-cnn.yaml"
    config.write_text("task: mnist\nmnist: {preset: cpu, model: small-cnn, weight_decay: 0.001}\n")
    output = tmp_path / "cost.md"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(config), "--preset", "smoke", "--steps", "2", "--output", str(output)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in output.read_text().splitlines() if line.startswith("| `mnist-small-cnn.yaml`")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:6] == ["mnist", "small-cnn", "0.001", "128", "2,616"]
    # the smoke preset: 60 SGD steps and two phases of 10; L-BFGS capped at 200; re-training 6% of 80 steps
    assert cells[7].endswith("(80 steps)")
    assert cells[9].endswith("(200 iterations)")
    assert cells[14].endswith("(80 x 5 steps)")
    assert re.fullmatch(r"\d+ (s|min)|\d+\.\d h", cells[12]), cells[12]  # 2,616 parameters: within exact's limit


def test_bad_options_are_one_line_errors_naming_the_value():
    for args, fragment in (
        (["--steps", "0"], "--steps 0: expected a positive number of SGD steps"),
        (["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    ):
        result = subprocess.run(
            [sys.executable, str(SCRIPT), *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        )
        assert result.returncode == 2
        assert fragment in result.stderr.strip().splitlines()[-1]
