"""Embeddings: a trained encoder applied to a split or to new raw input, as Parquet.

The encoder is the exported SavedModel in `MODEL_DIR/encoder`
(`serving_default(x, mask) -> {"embedding"}`), so embedding needs neither the
training code nor the Keras model: `MODEL_DIR/encoder`, `dataset_metadata.json`
and `config.yaml` are all it reads. Inputs are normalized with the statistics
of the data the model was *trained* on (its `dataset_metadata.json`), not those
of the data being embedded.

Two sources:

* `compute_embeddings(data_dir, model_dir, split)`: a split of a preprocessed
  dataset, read through `seqpipe.input_pipeline.data.inference_batches`: deterministic batches
  of records sorted by length within windows, read and parsed eagerly (no
  `tf.data` graph to build for a one-pass read).
* `embed_raw(inputs, model_dir)`: JSON lines (files or globs, `.gz` read
  transparently), parsed and validated record by record exactly as the Beam job
  does (`seqpipe.dataset.sources`, with the length limits of the model's
  `preprocess` config, the feature count of its training data, duplicate ids
  resolved the same way); returns the embeddings of every valid record and
  the rejections. Sequences are sorted by length and batched, so each batch
  is padded only to its own longest sequence.

An embedding does not depend on how records are batched or padded (the mask
makes padding invisible to the encoder): same id, same vector, up to float
rounding (~1e-6).

Parquet columns: `id` (string), `label` (string, "" when unlabeled), `split`
(string), `length` (int32), `embedding` (fixed-size list of float32). Every
record of the split appears exactly once. The file is written to a temporary
name and renamed, so a killed run leaves no Parquet that looks complete.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seqpipe.config import load_config
from seqpipe.dataset import records, sources
from seqpipe.input_pipeline import data
from seqpipe.training.model_dir import CONFIG_FILE, ENCODER_DIR, training_metadata

RAW_SPLIT = "raw"


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
                       encoder=None, *, batch_size: int | None = None,
                       bucket_boundaries: Sequence[int] | None = None) -> Embeddings:
    """Embeds every record of `split` of `data_dir` with the model in `model_dir`.

    Args:
        data_dir: a preprocessed dataset with the model's feature count.
        model_dir: a trained model directory.
        split: `train`, `val` or `test`.
        encoder: the loaded `serving_default` (saves reloading it per split).
        batch_size, bucket_boundaries: override the model config's batching
            (the vectors do not depend on it; useful for memory or speed).

    Raises:
        records.DatasetError: the data does not fit the model (feature count,
            schema version) or is missing.
    """
    model_dir = Path(model_dir)
    metadata = records.read_metadata(data_dir)
    trained_on = training_metadata(model_dir)
    records.check_compatible(trained_on, metadata, model_dir, data_dir)
    encoder = encoder or load_encoder(model_dir)
    changes: dict[str, Any] = {"deterministic": True}
    if batch_size is not None:
        changes.update(batch_size=batch_size, timestep_budget=0)
    if bucket_boundaries is not None:
        changes["bucket_boundaries"] = tuple(bucket_boundaries)
    data_cfg = dataclasses.replace(load_config(model_dir / CONFIG_FILE).data, **changes)
    batches = data.inference_batches(data_dir, split, data_cfg, metadata=metadata,
                                     normalization=trained_on["feature_stats"])
    parts: dict[str, list[Any]] = {"ids": [], "labels": [], "lengths": [], "vectors": []}
    for inputs, _, _ in batches:
        outputs = encoder(x=inputs["x"], mask=inputs["mask"])
        parts["vectors"].append(outputs["embedding"].numpy())
        parts["ids"].append(inputs["id"].numpy().astype(str))
        parts["labels"].append(inputs["label"].numpy().astype(str))
        parts["lengths"].append(inputs["length"].numpy().astype(np.int32))
    if not parts["ids"]:
        raise records.DatasetError(f"{data_dir}: split {split!r} has no records")
    return Embeddings(split=split, **{k: np.concatenate(v) for k, v in parts.items()})


def embed_raw(inputs: str | Sequence[str], model_dir: str | Path, *, encoder=None,
              batch_size: int | None = None, split: str = RAW_SPLIT
              ) -> tuple[Embeddings, list[sources.Rejection]]:
    """Embeds new raw JSON lines with the model in `model_dir`.

    Every non-blank line is either embedded (exactly once) or rejected, with
    the checks and reason codes of the Beam job (`seqpipe.dataset.sources`): parsing,
    the length limits of the model's `preprocess` config (`too_long: truncate`
    embeds the first `max_length` steps), the feature count of the training
    data (`wrong_feature_count`), and duplicate ids (the copy with the smallest
    `(file, line)` is kept). The `split` field of a record is accepted and
    ignored; every row is labelled `split`.

    Args:
        inputs: JSONL file paths or globs (local or any `tf.io.gfile` file
            system); `.gz` files are decompressed.
        model_dir: a trained model directory (only `encoder/`,
            `dataset_metadata.json` and `config.yaml` are read).
        encoder: the loaded `serving_default`, if already loaded.
        batch_size: sequences per batch; default the model config's
            `data.batch_size`.
        split: the value of the `split` column.

    Returns:
        `(embeddings, rejections)`: embeddings in input order (file, then line);
        rejections as the Beam job writes them to `rejects/`.

    Raises:
        FileNotFoundError: an input matches no file.
        records.DatasetError: `model_dir` is not a trained model directory.
    """
    model_dir = Path(model_dir)
    trained_on = training_metadata(model_dir)
    cfg = load_config(model_dir / CONFIG_FILE)
    kept, rejections = _validated_sequences(expand_inputs(inputs), cfg.preprocess,
                                            int(trained_on["num_features"]))
    encoder = encoder or load_encoder(model_dir)
    stats = trained_on.get("feature_stats") if cfg.data.normalize else None
    steps = [normalize(sequence.steps, stats) for sequence in kept]
    vectors = embed_arrays(encoder, steps, batch_size or cfg.data.batch_size)
    embeddings = Embeddings(
        ids=np.asarray([s.id for s in kept], dtype=str),
        labels=np.asarray([s.label for s in kept], dtype=str),
        lengths=np.asarray([s.length for s in kept], dtype=np.int32),
        vectors=vectors, split=split)
    return embeddings, rejections


def expand_inputs(patterns: str | Sequence[str]) -> list[str]:
    """The sorted, de-duplicated files matching `patterns` (paths or globs).

    Raises:
        FileNotFoundError: a pattern matches no file.
    """
    import tensorflow as tf

    if isinstance(patterns, (str, Path)):
        patterns = [str(patterns)]
    files: set[str] = set()
    for pattern in patterns:
        matched = tf.io.gfile.glob(str(pattern))
        if not matched:
            raise FileNotFoundError(f"input {str(pattern)!r} matches no file")
        files.update(matched)
    return sorted(files)


def normalize(steps: np.ndarray, feature_stats: Mapping[str, Any] | None) -> np.ndarray:
    """`(steps - mean) / std` with the rule of the tf.data pipeline, float32.

    `feature_stats` None means no normalization (`data.normalize: false`);
    a feature with std 0 is only centred (the pipeline's rule).
    """
    steps = np.asarray(steps, dtype=np.float32)
    if feature_stats is None:
        return steps
    mean, std = data.normalization_arrays(feature_stats, steps.shape[1])
    return (steps - mean) / std


def embed_arrays(encoder, sequences: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
    """Embeds unpadded `[length, F]` arrays; returns `[N, E]` in input order.

    Sequences are sorted by length and cut into batches of `batch_size`, each
    right-padded with zeros to its longest member (little padding, few
    shapes); the mask is 1.0 exactly on the real steps.
    """
    import tensorflow as tf

    if not sequences:
        width = encoder.structured_outputs["embedding"].shape[-1]
        return np.zeros((0, width), np.float32)
    order = np.argsort([len(s) for s in sequences], kind="stable")
    vectors: list[np.ndarray] = [np.empty(0)] * len(sequences)
    for start in range(0, len(order), max(1, batch_size)):
        batch = order[start:start + batch_size]
        x, mask = pad_batch([sequences[index] for index in batch])
        output = encoder(x=tf.constant(x), mask=tf.constant(mask))["embedding"].numpy()
        for row, index in enumerate(batch):
            vectors[index] = output[row]
    return np.stack(vectors).astype(np.float32)


def pad_batch(sequences: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads `[length, F]` arrays with zeros to the longest one.

    Returns:
        `(x, mask)`: float32 `[B, T, F]` and `[B, T]`, the mask exactly 1.0 on
        the real steps and 0.0 on padding (the model's input contract).
    """
    longest = max(len(s) for s in sequences)
    x = np.zeros((len(sequences), longest, sequences[0].shape[1]), np.float32)
    mask = np.zeros((len(sequences), longest), np.float32)
    for row, steps in enumerate(sequences):
        x[row, :len(steps)] = steps
        mask[row, :len(steps)] = 1.0
    return x, mask


def count_rejections(rejections: Sequence[sources.Rejection]) -> dict[str, int]:
    """`{reason: count}` of `rejections`, most frequent first."""
    return dict(collections.Counter(r.reason for r in rejections).most_common())


def write_rejections(rejections: Sequence[sources.Rejection], path: str | Path) -> Path:
    """Writes one JSON line per rejection (the Beam job's `rejects/` format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(r.to_json() + "\n" for r in rejections))
    return path


def _validated_sequences(files: Sequence[str], cfg, num_features: int
                         ) -> tuple[list[sources.Sequence], list[sources.Rejection]]:
    """Every line of `files` as a kept sequence or a rejection (the Beam job's rules)."""
    by_id: dict[str, list[sources.Sequence]] = collections.defaultdict(list)
    rejections: list[sources.Rejection] = []
    for path, number, line in _read_lines(files):
        result = sources.validate_json_line(line, path, number, min_length=cfg.min_length,
                                            max_length=cfg.max_length,
                                            too_long=cfg.too_long)
        if isinstance(result, sources.Sequence):
            result = sources.check_feature_count(result, num_features)
        if isinstance(result, sources.Rejection):
            rejections.append(result)
        else:
            by_id[result.id].append(result)
    kept = []
    for copies in by_id.values():
        sequence, duplicates = sources.resolve_duplicates(copies)
        kept.append(sequence)
        rejections.extend(duplicates)
    kept.sort(key=lambda s: (s.source, s.line))
    return kept, rejections


def _read_lines(files: Sequence[str]) -> Iterator[tuple[str, int, bytes]]:
    """`(file, 1-based line number, line without its ending)` of every non-blank line."""
    import tensorflow as tf

    for path in files:
        with tf.io.gfile.GFile(path, "rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
            for number, line in enumerate(stream, start=1):
                if line.strip():
                    yield path, number, line.rstrip(b"\r\n")


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
    try:
        pq.write_table(table, temporary)
        temporary.replace(output)
    except BaseException:
        temporary.unlink(missing_ok=True)  # a failed write leaves nothing behind
        raise
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
