"""Pure length-bucketing arithmetic: boundaries from a length histogram, padding grids.

No TensorFlow here: `seqpipe.input_pipeline.data` batches with these numbers and the Beam job
can suggest the same boundaries in metadata.json.

A length histogram is stored in metadata.json as

    {"edges": [e_0, e_1, ..., e_n], "counts": [c_0, ..., c_{n-1}]}

with integer edges: bin `i` counts the lengths `l` with `e_i <= l < e_{i+1}`.
`exact_histogram` builds one with unit-wide bins (one length per bin).

Bucket `i` of boundaries `b_0 < ... < b_{k-1}` holds the lengths in
`(b_{i-1}, b_i]`, and padding to the boundary costs `b_i` timesteps per
sequence; `optimal_boundaries` picks the `k` boundaries minimizing the total.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def exact_histogram(length_counts: Mapping[int, int]) -> dict[str, list[int]]:
    """`{length: count}` -> a histogram with one bin per length from min to max.

    Example: `exact_histogram({3: 2, 5: 1})` is
    `{"edges": [3, 4, 5, 6], "counts": [2, 0, 1]}`.
    """
    if not length_counts:
        return {"edges": [], "counts": []}
    low, high = min(length_counts), max(length_counts)
    return {"edges": list(range(low, high + 2)),
            "counts": [int(length_counts.get(n, 0)) for n in range(low, high + 1)]}


def optimal_boundaries(histogram: Mapping[str, Sequence[int]], num_buckets: int) -> list[int]:
    """At most `num_buckets` boundaries minimizing the padded timesteps.

    Every sequence is padded to its bucket's upper boundary. A boundary can
    only sit at a bin's last length (`e_{i+1} - 1`): inside a bin the
    histogram does not say which lengths occur, so with coarse bins the
    boundaries are optimal for the histogram, not necessarily for the data;
    pass an `exact_histogram` for exact results. The last boundary is the
    last non-empty bin's last length, so nothing overflows. Dynamic
    programming over the non-empty bins: O(num_buckets * bins^2).

    Args:
        histogram: `{"edges", "counts"}` as in metadata.json `length_stats`.
        num_buckets: the most buckets wanted (>= 1).

    Returns:
        Strictly increasing boundaries; fewer than `num_buckets` when there
        are fewer non-empty bins; `[]` for an empty histogram.

    Raises:
        ValueError: a malformed histogram or `num_buckets < 1`.
    """
    uppers, counts = _nonempty_bins(histogram)
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1; Received: num_buckets={num_buckets}")
    if not len(uppers):
        return []
    # cum[j] = sequences in bins 0..j-1; a bucket over bins i..j costs
    # (cum[j + 1] - cum[i]) * uppers[j] padded timesteps.
    cum = np.concatenate([[0], np.cumsum(counts)])
    cost = cum[1:] * uppers  # best cost of bins 0..j in one bucket ending at j
    previous_end = []  # per extra bucket: where the bucket before the one ending at j ends
    for _ in range(1, min(num_buckets, len(uppers))):
        new_cost, ends = cost.copy(), np.full(len(uppers), -1)
        for j in range(1, len(uppers)):
            candidates = cost[:j] + (cum[j + 1] - cum[1:j + 1]) * uppers[j]
            best = int(np.argmin(candidates))
            if candidates[best] < new_cost[j]:
                new_cost[j], ends[j] = candidates[best], best
        cost = new_cost
        previous_end.append(ends)
    j = len(uppers) - 1
    boundaries = [int(uppers[j])]
    for ends in reversed(previous_end):  # ends[j] < 0: one bucket fewer was as good
        if ends[j] >= 0:
            j = int(ends[j])
            boundaries.append(int(uppers[j]))
    return boundaries[::-1]


def padded_timesteps(histogram: Mapping[str, Sequence[int]], boundaries: Sequence[int]) -> int:
    """Timesteps after padding each bin's sequences to its bucket's boundary.

    A bin belongs to the first bucket whose boundary is >= its last length;
    bins beyond the last boundary are padded to their own last length (the
    overflow bucket, an upper bound).
    """
    uppers, counts = _nonempty_bins(histogram)
    bounds = np.asarray(boundaries, np.int64)
    index = np.searchsorted(bounds, uppers, side="left")
    pads = np.where(index < len(bounds), bounds[np.minimum(index, len(bounds) - 1)], uppers)
    return int((pads * counts).sum())


def length_grid(max_length: int, steps_per_octave: int) -> list[int]:
    """The lengths batches are padded to: `steps_per_octave` values per doubling.

    Within `[2**k, 2**(k+1))` the grid steps by `max(1, 2**k // steps_per_octave)`,
    so padding a length up to the grid adds less than `1 / steps_per_octave` of
    it, and lengths below `2 * steps_per_octave` are all on the grid. The last
    value is the first grid value >= `max_length`. Examples:
    `length_grid(40, 4) == [1, 2, ..., 8, 10, 12, 14, 16, 20, 24, 28, 32, 40]`;
    `length_grid(356, 16)` has 87 values.

    Args:
        max_length: the longest length to cover (>= 1).
        steps_per_octave: grid values per doubling (>= 1).

    Returns:
        Strictly increasing grid values.
    """
    if max_length < 1 or steps_per_octave < 1:
        raise ValueError(f"max_length and steps_per_octave must be >= 1; Received: "
                         f"max_length={max_length}, steps_per_octave={steps_per_octave}")
    grid, length = [], 1
    while True:
        step = max(1, (1 << (length.bit_length() - 1)) // steps_per_octave)
        length = math.ceil(length / step) * step
        grid.append(length)
        if length >= max_length:
            return grid
        length += 1


def _nonempty_bins(histogram: Mapping[str, Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(last length, count) of every non-empty bin, validating the histogram."""
    edges = np.asarray(histogram.get("edges", []), np.int64)
    counts = np.asarray(histogram.get("counts", []), np.int64)
    if len(edges) != (len(counts) + 1 if len(counts) else len(edges)) or (
            len(counts) and (np.any(np.diff(edges) < 1) or edges[0] < 1
                             or np.any(counts < 0))):
        raise ValueError(f"a length histogram needs increasing positive integer edges, one "
                         f"more than its non-negative counts; Received: {dict(histogram)}")
    keep = counts > 0
    return edges[1:][keep] - 1, counts[keep]
