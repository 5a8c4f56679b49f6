"""Embeddings: a trained encoder applied to a split or to new raw input, as Parquet.

The encoder is the exported SavedModel in `MODEL_DIR/encoder`
(`serving_default(x, mask) -> {"embedding"}`), so embedding needs neither the
training code nor the Keras model: `MODEL_DIR/encoder`, `dataset_metadata.json`
and `config.yaml` are all it reads. Inputs are normalized with the statistics
of the data the model was *trained* on (its `dataset_metadata.json`), not those
of the data being embedded.

Two sources:

* `compute_embeddings(data_dir, model_dir, split)`: a split of a preprocessed
  dataset, read through `seqpipe.input_pipeline.inference_batches`: the
  model config's batching in a fixed order (records sorted by length within
  windows), as the input pipeline reads a split.
* `embed_raw(inputs, model_dir)`: JSON lines (files or globs, `.gz` read
  transparently), parsed and validated record by record exactly as the Beam job
  does (`seqpipe.dataset.sources`, with the length limits of the model's
  `preprocess` config, the feature count of its training data, duplicate ids
  resolved the same way); returns the embeddings of every valid record and
  the rejections. The sequences are batched by
  `seqpipe.input_pipeline.array_batches` with the same rules (sorted by
  length within windows, cut and padded as the model config says).

An embedding does not depend on how records are batched or padded (the mask
makes padding invisible to the encoder): same id, same vector, up to float
rounding (~1e-6).

Parquet columns: `id` (string), `label` (string, "" when unlabeled), `split`
(string), `length` (int32), `embedding` (fixed-size list of float32). Every
record of the split appears exactly once. The file is written to a temporary
name and renamed, so a killed run leaves no Parquet that looks complete.

The machinery is shared with `seqpipe.commands.score` (anything that applies
an exported model to a split or to raw input): `split_batches` and
`raw_batches` (the batches, normalized with the training data's statistics),
`read_raw` (validation and rejections), `collect` (per-record outputs with
their keys, in batch order), `KeyedRecords` (rows with their keys) and
`write_table_atomic`.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seqpipe import input_pipeline, storage
from seqpipe.config import DataConfig
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset import records, sources
from seqpipe.training.model_dir import ENCODER_DIR, read_config, training_metadata

RAW_SPLIT = "raw"
# The serving signature's output (`seqpipe.model.autoencoder.EMBEDDING_KEY`; that
# module loads Keras, which embedding does not need).
_EMBEDDING_OUTPUT = "embedding"


@dataclasses.dataclass
class KeyedRecords:
    """Per-record results of one split, row-aligned with their keys.

    Subclasses add row-aligned array fields; `take` and `len` cover them.
    """

    ids: np.ndarray          # [N] str
    labels: np.ndarray       # [N] str
    lengths: np.ndarray      # [N] int32
    split: str

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: Sequence[int]):
        """These rows, in this order (every array field)."""
        rows = np.asarray(rows, np.int64)
        return dataclasses.replace(self, **{
            field.name: getattr(self, field.name)[rows]
            for field in dataclasses.fields(self) if field.name != "split"})


@dataclasses.dataclass
class Embeddings(KeyedRecords):
    """Embeddings of one split, row-aligned with their records."""

    vectors: np.ndarray      # [N, E] float32

    @classmethod
    def empty(cls, split: str, width: int) -> Embeddings:
        """No rows; vectors `[0, width]`."""
        return cls(**empty_keys(split), vectors=np.zeros((0, width), np.float32))


def rows_for(ids: np.ndarray, wanted: Sequence[str]) -> list[int]:
    """The rows of `ids` holding `wanted`, in the order of `wanted`.

    Raises:
        ValueError: `ids` and `wanted` are not the same ids, each once.
    """
    row_of = {record_id: row for row, record_id in enumerate(ids.tolist())}
    if len(row_of) != len(ids) or len(wanted) != len(ids) or set(wanted) != set(row_of):
        raise ValueError(f"the rows do not match the records one to one ({len(ids)} rows, "
                         f"{len(wanted)} records)")
    return [row_of[record_id] for record_id in wanted]


def empty_keys(split: str) -> dict[str, Any]:
    """The `KeyedRecords` fields of no records."""
    return {"ids": np.zeros(0, str), "labels": np.zeros(0, str),
            "lengths": np.zeros(0, np.int32), "split": split}


def load_encoder(model_dir: str | Path):
    """The exported encoder's `serving_default` function."""
    import tensorflow as tf

    path = storage.join(model_dir, ENCODER_DIR)
    if not storage.isdir(path):
        raise records.DatasetError(f"{model_dir}: no exported encoder at {path}; "
                                   "train a model first (`seqpipe train`)")
    return tf.saved_model.load(path).signatures["serving_default"]


