"""The dataset contract: what `seqpipe preprocess` writes and every later stage reads.

A dataset directory:

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

Modules:
    records    one sequence <-> one serialized record; shard names
    metadata   metadata.json, typed (`DatasetMetadata`), read and written in one place
    sources    pure per-record parsing and validation of raw input (JSON lines,
               long-format CSV/Parquet rows), with typed rejection reasons
"""
