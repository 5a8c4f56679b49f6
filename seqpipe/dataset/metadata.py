"""`metadata.json`: the typed description of a dataset directory, read and written here only.

The Beam job builds one `DatasetMetadata` and writes it last (`write`); every
reader (the input pipeline, training, embedding, evaluation, inspection, the
report) gets it from `read` (or `read_file` for the copy a model directory
keeps, `dataset_metadata.json`, written with `write_file`) and uses its
attributes, never string keys. `to_json(from_json(x)) ==
x` for every file this module writes, so the JSON stays the interchange
format other tools read.

The file holds, for schema version `records.SCHEMA_VERSION`:

    schema_version     int
    num_features       F
    feature_names      F names
    compression        "none" | "gzip"
    splits             {split: {num_records, num_timesteps, num_shards, files,
                       missing_fraction}}: missing_fraction is per feature, missing
                       entries / timesteps (absent for a split without records)
    length_stats       {min, max, mean, quantiles {q: length}, histogram {edges, counts}}
                       over all written records (None values when none was written)
    feature_stats      {num_timesteps, num_observed, mean, std, min, max} per feature,
                       over the *train* split only and its *observed* entries only
                       (num_observed: per feature, the non-missing entries; None
                       lists when the split is empty; a feature never observed
                       there has None for its mean, std, min and max)
    time_stats         only in datasets with times (`records`: every record has
                       `time_delta`): {num_records, num_intervals, mean, std, min,
                       max, log_mean, log_std}. num_records: the records with times
                       (all splits); the rest over the *train* split's real
                       intervals (steps 1..L-1 of each record; None when it has
                       none): the deltas' mean, population std, min and max, and
                       the mean and std of their natural log, which normalize the
                       time-delta input feature (`seqpipe.dataset.times`)
    bucket_boundaries  suggested length boundaries (see `input_pipeline.batching`)
    labels             sorted distinct labels; label_counts {label: records}
    counts             {read, written, rejected, truncated, rejected_by_reason,
                        by_input {file: {read, written, rejected}}}: read = written + rejected
    config             the `preprocess` config section used; inputs: the input patterns
    tfds_readable      whether TFDS metadata was written (tfds_note says why not)
    created            ISO 8601 UTC time of the commit
    files              {path: {size, sha256}}: every data file of the dataset (the
                       shards and the rejects; not the metadata files), by its
                       path relative to the dataset directory ("/"-separated), with
                       its size in bytes and the SHA-256 of its bytes (hex; null
                       where the writer did not compute it: the rejects)

Readers trust only the files listed here (`files`, and each split's `files`):
a stray file beside them (a killed run's, one copied in) is never read, and a
listed file that is missing or has another size is a `DatasetError` naming it
(`check_file`). How the job commits a dataset so that a reader never sees a
mix is stated in `seqpipe.dataset`.

Versions: `schema_version` changes when the records or the meaning of a field
change. A field added with a default keeps it, and files written before it
read with the default: `files` is absent (None) in datasets written before
the object-store commit; their readers read each split's listed `files`
without the size check. `num_observed` and `missing_fraction` are absent
(None) in datasets written before missing entries were kept (they had none).
`time_stats` is absent (None) in datasets without times, including every one
written before times were kept. Optional fields (`tfds_note`, `files`,
`num_observed`, `missing_fraction`, `time_stats`) are left out of the JSON
when None, so the round trip stays exact for old and new files.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from seqpipe import storage
from seqpipe.dataset.records import METADATA_FILE, SCHEMA_VERSION, SPLITS, DatasetError


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    """One split's shards and sizes."""

    num_records: int = 0
    num_timesteps: int = 0
    num_shards: int = 0
    files: tuple[str, ...] = ()
    missing_fraction: tuple[float, ...] | None = None

    @property
    def has_missing(self) -> bool:
        """Whether some entry of this split is missing."""
        return any(self.missing_fraction or ())


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """One listed file of a dataset: its size and, where known, its SHA-256 (hex)."""

    size: int
    sha256: str | None = None


@dataclasses.dataclass(frozen=True)
class Histogram:
    """Lengths `l` with `edges[i] <= l < edges[i + 1]` are counted in `counts[i]`."""

    edges: tuple[int, ...] = ()
    counts: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class LengthStats:
    """Sequence lengths over every written record (None when none was written)."""

    min: int | None = None
    max: int | None = None
    mean: float | None = None
    quantiles: Mapping[str, float | None] = dataclasses.field(default_factory=dict)
    histogram: Histogram = Histogram()


