"""Tests of seqpipe.input_pipeline.buckets: boundaries from length histograms, padding grids."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from seqpipe.input_pipeline import buckets

# Bins [1, 3) [3, 5) [5, 9) [9, 11): last lengths 2, 4, 8, 10; [3, 5) is empty.
HISTOGRAM = {"edges": [1, 3, 5, 9, 11], "counts": [2, 0, 5, 1]}


@pytest.mark.parametrize(("num_buckets", "expected", "padded"), [
    (1, [10], 8 * 10),
    (2, [2, 10], 2 * 2 + 6 * 10),        # beats [8, 10]: 7 * 8 + 10 = 66
    (3, [2, 8, 10], 2 * 2 + 5 * 8 + 10),
    (4, [2, 8, 10], 54),                 # only 3 non-empty bins
])
def test_optimal_boundaries_literal(num_buckets, expected, padded):
    boundaries = buckets.optimal_boundaries(HISTOGRAM, num_buckets)
    assert boundaries == expected
    assert buckets.padded_timesteps(HISTOGRAM, boundaries) == padded


def test_optimal_boundaries_match_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(1, 7))
        histogram = {"edges": (np.cumsum(rng.integers(1, 4, n + 1))).tolist(),
                     "counts": rng.integers(0, 4, n).tolist()}
        uppers = [e - 1 for e, c in zip(histogram["edges"][1:], histogram["counts"],
                                        strict=True) if c]
        for k in range(1, 4):
            got = buckets.optimal_boundaries(histogram, k)
            if not uppers:
                assert got == []
                continue
            best = min(buckets.padded_timesteps(histogram, [*inner, uppers[-1]])
                       for r in range(k) for inner in itertools.combinations(uppers[:-1], r))
            assert buckets.padded_timesteps(histogram, got) == best
            assert len(got) <= k and got[-1] == uppers[-1] and got == sorted(set(got))


def test_exact_histogram_gives_exact_boundaries():
    histogram = buckets.exact_histogram({3: 4, 5: 1, 6: 3})
    assert histogram == {"edges": [3, 4, 5, 6, 7], "counts": [4, 0, 1, 3]}
    assert buckets.optimal_boundaries(histogram, 2) == [3, 6]
    assert buckets.exact_histogram({}) == {"edges": [], "counts": []}
    assert buckets.optimal_boundaries({"edges": [], "counts": []}, 3) == []


@pytest.mark.parametrize("histogram", [
    {"edges": [1, 3], "counts": [1, 2]},   # one edge short
    {"edges": [3, 3, 5], "counts": [1, 1]},  # not increasing
    {"edges": [0, 2], "counts": [1]},       # length 0
    {"edges": [1, 2], "counts": [-1]},
])
def test_malformed_histogram(histogram):
    with pytest.raises(ValueError, match="histogram"):
        buckets.optimal_boundaries(histogram, 2)


def test_length_grid():
    assert buckets.length_grid(40, 4) == [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24,
                                          28, 32, 40]
    assert buckets.length_grid(1, 16) == [1]
    grid = buckets.length_grid(356, 16)
    assert len(grid) == 87 and grid[-1] >= 356 and grid[-2] < 356
    # Padding a length up to the grid adds less than 1/16 of it.
    padded = np.asarray(grid)[np.searchsorted(grid, np.arange(1, 357))]
    assert ((padded - np.arange(1, 357)) < np.arange(1, 357) / 16).all()
    with pytest.raises(ValueError, match="steps_per_octave"):
        buckets.length_grid(10, 0)
