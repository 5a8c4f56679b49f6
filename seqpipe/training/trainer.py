"""Training: one custom loop for every `tf.distribute` strategy.

Keras 3's `Model.fit` fails under `MultiWorkerMirroredStrategy`
(keras-team/keras#20585), so the trainer owns its loop and runs the same code
on one CPU, several local GPUs and many workers:

* each replica computes the *sum* of squared errors over its valid entries,
  its gradient, and the count of valid entries; counts and gradients are
  all-reduced and the gradient divided by the global count: exactly the
  gradient of the global masked mean (fairseq-style normalization), whatever
  the number of replicas and however padding is spread among them. Workers
  whose input runs out first join the remaining steps with empty batches;
* gradients are all-reduced and clipped by their *global* norm here, not by
  the optimizer: Keras clips each replica's partial gradient before its own
  all-reduce, which would change the result with the number of replicas;
* `tf.train.CheckpointManager` keeps a backup (every
  `train.checkpoint_every_steps` steps and at every epoch end) from which a
  killed run resumes mid-epoch with the same command, and the best weights by
  validation loss. Per-epoch data order derives from `data.seed + epoch`, so a
  resumed epoch sees exactly the batches it had not yet seen;
* with one replica, each split is read by one iterator for the whole run
  (`_EpochStream`: every epoch's batches, then an end marker): a new
  iterator per epoch re-instantiates the pipeline's functions, which costs
  more CPU than reading a small split, and the stream's prefetch reads the
  next epoch's first window (sorted windows must read a whole window before
  their first batch) while the current split finishes. With several
  replicas, `tf.distribute` evens out each epoch's last step for an iterator
  that ends with the epoch, so those get one per epoch, built from one
  traced function per split and opened ahead in a background thread (not
  under `MultiWorkerMirroredStrategy`, whose iterators run collectives).

Batch sizes in `DataConfig` are global: with N replicas each one gets 1/N.
A non-finite loss stops the run with an error naming the epoch and step,
before the backup is overwritten. `train.lr_schedule` sets the learning rate
per epoch (constant, cosine or on plateau) as a pure function of the history,
so resuming does not change it.

Outputs in the model directory:

    autoencoder.keras      the trained autoencoder (best weights), safe-mode loadable
    encoder/               SavedModel: serving_default(x, mask) -> {"embedding"}
    config.yaml            the resolved config (written at the start: a resumed
                           run must have the same model section)
    dataset_metadata.json  the training data's metadata.json (idem)
    history.json, .csv     per-epoch loss, val_loss, learning rate, timesteps/s
    summary.json           epochs, best val loss, throughput, padding efficiency
    checkpoints/           backup/ (resume) and best/
    logs/                  TensorBoard
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from seqpipe.config import Config, TrainConfig, dump_config, load_config, to_dict
from seqpipe.dataset import records
from seqpipe.errors import SeqpipeError
from seqpipe.input_pipeline import data
from seqpipe.model import autoencoder as models
from seqpipe.processes import process_alive
from seqpipe.training.model_dir import (
    AUTOENCODER_FILE,
    CONFIG_FILE,
    ENCODER_DIR,
    HISTORY_CSV,
    HISTORY_FILE,
    LOCK_FILE,
    METADATA_COPY,
    SUMMARY_FILE,
)

logger = logging.getLogger(__name__)



class TrainingError(SeqpipeError, RuntimeError):
    """Training cannot start or continue (bad data dir, model dir in use...)."""


@dataclasses.dataclass
class EpochResult:
    """What one pass over a split measured."""

    loss: float
    num_steps: int
    num_valid_timesteps: int
    seconds: float


def train(data_dir: str | Path, model_dir: str | Path, cfg: Config,
          verbose: bool = True) -> dict[str, Any]:
    """Trains the autoencoder on `data_dir` and exports it to `model_dir`.

    Started again with the same arguments after being killed, it resumes from
    the last backup and finishes the configured number of epochs.

    Args:
        data_dir: a dataset written by `seqpipe preprocess`.
        model_dir: where checkpoints, logs and the exported models go.
        cfg: the full configuration (`data`, `model`, `train` sections are used).
        verbose: progress bar (or log lines when not on a terminal).

    Returns:
        The training summary (also written to `summary.json`).

    Raises:
        TrainingError, records.DatasetError: before any step runs, when the
            data or the model directory do not fit.
    """
    model_dir = Path(model_dir)
    metadata = records.read_metadata(data_dir)
    check_model_dir_compatible(model_dir, metadata, data_dir, cfg)
    strategy = make_strategy(cfg.train.strategy)
    with _model_dir_lock(model_dir, is_chief(strategy)):
        return _Trainer(Path(data_dir), model_dir, cfg, metadata, strategy, verbose).run()


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy for `train.strategy`.

    `auto` picks `multi_worker` when `TF_CONFIG` describes more than one task,
    `mirrored` when there are several local GPUs, else the default strategy.
    """
    if name == "auto":
        name = _auto_strategy_name()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _auto_strategy_name() -> str:
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if sum(len(tasks) for tasks in cluster.values()) > 1:
        return "multi_worker"
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return "mirrored"
    return "default"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the shared outputs (always, unless multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def check_model_dir_compatible(model_dir: Path, metadata: dict[str, Any],
                               data_dir: str | Path, cfg: Config) -> None:
    """Refuses a model dir started on other data or with another model config.

    A run writes `dataset_metadata.json` and `config.yaml` when it starts, so
    resuming (or continuing) with a different dataset shape or architecture
    fails here, before any step, instead of deep inside a checkpoint restore.
    """
    previous = model_dir / METADATA_COPY
    if previous.is_file():
        records.check_compatible(json.loads(previous.read_text()), metadata,
                                 model_dir, data_dir)
    previous_config = model_dir / CONFIG_FILE
    if previous_config.is_file():
        old_model = to_dict(load_config(previous_config).model)
        changed = {k: (v, getattr(cfg.model, k)) for k, v in old_model.items()
                   if v != to_dict(cfg.model)[k]}
        if changed:
            what = ", ".join(f"model.{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise TrainingError(f"{model_dir} holds a model with another architecture "
                                f"({what}); use a new --model-dir")


@contextlib.contextmanager
def _model_dir_lock(model_dir: Path, chief: bool) -> Iterator[None]:
    """An exclusive lock file: two runs writing one model dir is an error."""
    if not chief:
        yield
        return
    model_dir.mkdir(parents=True, exist_ok=True)
    lock = model_dir / LOCK_FILE
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        owner = lock.read_text().strip() or "?"
        if owner.isdigit() and process_alive(int(owner)):
            raise TrainingError(f"{model_dir} is in use by another training run "
                                f"(pid {owner}); wait for it or use another --model-dir"
                                ) from None
        lock.unlink()  # left behind by a killed run
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


class _Trainer:
    """The state of one training run; `run()` is the whole procedure."""

    def __init__(self, data_dir: Path, model_dir: Path, cfg: Config,
                 metadata: dict[str, Any], strategy: tf.distribute.Strategy,
                 verbose: bool):
        self.data_dir = data_dir
        self.model_dir = model_dir
        self.cfg = cfg
        self.metadata = metadata
        self.strategy = strategy
        self.verbose = verbose
        self.chief = is_chief(strategy)
        self._worker_dirs: list[str] = []
        self.has_val = metadata["splits"].get("val", {}).get("num_records", 0) > 0
        if metadata["splits"].get("train", {}).get("num_records", 0) == 0:
            raise TrainingError(f"{data_dir}: the train split is empty")
        keras.utils.set_random_seed(cfg.train.seed)
        with strategy.scope():
            self.autoencoder, self.encoder = models.build_autoencoder(
                cfg.model, metadata["num_features"])
            self.optimizer = keras.optimizers.Adam(cfg.train.learning_rate)
            self.optimizer.build(self.autoencoder.trainable_variables)
        # Loop counters live outside the strategy scope: plain host variables.
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        # The running squared-error sum and valid count of the current epoch: a run
        # resumed mid-epoch reports the loss of the whole epoch, not of its tail.
        self.epoch_sse = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.epoch_count = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.best_val_loss = tf.Variable(float("inf"), dtype=tf.float64, trainable=False)
        self.checkpoint = tf.train.Checkpoint(
            model=self.autoencoder, optimizer=self.optimizer, epoch=self.epoch,
            step_in_epoch=self.step_in_epoch, best_val_loss=self.best_val_loss,
            epoch_sse=self.epoch_sse, epoch_count=self.epoch_count)
        self.backup = tf.train.CheckpointManager(
            self.checkpoint, self._writable("checkpoints/backup"), max_to_keep=1)
        self.best = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=self.autoencoder),
            self._writable("checkpoints/best"), max_to_keep=1)
        self.writer = tf.summary.create_file_writer(self._writable("logs"))
        self._train_step = self._make_step(training=True)
        self._eval_step = self._make_step(training=False)
        self._dataset_builders: dict[tuple, Callable] = {}
        # One replica: each split's batches of every epoch from one iterator.
        self._streams: dict[str, _EpochStream] = {}
        # Opened inputs by (split, epoch, skip): `_open_input` futures.
        self._inputs: dict[tuple[str, int, int], concurrent.futures.Future] = {}
        # Per-epoch inputs (several replicas) are opened ahead in a thread, except
        # under MultiWorkerMirroredStrategy, whose iterators run collectives.
        self._input_thread = (
            None if self._single_replica()
            or isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            else concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="seqpipe-input"))

    def _writable(self, relative: str) -> str:
        """The chief writes into the model dir; other workers into temp dirs."""
        if self.chief:
            return str(self.model_dir / relative)
        directory = tempfile.mkdtemp(prefix=f"seqpipe-worker-{relative.replace('/', '-')}-")
        self._worker_dirs.append(directory)
        return directory

    def run(self) -> dict[str, Any]:
        """Resumes if a backup exists, trains the remaining epochs, exports."""
        if self.chief:
            dump_config(self.cfg, self.model_dir / CONFIG_FILE)
            _write_json_atomic(self.model_dir / METADATA_COPY, self.metadata)
        history = self._restore()
        started = time.monotonic()
        stop_reason = "epochs"
        try:
            while int(self.epoch) < self.cfg.train.epochs:
                learning_rate = learning_rate_for_epoch(self.cfg.train, int(self.epoch),
                                                        history)
                self.optimizer.learning_rate.assign(learning_rate)
                record = self._run_epoch(int(self.epoch))
                record["learning_rate"] = learning_rate
                history.append(record)
                self._end_epoch(record, history)
                if self._should_stop_early(history):
                    stop_reason = "early_stopping"
                    break
        finally:
            self.close_inputs()
        if self.best.latest_checkpoint:
            self.best.checkpoint.restore(self.best.latest_checkpoint).expect_partial()
        summary = self._summary(history, time.monotonic() - started, stop_reason)
        if self.chief:
            self._export(summary)
        else:
            for directory in self._worker_dirs:
                shutil.rmtree(directory, ignore_errors=True)
        return summary

    def _restore(self) -> list[dict[str, Any]]:
        history_path = self.model_dir / HISTORY_FILE
        if not self.backup.latest_checkpoint:
            return []
        self.checkpoint.restore(self.backup.latest_checkpoint).expect_partial()
        history = json.loads(history_path.read_text()) if history_path.is_file() else []
        history = [h for h in history if h["epoch"] < int(self.epoch)]
        self._log(f"resuming from {self.backup.latest_checkpoint}: epoch "
                  f"{int(self.epoch) + 1}, step {int(self.step_in_epoch)}")
        return history

    def train_epoch(self, epoch: int, skip: int = 0,
                    batches: Iterable[Any] | None = None) -> EpochResult:
        """One pass over the train split from global step `skip`, exactly as `run()` does.

        Updates the weights, the optimizer and `step_in_epoch`, and writes the
        mid-epoch backups; not the epoch-end bookkeeping (history, best weights,
        `epoch`). The benchmarks time training through this.

        Args:
            epoch: the epoch (seeds the data order).
            skip: global steps of this epoch already done.
            batches: iterate these (distributed) batches instead of the input
                pipeline, e.g. the same batches cached in memory; no input is
                then opened ahead.
        """
        return self._run_split("train", epoch, skip, training=True, batches=batches)

    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        skip = int(self.step_in_epoch)
        train_result = self.train_epoch(epoch, skip)
        epoch_count = float(self.epoch_count)
        record = {"epoch": epoch, "loss": float(self.epoch_sse) / max(epoch_count, 1.0),
                  "steps": train_result.num_steps + skip,
                  "valid_timesteps": int(epoch_count) // self.metadata["num_features"],
                  "seconds": train_result.seconds,
                  "timesteps_per_second": train_result.num_valid_timesteps
                  / max(train_result.seconds, 1e-9)}
        if skip:
            record["resumed_at_step"] = skip
        if self.has_val:
            record["val_loss"] = self._run_split("val", epoch, 0, training=False).loss
        return record

    def _run_split(self, split: str, epoch: int, skip: int, training: bool,
                   batches: Iterable[Any] | None = None) -> EpochResult:
        step_fn = self._train_step if training else self._eval_step
        total_sse, total_count, steps = 0.0, 0.0, 0
        progress = self._progress(split, epoch)
        started = time.monotonic()
        self._trace_for_any_shape(step_fn)
        if batches is None:
            batches = self._batches(split, epoch, skip, training)
        for batch in batches:
            sse, count = step_fn(batch)
            total_sse += float(sse)
            total_count += float(count)
            steps += 1
            if not math.isfinite(total_sse):
                raise TrainingError(
                    f"{split} loss is not finite at epoch {epoch + 1}, step {skip + steps}; "
                    "lower train.learning_rate, keep train.clipnorm > 0 and "
                    "model.activation=tanh, and check the inputs (the last backup in "
                    f"{self.model_dir / 'checkpoints' / 'backup'} is from before this step)")
            if training:
                self.step_in_epoch.assign_add(1)
                self.epoch_sse.assign_add(float(sse))
                self.epoch_count.assign_add(float(count))
                self._maybe_backup(skip + steps)
            progress(steps, total_sse / max(total_count, 1.0))
        num_features = self.metadata["num_features"]
        return EpochResult(loss=total_sse / max(total_count, 1.0), num_steps=steps,
                           num_valid_timesteps=int(total_count) // num_features,
                           seconds=time.monotonic() - started)

    def close_inputs(self) -> None:
        """Drops inputs opened ahead and stops their thread (`run()` does it at the end)."""
        self._inputs = {}
        self._streams = {}
        if self._input_thread is not None:
            self._input_thread.shutdown(wait=True, cancel_futures=True)
            self._input_thread = None

    def _trace_for_any_shape(self, step_fn) -> None:
        """Traces `step_fn` for full batches `[batch_size, T]`, then for any `[B, T]`.

        A call dispatches to the most specific trace, so full batches run the
        graph with a static batch size, 25% faster per timestep than the one
        with an unknown batch size (measured on CPU: the recurrent loop's
        shape arithmetic folds away), and other batches (a window's last
        one, timestep-budget sizes) run the general one. Lazily,
        `reduce_retracing` would trace the first shape, then `[32, None]`,
        then `[None, None]` when the first partial batch comes, possibly
        epochs later. Distributed batches (several replicas) keep the lazy
        tracing.
        """
        if not self._single_replica() or step_fn.experimental_get_tracing_count():
            return
        for batch_size in (self.cfg.data.batch_size, None):  # the specific trace first
            steps = tf.TensorSpec([batch_size, None, self.metadata["num_features"]],
                                  tf.float32)
            mask = tf.TensorSpec([batch_size, None], tf.float32)
            step_fn.get_concrete_function(({"x": steps, "mask": mask}, steps, mask))

    def _next_split(self, split: str, epoch: int) -> tuple[str, int, int, bool] | None:
        """What `run()` iterates after `(split, epoch)`: val, else the next epoch."""
        if split == "train" and self.has_val:
            return "val", epoch, 0, False
        if epoch + 1 < self.cfg.train.epochs:
            return "train", epoch + 1, 0, True
        return None

    def _open_input(self, split: str, epoch: int, skip: int,
                    training: bool) -> concurrent.futures.Future:
        """Starts building the input of `(split, epoch)` from `skip` and fetching its first batch.

        In the background thread when there is one, else right here.
        """
        key = (split, epoch, skip)
        if key not in self._inputs:
            def first_batch():
                iterator = iter(self._distributed_dataset(split, epoch, skip, training))
                return iterator, next(iterator, None)

            if self._input_thread is None:
                future: concurrent.futures.Future = concurrent.futures.Future()
                try:
                    future.set_result(first_batch())
                except Exception as error:  # noqa: BLE001 - re-raised by result()
                    future.set_exception(error)
            else:
                future = self._input_thread.submit(first_batch)
            self._inputs[key] = future
        return self._inputs[key]

    def _batches(self, split: str, epoch: int, skip: int, training: bool) -> Iterator[Any]:
        """The batches of `(split, epoch)` from `skip`.

        One replica: from the split's `_EpochStream`. Several: from an input
        opened ahead if any, and the input of the split `run()` iterates next
        is opened ahead now.
        """
        if self._single_replica():
            return self._stream(split, epoch, skip, training).epoch()
        future = self._open_input(split, epoch, skip, training)
        self._inputs = {}  # inputs opened for another split or epoch will not be used
        next_split = self._next_split(split, epoch)
        if next_split is not None:
            self._open_input(*next_split)
        return _chain_first(future)

    def _distributed_dataset(self, split: str, epoch: int, skip: int, training: bool):
        """The distributed batches of `(split, epoch)` from global step `skip`."""
        seed = tf.constant(self.cfg.data.seed + epoch, tf.int64)
        skip = tf.constant(skip, tf.int64)

        def dataset_fn(input_context):
            return self._dataset_builder(split, training, input_context)(seed, skip)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def _single_replica(self) -> bool:
        """One replica in one process: batches are plain tensors.

        Then splits are read as `_EpochStream`s and the step is traced ahead
        for every shape. With several replicas an epoch's last global batch
        is split unevenly (and across workers, epochs end at different
        steps): `tf.distribute` handles that for an iterator that ends with
        the epoch, so those get one per epoch, opened ahead in a thread.
        """
        return self.strategy.num_replicas_in_sync == 1 and not isinstance(
            self.strategy, tf.distribute.MultiWorkerMirroredStrategy)

    def _stream(self, split: str, epoch: int, skip: int, training: bool) -> _EpochStream:
        """The split's stream, positioned at `(epoch, skip)` (restarted there if it is not)."""
        stream = self._streams.get(split)
        if stream is None or not stream.is_at(epoch, skip):
            def epoch_dataset(epoch_index, skip_batches):
                return self._epoch_dataset(split, training, None,
                                           self.cfg.data.seed + epoch_index, skip_batches)

            stream = _EpochStream(epoch_dataset, self.metadata["num_features"], epoch, skip)
            self._streams[split] = stream
        return stream

    def _dataset_builder(self, split: str, training: bool,
                         input_context: tf.distribute.InputContext) -> Callable:
        """`(seed, skip) -> dataset` of one split and input pipeline, traced once.

        Building the pipeline in Python (tracing its functions) costs about as
        much as reading a small split and holds the GIL while the model trains;
        a `tf.function` returning the dataset does that once per split, and
        every epoch is one call with its seed.
        """
        key = (split, training, input_context.num_input_pipelines,
               input_context.input_pipeline_id, input_context.num_replicas_in_sync)
        if key not in self._dataset_builders:
            # One global step takes one batch per local replica from this pipeline.
            local_replicas = (input_context.num_replicas_in_sync
                              // input_context.num_input_pipelines)

            @tf.function(input_signature=[tf.TensorSpec([], tf.int64)] * 2, autograph=False)
            def build(seed, skip):
                return self._epoch_dataset(split, training, input_context, seed,
                                           skip * local_replicas)

            self._dataset_builders[key] = build
        return self._dataset_builders[key]

    def _epoch_dataset(self, split: str, training: bool,
                       input_context: tf.distribute.InputContext | None,
                       seed: tf.Tensor, skip_batches: tf.Tensor) -> tf.data.Dataset:
        """One epoch of a split from batch `skip_batches`; traced, with tensor arguments."""
        # The order then depends on `data.seed` alone, and tf.data's seed helper
        # cannot take a tensor seed under a graph seed of 0
        # (`keras.utils.set_random_seed(0)`): it compares the pair to (0, 0).
        tf.compat.v1.get_default_graph().seed = None
        return data.make_dataset(self.data_dir, split, self.cfg.data, training=training,
                                 metadata=self.metadata, input_context=input_context,
                                 seed=seed).skip(skip_batches)

    def _make_step(self, training: bool) -> Callable:
        """A `tf.function` running one global batch on every replica.

        Returns the global sum of squared errors and the global count of valid
        values (so the epoch loss is the exact masked mean over the epoch).
        """
        strategy = self.strategy
        replica_step = self._replica_train_step if training else self._replica_eval_step

        jit_compile = self.cfg.train.jit_compile
        if jit_compile and strategy.num_replicas_in_sync > 1:
            logger.warning("train.jit_compile is for one replica; %d replicas run without XLA",
                           strategy.num_replicas_in_sync)
            jit_compile = False
        data_cfg = self.cfg.data
        if jit_compile and training and data_cfg.batching == "sorted_window" and (
                not data_cfg.length_grid or data_cfg.min_batch_efficiency):
            logger.warning(
                "train.jit_compile compiles every batch shape; batches padded to their "
                "longest record or cut by data.min_batch_efficiency have many: set "
                "data.length_grid (8 or 16) and data.min_batch_efficiency: 0")

        @tf.function(reduce_retracing=True, jit_compile=jit_compile)
        def step(batch):
            inputs, targets, weights = batch
            sse, count = strategy.run(replica_step, args=(inputs, targets, weights))
            return (strategy.reduce(tf.distribute.ReduceOp.SUM, sse, axis=None),
                    strategy.reduce(tf.distribute.ReduceOp.SUM, count, axis=None))

        return step

    def _replica_train_step(self, inputs, targets, weights):
        """Sum of squared errors and its gradients here; normalized by the global count.

        d(sse / global_count) = d(sse) / global_count, so each replica takes the
        gradient of its own sum and the division happens after the all-reduce.
        """
        context = tf.distribute.get_replica_context()
        variables = self.autoencoder.trainable_variables

        def forward_backward():
            with tf.GradientTape() as tape:
                predictions = self.autoencoder(inputs, training=True)
                sse, count = models.masked_squared_error(targets, predictions, weights)
            return sse, count, tape.gradient(sse, variables)

        def nothing():
            return (tf.constant(0.0), tf.constant(0.0),
                    [tf.zeros_like(variable) for variable in variables])

        sse, count, gradients = tf.cond(_has_data(weights), forward_backward, nothing)
        global_count = tf.maximum(context.all_reduce(tf.distribute.ReduceOp.SUM, count), 1.0)
        gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
        gradients = [gradient / global_count for gradient in gradients]
        if self.cfg.train.clipnorm:
            gradients, _ = tf.clip_by_global_norm(gradients, self.cfg.train.clipnorm)
        # The optimizer all-reduces (sums) replica gradients again: hand it 1/N each.
        scale = 1.0 / self.strategy.num_replicas_in_sync
        self.optimizer.apply_gradients(
            zip([gradient * scale for gradient in gradients], variables, strict=True))
        return sse, count

    def _replica_eval_step(self, inputs, targets, weights):
        def evaluate():
            predictions = self.autoencoder(inputs, training=False)
            return models.masked_squared_error(targets, predictions, weights)

        return tf.cond(_has_data(weights), evaluate,
                       lambda: (tf.constant(0.0), tf.constant(0.0)))

    def _maybe_backup(self, step: int) -> None:
        every = self.cfg.train.checkpoint_every_steps
        if every and step % every == 0:
            self.backup.save()

    def _end_epoch(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        monitored = record.get("val_loss", record["loss"])
        if monitored < float(self.best_val_loss):
            self.best_val_loss.assign(monitored)
            self.best.save()
        # History first: a kill between the two then re-runs the epoch's tail
        # (`_restore` drops records of epochs the backup has not finished).
        self._write_epoch_logs(record, history)
        self.epoch.assign_add(1)
        self.step_in_epoch.assign(0)
        self.epoch_sse.assign(0.0)
        self.epoch_count.assign(0.0)
        self.backup.save()
        self._log(_format_epoch(record, self.cfg.train.epochs))

    def _write_epoch_logs(self, record: dict[str, Any], history: list[dict[str, Any]]):
        with self.writer.as_default(step=record["epoch"]):
            for key in ("loss", "val_loss", "timesteps_per_second"):
                if key in record:
                    tf.summary.scalar(key, record[key])
        if self.chief:
            _write_json_atomic(self.model_dir / HISTORY_FILE, history)
            _write_history_csv(self.model_dir / HISTORY_CSV, history)

    def _should_stop_early(self, history: list[dict[str, Any]]) -> bool:
        patience = self.cfg.train.early_stopping_patience
        if not patience or not self.has_val or len(history) <= patience:
            return False
        best_epoch = min(range(len(history)), key=lambda i: history[i]["val_loss"])
        return len(history) - 1 - best_epoch >= patience

    def _summary(self, history: list[dict[str, Any]], seconds: float,
                 stop_reason: str) -> dict[str, Any]:
        train_stats = self.metadata["splits"]["train"]
        efficiency = data.padding_efficiency(data.make_dataset(
            self.data_dir, "train", self.cfg.data, training=False, metadata=self.metadata))
        losses = [h.get("val_loss") for h in history if "val_loss" in h]
        return {
            "epochs": len(history),
            "stopped_by": stop_reason,
            "final_loss": history[-1]["loss"] if history else None,
            "final_val_loss": losses[-1] if losses else None,
            "best_val_loss": min(losses) if losses else None,
            "timesteps_per_second": (sum(h["timesteps_per_second"] for h in history)
                                     / max(len(history), 1)),
            "padding_efficiency": efficiency["efficiency"],
            "num_train_records": train_stats["num_records"],
            "num_replicas": self.strategy.num_replicas_in_sync,
            "wall_seconds": seconds,
            "resumed": any("resumed_at_step" in h for h in history),
            "weights_sha256": weights_digest(self.autoencoder),
        }

    def _export(self, summary: dict[str, Any]) -> None:
        self.autoencoder.save(self.model_dir / AUTOENCODER_FILE)
        encoder_dir = self.model_dir / ENCODER_DIR
        staging = self.model_dir / f".{ENCODER_DIR}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        models.export_encoder(self.encoder, staging)
        shutil.rmtree(encoder_dir, ignore_errors=True)
        staging.rename(encoder_dir)
        _write_json_atomic(self.model_dir / SUMMARY_FILE,
                           {**summary, "config": to_dict(self.cfg)})

    def _progress(self, split: str, epoch: int) -> Callable[[int, float], None]:
        if not (self.verbose and self.chief):
            return lambda step, loss: None
        if sys.stdout.isatty():
            bar = keras.utils.Progbar(None, stateful_metrics=["loss"], unit_name="step")
            return lambda step, loss: bar.update(step, [("loss", loss)])
        every = self.cfg.train.log_every_steps

        def log_line(step: int, loss: float) -> None:
            if every and step % every == 0:
                print(f"epoch {epoch + 1} {split} step {step}: loss {loss:.4f}", flush=True)

        return log_line

    def _log(self, message: str) -> None:
        if self.verbose and self.chief:
            print(message, flush=True)


class _EpochStream:
    """The batches of every epoch of one split from a single iterator.

    `Dataset.counter(first_epoch)` -> each epoch's dataset (seeded by its
    index, the first skipping `skip` batches) followed by one empty batch that
    marks its end. Creating an iterator per epoch costs more CPU than reading
    a small split (about 150 ms measured: every function of the pipeline is
    instantiated again); one iterator instantiates them once, and its
    prefetch reads the next epoch's first window while this one finishes,
    with no thread of ours.
    """

    def __init__(self, epoch_dataset: Callable[[tf.Tensor, tf.Tensor], tf.data.Dataset],
                 num_features: int, first_epoch: int, skip: int):
        marker = tf.data.Dataset.from_tensors(
            ({"x": tf.zeros([0, 0, num_features]), "mask": tf.zeros([0, 0])},
             tf.zeros([0, 0, num_features]), tf.zeros([0, 0])))
        first = tf.constant(first_epoch, tf.int64)

        def with_end_marker(epoch):
            skip_steps = tf.where(tf.equal(epoch, first), tf.constant(skip, tf.int64), 0)
            return epoch_dataset(epoch, skip_steps).concatenate(marker)

        stream = tf.data.Dataset.counter(first_epoch).flat_map(with_end_marker)
        self._iterator = iter(stream.prefetch(1))
        self._position: tuple[int, int] | None = (first_epoch, skip)

    def is_at(self, epoch: int, skip: int) -> bool:
        """Whether `epoch()` would yield the batches of `epoch` from step `skip`."""
        return self._position == (epoch, skip)

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
    """The batches of an `_open_input` future: its first batch, then the rest."""
    iterator, first = future.result()
    if first is None:
        return
    yield first
    yield from iterator


def _has_data(weights: tf.Tensor) -> tf.Tensor:
    """False for the empty batch a replica gets when its input ran out first.

    Workers' pipelines may hold different numbers of batches; `tf.distribute`
    then hands exhausted replicas empty batches (zero rows or zero steps) so
    that every replica still joins the step's all-reduces.
    """
    return tf.size(weights) > 0


def learning_rate_for_epoch(cfg: TrainConfig, epoch: int,
                            history: list[dict[str, Any]]) -> float:
    """The learning rate of `epoch` under `cfg.lr_schedule`.

    A pure function of the config and the history of earlier epochs, so a
    resumed run uses exactly the rate the uninterrupted run would have.
    """
    if cfg.lr_schedule == "cosine":
        progress = epoch / max(cfg.epochs - 1, 1)
        return cfg.min_learning_rate + 0.5 * (cfg.learning_rate - cfg.min_learning_rate) * (
            1.0 + math.cos(math.pi * progress))
    if cfg.lr_schedule == "plateau":
        rate, best, waited = cfg.learning_rate, math.inf, 0
        for record in history[:epoch]:
            monitored = record.get("val_loss", record["loss"])
            if monitored < best:
                best, waited = monitored, 0
                continue
            waited += 1
            if waited >= cfg.lr_patience:
                rate, waited = max(rate * cfg.lr_factor, cfg.min_learning_rate), 0
        return rate
    return cfg.learning_rate


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of all weights: equal on every worker of a correct distributed run."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(weights.tobytes())
    return digest.hexdigest()


def _write_history_csv(path: Path, history: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for record in history for key in record))
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    temporary.replace(path)


def _format_epoch(record: dict[str, Any], epochs: int) -> str:
    text = (f"epoch {record['epoch'] + 1}/{epochs}: loss {record['loss']:.4f}, "
            f"{record['steps']} steps, {record['timesteps_per_second']:.0f} timesteps/s")
    if "val_loss" in record:
        text += f", val_loss {record['val_loss']:.4f}"
    return text


def _write_json_atomic(path: Path, value: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=2))
    temporary.replace(path)
