"""Which training points a selection scores: top-k by |influence|, the shared random set, and percentile bands."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.common.errors import UnknownNameError
from benchmark.evaluation.selections import select, selection_description

SCORES = np.array([0.5, -3.0, 0.1, 2.0, -0.2, 0.0, 1.0, -1.0, 0.3, 0.05])


def test_top_takes_the_largest_magnitudes_of_either_sign():
    assert select("top", SCORES, 3, random_set=[9, 8, 7]) == [1, 3, 6]


def test_signed_top_selections_take_either_end_of_the_signed_scores():
    # SCORES sorted: -3.0 (1), -1.0 (7), -0.2 (4) ... 0.5 (0), 1.0 (6), 2.0 (3)
    assert select("top-positive", SCORES, 3, random_set=[]) == [3, 6, 0]
    assert select("top-negative", SCORES, 3, random_set=[]) == [1, 7, 4]
    assert "largest" in selection_description("top-positive") and "smallest" in selection_description("top-negative")


def test_random_is_the_shared_set_whatever_the_scores():
    assert select("random", SCORES, 3, random_set=[9, 8, 7]) == [9, 8, 7]


def test_percentile_band_takes_the_points_nearest_that_percentile_of_the_signed_scores():
    # sorted: -3.0 -1.0 -0.2 0.0 0.05 ...; the 30th percentile sits 0.7 of the way from -0.2 to 0.0: -0.06
    assert np.percentile(SCORES, 30) == pytest.approx(-0.06)
    assert select("p30", SCORES, 3, random_set=[]) == [5, 9, 4]  # 0.0 (0.06 away), 0.05 (0.11), -0.2 (0.14)
    assert select("p100", SCORES, 1, random_set=[]) == [3]
    assert select("p0", SCORES, 1, random_set=[]) == [1]


@pytest.mark.parametrize("bad", ["p101", "p", "p3.5", "pp30", "bottom", "top-"])
def test_a_bad_selection_names_itself_and_the_choices(bad):
    with pytest.raises(UnknownNameError) as error:
        selection_description(bad)
    assert repr(bad) in str(error.value) and "p0..p100" in str(error.value) and "top-positive" in str(error.value)


def test_percentile_description_names_the_percentile():
    assert "30th percentile" in selection_description("p30")
