"""Embeddings: a trained encoder applied to a split, written as Parquet.

The encoder is the exported SavedModel in `MODEL_DIR/encoder`
(`serving_default(x, mask) -> {"embedding"}`), so embedding needs neither the
training code nor the Keras model. Inputs are read through `seqpipe.data` in
deterministic, length-bucketed batches and normalized with the statistics of
the data the model was *trained* on (its `dataset_metadata.json`), not those
of the data being embedded.

Parquet columns: `id` (string), `label` (string, "" when unlabeled), `split`
(string), `length` (int32), `embedding` (fixed-size list of float32). Every
record of the split appears exactly once. The file is written to a temporary
name and renamed, so a killed run leaves no Parquet that looks complete.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from seqpipe import data, records
from seqpipe.config import load_config
from seqpipe.train import CONFIG_FILE, ENCODER_DIR, METADATA_COPY


@dataclasses.dataclass
class Embeddings:
    """Embeddings of one split, row-aligned with their records."""

    ids: np.ndarray          # [N] str
    labels: np.ndarray       # [N] str
    lengths: np.ndarray      # [N] int32
    vectors: np.ndarray      # [N, E] float32
    split: str

    def __len__(self) -> int:
        return len(self.ids)


def load_encoder(model_dir: str | Path):
    """The exported encoder's `serving_default` function."""
    import tensorflow as tf

    path = Path(model_dir) / ENCODER_DIR
    if not path.is_dir():
        raise records.DatasetError(f"{model_dir}: no exported encoder at {path}; "
                                   "train a model first (`seqpipe train`)")
    return tf.saved_model.load(str(path)).signatures["serving_default"]


def compute_embeddings(data_dir: str | Path, model_dir: str | Path, split: str,
                       encoder=None) -> Embeddings:
    """Embeds every record of `split` of `data_dir` with the model in `model_dir`.

    Raises:
        records.DatasetError: the data does not fit the model (feature count,
            schema version) or is missing.
    """
    model_dir = Path(model_dir)
    metadata = records.read_metadata(data_dir)
    trained_on = _training_metadata(model_dir)
    records.check_compatible(trained_on, metadata, model_dir, data_dir)
    encoder = encoder or load_encoder(model_dir)
    data_cfg = dataclasses.replace(load_config(model_dir / CONFIG_FILE).data,
                                   deterministic=True)
    dataset = data.make_dataset(data_dir, split, data_cfg, training=False,
                                metadata=metadata, with_keys=True,
                                normalization=trained_on["feature_stats"])
    parts: dict[str, list[Any]] = {"ids": [], "labels": [], "lengths": [], "vectors": []}
    for inputs, _, _ in dataset:
        outputs = encoder(x=inputs["x"], mask=inputs["mask"])
        parts["vectors"].append(outputs["embedding"].numpy())
        parts["ids"].append(inputs["id"].numpy().astype(str))
        parts["labels"].append(inputs["label"].numpy().astype(str))
        parts["lengths"].append(inputs["length"].numpy().astype(np.int32))
    if not parts["ids"]:
        raise records.DatasetError(f"{data_dir}: split {split!r} has no records")
    return Embeddings(split=split, **{k: np.concatenate(v) for k, v in parts.items()})


def write_parquet(embeddings: Embeddings, output: str | Path) -> Path:
    """Writes embeddings to Parquet atomically (temp file, then rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    dim = embeddings.vectors.shape[1]
    table = pa.table({
        "id": pa.array(embeddings.ids, pa.string()),
        "label": pa.array(embeddings.labels, pa.string()),
        "split": pa.array([embeddings.split] * len(embeddings), pa.string()),
        "length": pa.array(embeddings.lengths, pa.int32()),
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(embeddings.vectors.astype(np.float32).ravel(), pa.float32()), dim),
    })
    temporary = output.with_name(f".{output.name}.tmp")
    pq.write_table(table, temporary)
    temporary.replace(output)
    return output


def read_parquet(path: str | Path) -> Embeddings:
    """Reads a file written by `write_parquet` back into `Embeddings`."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    splits = table.column("split").to_pylist()
    return Embeddings(ids=np.asarray(table.column("id").to_pylist(), dtype=str),
                      labels=np.asarray(table.column("label").to_pylist(), dtype=str),
                      lengths=table.column("length").to_numpy().astype(np.int32),
                      vectors=vectors.astype(np.float32),
                      split=splits[0] if splits else "")


def _training_metadata(model_dir: Path) -> dict[str, Any]:
    path = model_dir / METADATA_COPY
    if not path.is_file():
        raise records.DatasetError(f"{model_dir}: not a trained model directory (no "
                                   f"{path.name}); run `seqpipe train` first")
    return json.loads(path.read_text())
