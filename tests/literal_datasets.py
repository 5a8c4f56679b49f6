"""Tiny literal datasets written as real TFRecord shards, for the input pipeline tests."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from seqpipe.config import DataConfig, ModelConfig
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset import records
from seqpipe.dataset.metadata import DatasetMetadata
from seqpipe.input_pipeline import data

# Lengths 1, 2, 3, 5, 8 and F=2; "d" has a genuine all-zero step in its middle.
SEQS = {
    "a": np.array([[1.0, -1.0]]),
    "b": np.array([[2.0, 0.5], [3.0, 1.5]]),
    "c": np.array([[-1.0, 2.0], [0.0, 4.0], [1.0, 6.0]]),
    "d": np.array([[4.0, 1.0], [5.0, 2.0], [0.0, 0.0], [6.0, 3.0], [7.0, 4.0]]),
    "e": np.array([[0.5, 8.0], [1.0, 7.0], [1.5, 6.0], [2.0, 5.0],
                   [2.5, 4.0], [3.0, 3.0], [3.5, 2.0], [4.0, 1.0]]),
}
LABELS = {"a": "x", "b": "y", "c": "x", "d": "y", "e": "x"}
# Hand-written train stats; std 0 must act as 1.
MEAN, STD = [1.0, 2.0], [2.0, 0.0]

DETERMINISTIC = DataConfig(batching="buckets", batch_size=2, bucket_boundaries=(2, 5),
                           normalize=False, reverse_target=False, deterministic=True)


def write_dataset(root: Path, seqs=SEQS, *, num_shards=1, boundaries=None, compression="none",
                  labels=None, split="train", deltas=None, time_stats=None) -> Path:
    """Shards seqs round-robin in insertion order and writes a metadata.json.

    With `deltas` ({id: time gaps}) the records carry them and the metadata
    has `time_stats` (default: no train interval).
    """
    labels = labels or {}
    root.mkdir(parents=True, exist_ok=True)
    ids = list(seqs)
    files = []
    for shard in range(num_shards):
        name = records.shard_name(split, shard, num_shards)
        files.append(name)
        options = "GZIP" if compression == "gzip" else None
        with tf.io.TFRecordWriter(str(root / name), options=options) as writer:
            for sid in ids[shard::num_shards]:
                writer.write(records.encode_sequence(sid, seqs[sid], labels.get(sid, ""),
                                                     None if deltas is None else deltas[sid]))
    lengths = [len(s) for s in seqs.values()]
    times = {} if deltas is None else {"time_stats": time_stats or {"num_records": len(seqs)}}
    metadata = DatasetMetadata.from_json({
        **times,
        "schema_version": records.SCHEMA_VERSION,
        "num_features": 2,
        "feature_names": ["f0", "f1"],
        "compression": compression,
        "splits": {split: {"num_records": len(seqs), "num_timesteps": sum(lengths),
                           "num_shards": num_shards, "files": files}},
        "length_stats": {"min": min(lengths), "max": max(lengths),
                         "mean": float(np.mean(lengths))},
        "feature_stats": {"mean": MEAN, "std": STD},
        "bucket_boundaries": boundaries or [2, 5, max(lengths)],
    })
    metadata_lib.write(metadata, root)
    return root


def batches(data_dir, cfg, *, training=False, **kwargs):
    """The dataset as a list of numpy (inputs, targets, weights)."""
    ds = data.make_dataset(data_dir, "train", cfg, training=training, **kwargs)
    return list(ds.as_numpy_iterator())


def padded(seqs, length):
    out = np.zeros([len(seqs), length, 2], np.float32)
    mask = np.zeros([len(seqs), length], np.float32)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
        mask[i, :len(s)] = 1.0
    return out, mask


def assert_batch(batch, seqs, length, *, normalize=False, reverse=False):
    inputs, targets, weights = batch
    norm = [(s - MEAN) / np.where(np.array(STD) > 0, STD, 1.0) if normalize else s
            for s in seqs]
    x, mask = padded(norm, length)
    target, _ = padded([s[::-1] for s in norm] if reverse else norm, length)
    assert set(inputs) == {"x", "mask"}
    np.testing.assert_allclose(inputs["x"], x, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(inputs["mask"], mask)
    np.testing.assert_allclose(targets, target, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(weights, mask)
    assert inputs["x"].dtype == targets.dtype == weights.dtype == np.float32


def shapes(out):
    return [inputs["x"].shape[:2] for inputs, _, _ in out]


def truncate(path: Path, keep: int):
    path.write_bytes(path.read_bytes()[:keep])


# Sorted windows, batches of 2, each padded to its longest, no efficiency floor.
WINDOW = DataConfig(batch_size=2, timestep_budget=0, min_batch_efficiency=0.0, normalize=False,
                    reverse_target=False, deterministic=True)


def inference(root, cfg=WINDOW, **kwargs):
    """`data.inference_batches` of the train split as a list of numpy batches."""
    return [tf.nest.map_structure(lambda t: t.numpy(), batch)
            for batch in data.inference_batches(root, "train", cfg, **kwargs)]


def small_autoencoder(num_features: int = 2, **inputs):
    """`(autoencoder, encoder)`: 4 units, one direction, final states only, seeded;
    `inputs` are `build_autoencoder`'s extra inputs (`observed=True`, `time_delta=True`)."""
    from seqpipe.model.autoencoder import build_autoencoder

    keras.utils.set_random_seed(0)
    return build_autoencoder(ModelConfig(units=4, bidirectional=False, pooling=()),
                             num_features, **inputs)
