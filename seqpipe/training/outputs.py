"""What a training run writes and shows: history, TensorBoard, summary, exports, progress.

The files and their meaning: `seqpipe.training.model_dir`. Only the chief
writes the model dir; another worker writes its checkpoints and TensorBoard
logs into temporary directories it deletes at the end (`RunOutputs.directory`).
JSON files are replaced atomically (written to a temporary name, renamed).
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from seqpipe import storage
from seqpipe.config import Config, dump_config, to_dict
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset.metadata import DatasetMetadata
from seqpipe.model.autoencoder import export_encoder, export_scorer
from seqpipe.training.model_dir import (
    AUTOENCODER_FILE,
    CONFIG_FILE,
    ENCODER_DIR,
    HISTORY_CSV,
    HISTORY_FILE,
    LOGS_DIR,
    METADATA_COPY,
    SCORER_DIR,
    SUMMARY_FILE,
    read_json,
)

# The file whose presence makes a directory a SavedModel: moved last.
_SAVED_MODEL_FILE = "saved_model.pb"


class RunOutputs:
    """The model dir's outputs of one run, and its progress lines.

    Args:
        model_dir: the model directory (a local path or a URL: `seqpipe.storage`).
        cfg: the run's configuration.
        chief: whether this process writes the model dir.
        verbose: progress bar (or log lines when not on a terminal) and messages.
    """

    def __init__(self, model_dir: str | Path, cfg: Config, chief: bool, verbose: bool):
        self.model_dir = str(model_dir)
        self.cfg = cfg
        self.chief = chief
        self.verbose = verbose
        self._worker_dirs: list[str] = []
        self._writer = tf.summary.create_file_writer(self.directory(LOGS_DIR))

    def directory(self, relative: str) -> str:
        """Where this process writes `relative`: in the model dir if chief, else a temp dir."""
        if self.chief:
            return storage.join(self.model_dir, relative)
        directory = tempfile.mkdtemp(prefix=f"seqpipe-worker-{relative.replace('/', '-')}-")
        self._worker_dirs.append(directory)
        return directory

    def write_run_inputs(self, metadata: DatasetMetadata) -> None:
        """`config.yaml` and `dataset_metadata.json`, written when the run starts."""
        if self.chief:
            dump_config(self.cfg, self._path(CONFIG_FILE))
            metadata_lib.write_file(metadata, self._path(METADATA_COPY))

    def read_history(self) -> list[dict[str, Any]]:
        """The history written so far (none: empty)."""
        return read_json(self.model_dir, HISTORY_FILE) or []

    def write_epoch(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """TensorBoard scalars of the epoch `record`; the `history` (ending with it) files."""
        with self._writer.as_default(step=record["epoch"]):
            for key in ("loss", "val_loss", "timesteps_per_second"):
                if key in record:
                    tf.summary.scalar(key, record[key])
        if self.chief:
            storage.write_json_atomic(self._path(HISTORY_FILE), history)
            storage.write_text_atomic(self._path(HISTORY_CSV), _history_csv(history))

    def export(self, autoencoder: keras.Model, encoder: keras.Model,
               summary: dict[str, Any]) -> None:
        """`autoencoder.keras`, the encoder and scorer SavedModels and `summary.json`
        (chief only). `autoencoder` is the model trained: the encoder alone with
        `train.objective: triplet`, which then has no scorer (no reconstruction)."""
        if not self.chief:
            return
        autoencoder.save(self._path(AUTOENCODER_FILE))  # Keras writes URLs through gfile
        self._export_staged(ENCODER_DIR, lambda path: export_encoder(encoder, path))
        if self.cfg.train.has_decoder:
            self._export_staged(SCORER_DIR, lambda path: export_scorer(
                autoencoder, path, reverse_target=self.cfg.data.reverse_target))
        storage.write_json_atomic(self._path(SUMMARY_FILE),
                                  {**summary, "config": to_dict(self.cfg)})

    def _path(self, name: str) -> str:
        return storage.join(self.model_dir, name)

    def _export_staged(self, name: str, export: Callable[[str], Any]) -> None:
        """`export(path)` into `.NAME.tmp/`, then moved to `NAME/` (`storage.move_tree`).

        Locally a rename: never half a SavedModel. On a URL the files move one
        by one, `saved_model.pb` last, so `NAME/` holds no loadable SavedModel
        until the move is done.
        """
        staging = self._path(f".{name}.tmp")
        storage.rmtree(staging)
        export(staging)
        storage.move_tree(staging, self._path(name), last=(_SAVED_MODEL_FILE,))

    def close(self) -> None:
        """Deletes a worker's temporary directories."""
        for directory in self._worker_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        self._worker_dirs = []

    def progress(self, split: str, epoch: int) -> Callable[[int, float], None]:
        """`update(step, loss)` for one pass: a progress bar on a terminal, else log lines."""
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

    def log(self, message: str) -> None:
        """Prints `message` when verbose, on the chief only."""
        if self.verbose and self.chief:
            print(message, flush=True)

    def log_epoch(self, record: dict[str, Any]) -> None:
        """The one line that sums up a finished epoch."""
        text = (f"epoch {record['epoch'] + 1}/{self.cfg.train.epochs}: loss "
                f"{record['loss']:.4f}, {record['steps']} steps, "
                f"{record['timesteps_per_second']:.0f} timesteps/s")
        if "val_loss" in record:
            text += f", val_loss {record['val_loss']:.4f}"
        self.log(text)


def run_summary(history: list[dict[str, Any]], stopped_by: str, seconds: float,
                **measured: Any) -> dict[str, Any]:
    """`summary.json` of a run (without its config), from its history.

    Args:
        history: one record per epoch.
        stopped_by: `epochs` or `early_stopping`.
        seconds: the wall time of this process's run.
        **measured: further entries (padding efficiency, replicas, weights...).
    """
    losses = [h.get("val_loss") for h in history if "val_loss" in h]
    return {
        "epochs": len(history),
        "stopped_by": stopped_by,
        "final_loss": history[-1]["loss"] if history else None,
        "final_val_loss": losses[-1] if losses else None,
        "best_val_loss": min(losses) if losses else None,
        "timesteps_per_second": (sum(h["timesteps_per_second"] for h in history)
                                 / max(len(history), 1)),
        "wall_seconds": seconds,
        "resumed": any("resumed_at_step" in h for h in history),
        **measured,
    }


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of all weights: equal on every worker of a correct distributed run."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(weights.tobytes())
    return digest.hexdigest()


def _history_csv(history: list[dict[str, Any]]) -> str:
    """`history` as CSV text: one column per key any record has, one row per record."""
    columns = list(dict.fromkeys(key for record in history for key in record))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    return text.getvalue()
