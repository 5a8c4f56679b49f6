"""Length bucketing: which records share a batch, how many, and the T it is padded to.

Everything about how records of different lengths become padded batches is
here: the arithmetic on lengths (boundaries from a length histogram, padding
grids), the plans a `DataConfig` and a dataset's metadata give
(`plan_window`, `plan_buckets`), the traced functions that cut a parsed
window into batches, and the padding into the element contract
(`seqpipe.input_pipeline`). `seqpipe.input_pipeline.data` chains them.

The length arithmetic and the plans are plain Python and numpy. TensorFlow is
imported inside the functions that build tensors: the Beam job imports this
module for `optimal_boundaries` and must not load TensorFlow.

Length histograms
-----------------

A length histogram (`seqpipe.dataset.metadata.Histogram`, metadata.json's
`length_stats.histogram`) has

    edges = (e_0, e_1, ..., e_n), counts = (c_0, ..., c_{n-1})

with integer edges: bin `i` counts the lengths `l` with `e_i <= l < e_{i+1}`.
`exact_histogram` builds one with unit-wide bins (one length per bin).
Bucket `i` of boundaries `b_0 < ... < b_{k-1}` holds the lengths in
`(b_{i-1}, b_i]`, and padding to the boundary costs `b_i` timesteps per
sequence; `optimal_boundaries` picks the `k` boundaries minimizing the total.

Batching (`DataConfig.batching`)
--------------------------------

`sorted_window` (default; fairseq/tensor2tensor style): the record stream is
cut into windows of `sort_window` records; each window is sorted by length
(stable) and cut into batches in that order. A batch holds `batch_size`
records, or with a `timestep_budget` `min(batch_size, max(1, budget // T))`
(-1 = `batch_size x length_stats.mean`; 0, the default, means no budget), and
is padded to its longest record (`length_grid` 0, the default) or to the
first value of `length_grid(length_stats.max, length_grid)` whose full batch
of the next records fits. With `min_batch_efficiency` a batch ends early,
before the first record that would leave less than that fraction of it real
(with a grid, padded to the record's grid length): sorted records are dense
except in sparse tails (the few longest, the very shortest). So a batch is
full unless it is a window's last or was cut for efficiency; with a grid and
no floor, batches have at most `len(grid)` distinct shapes `(B(T), T)` plus
one per window (what `train.jit_compile` needs), and with a budget
`B x T <= budget` except for a single sequence longer than the budget.
Sequences longer than the grid (custom metadata) pad to their batch's
longest. `benchmarks/padding_efficiency.py` prints the padding efficiency of
each mode on seed-shaped data.

`buckets`: records are grouped by length as they stream by, with boundaries
`b_0 < b_1 < ... < b_{n-1}` (`bucket_boundaries`): bucket `i` holds lengths
in `(b_{i-1}, b_i]` and a final *overflow* bucket holds lengths `> b_{n-1}`
(empty when the last boundary is the longest length, as the metadata's is;
with custom boundaries it keeps longer sequences instead of dropping them or
failing, as `tf.data.Dataset.bucket_by_sequence_length(pad_to_bucket_boundary=True)`
would). Each bucket's batch size is `batch_size`, or with a `timestep_budget`
`min(batch_size, max(1, budget // bucket_upper_length))`. With
`pad_to_bucket_boundary` every batch of bucket `i` has `T = b_i` exactly (at
most n + 1 distinct `T`, the overflow bucket padding to its batch maximum);
otherwise each batch is padded to its own longest sequence. The last batch
of every bucket may be smaller.

The mask, the weights and the reversed target are made once per padded batch
(`tf.sequence_mask`, `tf.reverse_sequence`; `ElementFinisher`), never per
record and never from `x == 0`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from seqpipe.config import DataConfig
from seqpipe.dataset import records
from seqpipe.dataset.metadata import DatasetMetadata, Histogram

if TYPE_CHECKING:
    import tensorflow as tf

# ----------------------------------------------------------------------------- lengths


def exact_histogram(length_counts: Mapping[int, int]) -> Histogram:
    """`{length: count}` -> a histogram with one bin per length from min to max.

    Example: `exact_histogram({3: 2, 5: 1})` is
    `Histogram(edges=(3, 4, 5, 6), counts=(2, 0, 1))`.
    """
    if not length_counts:
        return Histogram()
    low, high = min(length_counts), max(length_counts)
    return Histogram(edges=tuple(range(low, high + 2)),
                     counts=tuple(int(length_counts.get(n, 0)) for n in range(low, high + 1)))


def optimal_boundaries(histogram: Histogram, num_buckets: int) -> list[int]:
    """At most `num_buckets` boundaries minimizing the padded timesteps.

    Every sequence is padded to its bucket's upper boundary. A boundary can
    only sit at a bin's last length (`e_{i+1} - 1`): inside a bin the
    histogram does not say which lengths occur, so with coarse bins the
    boundaries are optimal for the histogram, not necessarily for the data;
    pass an `exact_histogram` for exact results. The last boundary is the
    last non-empty bin's last length, so nothing overflows. Dynamic
    programming over the non-empty bins: O(num_buckets * bins^2).

    Args:
        histogram: a length histogram, e.g. the metadata's `length_stats.histogram`.
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


