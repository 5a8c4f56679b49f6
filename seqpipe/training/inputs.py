"""Feeding the trainer: each epoch's batches of each split, read ahead of the step.

An epoch's data order derives from `data.seed + epoch` alone, so a resumed
epoch sees exactly the batches it had not yet seen (its first `skip` global
steps are skipped). The pipeline itself is `seqpipe.input_pipeline.data`;
this module decides how the trainer iterates it:

* with one replica, each split is read by one iterator for the whole run
  (`EpochStream`: every epoch's batches, then an end marker): a new iterator
  per epoch re-instantiates the pipeline's functions, which costs more CPU
  than reading a small split, and the stream's prefetch reads the next
  epoch's first window (sorted windows must read a whole window before their
  first batch) while the current split finishes;
* with several replicas, `tf.distribute` evens out each epoch's last step for
  an iterator that ends with the epoch, so those get one per epoch, built
  from one traced function per split and opened ahead in a background thread
  (not under `MultiWorkerMirroredStrategy`, whose iterators run collectives);
* with `data.service`, each epoch's train batches come from the tf.data
  service (`seqpipe.training.data_service`), one iterator per epoch.

Batch sizes in `DataConfig` are global: with N replicas each one gets 1/N.

What a run reads is planned once, before the first step (`plan_inputs`): the
validation records (the `val` split, or a share of train held out when the
dataset has none, `train.validation_fraction`) and the passes over the
training records per epoch (`train.min_steps`). The plan is a pure function
of the data and the config, so a resumed run and every worker of a
distributed one plan the same.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import tensorflow as tf

from seqpipe.config import Config
from seqpipe.dataset.metadata import DatasetMetadata
from seqpipe.input_pipeline import data
from seqpipe.training.data_service import ServiceInput
from seqpipe.training.step import single_replica


@dataclasses.dataclass(frozen=True)
class InputPlan:
    """What a run trains and validates on, and how many passes make an epoch.

    Attributes:
        train_records: the records trained on.
        val_records: the records validated on after each epoch (0: none).
        holdout: the share of the train split held out as the validation
            records, when the dataset has no `val` records (else None).
        passes_per_epoch: passes over the training records per epoch.
    """

    train_records: int
    val_records: int
    holdout: float | None
    passes_per_epoch: int

    def summary(self) -> dict[str, Any]:
        """The plan's entries of `summary.json`."""
        validation = ("none" if self.val_records == 0
                      else "val split" if self.holdout is None else "held out of train")
        return {"num_train_records": self.train_records, "num_val_records": self.val_records,
                "validation": validation, "passes_per_epoch": self.passes_per_epoch}

    def describe(self) -> list[str]:
        """What a user should know about the plan, one line each (nothing when it is plain)."""
        lines = []
        if self.holdout is not None:
            lines.append(f"no val split: {self.val_records} of "
                         f"{self.train_records + self.val_records} train records held out "
                         f"(train.validation_fraction={self.holdout}) to validate each epoch")
        if self.passes_per_epoch > 1:
            lines.append(f"small train split: {self.passes_per_epoch} passes over it per "
                         "epoch (train.min_steps)")
        return lines


