"""The preprocessing job: raw sequence files -> one seqpipe dataset directory.

    python -m beam_jobs.preprocess --input 'raw/*.jsonl.gz' --input extra.jsonl \\
        --output data/ [--config tiny] [--set max_length=500] \\
        [--direct_num_workers=2 --direct_running_mode=multi_processing | --runner ...]

App flags are parsed here; every other flag is a Beam pipeline option. Inputs
are JSON lines (`{"id", "steps", "label"?, "split"?}`) or long-format CSV or
Parquet (one row per timestep: id, time and feature columns, optional label and
split; see `seqpipe.dataset.sources`), told apart by suffix (`.jsonl`, `.csv`,
`.parquet`); globs, several inputs and `.gz` (not for Parquet) welcome.
The job reads every record, validates it (rejects go to `rejects/` with a
reason; nothing is dropped silently), assigns splits (the record's own, else a
stable hash of its id), writes TFRecord shards per split and computes the
statistics the trainer needs. The output directory:

    seqpipe-{split}.tfrecord-SSSSS-of-NNNNN   records (`seqpipe.dataset.records` contract)
    rejects/rejects-*.jsonl                   {reason, message, source, line, offset,
                                               record, record_truncated}
    dataset_info.json, features.json          TFDS metadata (uncompressed shards only)
    metadata.json                             written last (`records.read_metadata`)

Atomic: the pipeline writes into a temporary directory beside `output_dir`
(shard files first as parts under `_work/`), the driver renames the parts to
their shard names, adds the metadata, and the directory is renamed into place
only when everything succeeded; a failed run leaves nothing at `output_dir`
(at most a hidden `.NAME.tmp-PID@HOST-*` directory if the process is killed,
which the next run for the same output on this host deletes). An
existing non-empty `output_dir` is refused. Output must be a local (or
mounted) path: the final rename is a local filesystem operation.

Decisions (details where they are made):
- feature count: the most common width; other widths are rejected
  (`sources.dataset_feature_count`).
- duplicate ids: the copy from the smallest (file, line or byte offset) is
  kept, the others are rejected (`sources.dataset_verdicts`); only a small
  `transforms.Candidate` per record is grouped, never whole sequences.
- one pass: each worker parses, validates, encodes and writes the records it
  read into its own part files (`transforms.WriteCandidates`); the records
  never go through the runner. The dataset-level checks (feature count,
  duplicate ids) run on the candidates afterwards, and the rare part that
  holds a record they reject is rewritten without it (`transforms.DropRejected`)
  before anything is renamed into place.
- reading: a gzip JSONL file, or an uncompressed one up to 64 MiB
  (`transforms.SPLIT_BYTES`), is read whole by one worker, with exact line
  numbers; a bigger uncompressed JSONL file is read in 64 MiB byte ranges by
  many workers, and its records are located by byte offset (`offset`, with
  `line` 0). A CSV file is read whole by one worker (a quoted field may hold a
  newline, so a byte range cannot find its first row safely). Parquet files
  are read by row group (exact row numbers), so one big Parquet file is read
  by many workers.
- all records rejected: the dataset is still written (0 records, `rejects/`,
  metadata.json with the counts, `tfds_readable` false) so the rejects can be
  inspected next to the counts; the summary says so.
- shards (`num_shards` 0, the default): the part files the workers wrote, at
  most 64 MiB of records each (`transforms.TARGET_SHARD_BYTES`); every bundle
  splits each split over 2 parts by id hash (`transforms.MIN_SHARDS`), so a
  split has at least 2 shards unless it has 1 record, and more with more
  workers or data. The same inputs and runner settings give byte-identical
  shards (inputs are spread over the workers in a fixed order,
  `transforms.Spread`); another worker count gives the same records per
  split in other files.
- shards (`num_shards` N > 0): exactly N per split (at most one per record),
  each record in the shard given by a hash of its id, written in hashed-id
  order: byte-identical on every runner and worker count
  (`transforms.Reshard`), at the cost of one shuffle of all records.
- statistics: lengths over every written record (exact quantiles, numpy's
  linear interpolation); features (population std) over the train split only.

Counts (read = written + rejected, per reason and per input file) and
statistics are computed as PCollections and written to a side file that the
driver reads after the pipeline finished, which works on every runner.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import transforms
from seqpipe import config as config_lib
from seqpipe import paths, processes
from seqpipe.dataset import records, sources
from seqpipe.errors import SeqpipeError
from seqpipe.input_pipeline import buckets

WORK_DIR = "_work"
PARTS_DIR = "parts"
RESHARD_DIR = "reshard"
SUMMARY_FILE = "summary.json"
REJECTS_DIR = "rejects"
FORMAT_SUFFIXES = {"jsonl": (".jsonl", ".json", ".ndjson"), "csv": (".csv",),
                   "parquet": (".parquet",)}
TFDS_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


class InputError(SeqpipeError, ValueError):
    """Inputs or output the job cannot take (format, suffix, path kind)."""


class OutputExistsError(SeqpipeError, FileExistsError):
    """The output directory exists and is not empty: the job never overwrites."""


def preprocess(inputs: Sequence[str], output_dir: str, cfg: config_lib.PreprocessConfig,
               pipeline_args: Sequence[str] = ()) -> dict[str, Any]:
    """Runs the job and returns the metadata it wrote to `output_dir/metadata.json`.

    Args:
        inputs: file paths or globs (`.jsonl`, `.csv`, optionally `.gz`).
        output_dir: the dataset directory to create; must not exist or be empty.
        cfg: the `preprocess` section of the config.
        pipeline_args: Beam pipeline options (`--runner`, `--direct_num_workers`...).

    Raises:
        OutputExistsError: `output_dir` exists and is not empty.
        seqpipe.paths.PathError: `output_dir` overlaps an input, or the input
            patterns would read it on a re-run.
        FileNotFoundError: an input pattern matches no file.
        ValueError: an input format this job cannot read yet.
    """
    paths.check_output_outside_inputs(inputs, output_dir)
    output = _check_output_dir(output_dir)
    files = expand_inputs(inputs)
    files_by_format = group_by_format(files, cfg.input_format)
    output.parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_staging(output):
        print(f"removed {stale}: the staging directory of a killed run", file=sys.stderr)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-{processes.owner_tag()}-",
                                    dir=output.parent))
    try:
        _make_readable(staging)
        work = staging / WORK_DIR
        (work / PARTS_DIR).mkdir(parents=True)
        (work / RESHARD_DIR).mkdir()
        with beam.Pipeline(options=PipelineOptions(list(pipeline_args))) as pipeline:
            build_pipeline(pipeline, files_by_format, str(staging), cfg)
        summary = json.loads((work / SUMMARY_FILE).read_text())
        shards = finalize_shards(staging, summary["shard_parts"])
        metadata = build_metadata(summary, shards, cfg, inputs, files,
                                  feature_names(files_by_format, cfg, summary["num_features"]))
        if metadata["tfds_readable"]:
            write_tfds_metadata(staging, metadata["num_features"], shards)
        shutil.rmtree(work)
        (staging / records.METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        _commit(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return metadata


def build_pipeline(pipeline: beam.Pipeline, files_by_format: Mapping[str, Sequence[str]],
                   staging_dir: str, cfg: config_lib.PreprocessConfig) -> None:
    """Adds the whole job to `pipeline`, writing into `staging_dir`."""
    work = os.path.join(staging_dir, WORK_DIR)
    results = ([pipeline
                | f"list_{fmt}_inputs" >> beam.Create(sorted(files), reshuffle=False)
                | f"read_{fmt}" >> make_reader(fmt, cfg)
                for fmt, files in files_by_format.items()]
               | "all_records" >> beam.Flatten())
    parts_dir = os.path.join(work, PARTS_DIR)
    parts, candidates, record_rejects = results | "write_candidates" >> (
        transforms.WriteCandidates(parts_dir, cfg.train_fraction, cfg.val_fraction,
                                   cfg.compression))
    written, drops, num_features = candidates | "check_dataset" >> transforms.CheckDataset()
    parts, dataset_rejects = (parts, drops, num_features) | "drop_rejected" >> (
        transforms.DropRejected(parts_dir, cfg.compression))
    rejects = (record_rejects, dataset_rejects) | "all_rejects" >> beam.Flatten()
    shards = parts
    if cfg.num_shards:
        shards = parts | "reshard" >> transforms.Reshard(
            os.path.join(work, RESHARD_DIR), cfg.num_shards, cfg.compression)
    _ = rejects | "write_rejects" >> transforms.WriteRejects(
        os.path.join(staging_dir, REJECTS_DIR, "rejects"))

    summary = dict(parts | "compute_stats" >> transforms.ComputeStats())
    summary["counts"] = (results, written, rejects) | "count_records" >> (
        transforms.CountRecords())
    summary["num_features"] = num_features
    summary["shard_parts"] = shards | "shard_part_dicts" >> beam.Map(
        transforms.shard_part_dict)
    _ = summary | "write_summary" >> transforms.WriteSummary(
        os.path.join(work, SUMMARY_FILE), list_names=("shard_parts",))


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """The sorted, de-duplicated files matching `patterns`.

    Raises:
        FileNotFoundError: a pattern matches no file (a typo must not give an
            empty dataset).
    """
    if not patterns:
        raise FileNotFoundError("no --input given")
    files = set()
    for pattern in patterns:
        matched = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
        if not matched:
            raise FileNotFoundError(f"input {pattern!r} matches no file")
        files.update(matched)
    return sorted(files)


def make_reader(input_format: str, cfg: config_lib.PreprocessConfig) -> beam.PTransform:
    """The reader PTransform of one input format: paths -> `Sequence | Rejection`."""
    limits = (cfg.min_length, cfg.max_length, cfg.too_long)
    if input_format == "jsonl":
        return transforms.ReadJsonLines(*limits)
    if input_format == "csv":
        return transforms.ReadCsvLong(long_format(cfg), *limits)
    if input_format == "parquet":
        return transforms.ReadParquetLong(long_format(cfg), *limits)
    raise InputError(f"input format {input_format!r} is not implemented yet "
                     f"(readable: {list(FORMAT_SUFFIXES)})")


def long_format(cfg: config_lib.PreprocessConfig) -> sources.LongFormat:
    """The long-format column names of the config."""
    return sources.LongFormat(cfg.id_column, cfg.time_column, cfg.label_column,
                              cfg.split_column, tuple(cfg.feature_columns))


def group_by_format(files: Sequence[str], configured: str) -> dict[str, list[str]]:
    """{format: files}: `configured` for all, or from each suffix (`.gz` ignored) if auto.

    Raises:
        InputError: a suffix that names no format, or a format not implemented yet.
    """
    groups: dict[str, list[str]] = {}
    for path in files:
        fmt = configured if configured != "auto" else _format_of_suffix(path)
        if fmt not in FORMAT_SUFFIXES:
            raise InputError(f"{path}: input format {fmt!r} is not implemented yet "
                             f"(readable: {list(FORMAT_SUFFIXES)})")
        groups.setdefault(fmt, []).append(path)
    return groups


def _format_of_suffix(path: str) -> str:
    stem = path[:-3] if path.endswith(".gz") else path
    if path.endswith(".parquet.gz"):
        raise InputError(f"{path}: gzip-wrapped Parquet is not supported (Parquet "
                         "compresses its pages itself)")
    for fmt, suffixes in FORMAT_SUFFIXES.items():
        if stem.endswith(suffixes):
            return fmt
    raise InputError(f"{path}: cannot tell the format from the suffix; use "
                     f".jsonl/.csv (optionally .gz), .parquet or set preprocess.input_format")


def feature_names(files_by_format: Mapping[str, Sequence[str]],
                  cfg: config_lib.PreprocessConfig, num_features: int) -> list[str]:
    """Configured feature columns, else the first CSV/Parquet file's, else f0, f1, ..."""
    names: list[str] = list(cfg.feature_columns)
    if not names and files_by_format.get("csv"):
        with FileSystems.open(files_by_format["csv"][0]) as stream:
            header = next(csv.reader([stream.readline().decode("utf-8", "replace")]), [])
        names = long_format(cfg).features_of([column.strip() for column in header])
    elif not names and files_by_format.get("parquet"):
        import pyarrow.parquet as pq

        with FileSystems.open(files_by_format["parquet"][0]) as stream:
            names = long_format(cfg).features_of(pq.read_schema(stream).names)
    if len(names) != num_features:
        names = [f"f{i}" for i in range(num_features)]
    return names


