"""``scripts/stationarity.py``'s options: bad values are one-line errors before anything is built."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "stationarity.py"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--trajectory", "70"], "--trajectory 70: expected a positive multiple of 50"),
        (["--trajectory", "-50"], "--trajectory -50: expected a positive multiple of 50"),
        (["--set", "lbfgs_dtype=float64"], "bad --set 'lbfgs_dtype=float64': expected NAME.FIELD=VALUE"),
    ],
)
def test_bad_options_are_one_line_errors_naming_the_value(args, fragment):
    result = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert fragment in result.stderr.strip().splitlines()[-1]