def compute_embeddings(data_dir: str | Path, model_dir: str | Path, split: str,
                       encoder=None, *, batch_size: int | None = None) -> Embeddings:
    """Embeds every record of `split` of `data_dir` with the model in `model_dir`.

    Args:
        data_dir: a preprocessed dataset with the model's feature count.
        model_dir: a trained model directory.
        split: `train`, `val` or `test`.
        encoder: the loaded `serving_default` (saves reloading it per split).
        batch_size: overrides the model config's batch size (and drops its
            timestep budget); the vectors do not depend on it, memory and
            speed do.

    Raises:
        records.DatasetError: the data does not fit the model (feature count,
            schema version) or is missing.
    """
    batches = split_batches(data_dir, model_dir, split, batch_size=batch_size)
    encoder = encoder or load_encoder(model_dir)
    embeddings = _embed_batches(encoder, batches, split)
    if not len(embeddings):
        raise records.DatasetError(f"{data_dir}: split {split!r} has no records")
    return embeddings


def split_batches(data_dir: str | Path, model_dir: str | Path, split: str, *,
                  batch_size: int | None = None) -> Iterator[tuple]:
    """The batches (with keys) of every record of `split`, ready for a model of `model_dir`.

    The model config's batching in a fixed order (`input_pipeline.inference_batches`),
    normalized with the statistics of the data the model was trained on.

    Raises:
        records.DatasetError: the data does not fit the model (feature count,
            schema version, no times for a model that takes them) or is
            missing; checked before the first batch.
    """
    metadata = metadata_lib.read(data_dir)
    trained_on = training_metadata(model_dir)
    metadata_lib.check_compatible(trained_on, metadata, model_dir, data_dir)
    data_cfg = _data_config(model_dir, batch_size)
    input_pipeline.check_times(data_cfg, metadata, data_dir)
    return input_pipeline.inference_batches(
        data_dir, split, data_cfg, metadata=metadata, normalization=trained_on.feature_stats,
        observed=input_pipeline.observed_for(data_cfg, trained_on, metadata),
        time_stats=trained_on.time_stats)


def embed_raw(inputs: str | Sequence[str], model_dir: str | Path, *, encoder=None,
              batch_size: int | None = None, split: str = RAW_SPLIT
              ) -> tuple[Embeddings, list[sources.Rejection]]:
    """Embeds new raw JSON lines with the model in `model_dir`.

    Every non-blank line is either embedded (exactly once) or rejected
    (`read_raw`). The `split` field of a record is accepted and ignored; every
    row is labelled `split`.

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
    raw = read_raw(inputs, model_dir)
    return embed_validated(raw, model_dir, encoder=encoder, batch_size=batch_size,
                           split=split), raw.rejections


def embed_validated(raw: RawInput, model_dir: str | Path, *, encoder=None,
                    batch_size: int | None = None, split: str = RAW_SPLIT) -> Embeddings:
    """The embeddings of the kept sequences of `raw` (`read_raw`), in input order."""
    encoder = encoder or load_encoder(model_dir)
    if not raw.sequences:
        width = encoder.structured_outputs[_EMBEDDING_OUTPUT].shape[-1]
        return Embeddings.empty(split, width)
    embeddings = _embed_batches(encoder, raw_batches(raw, model_dir, batch_size=batch_size),
                                split)
    return embeddings.take(raw.input_order(embeddings.ids))


@dataclasses.dataclass(frozen=True)
class RawInput:
    """Raw input lines, validated: the kept sequences and the rejections.

    Attributes:
        sequences: the kept sequences, in input order (file, then line).
        rejections: every other record, with its reason.
        width_counts: `{features per step: records}` over the records that
            parse (kept or not), what the Beam job decides the dataset's
            feature count from (`feature_count`).
    """

    sequences: list[sources.Sequence]
    rejections: list[sources.Rejection]
    width_counts: dict[int, int]

    @property
    def feature_count(self) -> int:
        """The input's feature count as the Beam job would decide it (0: no record parses)."""
        return sources.dataset_feature_count(self.width_counts)

    def input_order(self, ids: np.ndarray) -> list[int]:
        """The rows of `ids` (each kept id once, in any order) that put them in input order."""
        return rows_for(ids, [sequence.id for sequence in self.sequences])