def finalize_shards(staging: Path, parts: Sequence[Mapping[str, Any]]
                    ) -> dict[str, dict[str, Any]]:
    """Renames the written parts to their TFDS shard names, per split.

    Shards that received no record were never written, so each split's files
    are numbered 0..k-1 of k non-empty shards.

    Returns:
        {split: {num_shards, files, shard_lengths, num_bytes}} for every split.
    """
    shards = {}
    for split in records.SPLITS:
        own = sorted((p for p in parts if p["split"] == split), key=lambda p: p["order"])
        files = []
        for index, part in enumerate(own):
            name = records.shard_name(split, index, len(own))
            os.replace(part["path"], staging / name)
            files.append(name)
        shards[split] = {"num_shards": len(own), "files": files,
                         "shard_lengths": [p["num_records"] for p in own],
                         "num_bytes": sum(p["num_bytes"] for p in own)}
    return shards


def assemble_counts(rows: Sequence[Sequence[Any]], files: Sequence[str]) -> dict[str, Any]:
    """Turns `CountRecords` rows into the metadata's `counts`, checking nothing was lost.

    Raises:
        RuntimeError: read != written + rejected (a bug, never bad input).
    """
    counts: dict[str, Any] = {
        "read": 0, "written": 0, "rejected": 0, "truncated": 0,
        "rejected_by_reason": dict.fromkeys(sources.REASONS, 0),
        "by_input": {f: {"read": 0, "written": 0, "rejected": 0} for f in files},
    }
    for kind, source, reason, n in rows:
        counts[kind] += n
        if kind == "rejected":
            counts["rejected_by_reason"][reason] = (
                counts["rejected_by_reason"].get(reason, 0) + n)
        if kind != "truncated":
            per_file = counts["by_input"].setdefault(
                source, {"read": 0, "written": 0, "rejected": 0})
            per_file[kind] += n
    if counts["read"] != counts["written"] + counts["rejected"]:
        raise RuntimeError(f"records lost: read {counts['read']} != written "
                           f"{counts['written']} + rejected {counts['rejected']}")
    return counts


