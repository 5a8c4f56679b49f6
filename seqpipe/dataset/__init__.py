"""The dataset contract: what `seqpipe preprocess` writes and every later stage reads.

A dataset directory (a local path, or a prefix on any file system Beam
writes: gs://, s3://, hdfs://...):

    seqpipe-{split}.tfrecord-SSSSS-of-NNNNN   the records of each split (train, val,
                                              test), one `tf.train.Example` per
                                              sequence (`records`), named by the
                                              TFDS template
    rejects/rejects-*.jsonl                   every rejected record: {reason, message,
                                              source, line, offset, record,
                                              record_truncated} (`sources.Rejection`)
    dataset_info.json, features.json          TFDS metadata (uncompressed shards with
                                              records only): `tfds.builder_from_directory`
                                              reads the splits
    metadata.json                             `metadata.DatasetMetadata`, written last:
                                              a directory without it is not a dataset

The shards and rejects of a dataset that replaced another (`--overwrite`) sit
under `dataset-ID/` (the TFDS templates and `metadata.json` name them so).

Commit protocol (`beam_jobs.commit` implements it; no step needs a directory
rename or an append, so it holds on object stores):

1. A run works under `DIR/.staging-PID@HOST-ID/` only: the workers' shards,
   the rejects, the pipeline's summary.
2. It moves each file to its final name, one by one (a rename; a copy then
   a delete on object stores): shards, rejects, then the TFDS metadata.
3. It puts `metadata.json` in place, last (written in the staging prefix,
   then moved: it appears whole). This is the commit. It lists every data
   file (shards, rejects) with its size and SHA-256 (`files`).
4. It deletes the replaced dataset's files (`--overwrite`) and its staging.

TFDS's `dataset_info.json` and `features.json` are replaced in place in step
2, just before the commit: between the two, a TFDS reader sees the new
dataset and a seqpipe reader the old one, each whole. A run killed there
leaves TFDS's view on files that the re-run deletes first and replaces at its
own step 2 (seqpipe's readers never read these two files).

Readers trust `metadata.json` alone: they read the files it lists and nothing
else (a killed run's files, a shard copied in beside them, a staging prefix
are never read), and a listed file that is missing or has another size than
listed is a `records.DatasetError` naming it. So a reader sees no dataset
(before step 3: no `metadata.json`, or the replaced dataset's, whose files
are all still there) or the whole new one, never a mix. A run refuses a
directory that holds a finished dataset (unless `--overwrite`) or any file
it does not write; otherwise it first deletes what dead runs left there
(staging prefixes and unlisted files of these names). A staging prefix of a
live process of the same host stops it: one run per directory at a time.

Modules:
    records    one sequence <-> one serialized record; shard names
    metadata   metadata.json, typed (`DatasetMetadata`), read and written in one place
    sources    pure per-record parsing and validation of raw input (JSON lines,
               long-format CSV/Parquet rows), with typed rejection reasons
    times      the steps' times: their checks, the stored gaps (`time_delta`),
               and how the time-delta input feature is normalized
"""
