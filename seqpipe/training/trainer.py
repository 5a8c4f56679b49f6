"""Training: `train()` and the `Trainer`, whose epoch loop ties the parts together.

The parts, each in the module named after it:

    inputs.py     feeding input: each epoch's batches, read ahead of the step
    step.py       the distributed step: exact global masked mean, gradient
                  all-reduce, global-norm clipping; the strategy
    resume.py     the run's position, backups, best weights, restore, the
                  model-dir lock and compatibility checks
    outputs.py    history, TensorBoard, summary.json, exports, progress lines
    model_dir.py  the layout of the model directory (its one description)

One custom loop runs on every `tf.distribute` strategy (`step.py` says why).
A run started again with the same arguments after being killed resumes from
its last backup (`resume.py`; with `data.service`, from the end of the last
finished epoch: `data_service.py`). `train.lr_schedule` sets the learning rate per
epoch (constant, cosine or on plateau) as a pure function of the history, so
resuming does not change it; `train.early_stopping_patience` stops when the
validation loss has not improved for that many epochs. A non-finite loss
stops the run with an error naming the epoch and step, before the backup is
overwritten.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from seqpipe import storage
from seqpipe.config import Config, TrainConfig
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset.metadata import DatasetMetadata
from seqpipe.input_pipeline.data import check_times, uses_observed
from seqpipe.model.autoencoder import build_autoencoder
from seqpipe.model.objectives import LossTotals, Objective, objective_loss
from seqpipe.training.data_service import backup_every_steps
from seqpipe.training.inputs import TrainingInputs
from seqpipe.training.model_dir import BACKUP_DIR, BEST_DIR, TrainingError
from seqpipe.training.outputs import RunOutputs, run_summary, weights_digest
from seqpipe.training.resume import RunState, check_model_dir_compatible, model_dir_lock
from seqpipe.training.step import (
    is_chief,
    make_eval_step,
    make_strategy,
    make_train_step,
    trace_for_any_shape,
    use_jit_compile,
)

__all__ = ["EpochResult", "Trainer", "TrainingError", "learning_rate_for_epoch", "train"]


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
        model_dir: where checkpoints, logs and the exported models go
            (`seqpipe.training.model_dir` describes them).
        cfg: the full configuration (`data`, `model`, `train` sections are used).
        verbose: progress bar (or log lines when not on a terminal).

    Returns:
        The training summary (also written to `summary.json`).

    Raises:
        TrainingError, records.DatasetError: before any step runs, when the
            data or the model directory do not fit.
    """
    model_dir = str(model_dir)  # a local path or a URL (`seqpipe.storage`): not a Path
    metadata = metadata_lib.read(data_dir)
    check_model_dir_compatible(model_dir, metadata, data_dir, cfg)
    strategy = make_strategy(cfg.train.strategy)
    with model_dir_lock(model_dir, is_chief(strategy)):
        trainer = Trainer(data_dir, model_dir, cfg, metadata=metadata, strategy=strategy,
                          verbose=verbose)
        try:
            return trainer.run()
        finally:
            trainer.close()