def build_metadata(summary: Mapping[str, Any], shards: Mapping[str, Mapping[str, Any]],
                   cfg: config_lib.PreprocessConfig, inputs: Sequence[str],
                   files: Sequence[str], names: Sequence[str]) -> dict[str, Any]:
    """The content of `metadata.json` (see `seqpipe.dataset.records.read_metadata`)."""
    counts = assemble_counts(summary["counts"], files)
    sizes = {split: size for split, size in summary["split_sizes"]}
    splits = {}
    for split in records.SPLITS:
        num_records, num_timesteps = sizes.get(split, (0, 0))
        if num_records != sum(shards[split]["shard_lengths"]):
            raise RuntimeError(f"split {split}: {num_records} records counted, "
                               f"{sum(shards[split]['shard_lengths'])} written")
        splits[split] = {"num_records": num_records, "num_timesteps": num_timesteps,
                         "num_shards": shards[split]["num_shards"],
                         "files": shards[split]["files"]}
    length_counts = {length: n for length, n in summary["length_counts"]}
    num_features = summary["num_features"]
    tfds_readable = cfg.compression == "none" and counts["written"] > 0
    metadata = {
        "schema_version": records.SCHEMA_VERSION,
        "num_features": num_features,
        "feature_names": list(names),
        "compression": cfg.compression,
        "splits": splits,
        "length_stats": transforms.length_stats(length_counts),
        "feature_stats": summary["feature_moments"],
        "bucket_boundaries": buckets.optimal_boundaries(
            buckets.exact_histogram(length_counts), cfg.num_buckets),
        "labels": sorted(label for label, _ in summary["label_counts"]),
        "label_counts": dict(summary["label_counts"]),
        "counts": counts,
        "config": config_lib.to_dict(cfg),
        "inputs": list(inputs),
        "tfds_readable": tfds_readable,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
    }
    if not tfds_readable:
        metadata["tfds_note"] = ("no TFDS metadata: TFDS reads only uncompressed TFRecords"
                                 if cfg.compression != "none" else
                                 "no TFDS metadata: no record was written")
    return metadata