def plan_inputs(data_dir: str | Path, cfg: Config, metadata: DatasetMetadata) -> InputPlan:
    """The run's `InputPlan`.

    Validation is held out of train only when the dataset has no `val`
    records, `train.validation_fraction` > 0, and the hash split leaves
    records on both sides (a train split of a few records may hold out none);
    finding out reads the train split once. Passes per epoch: when
    `train.epochs` epochs of `ceil(records / batch_size)` batches fall short
    of `train.min_steps` (small data), the batches of one pass are counted by
    reading it (variable lengths cut windows into more, smaller batches than
    that estimate), and the passes follow from the count.

    Example: 270 train records, no val, fraction 0.1, batch size 32, 30
    epochs, `min_steps: 1000`: about 27 records held out, 243 trained on; if
    one pass over them is 8 batches, `ceil(1000 / (30 * 8)) == 5` passes per
    epoch.
    """
    train_records = metadata.num_records("train")
    val_records = metadata.num_records("val")
    holdout = None
    fraction = cfg.train.validation_fraction
    if val_records == 0 and fraction > 0:
        held_out = data.count_held_out(data_dir, "train", fraction, metadata=metadata)
        if 0 < held_out < train_records:
            holdout, val_records, train_records = fraction, held_out, train_records - held_out
    passes = passes_per_epoch(cfg, math.ceil(train_records / cfg.data.batch_size))
    if passes > 1:
        trained = None if holdout is None else data.Holdout(holdout, held_out=False)
        passes = passes_per_epoch(cfg, data.count_elements(data.make_dataset(
            data_dir, "train", cfg.data, training=True, metadata=metadata, holdout=trained)))
    return InputPlan(train_records, val_records, holdout, passes)


def passes_per_epoch(cfg: Config, batches_per_pass: int) -> int:
    """Passes per epoch so that `train.epochs` epochs of `batches_per_pass` batches
    take at least `train.min_steps` steps."""
    return max(1, math.ceil(cfg.train.min_steps / (cfg.train.epochs * max(1, batches_per_pass))))


