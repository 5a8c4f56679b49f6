"""The datasets of the element contract: a split for training or inference, or arrays.

`make_dataset` chains `reading` (the shards of a split, read as serialized
records) and `batching` (windows sorted and cut, or records bucketed, then
padded) into a `tf.data.Dataset` of the element contract stated in
`seqpipe.input_pipeline`. `padding_efficiency` measures it.

Every sorted-window batch goes through the same two functions
(`WindowSteps`): parse-and-cut a window of serialized records
(`reading.parse_window`, `WindowPlan.cutter`) and gather one batch
(`batching.gather_batch`). `make_dataset` runs them inside tf.data;
`inference_batches` (a split, one pass, fixed order, for embedding) and
`array_batches` (in-memory arrays, serialized as records) call them as
`tf.function`s traced once per process, on windows from the same reader:
a tf.data pipeline of parse and cut functions is instantiated again for
every iterator, which on a split of a few thousand records costs more than
reading it.

Order, shuffling, distribution
------------------------------

`training=True` shuffles records (buffer `shuffle_buffer`, seed `seed`, a
new order every iteration), file order and (sorted windows) batch order,
unless `deterministic`; there is no `repeat`: iterate the dataset once per
epoch. `training=False` reads in a fixed order (sorted windows: ascending
length within each window). Bucketed batches come out grouped by bucket as
they fill. Either way the parallel reads and maps keep their order, so the
batches of a dataset's first iteration are a pure function of the data and
the seed: the trainer seeds epoch `e` with `seed + e` and a run resumed
mid-epoch skips exactly the batches it had trained.

`DataConfig.batch_size` and `timestep_budget` are GLOBAL (summed over
replicas). With an `input_context` (`strategy.distribute_datasets_from_function`)
each input pipeline batches `input_context.get_per_replica_batch_size(batch_size)`
records, or uses a budget of `timestep_budget // num_replicas_in_sync`, and
reads a disjoint part of the data (`reading.read_records`). Pipelines may
yield different numbers of batches: bucketing makes per-worker batch counts
uneven.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from seqpipe.config import DataConfig
from seqpipe.dataset import records
from seqpipe.dataset.metadata import DatasetMetadata, FeatureStats, LengthStats, TimeDeltaStats
from seqpipe.input_pipeline import batching, reading

AUTOTUNE = tf.data.AUTOTUNE

Element = tuple[dict[str, tf.Tensor], tf.Tensor, tf.Tensor]


def make_dataset(
    data_dir: str | Path,
    split: str,
    cfg: DataConfig,
    *,
    training: bool,
    metadata: DatasetMetadata | None = None,
    with_keys: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    skip_corrupt: bool = False,
    normalization: FeatureStats | None = None,
    seed: int | tf.Tensor | None = None,
    holdout: Holdout | None = None,
    observed: bool | None = None,
    time_stats: TimeDeltaStats | None = None,
) -> tf.data.Dataset:
    """The batched `(inputs, targets, weights)` dataset of one split.

    Args:
        data_dir: a dataset directory written by `seqpipe preprocess`.
        split: `train`, `val` or `test`.
        cfg: the data config; `batch_size` and `timestep_budget` are global.
        training: shuffle (unless `cfg.deterministic`); else a fixed order.
            No repeat either way: iterate once per epoch.
        metadata: the directory's metadata if already read.
        with_keys: add `id`, `label` and `length` to the inputs dict.
        input_context: from `strategy.distribute_datasets_from_function`; this
            pipeline then reads its share and batches per replica.
        skip_corrupt: skip unreadable shard tails and unparseable records
            with a warning instead of failing.
        normalization: the `feature_stats` to normalize with instead of
            this dataset's own; embedding new data passes those of
            the data the model was trained on.
        seed: the shuffle seed, `cfg.seed` if None. May be a scalar int64
            tensor: called inside a `tf.function` with the seed as its
            argument, this builds every epoch's dataset from one trace
            (`seqpipe.training.inputs` does that).
        holdout: read only the records of the split that `holdout` keeps
            (a validation set carved from train, or the rest of train).
        observed: whether batches carry `inputs["observed"]` (missing entries
            filled with `cfg.fill`); None: `uses_observed(cfg, metadata)` of
            this dataset. Embedding new data passes the answer for the data
            the model was trained on.
        time_stats: with `cfg.time_delta`, the `time_stats` to normalize the
            time gaps with instead of this dataset's own (embedding new data
            passes those of the data the model was trained on).

    Returns:
        A dataset following the element contract (`seqpipe.input_pipeline`).

    Raises:
        records.DatasetError: missing or incompatible metadata, no shards for
            the split, or metadata lacking what `cfg` needs (times for
            `cfg.time_delta`).
    """
    source = reading.split_source(data_dir, split, metadata)
    ordered = not training or cfg.deterministic
    seed = cfg.seed if seed is None else seed
    pipelines, pipeline_id, replicas = 1, 0, 1
    if input_context is not None:
        pipelines = input_context.num_input_pipelines
        pipeline_id = input_context.input_pipeline_id
        replicas = input_context.num_replicas_in_sync
    pairs = reading.read_records(source, skip_corrupt=skip_corrupt,
                                 num_input_pipelines=pipelines, input_pipeline_id=pipeline_id,
                                 shuffle_buffer=0 if ordered else cfg.shuffle_buffer, seed=seed)
    if holdout is not None:
        pairs = pairs.filter(holdout.keeps)
    stats = normalization if normalization is not None else source.metadata.feature_stats
    norm = _normalization(cfg, stats, source.num_features)
    fill = _fill(cfg, source.metadata, observed)
    times = _time_normalization(cfg, source, time_stats)
    per_replica_batch = (cfg.batch_size if input_context is None
                         else input_context.get_per_replica_batch_size(cfg.batch_size))
    if cfg.batching == "sorted_window":
        plan = batching.plan_window(cfg, source.metadata, num_replicas_in_sync=replicas,
                                    per_replica_batch_size=per_replica_batch)
        ds = WindowSteps(source.num_features, norm, plan, cfg.reverse_target,
                         with_keys, fill, times).batches(pairs)
        if not ordered:
            batches_per_window = -(-plan.window // min(plan.batch_sizes))
            ds = ds.shuffle(min(batches_per_window, plan.window), seed=seed,
                            reshuffle_each_iteration=True)
    else:
        buckets = batching.plan_buckets(cfg, source.metadata, num_replicas_in_sync=replicas,
                                        per_replica_batch_size=per_replica_batch)
        finish = batching.ElementFinisher(source.num_features, cfg.reverse_target, with_keys)
        ds = batching.bucket_batches(
            reading.parse_records(pairs, source.num_features, norm, fill, times),
            buckets, source.num_features, finish)
    return _with_options(ds.prefetch(AUTOTUNE), sharded=input_context is not None)


@dataclasses.dataclass(frozen=True)
class Holdout:
    """A fixed share of a split's records, set apart: validation carved from train.

    A record is held out when the 64-bit FarmHash fingerprint of its
    serialized bytes falls in the lowest `fraction` of the hash range
    (`tf.strings.to_hash_bucket_fast`, which needs no parsing): a pure
    function of the record, so every epoch, every input pipeline of a
    distributed run and a resumed run agree on it, and a record is held out
    or not whatever the order, sharding or shard count of the split. The
    share held out is `fraction` of the records in expectation, not exactly
    (`count_held_out` tells how many).

    Attributes:
        fraction: the share of records held out, in (0, 1).
        held_out: keep the held-out records (the carved validation set) if
            true, all the others (what is left to train on) if false.
    """

    fraction: float
    held_out: bool

    _BUCKETS = 1 << 20

    def __post_init__(self):
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"holdout fraction must be in (0, 1), got {self.fraction}")

    def keeps(self, path: tf.Tensor, serialized: tf.Tensor) -> tf.Tensor:
        """Whether a `(shard path, serialized record)` pair is on this side of the holdout."""
        del path
        bucket = tf.strings.to_hash_bucket_fast(serialized, self._BUCKETS)
        below = bucket < round(self.fraction * self._BUCKETS)
        return below if self.held_out else tf.logical_not(below)


def count_held_out(data_dir: str | Path, split: str, fraction: float, *,
                   metadata: DatasetMetadata | None = None) -> int:
    """How many records of `split` `Holdout(fraction, held_out=True)` keeps (one read of it)."""
    source = reading.split_source(data_dir, split, metadata)
    return count_elements(reading.read_records(source).filter(
        Holdout(fraction, held_out=True).keeps))


def count_elements(dataset: tf.data.Dataset) -> int:
    """The elements of one pass over `dataset` (reads it; nothing is kept)."""
    return int(dataset.reduce(tf.constant(0, tf.int64), lambda count, *_: count + 1))


def inference_batches(
    data_dir: str | Path,
    split: str,
    cfg: DataConfig,
    *,
    metadata: DatasetMetadata | None = None,
    normalization: FeatureStats | None = None,
    skip_corrupt: bool = False,
    observed: bool | None = None,
    time_stats: TimeDeltaStats | None = None,
) -> Iterator[Element]:
    """The batches of a whole split in a fixed order, eagerly, for inference.

    Exactly the batches of `make_dataset(..., training=False, with_keys=True)`
    with `batching: sorted_window` (whatever `cfg.batching`: the vectors of an
    encoder do not depend on the batching): every record of the split once,
    with the same reader, parsing, normalization, checks and errors. Windows
    are parsed as they are needed, so memory holds one window of records.

    Raises:
        records.DatasetError: as `make_dataset`.
        tf.errors.InvalidArgumentError: a corrupt or truncated shard (naming
            it) or an inconsistent record (naming it and its shard), when the
            iteration reaches it.
    """
    source = reading.split_source(data_dir, split, metadata)
    stats = normalization if normalization is not None else source.metadata.feature_stats
    steps = WindowSteps(source.num_features, _normalization(cfg, stats, source.num_features),
                        batching.plan_window(cfg, source.metadata), cfg.reverse_target,
                        with_keys=True, fill=_fill(cfg, source.metadata, observed),
                        time_delta=_time_normalization(cfg, source, time_stats))
    yield from steps.eager_batches(reading.read_records(source, skip_corrupt=skip_corrupt))


def array_batches(sequences: Sequence[np.ndarray], ids: Sequence[str], cfg: DataConfig, *,
                  labels: Sequence[str] | None = None,
                  feature_stats: FeatureStats | None = None,
                  observed: bool = False,
                  time_deltas: Sequence[np.ndarray] | None = None,
                  time_stats: TimeDeltaStats | None = None) -> Iterator[Element]:
    """In-memory `[length, F]` arrays -> element-contract batches with keys, eagerly.

    The arrays are serialized as records (`records.encode_sequence`) and
    batched exactly as `inference_batches` batches a split holding them in
    this order (`batching.plan_window` of `cfg` with these lengths' maximum
    and mean); `inputs["id"]` tells which array each row is.

    Args:
        sequences: float arrays `[length >= 1, F]`, at least one.
        ids: one per array.
        cfg: the data config (batch size, budget, grid, efficiency floor,
            sort window, normalize, reverse_target).
        labels: one per array; default "".
        feature_stats: the `mean` and `std` to normalize with when `cfg.normalize`.
        observed: carry `inputs["observed"]`, NaN entries of the arrays being
            missing ones (filled with `cfg.fill`), for a model trained with it.
        time_deltas: one float32 `[length]` array of time gaps per array
            (`seqpipe.dataset.times.time_deltas`), needed with `cfg.time_delta`:
            `inputs["time_delta"]` is then computed as for a split.
        time_stats: the `time_stats` to normalize the time gaps with.
    """
    labels = [""] * len(sequences) if labels is None else labels
    if cfg.time_delta and (time_deltas is None or any(d is None for d in time_deltas)):
        raise records.DatasetError("data.time_delta needs times, but a sequence has none")
    deltas = time_deltas if cfg.time_delta else [None] * len(sequences)
    serialized = [records.encode_sequence(str(i), s, label, d)
                  for i, s, label, d in zip(ids, sequences, labels, deltas, strict=True)]
    lengths = np.asarray([len(s) for s in sequences])
    num_features = int(np.shape(sequences[0])[1])
    lengths_only = DatasetMetadata(num_features, splits={}, length_stats=LengthStats(
        max=int(lengths.max()), mean=float(lengths.mean())))
    plan = batching.plan_window(cfg, lengths_only)
    steps = WindowSteps(num_features, _normalization(cfg, feature_stats, num_features), plan,
                        cfg.reverse_target, with_keys=True, fill=cfg.fill if observed else None,
                        time_delta=reading.time_normalization(time_stats) if cfg.time_delta
                        else None)
    pairs = tf.data.Dataset.from_tensor_slices((["<in memory>"] * len(serialized), serialized))
    yield from steps.eager_batches(pairs)


@dataclasses.dataclass(frozen=True)
class WindowSteps:
    """The two functions every sorted-window batch goes through, and their two drivers.

    Attributes:
        num_features: F.
        normalization: `(mean, std)` arrays, or None.
        plan: how windows are cut.
        reverse_target, with_keys: as `batching.ElementFinisher`.
        fill: None, or how missing entries are filled (`reading.fill_missing`)
            in batches that carry the observed mask.
        time_delta: None, or the `(log_mean, log_std)` of batches that carry
            `inputs["time_delta"]` (`reading.time_normalization`).
    """

    num_features: int
    normalization: tuple[np.ndarray, np.ndarray] | None
    plan: batching.WindowPlan
    reverse_target: bool
    with_keys: bool
    fill: str | None = None
    time_delta: tuple[float, float] | None = None

    def parse_and_cut(self, paths: tf.Tensor, serialized: tf.Tensor):
        """A window of serialized records -> `(window, order, pads)`: the parsed
        window and its batches (`WindowPlan.cutter`)."""
        window = reading.parse_window(paths, serialized, self.num_features, self.normalization,
                                      self.fill, self.time_delta)
        order, pads = self.plan.cutter()(window["length"])
        return window, order, pads

    def gather(self, window, rows: tf.Tensor, pad: tf.Tensor) -> Element:
        """One batch of a parsed window, padded to `pad`, as the element."""
        finish = batching.ElementFinisher(self.num_features, self.reverse_target, self.with_keys)
        return batching.gather_batch(window, rows, pad, finish)

    def batches(self, pairs: tf.data.Dataset) -> tf.data.Dataset:
        """`(path, record)` pairs -> their batches, inside tf.data."""
        windows = pairs.batch(self.plan.window).map(self.parse_and_cut,
                                                    num_parallel_calls=AUTOTUNE)
        return windows.flat_map(lambda window, order, pads: tf.data.Dataset.from_tensor_slices(
            (order, pads)).map(lambda rows, pad: self.gather(window, rows, pad)))

    def eager_batches(self, pairs: tf.data.Dataset) -> Iterator[Element]:
        """`(path, record)` pairs -> their batches, the functions called eagerly (traced
        once per process for these settings): only the reader is a tf.data pipeline."""
        parse_and_cut, gather = _traced(self._key())
        windows = pairs.batch(self.plan.window).prefetch(1)
        for paths, serialized in _with_options(windows, sharded=False):
            window, order, pads = parse_and_cut(paths, serialized)
            for rows, pad in zip(tf.unstack(order), tf.unstack(pads), strict=True):
                yield gather(window, rows, pad)

    def _key(self) -> tuple:
        """These settings as a hashable key (the arrays as tuples)."""
        norm = (None if self.normalization is None
                else tuple(tuple(a.tolist()) for a in self.normalization))
        return (self.num_features, norm, self.plan, self.reverse_target, self.with_keys,
                self.fill, self.time_delta)


@functools.lru_cache(maxsize=16)
def _traced(key: tuple):
    """`(parse_and_cut, gather)` of `WindowSteps(*key)` as `tf.function`s for any window
    and batch: one call per window and one per batch instead of dozens of eager ops."""
    num_features, norm, plan, reverse_target, with_keys, fill, time_delta = key
    if norm is not None:
        norm = tuple(np.asarray(a, np.float32) for a in norm)
    steps = WindowSteps(num_features, norm, plan, reverse_target, with_keys, fill, time_delta)
    strings = tf.TensorSpec([None], tf.string)
    window_spec = {"steps": tf.TensorSpec([None, num_features], tf.float32),
                   "start": tf.TensorSpec([None], tf.int64),
                   "length": tf.TensorSpec([None], tf.int32), "id": strings, "label": strings}
    if fill is not None:
        window_spec["observed"] = window_spec["steps"]
    if time_delta is not None:
        window_spec["time_delta"] = tf.TensorSpec([None], tf.float32)
    parse_and_cut = tf.function(steps.parse_and_cut, input_signature=[strings, strings],
                                autograph=False)
    gather = tf.function(steps.gather, autograph=False, input_signature=[
        window_spec, tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32)])
    return parse_and_cut, gather


def padding_efficiency(dataset: tf.data.Dataset) -> dict[str, Any]:
    """Iterates `dataset` once and measures how much of it is padding.

    Returns:
        `efficiency` (real / padded timesteps), `real_timesteps`,
        `padded_timesteps` (sum of B*T), `num_batches`, `num_records`,
        `distinct_shapes` (distinct [B, T] pairs: what a compiler retraces on),
        `distinct_lengths` (distinct T) and `batch_sizes` ({B: batches}).
    """
    real = padded = batches = num_records = 0
    shapes: set[tuple[int, int]] = set()
    sizes: dict[int, int] = {}
    for inputs, _, _ in dataset.as_numpy_iterator():
        b, t = inputs["mask"].shape
        real += int(inputs["mask"].sum())
        padded += b * t
        batches += 1
        num_records += b
        shapes.add((b, t))
        sizes[b] = sizes.get(b, 0) + 1
    return {
        "efficiency": real / padded if padded else float("nan"),
        "real_timesteps": real,
        "padded_timesteps": padded,
        "num_batches": batches,
        "num_records": num_records,
        "distinct_shapes": len(shapes),
        "distinct_lengths": len({t for _, t in shapes}),
        "batch_sizes": dict(sorted(sizes.items())),
    }


def uses_observed(cfg: DataConfig, metadata: DatasetMetadata) -> bool:
    """Whether batches of this data carry `inputs["observed"]` and models take it:
    `data.observed_mask: always`, or the dataset has missing entries."""
    return cfg.observed_mask == "always" or metadata.has_missing


def observed_for(cfg: DataConfig, trained_on: DatasetMetadata,
                 metadata: DatasetMetadata) -> bool:
    """`uses_observed` of a model's training data, for batches of other data for it.

    Raises:
        records.DatasetError: the data has missing entries but the model was
            trained without the observed mask (it cannot tell them apart).
    """
    observed = uses_observed(cfg, trained_on)
    if metadata.has_missing and not observed:
        raise records.DatasetError(
            "the data has missing entries but the model was trained on complete data "
            "without the observed mask; train with data.observed_mask: always")
    return observed


MODEL_INPUTS = ("x", "mask", "observed", "time_delta")


def model_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """The entries of a batch's inputs dict that the models take: `x`, `mask` and,
    for data with missing entries, `observed`, with `data.time_delta`,
    `time_delta` (not the keys `id`, `label`, `length`)."""
    return {key: inputs[key] for key in MODEL_INPUTS if key in inputs}


def check_times(cfg: DataConfig, metadata: DatasetMetadata, where: str | Path) -> None:
    """Raises `records.DatasetError` when `cfg.time_delta` asks for times `metadata`'s
    dataset (at `where`) does not have."""
    if cfg.time_delta and not metadata.has_times:
        raise records.DatasetError(
            f"{where}: data.time_delta needs times, but the dataset has none (give JSON "
            "lines a 't' list, or set preprocess.keep_time_column for long-format inputs)")


def _time_normalization(cfg: DataConfig, source: reading.SplitSource,
                        time_stats: TimeDeltaStats | None) -> tuple[float, float] | None:
    """`(log_mean, log_std)` of batches with `inputs["time_delta"]` (`cfg.time_delta`),
    from `time_stats` or else the split's dataset's own; None without."""
    if not cfg.time_delta:
        return None
    check_times(cfg, source.metadata, source.data_dir)
    return reading.time_normalization(time_stats if time_stats is not None
                                      else source.metadata.time_stats)


def _fill(cfg: DataConfig, metadata: DatasetMetadata, observed: bool | None) -> str | None:
    """`cfg.fill` when batches carry the observed mask (None: decided by `metadata`)."""
    if observed is None:
        observed = uses_observed(cfg, metadata)
    return cfg.fill if observed else None


def _normalization(cfg: DataConfig, feature_stats: FeatureStats | None,
                   num_features: int) -> tuple[np.ndarray, np.ndarray] | None:
    """`(mean, std)` to normalize with, or None when `cfg.normalize` is off."""
    if not cfg.normalize:
        return None
    return reading.normalization_arrays(feature_stats or FeatureStats(), num_features)


def _with_options(ds: tf.data.Dataset, *, sharded: bool) -> tf.data.Dataset:
    options = tf.data.Options()
    # Parallel reads and maps keep their order: the batches are a pure function
    # of the data and the seed, so a resumed epoch skips exactly the batches it
    # trained, and record sharding gives every pipeline the same record order.
    options.deterministic = True
    # Parallelism stays at its default (the core count, at most 16). The
    # model-based autotuner's thread makes deleting an exhausted iterator wait
    # (TF 2.21), once per split and epoch.
    options.autotune.enabled = False
    if sharded:
        # Already sharded by `reading.read_records`; keep tf.distribute from sharding again.
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF)
    return ds.with_options(options)