def write_tfds_metadata(data_dir: Path, num_features: int,
                        shards: Mapping[str, Mapping[str, Any]]) -> None:
    """Writes dataset_info.json/features.json so `tfds.builder_from_directory` reads it.

    Split infos come from the shard lengths the job counted (no re-read of the
    data); splits without records are left out (TFDS has no empty splits).
    """
    import tensorflow_datasets as tfds

    split_infos = [
        tfds.core.SplitInfo(
            name=split, shard_lengths=info["shard_lengths"], num_bytes=info["num_bytes"],
            filename_template=tfds.core.ShardedFileTemplate(
                data_dir=data_dir, template=TFDS_TEMPLATE, dataset_name=records.DATASET_NAME,
                split=split, filetype_suffix=records.FILE_FORMAT))
        for split, info in shards.items() if info["num_shards"]]
    tfds.folder_dataset.write_metadata(
        data_dir=data_dir, features=records.tfds_features(num_features),
        split_infos=split_infos, filename_template=TFDS_TEMPLATE, check_data=False,
        description="seqpipe sequences: id, label, length, steps [length, F] float32.")


def format_summary(metadata: Mapping[str, Any], output_dir: str, seconds: float) -> str:
    """The end-of-job summary for humans."""
    counts = metadata["counts"]
    lines = [f"seqpipe preprocess -> {output_dir} ({seconds:.1f} s)",
             f"  read {counts['read']} = written {counts['written']} + rejected "
             f"{counts['rejected']}" + (f"  (truncated {counts['truncated']})"
                                        if counts["truncated"] else "")]
    for reason, n in counts["rejected_by_reason"].items():
        if n:
            lines.append(f"    rejected {reason:<20} {n}")
    for split, info in metadata["splits"].items():
        lines.append(f"  {split:<5} {info['num_records']:>9} records "
                     f"{info['num_timesteps']:>11} timesteps {info['num_shards']:>4} shards")
    lines.append(f"  features {metadata['num_features']}, lengths "
                 f"{metadata['length_stats']['min']}..{metadata['length_stats']['max']}, "
                 f"buckets {metadata['bucket_boundaries']}")
    for source, per_file in counts["by_input"].items():
        lines.append(f"  {source}: read {per_file['read']} written {per_file['written']} "
                     f"rejected {per_file['rejected']}")
    if counts["rejected"]:
        lines.append(f"  rejects: {os.path.join(output_dir, REJECTS_DIR)}/")
    if not counts["written"]:
        lines.append("  WARNING: no record was written (every record was rejected, or "
                     "the inputs are empty); the dataset has no records")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """App flags, and the remaining flags (Beam pipeline options)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", action="append", required=True,
                        help="input file or glob; repeat for several")
    parser.add_argument("--output", required=True, help="dataset directory to create")
    parser.add_argument("--config", default=None,
                        help="bundled config name (default, tiny) or YAML path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. max_length=500 or "
                             "preprocess.too_long=truncate")
    return parser.parse_known_args(argv)


def load_preprocess_config(source: str | None,
                           overrides: Sequence[str]) -> config_lib.PreprocessConfig:
    """The `preprocess` config section; bare `key=value` overrides mean `preprocess.key`."""
    qualified = [o if "." in o.partition("=")[0] else f"preprocess.{o}" for o in overrides]
    return config_lib.load_config(source, qualified).preprocess


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point: runs the job and prints the summary."""
    args, pipeline_args = parse_args(argv)
    cfg = load_preprocess_config(args.config, args.set)
    start = time.perf_counter()
    metadata = preprocess(args.input, args.output, cfg, pipeline_args)
    print(format_summary(metadata, args.output, time.perf_counter() - start))
    return metadata


