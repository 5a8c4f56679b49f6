"""The layout of a model directory: its one description (no TensorFlow import).

`seqpipe train` writes, the other commands read:

    autoencoder.keras      the trained autoencoder (best weights), safe-mode loadable;
                           the encoder alone with `train.objective: triplet`
    encoder/               SavedModel: serving_default(x, mask) -> {"embedding"}
                           (staged as .encoder.tmp/, then renamed)
    config.yaml            the resolved config, written when training starts: a
                           resumed run must have the same model section
    dataset_metadata.json  the training data's metadata.json (idem: resuming on
                           data of another shape is refused); read and written by
                           `seqpipe.dataset.metadata` (`read_file`, `write_file`)
    history.json, .csv     per-epoch loss, val_loss, learning rate, timesteps/s;
                           one record per finished epoch, in order
    summary.json           epochs, best val loss, throughput, padding efficiency,
                           the weights' SHA-256 and the config
    checkpoints/backup/    the last backup (every `train.checkpoint_every_steps`
                           steps and at every epoch end): weights, optimizer and
                           the run's position, from which a killed run resumes
    checkpoints/best/      the weights with the best validation loss
    logs/                  TensorBoard: loss, val_loss, timesteps/s per epoch
    .lock                  the pid of the training run writing the directory;
                           left by a killed run, it is taken over by the next
    evaluation.json        `seqpipe evaluate` results (read by `seqpipe report`)
    report/                `seqpipe report` figures

Under `MultiWorkerMirroredStrategy` only the chief writes here; other workers
write their checkpoints and logs into temporary directories they delete.
Writers are `seqpipe.training.outputs` (exports, history, summary),
`seqpipe.training.resume` (checkpoints, lock) and the commands named above.
"""

from __future__ import annotations

from pathlib import Path

from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset.metadata import DatasetMetadata
from seqpipe.dataset.records import DatasetError
from seqpipe.errors import SeqpipeError

AUTOENCODER_FILE = "autoencoder.keras"
ENCODER_DIR = "encoder"
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
BACKUP_DIR = f"{CHECKPOINTS_DIR}/backup"
BEST_DIR = f"{CHECKPOINTS_DIR}/best"

# What only `seqpipe train` writes; other commands must never write over these.
TRAINING_ARTEFACTS = (AUTOENCODER_FILE, ENCODER_DIR, CONFIG_FILE, METADATA_COPY, HISTORY_FILE,
                      HISTORY_CSV, SUMMARY_FILE, CHECKPOINTS_DIR, LOGS_DIR)
# Everything a model directory may hold; anything else means it is not one.
ENTRIES = (*TRAINING_ARTEFACTS, LOCK_FILE, EVALUATION_FILE, REPORT_DIR)


class TrainingError(SeqpipeError, RuntimeError):
    """Training cannot start or continue (bad data dir, model dir in use, non-finite loss)."""


def training_metadata(model_dir: str | Path) -> DatasetMetadata:
    """The metadata of the data a model was trained on (its `dataset_metadata.json`).

    Raises:
        DatasetError: no such directory, not a trained model directory, or a
            copy `seqpipe.dataset.metadata` does not read.
    """
    model_dir = Path(model_dir)
    path = model_dir / METADATA_COPY
    if not model_dir.is_dir():
        raise DatasetError(f"{model_dir}: no such model directory")
    if not path.is_file():
        raise DatasetError(f"{model_dir}: not a trained model directory (no {path.name}); "
                           "run `seqpipe train` first")
    return metadata_lib.read_file(path)
