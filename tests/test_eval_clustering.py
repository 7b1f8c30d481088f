import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scops_fast.eval import (
    adjusted_rand_index,
    ari_from_table,
    contingency_table,
    nmi_from_table,
    normalized_mutual_info,
)
from scops_fast.eval.clustering import add_tables


def brute_force_ari(a, b):
    """Rand index over all pairs, adjusted by its expectation under the permutation model."""
    n = len(a)
    pairs = list(itertools.combinations(range(n), 2))
    same_a = np.array([a[i] == a[j] for i, j in pairs])
    same_b = np.array([b[i] == b[j] for i, j in pairs])
    both = float((same_a & same_b).sum())
    expected = same_a.sum() * same_b.sum() / len(pairs)
    top = 0.5 * (same_a.sum() + same_b.sum())
    return 1.0 if top == expected else (both - expected) / (top - expected)


def entropy_nmi(a, b):
    """NMI through I = H(a) + H(b) - H(a, b), a different route from the table code."""

    def h(labels):
        _, counts = np.unique(labels, return_counts=True, axis=0)
        p = counts / counts.sum()
        return -(p * np.log(p)).sum()

    ha, hb = h(np.asarray(a)), h(np.asarray(b))
    hab = h(np.stack([a, b], 1))
    return (ha + hb - hab) / (0.5 * (ha + hb))


def test_hand_computed_case():
    a, b = [0, 0, 1, 1], [0, 0, 1, 2]
    # pairs agreeing: 1 of sum_a = 2, sum_b = 1, 6 pairs -> (1 - 1/3) / (3/2 - 1/3) = 4/7
    assert adjusted_rand_index(a, b) == pytest.approx(4 / 7, abs=1e-12)
    # b refines a: I = H(a) = ln 2, H(b) = 1.5 ln 2 -> NMI = ln 2 / (1.25 ln 2) = 0.8
    assert normalized_mutual_info(a, b) == pytest.approx(0.8, abs=1e-12)


def test_second_hand_case_with_partial_overlap():
    a, b = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]
    # table [[2,1,0],[0,1,2]]: sum_ij = 2, sum_a = 6, sum_b = 3, 15 pairs
    expected_ari = (2 - 6 * 3 / 15) / (0.5 * 9 - 6 * 3 / 15)
    assert adjusted_rand_index(a, b) == pytest.approx(expected_ari, abs=1e-12)
    mi = (2 / 6) * math.log(2 / 6 / (0.5 * 1 / 3)) * 2 + (1 / 6) * math.log(1 / 6 / (0.5 / 3)) * 2
    ha, hb = math.log(2), math.log(3)
    assert normalized_mutual_info(a, b) == pytest.approx(mi / (0.5 * (ha + hb)), abs=1e-12)


def test_perfect_and_permuted_labels_score_one():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 200)
    perm = np.array([3, 0, 4, 1, 2])
    assert normalized_mutual_info(a, perm[a]) == pytest.approx(1.0)
    assert adjusted_rand_index(a, perm[a]) == pytest.approx(1.0)


def test_independent_labels_score_near_zero():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 4, 20000), rng.integers(0, 6, 20000)
    assert abs(adjusted_rand_index(a, b)) < 5e-3
    assert normalized_mutual_info(a, b) < 5e-3


def test_scores_are_symmetric_and_ari_can_be_negative():
    a, b = [0, 0, 1, 1], [0, 1, 0, 1]
    assert adjusted_rand_index(a, b) < 0
    assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_index(b, a))
    assert normalized_mutual_info(a, b) == pytest.approx(0.0, abs=1e-12)


def test_degenerate_labelings_follow_sklearn_conventions():
    assert normalized_mutual_info([1, 1, 1], [2, 2, 2]) == 1.0
    assert adjusted_rand_index([1, 1, 1], [2, 2, 2]) == 1.0
    assert normalized_mutual_info([0, 0, 0], [0, 1, 2]) == 0.0
    assert adjusted_rand_index([0, 0, 0], [0, 1, 2]) == 0.0
    assert adjusted_rand_index([0, 1, 2], [2, 0, 1]) == 1.0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4)), min_size=2, max_size=25),
)
def test_matches_brute_force_definitions(pairs):
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    assert adjusted_rand_index(a, b) == pytest.approx(brute_force_ari(a, b), abs=1e-10)
    if len(np.unique(a)) > 1 or len(np.unique(b)) > 1:
        assert normalized_mutual_info(a, b) == pytest.approx(entropy_nmi(a, b), abs=1e-10)


def test_tables_accumulate_across_batches():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 3, 500), rng.integers(0, 4, 500)
    whole = contingency_table(a, b)
    parts = None
    for s in range(0, 500, 128):
        parts = add_tables(parts, contingency_table(a[s : s + 128], b[s : s + 128]))
    assert np.array_equal(parts, whole)
    assert nmi_from_table(parts) == normalized_mutual_info(a, b)
    assert ari_from_table(parts) == adjusted_rand_index(a, b)


def test_rejects_bad_labels():
    with pytest.raises(ValueError, match="non-negative integer"):
        contingency_table([0, -1], [0, 1])
    with pytest.raises(ValueError, match="non-negative integer"):
        contingency_table([0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match="differ in size"):
        contingency_table([0, 1, 2], [0, 1])
