"""The preprocessing job's driver: raw sequence files -> one seqpipe dataset directory.

    python -m beam_jobs.preprocess --input 'raw/*.jsonl.gz' --input extra.jsonl \\
        --output data/ [--config tiny] [--set max_length=500] \\
        [--direct_num_workers=2 --direct_running_mode=multi_processing | --runner ...]

The flags (`beam_jobs.flags`) are the same for `seqpipe preprocess`; every
other argument is a Beam pipeline option. The job reads every record,
validates it (rejects go to `rejects/` with a reason; nothing is dropped
silently), assigns splits (the record's own, else a stable hash of its id),
writes TFRecord shards per split and computes the statistics the trainer
needs. The output directory:

    seqpipe-{split}.tfrecord-SSSSS-of-NNNNN   records (`seqpipe.dataset.records` contract)
    rejects/rejects-*.jsonl                   {reason, message, source, line, offset,
                                               record, record_truncated}
    dataset_info.json, features.json          TFDS metadata (uncompressed shards only)
    metadata.json                             written last (`seqpipe.dataset.metadata`)

The job, one module per concern:

    beam_jobs.read        input discovery, format by suffix, one reader per format
    beam_jobs.validate    dead-letter output, Beam counters, dataset-level checks
    beam_jobs.write       part files in one pass, rewrite after the checks, shards,
                          rejects, the summary side file
    beam_jobs.statistics  counts, length and feature statistics, suggested buckets
    beam_jobs.metadata    metadata.json and the TFDS metadata
    beam_jobs.commit      staging under the output, moves, metadata.json last
    beam_jobs.flags       the command-line flags

Decisions (details where they are made):
- feature count: the most common width; other widths are rejected
  (`beam_jobs.validate`).
- duplicate ids: the copy from the smallest (file, line or byte offset) is
  kept, the others are rejected; only the small `validate.Candidate`s whose
  id hash repeats are grouped, never whole sequences, so the job's memory
  does not grow with the data (`beam_jobs.validate`).
- one pass: each worker parses, validates, encodes and writes the records it
  read into its own part files (`write.WriteCandidates`); the records never go
  through the runner. The rare part that holds a record the dataset-level
  checks reject is rewritten without it (`write.DropRejected`) before
  anything is renamed into place.
- reading: whole files or 64 MiB byte ranges (JSONL), whole files (CSV), row
  groups (Parquet); see `beam_jobs.read`.
- shards: the workers' part files (`num_shards` 0) or exactly N per split in
  hashed-id order (`num_shards` N); see `beam_jobs.write`.
- all records rejected: the dataset is still written (0 records, `rejects/`,
  metadata.json with the counts, `tfds_readable` false) so the rejects can be
  inspected next to the counts; the summary says so.
- times: a JSON line's `"t"` (`preprocess.json_time_key`) or the long
  format's time column gives each step a time; the record keeps the float32
  gaps (`time_delta`), and a record whose times are bad is `bad_times`. A
  dataset has times on every record or on none: the more common side among
  the records of the dataset's width wins, the others are `mixed_times`
  (decided with the feature count, on the same candidates: `beam_jobs.validate`).
- missing entries (`preprocess.missing: keep`, the default): NaN, null and
  empty cells inside a sequence are kept as NaN in the record; a record with
  every entry missing or more than `max_missing_fraction` of them is
  rejected (`all_missing`, `too_many_missing`); `reject` rejects every
  record with a gap, as before.
- statistics: lengths over every written record (exact quantiles); features
  (population std) over the train split's observed entries only, missing
  fraction per feature and split; `bucket_boundaries` for
  `data.num_buckets` buckets (`statistics.SUGGESTED_NUM_BUCKETS` when 0).
- output: any Beam file system (local, gs://, s3://, hdfs://, or one of
  your own named in `--beam_plugins`); a failed run leaves the output as it
  was, a killed one leaves nothing a reader takes for a dataset, and the
  next run cleans it up (`beam_jobs.commit`, the protocol in
  `seqpipe.dataset`).

Counts (read = written + rejected, per reason and per input file) and
statistics are computed as PCollections and written to a side file that the
driver reads after the pipeline finished, which works on every runner.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Mapping, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from beam_jobs import commit, flags, metadata, read, statistics, validate, write
from seqpipe import config as config_lib
from seqpipe import paths
from seqpipe.dataset.metadata import DatasetMetadata


def preprocess(inputs: Sequence[str], output_dir: str, cfg: config_lib.PreprocessConfig,
               pipeline_args: Sequence[str] = (), num_buckets: int = 0,
               overwrite: bool = False) -> DatasetMetadata:
    """Runs the job and returns the metadata it wrote to `output_dir/metadata.json`.

    Args:
        inputs: file paths or globs (`.jsonl`, `.csv`, `.parquet`, optionally `.gz`).
        output_dir: the dataset directory (any Beam file system): absent,
            empty, holding only what a killed run left (deleted first), or a
            finished dataset to replace with `overwrite`.
        cfg: the `preprocess` section of the config.
        pipeline_args: Beam pipeline options (`--runner`, `--direct_num_workers`,
            `--beam_plugins`...).
        num_buckets: how many bucket boundaries metadata.json suggests
            (`data.num_buckets`; 0: `statistics.SUGGESTED_NUM_BUCKETS`).
        overwrite: replace a finished dataset at `output_dir`; it stays
            readable, whole, until the new one is committed.

    Raises:
        commit.OutputExistsError: `output_dir` holds files the job did not
            write, or a finished dataset and not `overwrite`.
        commit.OutputBusyError: a live run of this host writes `output_dir`.
        seqpipe.paths.PathError: `output_dir` overlaps an input, or the input
            patterns would read it on a re-run.
        FileNotFoundError: an input pattern matches no file.
        read.InputError: an input format this job cannot read yet, or a
            `--beam_plugins` module that does not import.
    """
    options = PipelineOptions(list(pipeline_args))
    paths.check_output_outside_inputs(inputs, output_dir)
    import_plugins(options, output_dir)
    output = commit.output_path(output_dir)
    files = read.expand_inputs(inputs)
    files_by_format = read.group_by_format(files, cfg.input_format)
    previous = commit.prepare_output(output, overwrite)
    if previous.removed:
        print(f"removed {len(previous.removed)} file(s) that a killed run left in "
              f"{output_dir}", file=sys.stderr)
    run = commit.Run.start(output, previous)
    job = commit.Commit(run, previous)
    try:
        with beam.Pipeline(options=options) as pipeline:
            build_pipeline(pipeline, files_by_format, run.staging, cfg)
        with FileSystems.open(run.staged(commit.WORK_DIR, commit.SUMMARY_FILE)) as stream:
            summary = json.loads(stream.read())
        shards = job.move_shards(summary["shard_parts"])
        job.move_rejects()
        names = read.feature_names(files_by_format, cfg, summary["num_features"])
        result = metadata.build_metadata(summary, shards, cfg, inputs, files, names,
                                         num_buckets)
        if result.tfds_readable:
            commit.write_tfds_metadata(job, lambda local: metadata.write_tfds_metadata(
                local, result.num_features, shards, run.prefix, result.has_times))
        return job.finish(result)
    except BaseException:
        job.abandon()
        raise


def import_plugins(options: PipelineOptions, output_dir: str) -> None:
    """Imports the `--beam_plugins` modules here, in the driver, and adds the module of
    the output's file system to them, so the workers import it too.

    A Beam file system is found by its scheme among the `FileSystem`
    subclasses imported in the process: a file system of your own (or a
    test's) is usable once its module is named in `--beam_plugins`.

    Raises:
        read.InputError: a plugin module that does not import.
    """
    setup = options.view_as(SetupOptions)
    for module in setup.beam_plugins or []:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise read.InputError(f"--beam_plugins {module!r}: {error}") from None
    module = type(FileSystems.get_filesystem(output_dir)).__module__
    if not module.startswith("apache_beam."):
        setup.beam_plugins = sorted({*(setup.beam_plugins or []), module})


def build_pipeline(pipeline: beam.Pipeline, files_by_format: Mapping[str, Sequence[str]],
                   staging_dir: str, cfg: config_lib.PreprocessConfig) -> None:
    """Adds the whole job to `pipeline`, writing into `staging_dir`."""
    work = FileSystems.join(staging_dir, commit.WORK_DIR)
    results = ([pipeline
                | f"list_{fmt}_inputs" >> beam.Create(sorted(files), reshuffle=False)
                | f"read_{fmt}" >> read.make_reader(fmt, cfg)
                for fmt, files in files_by_format.items()]
               | "all_records" >> beam.Flatten())
    parts_dir = FileSystems.join(work, commit.PARTS_DIR)
    parts, candidates, record_rejects = results | "write_candidates" >> (
        write.WriteCandidates(parts_dir, cfg.train_fraction, cfg.val_fraction,
                              cfg.compression))
    drops, num_features = (candidates, parts) | "check_dataset" >> validate.CheckDataset()
    parts, dataset_rejects = (parts, drops, num_features) | "drop_rejected" >> (
        write.DropRejected(parts_dir, cfg.compression, cfg.json_time_key))
    rejects = (record_rejects, dataset_rejects) | "all_rejects" >> beam.Flatten()
    shards = parts
    if cfg.num_shards:
        shards = parts | "reshard" >> write.Reshard(
            FileSystems.join(work, commit.RESHARD_DIR), cfg.num_shards, cfg.compression)
    _ = rejects | "write_rejects" >> write.WriteRejects(
        FileSystems.join(staging_dir, commit.REJECTS_DIR, "rejects"))

    summary = dict(parts | "compute_stats" >> statistics.ComputeStats())
    summary["counts"] = (results, candidates, drops, rejects) | "count_records" >> (
        statistics.CountRecords())
    summary["num_features"] = num_features
    summary["shard_parts"] = shards | "shard_part_dicts" >> beam.Map(write.shard_part_dict)
    _ = summary | "write_summary" >> write.WriteSummary(
        FileSystems.join(work, commit.SUMMARY_FILE), list_names=("shard_parts",))


def format_summary(result: DatasetMetadata, output_dir: str, seconds: float) -> str:
    """The end-of-job summary for humans, from the job's metadata."""
    counts = result.counts
    lines = [f"seqpipe preprocess -> {output_dir} ({seconds:.1f} s)",
             f"  read {counts.read} = written {counts.written} + rejected "
             f"{counts.rejected}" + (f"  (truncated {counts.truncated})"
                                     if counts.truncated else "")]
    for reason, n in counts.rejected_by_reason.items():
        if n:
            lines.append(f"    rejected {reason:<20} {n}")
    for split, info in result.splits.items():
        lines.append(f"  {split:<5} {info.num_records:>9} records "
                     f"{info.num_timesteps:>11} timesteps {info.num_shards:>4} shards"
                     + (f"  missing {max(info.missing_fraction):.1%} (most in a feature)"
                        if info.has_missing else ""))
    lines.append(f"  features {result.num_features}, lengths "
                 f"{result.length_stats.min}..{result.length_stats.max}, "
                 f"buckets {list(result.bucket_boundaries)}")
    for source, per_file in counts.by_input.items():
        lines.append(f"  {source}: read {per_file['read']} written {per_file['written']} "
                     f"rejected {per_file['rejected']}")
    if counts.rejected:
        lines.append(f"  rejects: {commit.rejects_location(output_dir, result)}/")
    if not counts.written:
        lines.append("  WARNING: no record was written (every record was rejected, or "
                     "the inputs are empty); the dataset has no records")
    return "\n".join(lines)


def run_parsed(args: argparse.Namespace, cfg: config_lib.Config,
               pipeline_args: Sequence[str], print_summary: bool = True) -> DatasetMetadata:
    """Runs the job for parsed flags (`beam_jobs.flags`); prints the summary.

    Shared by `run` and `seqpipe preprocess`, which parse the same flags.

    Args:
        args: the parsed flags.
        cfg: the whole config, loaded from `args.config` and `args.set`.
        pipeline_args: the Beam pipeline options (the arguments left over).
        print_summary: print `format_summary` to stdout.
    """
    start = time.perf_counter()
    result = preprocess(**flags.job_arguments(args, cfg, pipeline_args))
    if print_summary:
        print(format_summary(result, args.output, time.perf_counter() - start))
    return result


def run(argv: Sequence[str] | None = None) -> DatasetMetadata:
    """Command-line entry point: parses the flags, runs the job, prints the summary."""
    args, pipeline_args = flags.parse_args(argv)
    return run_parsed(args, config_lib.load_config(args.config, args.set), pipeline_args)


if __name__ == "__main__":
    run(sys.argv[1:])