@dataclasses.dataclass(frozen=True)
class FeatureStats:
    """Per-feature moments of the train split's observed entries (None when it is empty).

    A feature without an observed entry has None at its place in `mean`,
    `std`, `min` and `max`.
    """

    num_timesteps: int = 0
    mean: tuple[float | None, ...] | None = None
    std: tuple[float | None, ...] | None = None
    min: tuple[float | None, ...] | None = None
    max: tuple[float | None, ...] | None = None
    num_observed: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class TimeDeltaStats:
    """The time gaps of a dataset with times (field by field in the module docstring)."""

    num_records: int = 0
    num_intervals: int = 0
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    log_mean: float | None = None
    log_std: float | None = None


@dataclasses.dataclass(frozen=True)
class Counts:
    """What the job read and where each record went: read = written + rejected."""

    read: int = 0
    written: int = 0
    rejected: int = 0
    truncated: int = 0
    rejected_by_reason: Mapping[str, int] = dataclasses.field(default_factory=dict)
    by_input: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DatasetMetadata:
    """The content of `metadata.json` (field by field in this module's docstring)."""

    num_features: int
    splits: Mapping[str, SplitInfo]
    schema_version: int = SCHEMA_VERSION
    feature_names: tuple[str, ...] = ()
    compression: str = "none"
    length_stats: LengthStats = LengthStats()
    feature_stats: FeatureStats = FeatureStats()
    bucket_boundaries: tuple[int, ...] = ()
    labels: tuple[str, ...] = ()
    label_counts: Mapping[str, int] = dataclasses.field(default_factory=dict)
    counts: Counts = Counts()
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    tfds_readable: bool = False
    created: str = ""
    tfds_note: str | None = None
    files: Mapping[str, FileInfo] | None = None
    time_stats: TimeDeltaStats | None = None

    def split(self, name: str) -> SplitInfo:
        """The split `name`; an empty one when the dataset has no such split."""
        return self.splits.get(name, SplitInfo())

    def num_records(self, split: str) -> int:
        """Records in `split` (0 for a split the dataset does not have)."""
        return self.split(split).num_records

    @property
    def has_missing(self) -> bool:
        """Whether some entry of some split is missing (`SplitInfo.missing_fraction`)."""
        return any(info.has_missing for info in self.splits.values())

    @property
    def has_times(self) -> bool:
        """Whether the records carry `time_delta` (`time_stats` present)."""
        return self.time_stats is not None

    @property
    def tf_compression_type(self) -> str:
        """The `compression_type` argument of `tf.data.TFRecordDataset`."""
        return "GZIP" if self.compression == "gzip" else ""

    def to_json(self) -> dict[str, Any]:
        """The JSON object of `metadata.json` (lists for tuples; no None optional field)."""
        return _plain(self)

    @classmethod
    def from_json(cls, tree: Mapping[str, Any], where: str = METADATA_FILE) -> DatasetMetadata:
        """Checks and types a `metadata.json` object.

        Raises:
            DatasetError: naming `where` and the problem: another schema
                version, a missing required field, an unknown field or a field
                of the wrong shape.
        """
        if not isinstance(tree, Mapping):
            raise DatasetError(f"{where}: not a JSON object")
        check_schema_version(tree, where)
        try:
            return _build(cls, tree, where)
        except (TypeError, ValueError) as error:
            raise DatasetError(f"{where}: {error}") from None


def check_schema_version(tree: Mapping[str, Any], where: str) -> None:
    """Raises `DatasetError` unless `tree` has this code's schema version."""
    version = tree.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DatasetError(f"{where}: schema_version {version!r}, this seqpipe reads "
                           f"version {SCHEMA_VERSION}")


def read(data_dir: str | Path) -> DatasetMetadata:
    """Reads and checks `metadata.json` of a finished dataset directory.

    Raises:
        DatasetError: no directory, no metadata.json (an unfinished or foreign
            directory), invalid JSON, or content this code does not read.
    """
    path = storage.join(data_dir, METADATA_FILE)
    if not storage.isdir(data_dir):
        raise DatasetError(f"{data_dir}: no such dataset directory")
    if not storage.isfile(path):
        raise DatasetError(f"{data_dir}: no {METADATA_FILE}; not a finished seqpipe "
                           "dataset (run `seqpipe preprocess` to create one)")
    return read_file(path)