def padded_timesteps(histogram: Histogram, boundaries: Sequence[int]) -> int:
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


def _nonempty_bins(histogram: Histogram) -> tuple[np.ndarray, np.ndarray]:
    """(last length, count) of every non-empty bin, validating the histogram."""
    edges = np.asarray(histogram.edges, np.int64)
    counts = np.asarray(histogram.counts, np.int64)
    if len(edges) != (len(counts) + 1 if len(counts) else len(edges)) or (
            len(counts) and (np.any(np.diff(edges) < 1) or edges[0] < 1
                             or np.any(counts < 0))):
        raise ValueError(f"a length histogram needs increasing positive integer edges, one "
                         f"more than its non-negative counts; Received: {histogram}")
    keep = counts > 0
    return edges[1:][keep] - 1, counts[keep]


# ----------------------------------------------------------------------------- plans


@dataclasses.dataclass(frozen=True)
class Bucket:
    """One length bucket of one input pipeline (`batching: buckets`).

    Attributes:
        max_length: the longest length the bucket holds (its upper boundary),
            or None for the overflow bucket (everything longer than the last
            boundary).
        pad_length: the T every batch is padded to, or None for "the batch's
            longest sequence".
        batch_size: records per batch (per replica).
    """

    max_length: int | None
    pad_length: int | None
    batch_size: int


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """How one input pipeline cuts sorted windows into batches (`batching: sorted_window`).

    Attributes:
        window: records sorted together.
        grid: the lengths T a batch is padded to (increasing); a batch longer
            than the last one is padded to its own longest sequence.
        batch_sizes: records in a full batch padded to `grid[i]`.
        min_efficiency: a batch ends before a record that would leave less
            than this fraction of it real (0: off).
    """

    window: int
    grid: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    min_efficiency: float = 0.0

    def cutter(self) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
        """`lengths [N] -> (order [num_batches, max_size], pad [num_batches])` of a
        window, for use inside a traced function (see `window_cuts`)."""
        import tensorflow as tf

        grid = tf.constant(self.grid, tf.int32)
        sizes = tf.constant(self.batch_sizes, tf.int32)
        if len(set(self.batch_sizes)) == 1 and not self.min_efficiency:
            return lambda lengths: fixed_size_cuts(lengths, grid, sizes)
        return lambda lengths: window_cuts(lengths, grid, sizes, self.min_efficiency)


