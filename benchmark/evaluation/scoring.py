"""Agreement between estimated and re-trained effects.

A correlation is undefined when either side is constant or has fewer than three points; it is then recorded with the
reason (``{"value": None, "undefined": "..."}``), never as a bare NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

METHODS = {"pearson": stats.pearsonr, "spearman": stats.spearmanr}


def correlation(method: str, estimated: Sequence[float], retrained: Sequence[float]) -> dict[str, Any]:
    """Pearson or Spearman correlation as a record: ``{"value", "p_value", "n"}``, or
    ``{"value": None, "undefined"}``."""
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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", stats.NearConstantInputWarning)
        result = METHODS[method](x, y)
    value, p_value = float(result[0]), float(result[1])
    if math.isnan(value):
        return {"value": None, "undefined": "correlation is NaN (degenerate values)", "n": len(x)}
    record: dict[str, Any] = {"value": value, "p_value": p_value, "n": len(x)}
    if any(issubclass(w.category, stats.NearConstantInputWarning) for w in caught):
        # scipy warns (over several lines of stderr) that rounding may dominate; the record says it in one field
        record["warning"] = "nearly constant input: the correlation may be inaccurate (scipy)"
    return record


def correlations(estimated: Sequence[float], retrained: Sequence[float]) -> dict[str, dict[str, Any]]:
    """Both correlations, by method name."""
    return {method: correlation(method, estimated, retrained) for method in METHODS}


def _rowwise(method: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Correlation of each row of ``x`` with the same row of ``y`` (NaN where a row is constant)."""
    if method == "spearman":
        x, y = stats.rankdata(x, axis=1), stats.rankdata(y, axis=1)
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(axis=1) / np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))


