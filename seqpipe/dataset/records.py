"""The record contract: one sequence <-> one serialized `tf.train.Example`.

Every stage agrees on this file and on nothing else. A record holds:

    key       kind         example
    id        bytes_list   b"seq-000017"
    label     bytes_list   b"class_2"  (b"" when unlabeled)
    length    int64_list   3
    steps     float_list   [s0f0, s0f1, s1f0, s1f1, s2f0, s2f1]  (row-major [length, F];
                           NaN: a missing entry)
    time_delta float_list  [0, t1 - t0, t2 - t1]  (only in datasets with times)

Times (`seqpipe.dataset.times`): a record whose source gave each step a time
(a JSON line's `"t"`, a long-format time column) stores `time_delta`, `length`
float32 gaps: 0 at step 0, then each step's time minus the previous one's,
subtracted in float64 from the source times and rounded once to float32
(absolute epoch times would not survive float32; gaps do). A dataset has it
on every record or on none (`metadata.DatasetMetadata.has_times`); a record
without times has no `time_delta` key and is byte for byte what it was before
times existed.

Missing entries: a feature that was not observed at a step (`preprocess.missing:
keep`; `seqpipe.dataset.sources`) is stored as NaN at its place in `steps`;
every other value is finite. So a record without gaps is byte for byte what
it was before missing entries existed, the observed mask costs nothing
(`~isnan(steps)`), and the TFDS spec below still decodes every record. A
record is never all NaN (such records are rejected, `all_missing`). Readers
must not feed `steps` to arithmetic before filling the NaN
(`seqpipe.input_pipeline` fills them and carries the observed mask).

This is exactly how `tfds.features.FeaturesDict` with
`Tensor(shape=(None, F), dtype=float32)`, two `Text` and one int64 `Scalar`
(and `Tensor(shape=(None,), dtype=float32)` for `time_delta`) serializes a
sequence (see `tfds_features`), so the shards are a normal TFDS
dataset: `tfds.builder_from_directory(out_dir)` reads them. A flat float list
is also the cheapest encoding to write and parse (one contiguous copy); a
`tf.train.SequenceExample` stores one `Feature` per timestep.

Shards are named by the TFDS template `{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}`
(for example `seqpipe-train.tfrecord-00000-of-00004`); the directory around
them is described in `seqpipe.dataset`, its `metadata.json` in
`seqpipe.dataset.metadata`.

Pure functions, no Beam, no Keras: tested alone in tests/test_records.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seqpipe.errors import SeqpipeError

if TYPE_CHECKING:
    from seqpipe.dataset.metadata import DatasetMetadata

SCHEMA_VERSION = 1
DATASET_NAME = "seqpipe"
FILE_FORMAT = "tfrecord"
METADATA_FILE = "metadata.json"

ID_KEY = "id"
LABEL_KEY = "label"
LENGTH_KEY = "length"
STEPS_KEY = "steps"
TIME_DELTA_KEY = "time_delta"

SPLITS = ("train", "val", "test")


class DatasetError(SeqpipeError, ValueError):
    """A dataset directory that cannot be read: missing, unfinished or incompatible."""


def encode_sequence(sequence_id: str, steps: np.ndarray, label: str = "",
                    time_delta: np.ndarray | None = None) -> bytes:
    """Serializes one sequence to `tf.train.Example` bytes.

    The bytes are written directly in the protobuf wire format (no TensorFlow
    import, one contiguous copy of the float32 steps); they equal
    `tf.train.Example(...).SerializeToString(deterministic=True)` byte for byte
    (tests/test_records.py checks it), so the same sequence gives the same
    bytes in every process.

    Args:
        sequence_id: the record's unique id.
        steps: float array of shape `[length, num_features]`, length >= 1.
        label: class label, or "" when unlabeled.
        time_delta: float `[length]`, the steps' time gaps (`times.time_deltas`),
            or None for a record without times (no `time_delta` key).

    Returns:
        The serialized example.
    """
    steps = np.asarray(steps, dtype=np.float32)
    if steps.ndim != 2 or steps.shape[0] < 1:
        raise ValueError(f"steps must have shape [length >= 1, num_features]; "
                         f"Received: shape={steps.shape}")
    # Map entries in key order (id < label < length < steps < time_delta), as
    # deterministic serialization orders them.
    entries = [
        _map_entry(ID_KEY, _BYTES_LIST, _field(1, sequence_id.encode())),
        _map_entry(LABEL_KEY, _BYTES_LIST, _field(1, label.encode())),
        _map_entry(LENGTH_KEY, _INT64_LIST, _packed(_varint(steps.shape[0]))),
        _map_entry(STEPS_KEY, _FLOAT_LIST, _packed(steps.astype("<f4").tobytes())),
    ]
    if time_delta is not None:
        time_delta = np.asarray(time_delta, dtype=np.float32)
        if time_delta.shape != steps.shape[:1]:
            raise ValueError(f"time_delta must have shape [length] = [{steps.shape[0]}]; "
                             f"Received: shape={time_delta.shape}")
        entries.append(_map_entry(TIME_DELTA_KEY, _FLOAT_LIST,
                                  _packed(time_delta.astype("<f4").tobytes())))
    return _field(1, b"".join(entries))  # Example.features


# Protobuf wire format of `tf.train.Example` (tensorflow/core/example/feature.proto):
# Example{features=1: Features{feature=1: map<string, Feature>}}, a map entry is
# {key=1, value=2}, Feature is a oneof of BytesList=1, FloatList=2, Int64List=3,
# each a `repeated value = 1` (floats and int64s packed).
_BYTES_LIST, _FLOAT_LIST, _INT64_LIST = 1, 2, 3
_ONE_BYTE = [bytes((i,)) for i in range(0x80)]


def _varint(value: int) -> bytes:
    """A non-negative int as a protobuf base-128 varint."""
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): tag, length, payload."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _packed(payload: bytes) -> bytes:
    """The packed `value` field of a Float/Int64List; an empty list is omitted."""
    return _field(1, payload) if payload else b""


def _map_entry(key: str, kind: int, value_list: bytes) -> bytes:
    """One `Features.feature` map entry: {key, Feature{kind: value_list}}."""
    feature = _field(kind, value_list)
    return _field(1, _field(1, key.encode()) + _field(2, feature))


def decode_sequence(serialized: bytes, num_features: int) -> dict[str, Any]:
    """Parses `encode_sequence` output back to `{id, label, steps, time_delta}` (numpy).

    `time_delta` is float32 `[length]`, or None for a record without times.

    Raises:
        ValueError: the record does not follow the contract.
    """
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example.FromString(serialized)
    feature = example.features.feature
    missing = {ID_KEY, LABEL_KEY, LENGTH_KEY, STEPS_KEY} - set(feature)
    if missing:
        raise ValueError(f"record lacks keys {sorted(missing)}")
    length = feature[LENGTH_KEY].int64_list.value[0]
    flat = np.asarray(feature[STEPS_KEY].float_list.value, dtype=np.float32)
    if flat.size != length * num_features:
        raise ValueError(f"record has {flat.size} values, expected length {length} x "
                         f"{num_features} features")
    time_delta = None
    if TIME_DELTA_KEY in feature:
        time_delta = np.asarray(feature[TIME_DELTA_KEY].float_list.value, dtype=np.float32)
        if time_delta.size != length:
            raise ValueError(f"record has {time_delta.size} time deltas for length {length}")
    return {
        "id": feature[ID_KEY].bytes_list.value[0].decode(),
        "label": feature[LABEL_KEY].bytes_list.value[0].decode(),
        "steps": flat.reshape(length, num_features),
        "time_delta": time_delta,
    }


def tf_feature_spec(num_features: int, has_times: bool = False) -> dict[str, Any]:
    """The `tf.io.parse_example` spec of a record: `steps` parses to `[length, F]`
    (and, with `has_times`, `time_delta` to `[length]`)."""
    import tensorflow as tf

    spec = {
        ID_KEY: tf.io.FixedLenFeature([], tf.string),
        LABEL_KEY: tf.io.FixedLenFeature([], tf.string),
        LENGTH_KEY: tf.io.FixedLenFeature([], tf.int64),
        STEPS_KEY: tf.io.FixedLenSequenceFeature([num_features], tf.float32,
                                                 allow_missing=True),
    }
    if has_times:
        spec[TIME_DELTA_KEY] = tf.io.FixedLenSequenceFeature([], tf.float32,
                                                             allow_missing=True)
    return spec


def tfds_features(num_features: int, has_times: bool = False):
    """The `tfds.features.FeaturesDict` that decodes these records (with `time_delta`
    for a dataset with times)."""
    import tensorflow_datasets as tfds

    features = {
        ID_KEY: tfds.features.Text(),
        LABEL_KEY: tfds.features.Text(),
        LENGTH_KEY: tfds.features.Scalar(dtype=np.int64),
        STEPS_KEY: tfds.features.Tensor(shape=(None, num_features), dtype=np.float32),
    }
    if has_times:
        features[TIME_DELTA_KEY] = tfds.features.Tensor(shape=(None,), dtype=np.float32)
    return tfds.features.FeaturesDict(features)


def shard_name(split: str, index: int, num_shards: int) -> str:
    """The TFDS file name of one shard, e.g. `seqpipe-train.tfrecord-00000-of-00004`."""
    return f"{DATASET_NAME}-{split}.{FILE_FORMAT}-{index:05d}-of-{num_shards:05d}"


def shard_prefix(split: str) -> str:
    """The shard name up to the shard numbers, as Beam's `WriteToTFRecord` wants it."""
    return f"{DATASET_NAME}-{split}.{FILE_FORMAT}"