def plan_window(cfg: DataConfig, metadata: DatasetMetadata, *,
                num_replicas_in_sync: int = 1,
                per_replica_batch_size: int | None = None) -> WindowPlan:
    """The padding grid and full-batch sizes of `batching: sorted_window`.

    The grid is `length_grid(length_stats.max, cfg.length_grid)`, or every
    length from 1 to `length_stats.max` when `cfg.length_grid` is 0; a full
    batch padded to `grid[i]` holds `min(batch_size, budget // grid[i])`
    records (at least 1), the budget being `timestep_budget` per replica.
    """
    if per_replica_batch_size is None:
        per_replica_batch_size = max(1, cfg.batch_size // num_replicas_in_sync)
    max_length = metadata.length_stats.max or 0
    if max_length < 1:
        raise records.DatasetError("batching sorted_window needs length_stats.max in the "
                                   "metadata")
    budget = timestep_budget(cfg, metadata, num_replicas_in_sync, per_replica_batch_size,
                             auto=True)
    grid = (length_grid(max_length, cfg.length_grid) if cfg.length_grid
            else range(1, max_length + 1))
    return WindowPlan(window=cfg.sort_window, grid=tuple(grid),
                      batch_sizes=tuple(_capped_batch_size(per_replica_batch_size, budget, t)
                                        for t in grid),
                      min_efficiency=cfg.min_batch_efficiency)


def plan_buckets(cfg: DataConfig, metadata: DatasetMetadata, *,
                 num_replicas_in_sync: int = 1,
                 per_replica_batch_size: int | None = None) -> list[Bucket]:
    """The buckets of `batching: buckets`: one per boundary, the overflow bucket last.

    Args:
        cfg: the data config.
        metadata: the dataset metadata (`bucket_boundaries`, `length_stats`).
        num_replicas_in_sync: replicas sharing the global `timestep_budget`.
        per_replica_batch_size: the fixed batch size; defaults to
            `cfg.batch_size // num_replicas_in_sync`.
    """
    max_length = metadata.length_stats.max or 0
    if per_replica_batch_size is None:
        per_replica_batch_size = max(1, cfg.batch_size // num_replicas_in_sync)
    budget = timestep_budget(cfg, metadata, num_replicas_in_sync, per_replica_batch_size,
                             auto=False)
    boundaries = bucket_boundaries(cfg, metadata)
    buckets = [Bucket(b, b if cfg.pad_to_bucket_boundary else None,
                      _capped_batch_size(per_replica_batch_size, budget, b))
               for b in boundaries]
    overflow_length = max([max_length, *boundaries[-1:], 1])
    buckets.append(Bucket(None, None,
                          _capped_batch_size(per_replica_batch_size, budget, overflow_length)))
    return buckets


def bucket_boundaries(cfg: DataConfig, metadata: DatasetMetadata) -> list[int]:
    """The boundaries `batching: buckets` uses.

    `cfg.bucket_boundaries`, else with `cfg.num_buckets` that many derived from
    the metadata's length histogram (`optimal_boundaries`), else the
    metadata's `bucket_boundaries`.
    """
    if cfg.bucket_boundaries:
        boundaries = [int(b) for b in cfg.bucket_boundaries]
    elif cfg.num_buckets:
        histogram = metadata.length_stats.histogram
        if not histogram.edges:
            raise records.DatasetError("num_buckets needs length_stats.histogram in the "
                                       "metadata")
        boundaries = optimal_boundaries(histogram, cfg.num_buckets)
    else:
        boundaries = [int(b) for b in metadata.bucket_boundaries]
    if any(b >= c for b, c in zip(boundaries, boundaries[1:], strict=False)) or (
            boundaries and boundaries[0] < 1):
        raise records.DatasetError(f"bucket boundaries must be increasing positive ints; "
                                   f"Received: {boundaries}")
    return boundaries


def timestep_budget(cfg: DataConfig, metadata: DatasetMetadata, num_replicas_in_sync: int,
                    per_replica_batch_size: int, *, auto: bool) -> int:
    """The per-replica timestep budget; 0 for none.

    `cfg.timestep_budget` -1 means `per_replica_batch_size * length_stats.mean`
    when `auto` (sorted windows), else none.
    """
    if cfg.timestep_budget == -1:
        if not auto:
            return 0
        mean = metadata.length_stats.mean
        if not mean:
            raise records.DatasetError("timestep_budget -1 (auto) needs length_stats.mean in "
                                       "the metadata; set data.timestep_budget")
        return max(1, round(per_replica_batch_size * float(mean)))
    budget = cfg.timestep_budget // num_replicas_in_sync if cfg.timestep_budget else 0
    if cfg.timestep_budget and budget < 1:
        raise ValueError(f"timestep_budget {cfg.timestep_budget} is smaller than the "
                         f"{num_replicas_in_sync} replicas it is split over")
    return budget


def _capped_batch_size(batch_size: int, budget: int, length: int) -> int:
    """Records in a batch padded to `length`: at most batch_size and budget // length."""
    return min(batch_size, max(1, budget // length)) if budget else batch_size


# ----------------------------------------------------------------------------- window cuts


def fixed_size_cuts(lengths: tf.Tensor, grid: tf.Tensor, sizes: tf.Tensor):
    """`window_cuts` when every full batch has the same size (no timestep budget):
    consecutive runs of the sorted records, computed without a loop."""
    import tensorflow as tf

    size = sizes[0]
    n = tf.size(lengths)
    num_batches = (n + size - 1) // size
    order = tf.argsort(lengths, stable=True)
    # The longest record of each batch: its last one in sorted order.
    longest = tf.gather(lengths, tf.gather(
        order, tf.minimum(tf.range(num_batches) * size + size - 1, n - 1)))
    # The first grid value >= longest; past the grid, the batch's longest.
    g = tf.minimum(tf.searchsorted(grid, longest, side="left"), tf.size(grid) - 1)
    rows = tf.reshape(tf.pad(order, [[0, num_batches * size - n]], constant_values=-1),
                      [num_batches, size])
    return rows, tf.maximum(tf.gather(grid, g), longest)


def window_cuts(lengths: tf.Tensor, grid: tf.Tensor, sizes: tf.Tensor,
                min_efficiency: float = 0.0):
    """Cuts a window into batches: `(order [num_batches, max_size], pad [num_batches])`.

    Records sorted by length (stable) are taken in order. A batch starting at
    record i is padded to the first grid value T whose full batch (`sizes`)
    of records i, i+1, ... all fit in T, and holds that many records; only a
    window's last batch may hold fewer. Lengths beyond the last grid value pad
    to their batch's longest. With `min_efficiency`, a batch ends before the
    first record j that would leave less than that fraction of it real if
    padded to j's (grid) length, and is then padded to its own last record's
    grid length: in a sparse tail of long sequences, a few records far apart
    in length no longer pad to the longest together. `order` rows list the
    batch's record indices, padded with -1.
    """
    import tensorflow as tf

    order = tf.argsort(lengths, stable=True)
    sorted_lengths = tf.gather(lengths, order)
    n = tf.size(lengths)
    max_size = tf.reduce_max(sizes)
    # Each record's length rounded up to the grid (itself past the grid's end).
    on_grid = tf.maximum(sorted_lengths, tf.gather(grid, tf.minimum(
        tf.searchsorted(grid, sorted_lengths, side="left"), tf.size(grid) - 1)))

    def efficient_size(start, size):
        """The most of `size` records from `start` keeping the batch efficient enough."""
        real = tf.cast(tf.cumsum(sorted_lengths[start:start + size]), tf.float32)
        count = tf.cast(tf.range(1, size + 1), tf.float32)
        padded = count * tf.cast(on_grid[start:start + size], tf.float32)
        # Record 0 always stays: a lone record is as efficient as its grid allows.
        too_sparse = tf.logical_and(real < min_efficiency * padded, count > 1.0)
        return tf.where(tf.reduce_any(too_sparse),
                        tf.argmax(tf.cast(too_sparse, tf.int32), output_type=tf.int32), size)

    def cut(start, rows, pads):
        last = tf.minimum(start + sizes - 1, n - 1)
        fits = tf.gather(sorted_lengths, last) <= grid
        g = tf.where(tf.reduce_any(fits), tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32),
                     tf.size(grid) - 1)
        full = tf.minimum(sizes[g], n - start)
        pad = tf.maximum(grid[g], sorted_lengths[start + full - 1])
        size = full
        if min_efficiency:
            size = efficient_size(start, full)
            pad = tf.where(size < full, on_grid[start + size - 1], pad)
        row = tf.pad(order[start:start + size], [[0, max_size - size]], constant_values=-1)
        return start + size, rows.write(rows.size(), row), pads.write(pads.size(), pad)

    _, rows, pads = tf.while_loop(
        lambda start, rows, pads: start < n, cut,
        (tf.constant(0), tf.TensorArray(tf.int32, size=0, dynamic_size=True,
                                        element_shape=[None]),
         tf.TensorArray(tf.int32, size=0, dynamic_size=True)))
    return rows.stack(), pads.stack()


def gather_batch(window, order, pad, finish: ElementFinisher):
    """One batch of a parsed window: records `order` (ignoring -1), right-padded to
    T=`pad` with one gather from the window's steps."""
    import tensorflow as tf

    order = tf.boolean_mask(order, order >= 0)
    length = tf.gather(window["length"], order)
    start = tf.gather(window["start"], order)
    positions = tf.range(pad)
    real = positions[tf.newaxis, :] < length[:, tf.newaxis]
    positions = tf.cast(positions, tf.int64)
    rows = tf.where(real, start[:, tf.newaxis] + positions[tf.newaxis, :], 0)
    x = tf.where(real[:, :, tf.newaxis], tf.gather(window["steps"], rows), 0.0)
    observed = time_delta = None
    if "observed" in window:
        observed = tf.where(real[:, :, tf.newaxis], tf.gather(window["observed"], rows), 0.0)
    if "time_delta" in window:
        time_delta = tf.where(real, tf.gather(window["time_delta"], rows), 0.0)
    return finish(x, length, tf.gather(window["id"], order), tf.gather(window["label"], order),
                  real, observed, time_delta)


# ----------------------------------------------------------------------------- buckets


def bucket_batches(records_ds: tf.data.Dataset, buckets: Sequence[Bucket], num_features: int,
                   finish: ElementFinisher) -> tf.data.Dataset:
    """Per-record dicts (`x` [L, F], `length`, `id`, `label`) -> element-contract
    batches grouped by length bucket as they stream by (`batching: buckets`)."""
    import tensorflow as tf

    # Unbatched ragged rows arrive as rank-0-ragged specs, which padded_batch refuses.
    ds = records_ds.map(lambda record: {key: tf.convert_to_tensor(value)
                                        for key, value in record.items()},
                        num_parallel_calls=tf.data.AUTOTUNE)
    boundaries = tf.constant([b.max_length for b in buckets[:-1]], tf.int32)
    batch_sizes = tf.constant([b.batch_size for b in buckets], tf.int64)
    pad_lengths = tf.constant([-1 if b.pad_length is None else b.pad_length for b in buckets],
                              tf.int64)

    def bucket_of(element):
        # Bucket i holds (b[i-1], b[i]]; lengths above the last boundary overflow.
        return tf.reduce_sum(tf.cast(element["length"] > boundaries, tf.int64))

    def batch_bucket(key, window):
        return window.padded_batch(batch_sizes[key], _padded_shapes(
            num_features, pad_lengths[key], "observed" in window.element_spec,
            "time_delta" in window.element_spec))

    ds = ds.group_by_window(key_func=bucket_of, reduce_func=batch_bucket,
                            window_size_func=lambda key: batch_sizes[key])
    return ds.map(lambda batch: finish(batch["x"], batch["length"], batch["id"],
                                       batch["label"], observed=batch.get("observed"),
                                       time_delta=batch.get("time_delta")),
                  num_parallel_calls=tf.data.AUTOTUNE)


def _padded_shapes(num_features: int, pad_length: tf.Tensor, observed: bool = False,
                   time_delta: bool = False) -> dict[str, tf.Tensor]:
    """`pad_length` -1 means each batch's longest sequence."""
    import tensorflow as tf

    steps = tf.reshape(tf.cast(pad_length, tf.int64), [1])
    scalar = tf.constant([], tf.int64)
    shapes = {"x": tf.concat([steps, [num_features]], 0), "id": scalar, "label": scalar,
              "length": scalar}
    if observed:
        shapes["observed"] = shapes["x"]
    if time_delta:
        shapes["time_delta"] = steps
    return shapes


# ----------------------------------------------------------------------------- the element


class ElementFinisher:
    """Padded steps `x` [B, T, F] and lengths -> the element `(inputs, target, weights)`.

    The mask, the weights and the reversed target are made here, once per
    batch, from the lengths (never from `x == 0`). With the observed mask
    (`observed` [B, T, F], missing entries already filled in `x`), the inputs
    carry it, the target is 0.0 on missing entries and the weights are the
    target's observed mask (reversed with it). With `time_delta` [B, T] (0.0
    on padding already), the inputs carry it; target and weights are as
    without it (an input only).

    Args:
        num_features: F.
        reverse_target: the target is each sequence reversed within its length.
        with_keys: add `id`, `label` and `length` to the inputs dict.
    """

    def __init__(self, num_features: int, reverse_target: bool, with_keys: bool):
        self.num_features = num_features
        self.reverse_target = reverse_target
        self.with_keys = with_keys

    def __call__(self, x, length, ids, labels, real=None, observed=None, time_delta=None):
        import tensorflow as tf

        x = tf.ensure_shape(x, [None, None, self.num_features])
        if real is None:
            real = tf.sequence_mask(length, tf.shape(x)[1])
        mask = tf.cast(real, tf.float32)
        inputs = {"x": x, "mask": mask}
        target, weights = x, mask
        if observed is not None:
            observed = tf.ensure_shape(observed, [None, None, self.num_features])
            inputs["observed"] = observed
            target, weights = tf.where(observed > 0.5, x, 0.0), observed
        if time_delta is not None:
            inputs["time_delta"] = tf.ensure_shape(time_delta, [None, None])
        if self.reverse_target:
            # Reverses [i, :length[i]] and leaves the padding after it in place.
            target = tf.reverse_sequence(target, length, seq_axis=1, batch_axis=0)
            if observed is not None:
                weights = tf.reverse_sequence(weights, length, seq_axis=1, batch_axis=0)
        if self.with_keys:
            inputs.update(id=ids, label=labels, length=length)
        return inputs, target, weights