def _check_output_dir(output_dir: str) -> Path:
    if "://" in str(output_dir):
        raise InputError(f"output {output_dir!r}: only local or mounted paths are "
                         "supported (the final commit is a directory rename)")
    output = Path(output_dir).absolute()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise OutputExistsError(f"output {output_dir!r} exists and is not empty; "
                                "choose a new directory or delete it")
    return output


def remove_stale_staging(output: Path) -> list[Path]:
    """Deletes the staging directories of killed runs for `output`; returns them.

    A staging directory is named `.NAME.tmp-PID@HOST-XXXXXXXX` after the run
    that writes it: it is stale when that run was on this host and its pid is
    gone (`seqpipe.processes.owner_alive`). Others, including directories
    of live runs and of other hosts, are left alone.
    """
    pattern = re.compile(rf"\.{re.escape(output.name)}\.tmp-(.+)-[a-z0-9_]+")
    removed = []
    for candidate in sorted(output.parent.glob(f".{glob.escape(output.name)}.tmp-*")):
        match = pattern.fullmatch(candidate.name)
        if match and candidate.is_dir() and not processes.owner_alive(match[1]):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def _make_readable(directory: Path) -> None:
    """mkdtemp creates 0700 directories; give the dataset the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)


def _commit(staging: Path, output: Path) -> None:
    """Moves the finished staging directory to `output` (which is absent or empty)."""
    if output.exists():
        output.rmdir()  # fails if something appeared there meanwhile: never overwrite
    os.rename(staging, output)


if __name__ == "__main__":
    run(sys.argv[1:])