def split_files(data_dir: str | Path, split: str) -> list[str]:
    """The shard-named files of one split found in a directory (or URL prefix), sorted.

    A directory listing, for tools that look at files; readers read the
    files `metadata.json` lists (`seqpipe.dataset.metadata.check_files`).
    """
    from seqpipe import storage

    return storage.glob(storage.join(data_dir, f"{shard_prefix(split)}-*-of-*"))


def read_split(data_dir: str | Path, split: str,
               metadata: DatasetMetadata) -> Iterator[dict[str, Any]]:
    """Yields `{id, label, steps, time_delta}` of every record of a split, in shard order.

    For small-scale tools (baselines, plots); training reads through
    `seqpipe.input_pipeline`.

    Args:
        data_dir: the dataset directory.
        split: the split's name.
        metadata: the directory's metadata (`seqpipe.dataset.metadata.read`).

    Raises:
        DatasetError: a listed shard missing or of another size than listed, a
            corrupt or truncated shard (named) or a malformed record.
    """
    import tensorflow as tf

    from seqpipe.dataset import metadata as metadata_lib

    listed = metadata.split(split).files
    metadata_lib.check_files(data_dir, metadata, listed)
    for path in (metadata_lib.listed_path(data_dir, name) for name in listed):
        dataset = tf.data.TFRecordDataset(path, compression_type=metadata.tf_compression_type)
        try:
            for serialized in dataset.as_numpy_iterator():
                yield decode_sequence(serialized, metadata.num_features)
        except (tf.errors.DataLossError, ValueError) as error:
            message = getattr(error, "message", None) or str(error)
            raise DatasetError(f"{path}: corrupt or truncated shard: {message}") from None
