"""Resuming: a killed run, started again with the same command, finishes where it was.

* The run's position (epoch, global step within it, the epoch's running loss
  sums and counts, the best validation loss) is saved with the
  weights and the optimizer in one `tf.train.Checkpoint`; a
  `tf.train.CheckpointManager` keeps the last backup (every
  `train.checkpoint_every_steps` steps and at every epoch end; at epoch ends
  only with `data.service`, `seqpipe.training.data_service`) and another the
  best weights by validation loss. Every worker resumes from the chief's
  backup. A run resumed mid-epoch skips the global steps already done (the
  data order of an epoch is a function of its seed) and reports the loss of
  the whole epoch, not of its tail.
* At an epoch end the history is written before the backup: a kill between
  the two re-runs the epoch's tail, and the history's records of epochs the
  backup has not finished are dropped (`RunState.finished_epochs`).
* A model dir started on other data or with another architecture is refused
  before any step (`check_model_dir_compatible`), and two runs writing one
  model dir is an error (`model_dir_lock`); the lock of a killed run is taken
  over.

Where these files live: `seqpipe.training.model_dir`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from seqpipe import storage
from seqpipe.config import Config, to_dict
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset.metadata import DatasetMetadata
from seqpipe.model.objectives import LossTotals
from seqpipe.processes import owner_alive, owner_tag, process_alive
from seqpipe.training.model_dir import (
    CONFIG_FILE,
    LOCK_FILE,
    METADATA_COPY,
    TrainingError,
    read_config,
)


def check_model_dir_compatible(model_dir: str | Path, metadata: DatasetMetadata,
                               data_dir: str | Path, cfg: Config) -> None:
    """Refuses a model dir started on other data or with another model config.

    A run writes `dataset_metadata.json` and `config.yaml` when it starts, so
    resuming (or continuing) with a different dataset shape or architecture
    fails here, before any step, instead of deep inside a checkpoint restore.
    """
    previous = storage.join(model_dir, METADATA_COPY)
    if storage.isfile(previous):
        metadata_lib.check_compatible(metadata_lib.read_file(previous), metadata,
                                      model_dir, data_dir)
    if storage.isfile(storage.join(model_dir, CONFIG_FILE)):
        old = read_config(model_dir)
        if old.train.objective != cfg.train.objective:
            raise TrainingError(f"{model_dir} holds a model trained with train.objective "
                                f"{old.train.objective!r}, not {cfg.train.objective!r}; "
                                "use a new --model-dir")
        old_model = to_dict(old.model)
        changed = {k: (v, getattr(cfg.model, k)) for k, v in old_model.items()
                   if v != to_dict(cfg.model)[k]}
        if changed:
            what = ", ".join(f"model.{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise TrainingError(f"{model_dir} holds a model with another architecture "
                                f"({what}); use a new --model-dir")


@contextlib.contextmanager
def model_dir_lock(model_dir: str | Path, chief: bool = True) -> Iterator[None]:
    """Holds `model_dir`'s lock file, with this process's pid, for the block.

    A local lock is created exclusively (`O_EXCL`): of two runs started at
    once, one fails. File systems behind a URL (gs://, ram://...) have no
    exclusive create, so there the lock is checked, then written: it stops a
    run started while another is running, but two runs started within that
    moment may both go ahead, and a lock written by another host counts as
    alive (its pid cannot be checked here; delete it by hand after a crash).

    Args:
        model_dir: created if missing.
        chief: only the chief takes the lock (other workers do not write there).

    Raises:
        TrainingError: the lock is held by a live process. A lock whose pid is
            not alive was left by a killed run and is replaced.
    """
    if not chief:
        yield
        return
    storage.makedirs(model_dir)
    lock = storage.join(model_dir, LOCK_FILE)
    if storage.is_url(lock):
        yield from _url_lock(model_dir, lock)
        return
    lock = Path(lock)
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


def _url_lock(model_dir: str | Path, lock: str) -> Iterator[None]:
    """`model_dir_lock` on a URL: the owner `PID@HOST` checked, then written."""
    owner = storage.read_text(lock).strip() if storage.isfile(lock) else ""
    if owner and owner_alive(owner):
        raise TrainingError(f"{model_dir} is in use by another training run ({owner}); "
                            "wait for it or use another --model-dir")
    storage.write_text_atomic(lock, owner_tag())
    try:
        yield
    finally:
        storage.remove(lock)


class RunState:
    """Where a run is, saved with the model and optimizer so that a killed run resumes.

    Attributes:
        epoch: the epoch being trained (the number of finished epochs).
        step_in_epoch: global steps of `epoch` done.
        epoch_sse, epoch_count: the running sum of squared errors and valid
            count of `epoch`'s steps.
        epoch_triplet, epoch_sequences: the running sum of triplet losses and
            sequence count (`train.objective` triplet or both).
        epoch_steps: the running count of real timesteps of `epoch`'s steps
            (the history's `valid_timesteps`).
        best_val_loss: the best monitored loss of the finished epochs.
        backup, best: the checkpoint managers of the backup and the best weights.
    """

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                 backup_dir: str, best_dir: str, checkpoint_every_steps: int):
        # Host variables, created outside any strategy scope.
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.epoch_sse = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.epoch_count = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.epoch_triplet = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.epoch_sequences = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.epoch_steps = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.best_val_loss = tf.Variable(float("inf"), dtype=tf.float64, trainable=False)
        self.checkpoint_every_steps = checkpoint_every_steps
        checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, epoch=self.epoch,
            step_in_epoch=self.step_in_epoch, best_val_loss=self.best_val_loss,
            epoch_sse=self.epoch_sse, epoch_count=self.epoch_count,
            epoch_triplet=self.epoch_triplet, epoch_sequences=self.epoch_sequences,
            epoch_steps=self.epoch_steps)
        self.backup = tf.train.CheckpointManager(checkpoint, backup_dir, max_to_keep=1)
        self.best = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), best_dir,
                                               max_to_keep=1)

    def restore(self, backup_dir: str | None = None) -> bool:
        """Restores the last backup if there is one; whether there was.

        Args:
            backup_dir: where the backups are (default: where this process
                writes them). A worker that is not the chief writes to a temp
                dir but resumes from the chief's backups, like the chief.
        """
        latest = (tf.train.latest_checkpoint(backup_dir) if backup_dir
                  else self.backup.latest_checkpoint)
        if not latest:
            return False
        self.backup.checkpoint.restore(latest).expect_partial()
        return True

    def finished_epochs(self, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The records of `history` for epochs the restored backup has finished."""
        return [record for record in history if record["epoch"] < int(self.epoch)]

    def count_step(self, totals: LossTotals) -> None:
        """One more global step of the epoch, with its totals; a backup when one is due."""
        self.step_in_epoch.assign_add(1)
        for variable, value in zip(self._epoch_totals, totals, strict=True):
            variable.assign_add(value)
        every = self.checkpoint_every_steps
        if every and int(self.step_in_epoch) % every == 0:
            self.backup.save()

    def epoch_totals(self) -> LossTotals:
        """The totals of the current epoch's steps, resumed ones included."""
        return LossTotals(*(float(variable) for variable in self._epoch_totals))

    @property
    def _epoch_totals(self) -> tuple[tf.Variable, ...]:
        return (self.epoch_sse, self.epoch_count, self.epoch_triplet, self.epoch_sequences,
                self.epoch_steps)

    def keep_if_best(self, monitored: float) -> None:
        """Saves the weights as the best if `monitored` beats every earlier epoch."""
        if monitored < float(self.best_val_loss):
            self.best_val_loss.assign(monitored)
            self.best.save()

    def next_epoch(self) -> None:
        """Moves to the start of the next epoch and backs that up."""
        self.epoch.assign_add(1)
        self.step_in_epoch.assign(0)
        for variable in self._epoch_totals:
            variable.assign(0.0)
        self.backup.save()

    def restore_best(self) -> None:
        """Loads the best weights into the model, if any were saved."""
        if self.best.latest_checkpoint:
            self.best.checkpoint.restore(self.best.latest_checkpoint).expect_partial()
