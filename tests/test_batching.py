"""Tests of seqpipe.input_pipeline.batching: boundaries, grids, plans, window cuts."""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from literal_datasets import WINDOW

from seqpipe.config import DataConfig
from seqpipe.dataset.metadata import DatasetMetadata, Histogram, LengthStats
from seqpipe.input_pipeline import batching

# Bins [1, 3) [3, 5) [5, 9) [9, 11): last lengths 2, 4, 8, 10; [3, 5) is empty.
HISTOGRAM = Histogram(edges=(1, 3, 5, 9, 11), counts=(2, 0, 5, 1))



def lengths_metadata(max_length: int, mean: float) -> DatasetMetadata:
    """Metadata that says only the longest and the mean length (all the plans read)."""
    return DatasetMetadata(num_features=2, splits={},
                           length_stats=LengthStats(max=max_length, mean=mean))


@pytest.mark.parametrize(("num_buckets", "expected", "padded"), [
    (1, [10], 8 * 10),
    (2, [2, 10], 2 * 2 + 6 * 10),        # beats [8, 10]: 7 * 8 + 10 = 66
    (3, [2, 8, 10], 2 * 2 + 5 * 8 + 10),
    (4, [2, 8, 10], 54),                 # only 3 non-empty bins
])
def test_optimal_boundaries_literal(num_buckets, expected, padded):
    boundaries = batching.optimal_boundaries(HISTOGRAM, num_buckets)
    assert boundaries == expected
    assert batching.padded_timesteps(HISTOGRAM, boundaries) == padded


def test_optimal_boundaries_match_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(1, 7))
        histogram = Histogram(edges=tuple(np.cumsum(rng.integers(1, 4, n + 1)).tolist()),
                              counts=tuple(rng.integers(0, 4, n).tolist()))
        uppers = [e - 1 for e, c in zip(histogram.edges[1:], histogram.counts,
                                        strict=True) if c]
        for k in range(1, 4):
            got = batching.optimal_boundaries(histogram, k)
            if not uppers:
                assert got == []
                continue
            best = min(batching.padded_timesteps(histogram, [*inner, uppers[-1]])
                       for r in range(k) for inner in itertools.combinations(uppers[:-1], r))
            assert batching.padded_timesteps(histogram, got) == best
            assert len(got) <= k and got[-1] == uppers[-1] and got == sorted(set(got))


def test_exact_histogram_gives_exact_boundaries():
    histogram = batching.exact_histogram({3: 4, 5: 1, 6: 3})
    assert histogram == Histogram(edges=(3, 4, 5, 6, 7), counts=(4, 0, 1, 3))
    assert batching.optimal_boundaries(histogram, 2) == [3, 6]
    assert batching.exact_histogram({}) == Histogram(edges=(), counts=())
    assert batching.optimal_boundaries(Histogram(edges=(), counts=()), 3) == []


@pytest.mark.parametrize("histogram", [
    Histogram(edges=(1, 3), counts=(1, 2)),     # one edge short
    Histogram(edges=(3, 3, 5), counts=(1, 1)),  # not increasing
    Histogram(edges=(0, 2), counts=(1,)),       # length 0
    Histogram(edges=(1, 2), counts=(-1,)),
])
def test_malformed_histogram(histogram):
    with pytest.raises(ValueError, match="histogram"):
        batching.optimal_boundaries(histogram, 2)


def test_length_grid():
    assert batching.length_grid(40, 4) == [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24,
                                          28, 32, 40]
    assert batching.length_grid(1, 16) == [1]
    grid = batching.length_grid(356, 16)
    assert len(grid) == 87 and grid[-1] >= 356 and grid[-2] < 356
    # Padding a length up to the grid adds less than 1/16 of it.
    padded = np.asarray(grid)[np.searchsorted(grid, np.arange(1, 357))]
    assert ((padded - np.arange(1, 357)) < np.arange(1, 357) / 16).all()
    with pytest.raises(ValueError, match="steps_per_octave"):
        batching.length_grid(10, 0)


def test_sorted_window_auto_budget():
    # -1: batch_size x mean length = 4 x 3.8 -> 15 timesteps per batch.
    # SEQS' lengths 1, 2, 3, 5, 8: max 8, mean 3.8.
    plan = batching.plan_window(dataclasses.replace(WINDOW, batch_size=4, timestep_budget=-1),
                                lengths_metadata(max_length=8, mean=3.8))
    assert plan.grid == (1, 2, 3, 4, 5, 6, 7, 8)
    assert plan.batch_sizes == (4, 4, 4, 3, 3, 2, 2, 1)


def reference_cuts(lengths, grid, sizes, min_efficiency):
    """`batching.window_cuts`' documented rule, one batch at a time in plain Python."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    sorted_lengths = [int(lengths[i]) for i in order]
    n = len(order)

    def on_grid(length):
        return next((t for t in grid if t >= length), length)

    batches, start = [], 0
    while start < n:
        g = next((g for g in range(len(grid))
                  if sorted_lengths[min(start + sizes[g] - 1, n - 1)] <= grid[g]), len(grid) - 1)
        size = min(sizes[g], n - start)
        pad = max(grid[g], sorted_lengths[start + size - 1])
        for k in range(1, size if min_efficiency else 0):
            real = sum(sorted_lengths[start:start + k + 1])
            if real < min_efficiency * (k + 1) * on_grid(sorted_lengths[start + k]):
                size, pad = k, on_grid(sorted_lengths[start + k - 1])
                break
        batches.append((order[start:start + size], pad))
        start += size
    return batches


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("batch_size,budget", [(8, 0), (8, 60), (5, 37)])
@pytest.mark.parametrize("length_grid", [0, 1, 4])
@pytest.mark.parametrize("min_efficiency", [0.0, 0.6, 0.9])
def test_window_cuts_match_the_one_batch_at_a_time_rule(seed, batch_size, budget, length_grid,
                                                        min_efficiency):
    rng = np.random.default_rng(seed)
    lengths = np.concatenate([rng.integers(1, 12, 50),  # dense, then a sparse tail
                              np.exp(rng.uniform(2.5, 5.0, 12)).astype(int)])[
        rng.permutation(62)][:rng.integers(1, 63)]
    metadata = lengths_metadata(max_length=100, mean=10.0)
    cfg = DataConfig(batch_size=batch_size, timestep_budget=budget, length_grid=length_grid,
                     min_batch_efficiency=min_efficiency, sort_window=64)
    plan = batching.plan_window(cfg, metadata)
    rows, pads = plan.cutter()(tf.constant(lengths, tf.int32))
    got = [([int(i) for i in row if i >= 0], int(pad))
           for row, pad in zip(rows.numpy(), pads.numpy(), strict=True)]
    expected = reference_cuts(lengths, plan.grid, plan.batch_sizes, min_efficiency)
    assert got == expected
    assert sorted(i for row, _ in got for i in row) == list(range(len(lengths)))


def test_length_arithmetic_imports_without_tensorflow():
    # The Beam job imports batching for optimal_boundaries and must not load TensorFlow.
    code = ("import sys; from seqpipe.input_pipeline import batching; "
            "batching.plan_window; print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