def read_file(path: str | Path) -> DatasetMetadata:
    """Reads a metadata file by its own path (e.g. a model directory's copy)."""
    try:
        tree = json.loads(storage.read_text(path))
    except (ValueError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: not valid JSON: {error}") from None
    return DatasetMetadata.from_json(tree, str(path))


def write_file(metadata: DatasetMetadata, path: str | Path) -> str:
    """Writes `metadata` as JSON to `path`, atomically (temp file, then rename)."""
    return storage.write_json_atomic(path, metadata.to_json())


def write(metadata: DatasetMetadata, data_dir: str | Path) -> str:
    """Writes `data_dir/metadata.json`: the last file of a dataset, its commit marker."""
    return write_file(metadata, storage.join(data_dir, METADATA_FILE))


def check_compatible(trained_on: DatasetMetadata, metadata: DatasetMetadata,
                     model_dir: str | Path, data_dir: str | Path) -> None:
    """Raises `DatasetError` when a dataset does not fit a model's training data.

    Args:
        trained_on: the metadata of the data the model was trained on.
        metadata: the metadata of the data at hand.
    """
    for key in ("schema_version", "num_features"):
        theirs, ours = getattr(trained_on, key), getattr(metadata, key)
        if theirs != ours:
            raise DatasetError(
                f"{data_dir} has {key}={ours!r} but the model in {model_dir} "
                f"was trained on data with {key}={theirs!r}")


def listed_path(data_dir: str | Path, name: str) -> str:
    """The path of the listed file `name` ("/"-separated, relative) in `data_dir` (a
    local path or a URL such as `gs://bucket/data`)."""
    return storage.join(data_dir, name)


def check_files(data_dir: str | Path, metadata: DatasetMetadata,
                names: Sequence[str] | None = None) -> dict[str, int]:
    """Checks listed files against `metadata`; returns their sizes by name.

    Each file is looked up through `seqpipe.storage` (local paths and the
    file systems TensorFlow reads: gs://, ram://, ...): it must exist and, when the
    metadata records sizes (`files`), have the recorded size.

    Args:
        data_dir: the dataset directory.
        metadata: its metadata.
        names: the listed names to check (default: every listed file: `files`,
            or each split's `files` in datasets written before `files`).

    Raises:
        DatasetError: naming the first file that is missing or has another size.
    """
    if names is None:
        names = (list(metadata.files) if metadata.files is not None else
                 [name for info in metadata.splits.values() for name in info.files])
    sizes = {}
    for name in names:
        path = listed_path(data_dir, name)
        try:
            sizes[name] = storage.size(path)
        except FileNotFoundError:
            raise DatasetError(f"{path}: listed in {METADATA_FILE} but missing") from None
        listed = (metadata.files or {}).get(name)
        if listed is not None and listed.size != sizes[name]:
            raise DatasetError(f"{path}: {sizes[name]} bytes, but {METADATA_FILE} lists "
                               f"{listed.size} (changed or truncated since the commit)")
    return sizes


def splits_with_records(metadata: DatasetMetadata, names: Sequence[str] = SPLITS) -> list[str]:
    """The splits among `names` that hold records."""
    return [name for name in names if metadata.num_records(name) > 0]


# Fields left out of the JSON when None (absent in files written before them).
_OPTIONAL = {(DatasetMetadata, "tfds_note"), (DatasetMetadata, "files"),
             (FeatureStats, "num_observed"), (SplitInfo, "missing_fraction"),
             (DatasetMetadata, "time_stats")}
# Fields whose JSON object maps names to a nested record type.
_MAPPED = {(DatasetMetadata, "splits"): SplitInfo, (DatasetMetadata, "files"): FileInfo}
_NESTED = {(DatasetMetadata, "length_stats"): LengthStats,
           (DatasetMetadata, "feature_stats"): FeatureStats,
           (DatasetMetadata, "counts"): Counts,
           (DatasetMetadata, "time_stats"): TimeDeltaStats,
           (LengthStats, "histogram"): Histogram}


def _build(cls: type, tree: Any, where: str) -> Any:
    """`cls(**tree)` with nested records typed and lists made tuples."""
    if not isinstance(tree, Mapping):
        raise ValueError(f"{cls.__name__} must be a JSON object; Received: {tree!r}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(tree) - set(fields))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} in {cls.__name__}")
    missing = [name for name, field in fields.items() if name not in tree
               and field.default is dataclasses.MISSING
               and field.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)} in {cls.__name__}")
    values = {}
    for name, value in tree.items():
        if (cls, name) in _MAPPED and value is not None:
            if not isinstance(value, Mapping):
                raise ValueError(f"{name} must be a JSON object; Received: {value!r}")
            value = {key: _build(_MAPPED[cls, name], item, where) for key, item in value.items()}
        elif (cls, name) in _NESTED and value is not None:
            value = _build(_NESTED[cls, name], value, where)
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def _plain(value: Any) -> Any:
    """JSON-ready copy: records and mappings become dicts (without their `_OPTIONAL`
    fields that are None), tuples lists."""
    if dataclasses.is_dataclass(value):
        return {field.name: _plain(getattr(value, field.name))
                for field in dataclasses.fields(value)
                if not ((type(value), field.name) in _OPTIONAL
                        and getattr(value, field.name) is None)}
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
