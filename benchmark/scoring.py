"""Agreement between estimated and re-trained effects.

A correlation is undefined when either side is constant or has fewer than three points; it is then recorded with the
reason (``{"value": None, "undefined": "..."}``), never as a bare NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

METHODS = {"pearson": stats.pearsonr, "spearman": stats.spearmanr}


def correlation(method: str, estimated: Sequence[float], retrained: Sequence[float]) -> dict[str, Any]:
    """Pearson or Spearman correlation as a record: ``{"value", "p_value", "n"}`` or ``{"value": None, "undefined"}``."""
    x = np.asarray(estimated, dtype=np.float64)
    y = np.asarray(retrained, dtype=np.float64)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} estimates against {len(y)} re-trained values")
    reason = None
    if len(x) < 3:
        reason = f"only {len(x)} points"
    elif not (np.isfinite(x).all() and np.isfinite(y).all()):
        reason = "non-finite values"
    elif np.ptp(y) == 0:
        reason = f"re-trained values are constant (all {y[0]:.6g})"
    elif np.ptp(x) == 0:
        reason = f"estimated values are constant (all {x[0]:.6g})"
    if reason is not None:
        return {"value": None, "undefined": reason, "n": len(x)}
    result = METHODS[method](x, y)
    value, p_value = float(result[0]), float(result[1])
    if math.isnan(value):
        return {"value": None, "undefined": "correlation is NaN (degenerate values)", "n": len(x)}
    return {"value": value, "p_value": p_value, "n": len(x)}


def correlations(estimated: Sequence[float], retrained: Sequence[float]) -> dict[str, dict[str, Any]]:
    """Both correlations, by method name."""
    return {method: correlation(method, estimated, retrained) for method in METHODS}