class TrainingInputs:
    """The batches `Trainer.run()` iterates: `(split, epoch)` from global step `skip`.

    The train split is read in training order (shuffled, seeded by the
    epoch; `plan.passes_per_epoch` passes, each in a new order), every other
    split in evaluation order. `split` is the role (`train`, `val`): with a
    held-out validation set both read the dataset's train split, each its
    side of the holdout.
    """

    def __init__(self, data_dir: str | Path, cfg: Config, metadata: DatasetMetadata,
                 strategy: tf.distribute.Strategy, plan: InputPlan | None = None):
        self.data_dir = data_dir
        self.cfg = cfg
        self.metadata = metadata
        self.strategy = strategy
        self.plan = plan if plan is not None else plan_inputs(data_dir, cfg, metadata)
        self.has_val = self.plan.val_records > 0
        self.service = ServiceInput(cfg.data.service, strategy) if cfg.data.service else None
        self._dataset_builders: dict[tuple, Callable] = {}
        # One replica: each split's batches of every epoch from one iterator.
        self._streams: dict[str, EpochStream] = {}
        # Opened inputs by (split, epoch, skip): `_open` futures.
        self._opened: dict[tuple[str, int, int], concurrent.futures.Future] = {}
        # Per-epoch inputs (several replicas) are opened ahead in a thread, except
        # under MultiWorkerMirroredStrategy, whose iterators run collectives.
        self._thread = (
            None if single_replica(strategy)
            or isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            else concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="seqpipe-input"))

    def batches(self, split: str, epoch: int, skip: int = 0) -> Iterator[Any]:
        """The batches of `(split, epoch)` from `skip`, as `Trainer.run()` reads them.

        One replica: from the split's `EpochStream`. Several: from an input
        opened ahead if any, and the input of the split `run()` iterates next
        is opened ahead now. With `data.service`, a train epoch from its
        start comes from the service (a resumed one: locally, which skips exactly).
        """
        if self.service is not None and split == "train" and skip == 0:
            return self.service.epoch_batches(epoch, lambda context: self._epoch_dataset(
                split, context, self.cfg.data.seed + epoch, 0))
        if single_replica(self.strategy):
            return self.stream(split, epoch, skip).epoch()
        future = self._open(split, epoch, skip)
        self._opened = {}  # inputs opened for another split or epoch will not be used
        following = self._next_split(split, epoch)
        if following is not None:
            self._open(*following)
        return _chain_first(future)

    def distributed_dataset(self, split: str, epoch: int,
                            skip: int = 0) -> tf.distribute.DistributedDataset:
        """A fresh pass over the distributed batches of `(split, epoch)` from global step `skip`."""
        seed = tf.constant(self.cfg.data.seed + epoch, tf.int64)
        skip = tf.constant(skip, tf.int64)

        def dataset_fn(input_context):
            return self._dataset_builder(split, input_context)(seed, skip)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def stream(self, split: str, epoch: int, skip: int = 0) -> EpochStream:
        """The split's stream, positioned at `(epoch, skip)` (restarted there if it is not).

        Asked again at the position it is at, the same stream comes back.
        """
        stream = self._streams.get(split)
        if stream is None or not stream.is_at(epoch, skip):
            def epoch_dataset(epoch_index, skip_batches):
                return self._epoch_dataset(split, None, self.cfg.data.seed + epoch_index,
                                           skip_batches)

            # Through the run's last epoch (further when asked for a later one).
            end_epoch = max(self.cfg.train.epochs, epoch + 1)
            stream = EpochStream(epoch_dataset, self.metadata.num_features, epoch, skip,
                                 end_epoch,
                                 observed=data.uses_observed(self.cfg.data, self.metadata),
                                 time_delta=self.cfg.data.time_delta)
            self._streams[split] = stream
        return stream

    def describe(self) -> list[str]:
        """What a user should know about the run's input, one line each."""
        return self.plan.describe() + (self.service.describe() if self.service else [])

    def padding_efficiency(self) -> float:
        """The train split's padding efficiency in evaluation order."""
        return data.padding_efficiency(data.make_dataset(
            self.data_dir, "train", self.cfg.data, training=False,
            metadata=self.metadata))["efficiency"]

    def close(self) -> None:
        """Drops inputs opened ahead and stops their thread (`Trainer.run()` does it at the end)."""
        self._opened = {}
        self._streams = {}
        if self._thread is not None:
            self._thread.shutdown(wait=True, cancel_futures=True)
            self._thread = None

    def _next_split(self, split: str, epoch: int) -> tuple[str, int, int] | None:
        """What `run()` iterates after `(split, epoch)`: val, else the next epoch."""
        if split == "train" and self.has_val:
            return "val", epoch, 0
        if epoch + 1 < self.cfg.train.epochs and self.service is None:
            return "train", epoch + 1, 0
        return None

    def _open(self, split: str, epoch: int, skip: int) -> concurrent.futures.Future:
        """Starts building the input of `(split, epoch)` from `skip` and fetching its first batch.

        In the background thread when there is one, else right here.
        """
        key = (split, epoch, skip)
        if key not in self._opened:
            def first_batch():
                iterator = iter(self.distributed_dataset(split, epoch, skip))
                return iterator, next(iterator, None)

            if self._thread is None:
                future: concurrent.futures.Future = concurrent.futures.Future()
                try:
                    future.set_result(first_batch())
                except Exception as error:  # noqa: BLE001 - re-raised by result()
                    future.set_exception(error)
            else:
                future = self._thread.submit(first_batch)
            self._opened[key] = future
        return self._opened[key]

    def _dataset_builder(self, split: str,
                         input_context: tf.distribute.InputContext) -> Callable:
        """`(seed, skip) -> dataset` of one split and input pipeline, traced once.

        Building the pipeline in Python (tracing its functions) costs about as
        much as reading a small split and holds the GIL while the model trains;
        a `tf.function` returning the dataset does that once per split, and
        every epoch is one call with its seed.
        """
        key = (split, input_context.num_input_pipelines,
               input_context.input_pipeline_id, input_context.num_replicas_in_sync)
        if key not in self._dataset_builders:
            # One global step takes one batch per local replica from this pipeline.
            local_replicas = (input_context.num_replicas_in_sync
                              // input_context.num_input_pipelines)

            @tf.function(input_signature=[tf.TensorSpec([], tf.int64)] * 2, autograph=False)
            def build(seed, skip):
                return self._epoch_dataset(split, input_context, seed, skip * local_replicas)

            self._dataset_builders[key] = build
        return self._dataset_builders[key]

    def _epoch_dataset(self, split: str, input_context: tf.distribute.InputContext | None,
                       seed: tf.Tensor, skip_batches: tf.Tensor) -> tf.data.Dataset:
        """One epoch of a split from batch `skip_batches`; traced, with tensor arguments."""
        # The order then depends on `data.seed` alone, and tf.data's seed helper
        # cannot take a tensor seed under a graph seed of 0
        # (`keras.utils.set_random_seed(0)`): it compares the pair to (0, 0).
        tf.compat.v1.get_default_graph().seed = None
        source_split, holdout = self._source(split)
        ds = data.make_dataset(self.data_dir, source_split, self.cfg.data,
                               training=split == "train", metadata=self.metadata,
                               input_context=input_context, seed=seed, holdout=holdout)
        if split == "train" and self.plan.passes_per_epoch > 1:
            ds = ds.repeat(self.plan.passes_per_epoch)  # each pass reshuffles, seeded
        return ds.skip(skip_batches)

    def _source(self, split: str) -> tuple[str, data.Holdout | None]:
        """The dataset split a role reads, and the side of the holdout it keeps."""
        if self.plan.holdout is None or split not in ("train", "val"):
            return split, None
        return "train", data.Holdout(self.plan.holdout, held_out=split == "val")


class EpochStream:
    """The batches of every epoch of one split from a single iterator.

    `Dataset.range(first_epoch, end_epoch)` -> each epoch's dataset (seeded
    by its index, the first skipping `skip` batches) followed by one empty
    batch that marks its end. Creating an iterator per epoch costs more CPU
    than reading a small split (every function of the pipeline is
    instantiated again); one iterator instantiates them once, and its prefetch
    reads the next epoch's first window while this one finishes, with no
    thread of ours. The stream ends with the run's last epoch: an epoch read
    ahead past it would only be thrown away.
    """

    def __init__(self, epoch_dataset: Callable[[tf.Tensor, tf.Tensor], tf.data.Dataset],
                 num_features: int, first_epoch: int, skip: int, end_epoch: int,
                 observed: bool = False, time_delta: bool = False):
        steps, mask = tf.zeros([0, 0, num_features]), tf.zeros([0, 0])
        # Batches with the observed mask have per-entry weights (seqpipe.input_pipeline).
        inputs = {"x": steps, "mask": mask, **({"observed": steps} if observed else {}),
                  **({"time_delta": mask} if time_delta else {})}
        marker = tf.data.Dataset.from_tensors((inputs, steps, steps if observed else mask))
        first = tf.constant(first_epoch, tf.int64)

        def with_end_marker(epoch):
            skip_steps = tf.where(tf.equal(epoch, first), tf.constant(skip, tf.int64), 0)
            return epoch_dataset(epoch, skip_steps).concatenate(marker)

        stream = tf.data.Dataset.range(first_epoch, end_epoch).flat_map(with_end_marker)
        # Without the autotuner's thread, dropping the iterator while it reads ahead
        # (early stopping, a restart) takes 0.5 s instead of 10-13 s on 6,000 records.
        options = tf.data.Options()
        options.autotune.enabled = False
        self._iterator = iter(stream.prefetch(1).with_options(options))
        self._position: tuple[int, int] | None = (first_epoch, skip)
        self._end_epoch = end_epoch

    def is_at(self, epoch: int, skip: int) -> bool:
        """Whether `epoch()` would yield the batches of `epoch` from step `skip`
        (never at or past the stream's end)."""
        return self._position == (epoch, skip) and epoch < self._end_epoch

    def epoch(self) -> Iterator[Any]:
        """The batches of the next epoch. Stopped early, the stream is lost
        (`is_at` is then always false)."""
        epoch, _ = self._position
        self._position = None
        for batch in self._iterator:
            if batch[2].shape[0] == 0:  # the end marker
                self._position = (epoch + 1, 0)
                return
            yield batch


def _chain_first(future: concurrent.futures.Future) -> Iterator[Any]:
    """The batches of an opened input: its first batch, then the rest."""
    iterator, first = future.result()
    if first is None:
        return
    yield first
    yield from iterator