def read_raw(inputs: str | Sequence[str], model_dir: str | Path) -> RawInput:
    """Reads and validates raw JSON lines for the model in `model_dir`.

    Every non-blank line is either kept or rejected, with the checks and
    reason codes of the Beam job (`seqpipe.dataset.sources`): parsing, the
    length limits of the model's `preprocess` config (`too_long: truncate`
    keeps the first `max_length` steps), the feature count of the training
    data (`wrong_feature_count`), times (the model config's
    `preprocess.json_time_key`; a model trained with `data.time_delta`
    rejects a record without them: `mixed_times`), and duplicate ids (the
    copy with the smallest `(file, line)` is kept).

    Raises:
        FileNotFoundError: an input matches no file.
        records.DatasetError: `model_dir` is not a trained model directory.
    """
    trained_on = training_metadata(model_dir)
    cfg = read_config(model_dir)
    preprocess = cfg.preprocess
    if not input_pipeline.uses_observed(cfg.data, trained_on):  # it cannot take gaps
        preprocess = dataclasses.replace(preprocess, missing=sources.REJECT)
    return _validated_sequences(expand_inputs(inputs), preprocess, trained_on.num_features,
                                needs_times=cfg.data.time_delta)


def raw_batches(raw: RawInput, model_dir: str | Path, *, batch_size: int | None = None
                ) -> Iterator[tuple]:
    """The batches (with keys) of the kept sequences of `raw` (at least one), sorted by
    length within windows as the model config says, normalized with the statistics of
    the data the model was trained on."""
    trained_on = training_metadata(model_dir)
    kept = raw.sequences
    data_cfg = _data_config(model_dir, batch_size)
    return input_pipeline.array_batches(
        [s.steps for s in kept], [s.id for s in kept], data_cfg,
        labels=[s.label for s in kept], feature_stats=trained_on.feature_stats,
        observed=input_pipeline.uses_observed(data_cfg, trained_on),
        time_deltas=[s.time_delta for s in kept], time_stats=trained_on.time_stats)


def _data_config(model_dir: str | Path, batch_size: int | None) -> DataConfig:
    """The model config's data section, with `batch_size` (and no budget) if given."""
    data_cfg = read_config(model_dir).data
    if batch_size is None:
        return data_cfg
    return dataclasses.replace(data_cfg, batch_size=batch_size, timestep_budget=0)


def _embed_batches(encoder, batches, split: str) -> Embeddings:
    """The encoder's vectors of element-contract batches with keys, in batch order."""
    def vectors(inputs):
        served = encoder(**input_pipeline.model_inputs(inputs))
        return {"vectors": served[_EMBEDDING_OUTPUT].numpy()}

    collected = collect(batches, vectors)
    if collected is None:
        return Embeddings.empty(split, 0)
    return Embeddings(split=split, **collected)


def collect(batches: Iterable[tuple],
            outputs: Callable[[dict[str, Any]], dict[str, np.ndarray]],
            progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray] | None:
    """The keys of every record of `batches` and `outputs(inputs)`, in batch order.

    Args:
        batches: element-contract batches with keys (`id`, `label`, `length`).
        outputs: a batch's inputs -> `{name: array with one row per record}`.
        progress: called with the number of records done after each batch.

    Returns:
        `{"ids", "labels", "lengths", **outputs}`, each concatenated over the
        batches (the `KeyedRecords` fields); None when there is no batch.
    """
    parts: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    done = 0
    for inputs, _, _ in batches:
        parts["ids"].append(inputs["id"].numpy().astype(str))
        parts["labels"].append(inputs["label"].numpy().astype(str))
        parts["lengths"].append(inputs["length"].numpy().astype(np.int32))
        for name, values in outputs(inputs).items():
            parts[name].append(values)
        done += len(parts["ids"][-1])
        if progress is not None:
            progress(done)
    if not parts:
        return None
    return {name: np.concatenate(values) for name, values in parts.items()}


def expand_inputs(patterns: str | Sequence[str]) -> list[str]:
    """The sorted, de-duplicated files matching `patterns` (paths or globs).

    Raises:
        FileNotFoundError: a pattern matches no file.
    """
    if isinstance(patterns, (str, Path)):
        patterns = [str(patterns)]
    files: set[str] = set()
    for pattern in patterns:
        matched = storage.glob(pattern)
        if not matched:
            raise FileNotFoundError(f"input {str(pattern)!r} matches no file")
        files.update(matched)
    return sorted(files)


