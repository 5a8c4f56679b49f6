"""Tests of seqpipe.input_pipeline.reading: shards, their checks, sharding, normalization.

Read through `make_dataset`, the one path every batch takes.
"""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import tensorflow as tf
from literal_datasets import DETERMINISTIC, SEQS, batches, shapes, truncate, write_dataset

from seqpipe.config import DataConfig
from seqpipe.dataset import records
from seqpipe.dataset.metadata import DatasetMetadata, FeatureStats
from seqpipe.input_pipeline import data, reading


@pytest.mark.parametrize("num_shards", [1, 2, 4])
def test_input_context_shards_cover_every_record_once(tmp_path, num_shards, caplog):
    root = write_dataset(tmp_path, num_shards=num_shards)
    cfg = DataConfig(batch_size=4, normalize=False, shuffle_buffer=4)
    seen = []
    with caplog.at_level(logging.WARNING, logger="seqpipe.input_pipeline.reading"):
        for pipeline in range(2):
            context = tf.distribute.InputContext(num_input_pipelines=2,
                                                 input_pipeline_id=pipeline,
                                                 num_replicas_in_sync=2)
            out = batches(root, cfg, training=True, with_keys=True, input_context=context)
            assert max(b for b, _ in shapes(out)) <= 2  # per-replica batch = 4 // 2
            seen += [sid.decode() for inputs, _, _ in out for sid in inputs["id"]]
    assert sorted(seen) == sorted(SEQS)
    assert ("sharding by record" in caplog.text) == (num_shards < 2)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_truncated_shard_error_names_file(tmp_path, compression):
    root = write_dataset(tmp_path, num_shards=2, compression=compression)
    shard = root / records.shard_name("train", 1, 2)
    truncate(shard, shard.stat().st_size - 10)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(str(shard))):
        batches(root, DETERMINISTIC)


def test_corrupt_record_error_names_file(tmp_path):
    root = write_dataset(tmp_path, num_shards=2)
    shard = root / records.shard_name("train", 0, 2)
    raw = bytearray(shard.read_bytes())
    raw[40] ^= 0xFF  # inside the first record's payload: its CRC fails
    shard.write_bytes(bytes(raw))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=re.escape(str(shard)) + ".*corrupt or truncated"):
        batches(root, DETERMINISTIC)


def test_skip_corrupt_keeps_readable_records(tmp_path, capfd):
    root = write_dataset(tmp_path, num_shards=2)
    # Shard 1 holds b and d; cut into d (its second record).
    shard = root / records.shard_name("train", 1, 2)
    truncate(shard, shard.stat().st_size - 10)
    out = batches(root, DETERMINISTIC, with_keys=True, skip_corrupt=True)
    ids = sorted(sid.decode() for inputs, _, _ in out for sid in inputs["id"])
    assert ids == ["a", "b", "c", "e"]
    assert str(shard) in capfd.readouterr().err


def test_gzip_reads_the_same(tmp_path):
    plain = batches(write_dataset(tmp_path / "plain", num_shards=2), DETERMINISTIC)
    gzip = batches(write_dataset(tmp_path / "gzip", num_shards=2, compression="gzip"),
                   DETERMINISTIC)
    assert len(plain) == len(gzip)
    for p, g in zip(plain, gzip, strict=True):
        for a, b in zip(tf.nest.flatten(p), tf.nest.flatten(g), strict=True):
            np.testing.assert_array_equal(a, b)


def test_missing_metadata(tmp_path):
    root = write_dataset(tmp_path)
    (root / records.METADATA_FILE).unlink()
    with pytest.raises(records.DatasetError, match="no metadata.json"):
        data.make_dataset(root, "train", DETERMINISTIC, training=False)


def test_unknown_schema_version(tmp_path):
    root = write_dataset(tmp_path)
    metadata = json.loads((root / records.METADATA_FILE).read_text())
    metadata["schema_version"] = 999
    (root / records.METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(records.DatasetError, match="schema_version 999"):
        data.make_dataset(root, "train", DETERMINISTIC, training=False)
    with pytest.raises(records.DatasetError, match="schema_version 999"):
        data.make_dataset(root, "train", DETERMINISTIC, training=False,
                          metadata=DatasetMetadata.from_json(metadata))


def test_split_without_shards(tmp_path):
    root = write_dataset(tmp_path)
    with pytest.raises(records.DatasetError, match=f"{re.escape(str(root))}.*'test'"):
        data.make_dataset(root, "test", DETERMINISTIC, training=False)


def test_normalization_arrays_std_zero_acts_as_one_and_checks_lengths():
    stats = FeatureStats(mean=(1.0, 2.0), std=(2.0, 0.0))
    mean, std = reading.normalization_arrays(stats, 2)
    assert mean.dtype == std.dtype == np.float32
    np.testing.assert_array_equal(std, [2.0, 1.0])
    steps = np.array([[3.0, 5.0], [1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(reading.normalize(steps, (mean, std)), [[1.0, 3.0], [0.0, 0.0]])
    assert reading.normalize(steps, None) is steps
    with pytest.raises(records.DatasetError, match="feature_stats.mean and .std of length 3"):
        reading.normalization_arrays(stats, 3)
