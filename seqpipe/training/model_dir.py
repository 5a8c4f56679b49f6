"""The layout of a model directory: its one description (no TensorFlow import).

`seqpipe train` writes, the other commands read:

    autoencoder.keras      the trained autoencoder (best weights), safe-mode loadable;
                           the encoder alone with `train.objective: triplet`
    encoder/               SavedModel: serving_default(x, mask) -> {"embedding"}
                           (staged as .encoder.tmp/, then renamed)
    scorer/                SavedModel: serving_default(x, mask) -> {"step_error"
                           [B, T], "score" [B]}, the masked reconstruction error
                           per step and per sequence (`seqpipe score`; staged as
                           .scorer.tmp/, then renamed). A model dir trained
                           before it existed has none: `seqpipe score` then
                           builds the same function from autoencoder.keras
                           (safe-mode load with seqpipe's layers). None with
                           `train.objective: triplet` (no decoder)
    config.yaml            the resolved config, written when training starts: a
                           resumed run must have the same model section
    dataset_metadata.json  the training data's metadata.json (idem: resuming on
                           data of another shape is refused); read and written by
                           `seqpipe.dataset.metadata` (`read_file`, `write_file`)
    history.json, .csv     per-epoch loss, val_loss, learning rate, timesteps/s;
                           one record per finished epoch, in order
    summary.json           epochs, best val loss, throughput, padding efficiency,
                           the records trained and validated on and the passes
                           per epoch (`training.inputs.InputPlan`), the
                           weights' SHA-256 and the config
    checkpoints/backup/    the last backup (every `train.checkpoint_every_steps`
                           steps and at every epoch end): weights, optimizer and
                           the run's position, from which a killed run resumes
    checkpoints/best/      the weights with the best validation loss
    logs/                  TensorBoard: loss, val_loss, timesteps/s per epoch
    .lock                  the pid of the training run writing the directory;
                           left by a killed run, it is taken over by the next
    evaluation.json        `seqpipe evaluate` results (read by `seqpipe report`)
    score_threshold.json   `seqpipe score --threshold-from SPLIT`: the anomaly
                           threshold (a quantile of that split's scores, or a
                           fixed value), the split, its record count and the
                           weights' SHA-256 from summary.json; later `score`
                           runs flag `is_anomaly` with it, and refuse it when
                           the weights changed
    score_evaluation.json  `seqpipe score --normal-label ...`: ROC-AUC and
                           PR-AUC of the scores and of the baselines
    report/                `seqpipe report` figures

Under `MultiWorkerMirroredStrategy` only the chief writes here; other workers
write their checkpoints and logs into temporary directories they delete.
Writers are `seqpipe.training.outputs` (exports, history, summary),
`seqpipe.training.resume` (checkpoints, lock) and the commands named above.
JSON files are replaced atomically (`seqpipe.storage.write_json_atomic`).

A model directory is a local path or a URL of any file system TensorFlow
writes (gs://, ram://, ...; `seqpipe.storage`): only the lock is weaker on a
URL (`seqpipe.training.resume.model_dir_lock`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from seqpipe import storage
from seqpipe.config import Config, from_dict
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset.metadata import DatasetMetadata
from seqpipe.dataset.records import DatasetError
from seqpipe.errors import SeqpipeError

AUTOENCODER_FILE = "autoencoder.keras"
ENCODER_DIR = "encoder"
SCORER_DIR = "scorer"
CONFIG_FILE = "config.yaml"
METADATA_COPY = "dataset_metadata.json"
HISTORY_FILE = "history.json"
HISTORY_CSV = "history.csv"
SUMMARY_FILE = "summary.json"
CHECKPOINTS_DIR = "checkpoints"
LOGS_DIR = "logs"
LOCK_FILE = ".lock"
EVALUATION_FILE = "evaluation.json"
REPORT_DIR = "report"
THRESHOLD_FILE = "score_threshold.json"
SCORE_EVALUATION_FILE = "score_evaluation.json"
BACKUP_DIR = f"{CHECKPOINTS_DIR}/backup"
BEST_DIR = f"{CHECKPOINTS_DIR}/best"

# What only `seqpipe train` writes; other commands must never write over these.
TRAINING_ARTEFACTS = (AUTOENCODER_FILE, ENCODER_DIR, SCORER_DIR, CONFIG_FILE, METADATA_COPY,
                      HISTORY_FILE, HISTORY_CSV, SUMMARY_FILE, CHECKPOINTS_DIR, LOGS_DIR)
# Everything a model directory may hold; anything else means it is not one.
ENTRIES = (*TRAINING_ARTEFACTS, LOCK_FILE, EVALUATION_FILE, REPORT_DIR, THRESHOLD_FILE,
           SCORE_EVALUATION_FILE)


class TrainingError(SeqpipeError, RuntimeError):
    """Training cannot start or continue (bad data dir, model dir in use, non-finite loss)."""


def training_metadata(model_dir: str | Path) -> DatasetMetadata:
    """The metadata of the data a model was trained on (its `dataset_metadata.json`).

    Raises:
        DatasetError: no such directory, not a trained model directory, or a
            copy `seqpipe.dataset.metadata` does not read.
    """
    path = storage.join(model_dir, METADATA_COPY)
    if not storage.isdir(model_dir):
        raise DatasetError(f"{model_dir}: no such model directory")
    if not storage.isfile(path):
        raise DatasetError(f"{model_dir}: not a trained model directory (no {METADATA_COPY}); "
                           "run `seqpipe train` first")
    return metadata_lib.read_file(path)


def read_config(model_dir: str | Path) -> Config:
    """The resolved config the training run wrote (`config.yaml`, from `dump_config`).

    Read through `seqpipe.storage`, so the model directory may be a URL.
    """
    return from_dict(yaml.safe_load(storage.read_text(storage.join(model_dir, CONFIG_FILE))))


def read_json(model_dir: str | Path, name: str) -> Any:
    """The JSON file `name` of a model directory; None if it has none."""
    path = storage.join(model_dir, name)
    return storage.read_json(path) if storage.isfile(path) else None