def count_rejections(rejections: Sequence[sources.Rejection]) -> dict[str, int]:
    """`{reason: count}` of `rejections`, most frequent first."""
    return dict(collections.Counter(r.reason for r in rejections).most_common())


def write_rejections(rejections: Sequence[sources.Rejection], path: str | Path
                     ) -> str | Path:
    """Writes one JSON line per rejection (the Beam job's `rejects/` format) to `path`
    (local or a URL), atomically; returns `path`."""
    storage.write_text_atomic(path, "".join(r.to_json() + "\n" for r in rejections))
    return path


def _validated_sequences(files: Sequence[str], cfg, num_features: int,
                         needs_times: bool = False) -> RawInput:
    """Every line of `files` as a kept sequence or a rejection (the Beam job's rules);
    with `needs_times`, a record without times is `mixed_times`."""
    by_id: dict[str, list[sources.Sequence]] = collections.defaultdict(list)
    rejections: list[sources.Rejection] = []
    widths: collections.Counter[int] = collections.Counter()
    for path, number, line in _read_lines(files):
        result = sources.validate_json_line(line, path, number, min_length=cfg.min_length,
                                            max_length=cfg.max_length,
                                            too_long=cfg.too_long, missing=cfg.missing,
                                            max_missing_fraction=cfg.max_missing_fraction,
                                            time_key=cfg.json_time_key)
        if isinstance(result, sources.Sequence):
            widths[result.num_features] += 1
            result = (sources.check_layout(result, (num_features, True), cfg.json_time_key)
                      if needs_times
                      else sources.check_feature_count(result, num_features,
                                                       cfg.json_time_key))
        if isinstance(result, sources.Rejection):
            rejections.append(result)
        else:
            by_id[result.id].append(result)
    kept = []
    for copies in by_id.values():
        sequence, duplicates = sources.resolve_duplicates(copies, cfg.json_time_key)
        kept.append(sequence)
        rejections.extend(duplicates)
    kept.sort(key=lambda s: (s.source, s.line))
    return RawInput(kept, rejections, dict(widths))


def _read_lines(files: Sequence[str]) -> Iterator[tuple[str, int, bytes]]:
    """`(file, 1-based line number, line without its ending)` of every non-blank line."""
    import tensorflow as tf

    for path in files:
        with tf.io.gfile.GFile(path, "rb") as raw:  # a stream: raw inputs may be large
            stream = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
            for number, line in enumerate(stream, start=1):
                if line.strip():
                    yield path, number, line.rstrip(b"\r\n")


def write_parquet(embeddings: Embeddings, output: str | Path) -> str | Path:
    """Writes embeddings to Parquet atomically (temp file, then rename)."""
    import pyarrow as pa

    dim = embeddings.vectors.shape[1]
    table = pa.table({
        **key_columns(embeddings),
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(embeddings.vectors.astype(np.float32).ravel(), pa.float32()), dim),
    })
    return write_table_atomic(table, output)


def write_table_atomic(table, output: str | Path) -> str | Path:
    """Writes a pyarrow table to Parquet at `output` (local or a URL): a temporary file,
    then a rename (`storage.local_file`), so a killed run leaves no Parquet that looks
    complete; returns `output`."""
    import pyarrow.parquet as pq

    with storage.local_file(output) as temporary:
        pq.write_table(table, temporary)
    return output


def key_columns(rows: KeyedRecords) -> dict[str, Any]:
    """The `id`, `label`, `split` and `length` Parquet columns of `rows` (pyarrow arrays)."""
    import pyarrow as pa

    return {"id": pa.array(rows.ids, pa.string()), "label": pa.array(rows.labels, pa.string()),
            "split": pa.array([rows.split] * len(rows), pa.string()),
            "length": pa.array(rows.lengths, pa.int32())}


def read_parquet(path: str | Path) -> Embeddings:
    """Reads a file written by `write_parquet` (local or a URL) back into `Embeddings`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(pa.BufferReader(storage.read_bytes(path)))
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    splits = table.column("split").to_pylist()
    return Embeddings(ids=np.asarray(table.column("id").to_pylist(), dtype=str),
                      labels=np.asarray(table.column("label").to_pylist(), dtype=str),
                      lengths=table.column("length").to_numpy().astype(np.int32),
                      vectors=vectors.astype(np.float32),
                      split=splits[0] if splits else "")
