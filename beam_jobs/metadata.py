"""The dataset's metadata: `metadata.json` (one function) and the TFDS metadata.

`build_metadata` assembles the `seqpipe.dataset.metadata.DatasetMetadata` the
driver writes as `metadata.json` (`seqpipe.dataset.metadata.write`) from what the pipeline computed
(`beam_jobs.statistics`, the `_work/summary.json` side file) and the shards
the driver named (`beam_jobs.commit.Commit.move_shards`). `write_tfds_metadata`
writes `dataset_info.json` and `features.json`, so that
`tfds.builder_from_directory(out_dir)` loads the splits; only for uncompressed
shards with at least one record (TFDS reads no gzip TFRecords and has no
empty datasets).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from beam_jobs import statistics
from seqpipe import config as config_lib
from seqpipe.dataset import records
from seqpipe.dataset.metadata import DatasetMetadata

TFDS_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def build_metadata(summary: Mapping[str, Any], shards: Mapping[str, Mapping[str, Any]],
                   cfg: config_lib.PreprocessConfig, inputs: Sequence[str],
                   files: Sequence[str], names: Sequence[str],
                   num_buckets: int = 0) -> DatasetMetadata:
    """The content of `metadata.json` (fields: `seqpipe.dataset.metadata`).

    Args:
        summary: the pipeline's side file (`counts`, `split_sizes`,
            `length_counts`, `feature_moments`, `label_counts`, `split_missing`,
            `time_deltas`, `num_features`).
        shards: `commit.Commit.move_shards`'s result.
        cfg: the `preprocess` config the job ran with (stored as `config`).
        inputs, files: the input patterns as given and the files they matched.
        names: the feature names.
        num_buckets: buckets to suggest (`data.num_buckets`; 0:
            `statistics.SUGGESTED_NUM_BUCKETS`).

    Raises:
        RuntimeError: the counts disagree with what was written (a bug).
        seqpipe.dataset.records.DatasetError: a field of the wrong shape (a bug).
    """
    counts = statistics.assemble_counts(summary["counts"], files)
    length_counts = {length: n for length, n in summary["length_counts"]}
    tfds_readable = cfg.compression == "none" and counts["written"] > 0
    tree = {
        "schema_version": records.SCHEMA_VERSION,
        "num_features": summary["num_features"],
        "feature_names": list(names),
        "compression": cfg.compression,
        "splits": _splits(summary["split_sizes"], shards, summary["split_missing"]),
        "length_stats": statistics.length_stats(length_counts),
        "feature_stats": summary["feature_moments"],
        "bucket_boundaries": statistics.suggested_boundaries(length_counts, num_buckets),
        "labels": sorted(label for label, _ in summary["label_counts"]),
        "label_counts": dict(summary["label_counts"]),
        "counts": counts,
        "config": config_lib.to_dict(cfg),
        "inputs": list(inputs),
        "tfds_readable": tfds_readable,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
    }
    if summary["time_deltas"]["num_records"]:
        tree["time_stats"] = summary["time_deltas"]
    if not tfds_readable:
        tree["tfds_note"] = ("no TFDS metadata: TFDS reads only uncompressed TFRecords"
                             if cfg.compression != "none" else
                             "no TFDS metadata: no record was written")
    # Typed through the JSON form, so what the job returns is what a reader reads back.
    return DatasetMetadata.from_json(tree)


def _splits(split_sizes: Sequence[Sequence[Any]], shards: Mapping[str, Mapping[str, Any]],
            split_missing: Sequence[Sequence[Any]]) -> dict[str, dict[str, Any]]:
    """The metadata's `splits`; checks the counted records against the written shards.

    A split with records gets its `missing_fraction` per feature: missing
    entries / timesteps.
    """
    sizes = {split: size for split, size in split_sizes}
    missing = {split: gaps for split, gaps in split_missing}
    splits = {}
    for split in records.SPLITS:
        num_records, num_timesteps = sizes.get(split, (0, 0))
        if num_records != sum(shards[split]["shard_lengths"]):
            raise RuntimeError(f"split {split}: {num_records} records counted, "
                               f"{sum(shards[split]['shard_lengths'])} written")
        splits[split] = {"num_records": num_records, "num_timesteps": num_timesteps,
                         "num_shards": shards[split]["num_shards"],
                         "files": shards[split]["files"]}
        if num_records:
            splits[split]["missing_fraction"] = [gaps / num_timesteps
                                                 for gaps in missing[split]]
    return splits


def write_tfds_metadata(data_dir: Path, num_features: int,
                        shards: Mapping[str, Mapping[str, Any]], prefix: str = "",
                        has_times: bool = False) -> None:
    """Writes dataset_info.json/features.json so `tfds.builder_from_directory` reads it.

    Split infos come from the shard lengths the job counted (no re-read of the
    data); splits without records are left out (TFDS has no empty splits).

    Args:
        data_dir: where to write them (a local directory, without the shards).
        num_features: F.
        shards: `commit.Commit.move_shards`'s result.
        prefix: the shards' prefix inside the dataset ("" or `dataset-ID/`),
            part of each split's file template.
        has_times: the records carry `time_delta` (`records.tfds_features`).
    """
    import tensorflow_datasets as tfds

    split_infos = [
        tfds.core.SplitInfo(
            name=split, shard_lengths=info["shard_lengths"], num_bytes=info["num_bytes"],
            filename_template=tfds.core.ShardedFileTemplate(
                data_dir=data_dir, template=prefix + TFDS_TEMPLATE,
                dataset_name=records.DATASET_NAME,
                split=split, filetype_suffix=records.FILE_FORMAT))
        for split, info in shards.items() if info["num_shards"]]
    # TFDS takes the dataset name, file format and splits from the shard names in
    # `data_dir`; the shards are elsewhere (any file system): empty stand-ins name them.
    stand_ins = [data_dir / records.shard_name(info.name, 0, 1) for info in split_infos]
    for stand_in in stand_ins:
        stand_in.touch()
    try:
        tfds.folder_dataset.write_metadata(
            data_dir=data_dir, features=records.tfds_features(num_features, has_times),
            split_infos=split_infos, filename_template=TFDS_TEMPLATE, check_data=False,
            description="seqpipe sequences: id, label, length, steps [length, F] float32"
                        + (", time_delta [length] float32." if has_times else "."))
    finally:
        for stand_in in stand_ins:
            stand_in.unlink()