class Trainer:
    """One training run: the model, its parts, and the epoch loop; `run()` is the whole of it.

    Args:
        data_dir: a dataset written by `seqpipe preprocess`.
        model_dir: the model directory (`train()` checks and locks it first).
        cfg: the full configuration.
        metadata: the dataset's metadata (default: read from `data_dir`).
        strategy: the `tf.distribute` strategy (default: `train.strategy`'s).
        verbose: progress and messages on stdout.

    Attributes:
        autoencoder, encoder, optimizer: built under the strategy's scope
            (no autoencoder with `train.objective: triplet`).
        objective: what training minimizes; `objective.model` is the model
            trained, checkpointed and saved as `autoencoder.keras` (the
            encoder when there is no autoencoder).
        train_step, eval_step: `step(batch) -> LossTotals`, the global sums
            and counts.
        inputs: the batches of each split and epoch (`TrainingInputs`).
        state: the run's position, backups and best weights (`RunState`).
        outputs: history, logs, exports (`RunOutputs`).
    """

    def __init__(self, data_dir: str | Path, model_dir: str | Path, cfg: Config, *,
                 metadata: DatasetMetadata | None = None,
                 strategy: tf.distribute.Strategy | None = None, verbose: bool = True):
        self.data_dir = str(data_dir)  # local paths or URLs (`seqpipe.storage`)
        self.model_dir = str(model_dir)
        self.cfg = cfg
        self.metadata = metadata if metadata is not None else metadata_lib.read(data_dir)
        self.strategy = strategy if strategy is not None else make_strategy(cfg.train.strategy)
        if self.metadata.num_records("train") == 0:
            raise TrainingError(f"{data_dir}: the train split is empty")
        check_times(cfg.data, self.metadata, data_dir)
        keras.utils.set_random_seed(cfg.train.seed)
        with self.strategy.scope():
            self.autoencoder, self.encoder = build_autoencoder(
                cfg.model, self.metadata.num_features,
                decoder=cfg.train.has_decoder,
                observed=uses_observed(cfg.data, self.metadata),
                time_delta=cfg.data.time_delta)
            self.objective = Objective(cfg.train, self.autoencoder, self.encoder)
            self.optimizer = keras.optimizers.Adam(cfg.train.learning_rate)
            self.optimizer.build(self.objective.model.trainable_variables)
        self.outputs = RunOutputs(self.model_dir, cfg, is_chief(self.strategy), verbose)
        self.state = RunState(self.objective.model, self.optimizer,
                              self.outputs.directory(BACKUP_DIR),
                              self.outputs.directory(BEST_DIR),
                              backup_every_steps(cfg))
        jit_compile = use_jit_compile(cfg, self.strategy)
        self.train_step = make_train_step(self.strategy, self.objective, self.optimizer,
                                          cfg.train.clipnorm, jit_compile)
        self.eval_step = make_eval_step(self.strategy, self.objective, jit_compile)
        self.inputs = TrainingInputs(self.data_dir, cfg, self.metadata, self.strategy)
        for line in self.inputs.describe():
            self.outputs.log(line)

    def run(self) -> dict[str, Any]:
        """Resumes if a backup exists, trains the remaining epochs, exports the best weights."""
        self.outputs.write_run_inputs(self.metadata)
        history = self._restore()
        started = time.monotonic()
        try:
            stopped_by = self._train_epochs(history)
        finally:
            self.inputs.close()
        self.state.restore_best()
        summary = run_summary(
            history, stopped_by, time.monotonic() - started,
            padding_efficiency=self.inputs.padding_efficiency(),
            **self.inputs.plan.summary(),
            num_replicas=self.strategy.num_replicas_in_sync,
            weights_sha256=weights_digest(self.objective.model))
        self.outputs.export(self.objective.model, self.encoder, summary)
        return summary

    def train_epoch(self, epoch: int, skip: int = 0,
                    batches: Iterable[Any] | None = None) -> EpochResult:
        """One pass over the train split from global step `skip`, exactly as `run()` does.

        Updates the weights, the optimizer and the run's position in the
        epoch (`state.step_in_epoch`, expected to be `skip`), and writes the
        mid-epoch backups; not the epoch-end bookkeeping (`end_epoch`). The
        benchmarks time training through this.

        Args:
            epoch: the epoch (seeds the data order).
            skip: global steps of this epoch already done.
            batches: iterate these (distributed) batches instead of the input
                pipeline, e.g. the same batches cached in memory; no input is
                then opened ahead.
        """
        return self._run_split("train", epoch, skip, batches)

    def end_epoch(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """The bookkeeping of a finished epoch: best weights, history, then the backup.

        History first: a kill between the two then re-runs the epoch's tail
        (the restore drops records of epochs the backup has not finished).
        """
        if first_eligible_epoch(self.cfg.train, history) is not None:
            self.state.keep_if_best(record.get("val_loss", record["loss"]))
        self.outputs.write_epoch(record, history)
        self.state.next_epoch()
        self.outputs.log_epoch(record)

    def close(self) -> None:
        """Stops reading ahead and deletes a worker's temporary directories."""
        self.inputs.close()
        self.outputs.close()

    def _restore(self) -> list[dict[str, Any]]:
        """The history of the epochs the restored backup finished (none: a new run)."""
        if not self.state.restore(storage.join(self.model_dir, BACKUP_DIR)):
            return []
        self.outputs.log(f"resuming from {self.state.backup.latest_checkpoint}: epoch "
                         f"{int(self.state.epoch) + 1}, step {int(self.state.step_in_epoch)}")
        return self.state.finished_epochs(self.outputs.read_history())

    def _train_epochs(self, history: list[dict[str, Any]]) -> str:
        """Trains from the restored position on, appending to `history`; why it stopped."""
        while int(self.state.epoch) < self.cfg.train.epochs:
            learning_rate = learning_rate_for_epoch(self.cfg.train, int(self.state.epoch),
                                                    history)
            self.optimizer.learning_rate.assign(learning_rate)
            record = self._run_epoch(int(self.state.epoch))
            record["learning_rate"] = learning_rate
            history.append(record)
            self.end_epoch(record, history)
            if stops_early(self.cfg.train, history, self.inputs.has_val):
                return "early_stopping"
        return "epochs"

    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        """Trains the rest of `epoch`, evaluates it; its history record."""
        skip = int(self.state.step_in_epoch)
        result = self.train_epoch(epoch, skip)
        totals = self.state.epoch_totals()
        record = {"epoch": epoch, "loss": float(objective_loss(self.cfg.train, totals)),
                  "steps": result.num_steps + skip,
                  "valid_timesteps": int(totals.num_steps),
                  "seconds": result.seconds,
                  "timesteps_per_second": result.num_valid_timesteps
                  / max(result.seconds, 1e-9)}
        if skip:
            record["resumed_at_step"] = skip
        if self.inputs.has_val:
            record["val_loss"] = self._run_split("val", epoch, 0).loss
        return record

    def _run_split(self, split: str, epoch: int, skip: int,
                   batches: Iterable[Any] | None = None) -> EpochResult:
        """Steps through `(split, epoch)` from `skip`: trains on `train`, evaluates others."""
        training = split == "train"
        step = self.train_step if training else self.eval_step
        sums, steps = LossTotals(0.0, 0.0, 0.0, 0.0, 0.0), 0
        progress = self.outputs.progress(split, epoch)
        started = time.monotonic()
        trace_for_any_shape(step, self.strategy, self.cfg.data.batch_size,
                            self.metadata.num_features)
        if batches is None:
            batches = self.inputs.batches(split, epoch, skip)
        for batch in batches:
            totals = LossTotals(*(float(value) for value in step(batch)))
            sums = LossTotals(*(a + b for a, b in zip(sums, totals, strict=True)))
            steps += 1
            loss = float(objective_loss(self.cfg.train, sums))
            if not math.isfinite(loss):
                raise TrainingError(
                    f"{split} loss is not finite at epoch {epoch + 1}, step {skip + steps}; "
                    "lower train.learning_rate, keep train.clipnorm > 0 and "
                    "model.activation=tanh, and check the inputs (the last backup in "
                    f"{storage.join(self.model_dir, BACKUP_DIR)} is from before this step)")
            if training:
                self.state.count_step(totals)
            progress(steps, loss)
        return EpochResult(loss=float(objective_loss(self.cfg.train, sums)), num_steps=steps,
                           num_valid_timesteps=int(sums.num_steps),
                           seconds=time.monotonic() - started)


def first_eligible_epoch(cfg: TrainConfig, history: list[dict[str, Any]]) -> int | None:
    """The first epoch of `history` by whose end the run has taken `cfg.min_steps`
    optimizer steps (None: not yet).

    Only these epochs compete for the best weights and count for early
    stopping: a few-record validation split is noisy, and its lowest loss in
    the first epochs of a small set chose weights of 40 steps (an embedding
    0.72 where 1,000 steps gave 0.80-0.84 on PickupGestureWiimoteZ).
    """
    steps = 0
    for index, record in enumerate(history):
        steps += record["steps"]
        if steps >= cfg.min_steps:
            return index
    return None


def stops_early(cfg: TrainConfig, history: list[dict[str, Any]], has_val: bool) -> bool:
    """Whether the validation loss has not improved for `cfg.early_stopping_patience`
    epochs, counting from the first epoch that reached `cfg.min_steps`."""
    patience = cfg.early_stopping_patience
    first = first_eligible_epoch(cfg, history)
    if not patience or not has_val or first is None or len(history) - first <= patience:
        return False
    best_epoch = min(range(first, len(history)), key=lambda i: history[i]["val_loss"])
    return len(history) - 1 - best_epoch >= patience


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