def bootstrap_interval(
    method: str,
    estimated: Sequence[float],
    retrained: np.ndarray,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> list[float] | None:
    """Percentile bootstrap interval of the correlation between ``estimated`` and the seed-mean of ``retrained``.

    Resamples points and ground-truth seeds, both with replacement.

    Args:
        estimated: ``k`` estimates.
        retrained: ``Tensor[S, k]``, the re-trained values of ``S`` ground-truth seeds.

    Returns:
        ``[low, high]``, or ``None`` when fewer than 3 points or most resamples are degenerate.
    """
    x = np.asarray(estimated, dtype=np.float64)
    y = np.atleast_2d(np.asarray(retrained, dtype=np.float64))
    seeds, k = y.shape
    if k < 3:
        return None
    rng = np.random.default_rng(seed)
    points = rng.integers(0, k, size=(resamples, k))
    chosen = rng.integers(0, seeds, size=(resamples, seeds))
    y_mean = y[chosen[:, :, None], points[:, None, :]].mean(axis=1)
    values = _rowwise(method, x[points], y_mean)
    values = values[np.isfinite(values)]
    if len(values) < resamples / 2:
        return None
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def repeat_ceiling(method: str, retrained: np.ndarray) -> dict[str, Any]:
    """The noise ceiling of a ground truth averaged over ``S`` re-training seeds.

    ``agreement`` is the mean correlation between pairs of single-seed repeats (``r``). The mean of ``S`` repeats
    has reliability ``rho = S r / (1 + (S - 1) r)`` (Spearman-Brown), and a noise-free estimator is expected to reach
    a correlation of ``sqrt(rho)`` with it: that is the ``value`` reported, the ceiling of any estimator's score.

    Args:
        retrained: ``Tensor[S, k]``.
    """
    y = np.atleast_2d(np.asarray(retrained, dtype=np.float64))
    seeds = len(y)
    if seeds < 2:
        return {"value": None, "undefined": "one ground-truth seed (use --gt-seeds 2 or more)"}
    pairs = [correlation(method, y[a], y[b]) for a in range(seeds) for b in range(a + 1, seeds)]
    values = [p["value"] for p in pairs if p["value"] is not None]
    if not values:
        return {"value": None, "undefined": pairs[0]["undefined"]}
    agreement = float(np.mean(values))
    r = min(max(agreement, 0.0), 1.0)
    reliability = seeds * r / (1 + (seeds - 1) * r) if r > 0 else 0.0
    return {"value": float(np.sqrt(reliability)), "agreement": agreement, "seeds": seeds, "n": y.shape[1]}


def subset_predictions(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The additive prediction of each subset's test losses: ``Tensor[M, T]``, the sum of an estimator's predicted
    loss changes (``scores``, ``[T, n]``, this harness's sign convention) over the training points each subset
    leaves out (``masks``, ``[M, n]``, true where kept). Up to a constant per test point (the full-data loss,
    irrelevant to a rank correlation over subsets), this is the predicted test loss of the model trained on the
    subset."""
    left_out = (~np.asarray(masks, dtype=bool)).astype(np.float64)
    return left_out @ np.asarray(scores, dtype=np.float64).T


def datamodeling_score(
    scores: np.ndarray,
    masks: np.ndarray,
    measured: np.ndarray,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The linear datamodeling score (LDS; Park et al., 2023) of an estimator over ``T`` test points.

    Per test point: the Spearman (and Pearson) correlation over the ``M`` subsets between the additive prediction
    (:func:`subset_predictions`) and the measured test loss of the models trained on them (the mean over the ``R``
    training seeds). The LDS is its mean over the test points where it is defined; a test point whose measured
    losses or predictions are constant over the subsets is left out with its reason (under ``undefined_points``).

    Args:
        scores: ``[T, n]``, the estimator's influence of every training point on each test point.
        masks: ``[M, n]``, true where subset ``m`` keeps training point ``i``.
        measured: ``[R, M, T]``, the test losses of the subset models of each training seed.
        resamples, level, seed: the percentile bootstrap interval, resampling subsets and test points.

    Returns:
        ``{"spearman", "pearson"}``: correlation records (value = the mean over test points, ``n`` = how many were
        defined, ``interval``), ``"ceiling"``: the noise ceiling of each (:func:`repeat_ceiling` over the seeds, per
        test point, averaged; undefined with one seed), ``"per_point"``: each test point's Spearman (``None`` where
        undefined), and ``"undefined_points"``: ``{position: reason}``.
    """
    predicted = subset_predictions(scores, masks)
    y_seeds = np.asarray(measured, dtype=np.float64)
    if y_seeds.ndim != 3 or y_seeds.shape[1:] != predicted.shape:
        raise ValueError(f"measured losses of shape {y_seeds.shape}, expected [seeds, {predicted.shape}]")
    y = y_seeds.mean(axis=0)
    subsets, points = predicted.shape
    result: dict[str, Any] = {"per_point": [], "undefined_points": {}}
    per_method: dict[str, list[float]] = {method: [] for method in METHODS}
    for t in range(points):
        entries = {method: correlation(method, predicted[:, t].tolist(), y[:, t].tolist()) for method in METHODS}
        if entries["spearman"]["value"] is None:
            result["undefined_points"][t] = entries["spearman"]["undefined"]
            result["per_point"].append(None)
            continue
        result["per_point"].append(entries["spearman"]["value"])
        for method, point in entries.items():
            if point["value"] is not None:
                per_method[method].append(point["value"])
    defined = [t for t in range(points) if result["per_point"][t] is not None]
    rng = np.random.default_rng(seed)
    for method, values in per_method.items():
        if not values:
            reasons = sorted(set(result["undefined_points"].values()))
            result[method] = {"value": None, "undefined": f"undefined at every test point ({'; '.join(reasons)})"}
            continue
        entry: dict[str, Any] = {"value": float(np.mean(values)), "n": len(values), "subsets": subsets}
        if len(defined) >= 2 and subsets >= 3:
            rows = rng.integers(0, subsets, size=(resamples, subsets))
            cols = rng.choice(defined, size=(resamples, len(defined)))
            means = np.empty(resamples)
            for b in range(resamples):
                x_b = predicted[np.ix_(rows[b], cols[b])].T
                y_b = y[np.ix_(rows[b], cols[b])].T
                values_b = _rowwise(method, x_b, y_b)
                values_b = values_b[np.isfinite(values_b)]  # a resample can make a test point's values constant
                means[b] = values_b.mean() if len(values_b) else np.nan
            means = means[np.isfinite(means)]
            tail = (1 - level) / 2 * 100
            entry["interval"] = (
                [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]
                if len(means) >= resamples / 2
                else None
            )
        else:
            entry["interval"] = None
        result[method] = entry
    ceilings: dict[str, Any] = {}
    for method in METHODS:
        if len(y_seeds) < 2:
            ceilings[method] = {"value": None, "undefined": "one ground-truth seed (use --gt-seeds 2 or more)"}
            continue
        per_point = [repeat_ceiling(method, y_seeds[:, :, t]) for t in range(points)]
        values = [c["value"] for c in per_point if c["value"] is not None]
        if not values:
            ceilings[method] = {"value": None, "undefined": per_point[0].get("undefined", "undefined")}
            continue
        agreements = [c["agreement"] for c in per_point if c["value"] is not None]
        ceilings[method] = {
            "value": float(np.mean(values)),
            "agreement": float(np.mean(agreements)),
            "seeds": len(y_seeds),
            "n": len(values),
        }
    result["ceiling"] = ceilings
    return result
