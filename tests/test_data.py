"""Tests of seqpipe.input_pipeline.data on tiny literal datasets written as real TFRecord shards."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from seqpipe.config import DataConfig
from seqpipe.dataset import records
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
                  labels=None, split="train") -> Path:
    """Shards seqs round-robin in insertion order and writes a metadata.json."""
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
                writer.write(records.encode_sequence(sid, seqs[sid], labels.get(sid, "")))
    lengths = [len(s) for s in seqs.values()]
    metadata = {
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
    }
    (root / records.METADATA_FILE).write_text(json.dumps(metadata))
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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tiny"), labels=LABELS)


@pytest.mark.parametrize("normalize", [False, True])
def test_exact_batches(tiny, normalize):
    cfg = DataConfig(batching="buckets", batch_size=2, bucket_boundaries=(2, 5),
                     normalize=normalize, reverse_target=False, deterministic=True)
    out = batches(tiny, cfg)
    assert len(out) == 3
    assert_batch(out[0], [SEQS["a"], SEQS["b"]], 2, normalize=normalize)
    assert_batch(out[1], [SEQS["c"], SEQS["d"]], 5, normalize=normalize)
    assert_batch(out[2], [SEQS["e"]], 8, normalize=normalize)


def test_literal_first_batch(tiny):
    inputs, targets, weights = batches(tiny, DETERMINISTIC)[0]
    np.testing.assert_array_equal(inputs["x"], [[[1, -1], [0, 0]], [[2, 0.5], [3, 1.5]]])
    np.testing.assert_array_equal(weights, [[1, 0], [1, 1]])


def test_genuine_zero_step_is_real(tiny):
    inputs, targets, weights = batches(tiny, DETERMINISTIC)[1]
    # Row 1 is "d", whose step 2 is all zeros: real data, weight 1.
    np.testing.assert_array_equal(inputs["x"][1, 2], [0.0, 0.0])
    assert inputs["mask"][1, 2] == 1.0 and weights[1, 2] == 1.0
    np.testing.assert_array_equal(weights[1], [1, 1, 1, 1, 1])
    np.testing.assert_array_equal(weights[0], [1, 1, 1, 0, 0])


def test_reverse_target_within_own_length(tiny):
    cfg = DataConfig(batching="buckets", batch_size=2, bucket_boundaries=(2, 5), normalize=True,
                     reverse_target=True, deterministic=True)
    out = batches(tiny, cfg)
    assert_batch(out[0], [SEQS["a"], SEQS["b"]], 2, normalize=True, reverse=True)
    assert_batch(out[1], [SEQS["c"], SEQS["d"]], 5, normalize=True, reverse=True)
    assert_batch(out[2], [SEQS["e"]], 8, normalize=True, reverse=True)
    # "c" reversed: its last real step first, padding still at the end, zero-weighted.
    _, targets, weights = out[1]
    np.testing.assert_allclose(targets[0, 0], (SEQS["c"][2] - MEAN) / [2.0, 1.0])
    np.testing.assert_array_equal(targets[0, 3:], 0.0)
    np.testing.assert_array_equal(weights[0, 3:], 0.0)


def all_real_steps(out):
    steps = np.concatenate([inputs["x"][inputs["mask"] == 1] for inputs, _, _ in out])
    return steps[np.lexsort(steps.T[::-1])]


EXPECTED_STEPS = np.concatenate(list(SEQS.values())).astype(np.float32)
EXPECTED_STEPS = EXPECTED_STEPS[np.lexsort(EXPECTED_STEPS.T[::-1])]


@pytest.mark.parametrize("cfg", [
    DataConfig(batching="buckets", batch_size=2, normalize=False, shuffle_buffer=3),
    DataConfig(batching="buckets", timestep_budget=6, pad_to_bucket_boundary=False,
               normalize=False),
    DataConfig(batching="buckets", batch_size=3, bucket_boundaries=(1, 3), normalize=False),
    DataConfig(batch_size=2, pad_to_max=True, normalize=False),
    DataConfig(batch_size=2, normalize=False, shuffle_buffer=3),
    DataConfig(batch_size=3, timestep_budget=6, sort_window=2, length_grid=1,
               normalize=False),
], ids=["shuffled", "budget", "overflow", "pad_to_max", "window", "small_windows"])
def test_every_real_step_once_per_epoch(tmp_path, cfg):
    root = write_dataset(tmp_path, num_shards=3)
    ds = data.make_dataset(root, "train", cfg, training=True)
    for _ in range(2):  # two epochs: the same multiset each time
        out = list(ds.as_numpy_iterator())
        np.testing.assert_array_equal(all_real_steps(out), EXPECTED_STEPS)
        assert sum(w.sum() for _, _, w in out) == len(EXPECTED_STEPS) == 19
        for inputs, targets, weights in out:
            np.testing.assert_array_equal(weights, inputs["mask"])
            assert set(np.unique(weights)) <= {0.0, 1.0}
            np.testing.assert_array_equal(inputs["x"][weights == 0], 0.0)
            np.testing.assert_array_equal(targets[weights == 0], 0.0)
            # Right padding: the mask never goes back up after a 0.
            assert (np.diff(weights, axis=1) <= 0).all()


def shapes(out):
    return [inputs["x"].shape[:2] for inputs, _, _ in out]


def test_padding_modes(tiny):
    # Metadata boundaries [2, 5, 8]: T is exactly a boundary.
    cfg = DataConfig(batching="buckets", batch_size=2, normalize=False, deterministic=True)
    assert shapes(batches(tiny, cfg)) == [(2, 2), (2, 5), (1, 8)]
    # Boundaries (2, 4): "d" and "e" overflow, kept, padded to their batch max.
    cfg = DataConfig(batching="buckets", batch_size=2, bucket_boundaries=(2, 4), normalize=False,
                     deterministic=True)
    assert shapes(batches(tiny, cfg)) == [(2, 2), (2, 8), (1, 4)]
    # Without pad_to_bucket_boundary: each batch's own longest length.
    cfg = DataConfig(batching="buckets", batch_size=2, bucket_boundaries=(4, 8), normalize=False,
                     pad_to_bucket_boundary=False, deterministic=True)
    assert shapes(batches(tiny, cfg)) == [(2, 2), (2, 8), (1, 3)]
    # pad_to_max: T = the longest length everywhere, no bucketing.
    cfg = DataConfig(batch_size=2, pad_to_max=True, normalize=False, deterministic=True)
    assert shapes(batches(tiny, cfg)) == [(2, 8), (2, 8), (1, 8)]


def test_timestep_budget_batch_sizes(tmp_path):
    rng = np.random.default_rng(0)
    seqs = {f"s{i:02d}": rng.normal(size=(n, 2)) for i, n in
            enumerate([1] * 7 + [4] * 5 + [8] * 3)}
    root = write_dataset(tmp_path, seqs, boundaries=[2, 4, 8])
    cfg = DataConfig(batching="buckets", timestep_budget=16, normalize=False, deterministic=True)
    buckets = data.plan_buckets(cfg, json.loads((root / "metadata.json").read_text()))
    assert [b.batch_size for b in buckets] == [8, 4, 2, 2]
    out = batches(root, cfg)
    assert sorted(shapes(out)) == sorted([(7, 2), (4, 4), (1, 4), (2, 8), (1, 8)])
    assert all(b * t <= 16 for b, t in shapes(out))


def test_with_keys_match_records(tmp_path):
    root = write_dataset(tmp_path, num_shards=2, labels=LABELS)
    cfg = DataConfig(batch_size=2, normalize=False, shuffle_buffer=5)
    out = batches(root, cfg, training=True, with_keys=True)
    seen = []
    for inputs, _, weights in out:
        assert set(inputs) == {"x", "mask", "id", "label", "length"}
        assert inputs["length"].dtype == np.int32
        np.testing.assert_array_equal(inputs["length"], weights.sum(axis=1))
        for row, sid in enumerate(inputs["id"].astype(str)):
            seen.append(sid)
            assert inputs["label"][row].decode() == LABELS[sid]
            assert inputs["length"][row] == len(SEQS[sid])
            np.testing.assert_array_equal(inputs["x"][row, :len(SEQS[sid])], SEQS[sid])
    assert sorted(seen) == sorted(SEQS)


def epoch_ids(ds):
    return [sid.decode() for inputs, _, _ in ds.as_numpy_iterator() for sid in inputs["id"]]


def test_shuffle_differs_between_epochs_deterministic_does_not(tmp_path):
    seqs = {f"s{i:02d}": np.full((3, 2), i, np.float32) for i in range(20)}
    root = write_dataset(tmp_path, seqs, num_shards=2, boundaries=[3])
    cfg = DataConfig(batch_size=1, normalize=False, seed=1)
    ds = data.make_dataset(root, "train", cfg, training=True, with_keys=True)
    first, second = epoch_ids(ds), epoch_ids(ds)
    assert first != second
    assert sorted(first) == sorted(second) == sorted(seqs)

    cfg = DataConfig(batch_size=1, normalize=False, deterministic=True)
    ds = data.make_dataset(root, "train", cfg, training=True, with_keys=True)
    first = epoch_ids(ds)
    assert first == epoch_ids(ds)
    # Two shards read alternately: s00 (shard 0), s01 (shard 1), s02, ...
    assert first == sorted(seqs)


@pytest.mark.parametrize("num_shards", [1, 2, 4])
def test_input_context_shards_cover_every_record_once(tmp_path, num_shards, caplog):
    root = write_dataset(tmp_path, num_shards=num_shards)
    cfg = DataConfig(batch_size=4, normalize=False, shuffle_buffer=4)
    seen = []
    with caplog.at_level(logging.WARNING, logger="seqpipe.input_pipeline.data"):
        for pipeline in range(2):
            context = tf.distribute.InputContext(num_input_pipelines=2,
                                                 input_pipeline_id=pipeline,
                                                 num_replicas_in_sync=2)
            out = batches(root, cfg, training=True, with_keys=True, input_context=context)
            assert max(b for b, _ in shapes(out)) <= 2  # per-replica batch = 4 // 2
            seen += [sid.decode() for inputs, _, _ in out for sid in inputs["id"]]
    assert sorted(seen) == sorted(SEQS)
    assert ("sharding by record" in caplog.text) == (num_shards < 2)


def truncate(path: Path, keep: int):
    path.write_bytes(path.read_bytes()[:keep])


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
        data.make_dataset(root, "train", DETERMINISTIC, training=False, metadata=metadata)


def test_split_without_shards(tmp_path):
    root = write_dataset(tmp_path)
    with pytest.raises(records.DatasetError, match=f"{re.escape(str(root))}.*'test'"):
        data.make_dataset(root, "test", DETERMINISTIC, training=False)


def test_padding_efficiency(tiny):
    cfg = DataConfig(batching="buckets", batch_size=2, normalize=False, deterministic=True)
    stats = data.padding_efficiency(data.make_dataset(tiny, "train", cfg, training=False))
    # Batches (2, 2), (2, 5), (1, 8): 4 + 10 + 8 padded steps hold 19 real ones.
    assert stats == {"efficiency": 19 / 22, "real_timesteps": 19, "padded_timesteps": 22,
                     "num_batches": 3, "num_records": 5, "distinct_shapes": 3,
                     "distinct_lengths": 3, "batch_sizes": {1: 1, 2: 2}}


# ---------------------------------------------------------------- sorted windows

WINDOW = DataConfig(batch_size=2, timestep_budget=0, min_batch_efficiency=0.0, normalize=False,
                    reverse_target=False, deterministic=True)


@pytest.mark.parametrize("reverse", [False, True])
def test_sorted_window_exact_batches(tmp_path, reverse):
    # Shards hold a, c, e and b, d: read interleaved (a, b, c, d, e), sorted by
    # length, cut into pairs; the grid of max length 8 holds every length 1..8.
    root = write_dataset(tmp_path, num_shards=2)
    out = batches(root, dataclasses.replace(WINDOW, reverse_target=reverse))
    assert shapes(out) == [(2, 2), (2, 5), (1, 8)]
    assert_batch(out[0], [SEQS["a"], SEQS["b"]], 2, reverse=reverse)
    assert_batch(out[1], [SEQS["c"], SEQS["d"]], 5, reverse=reverse)
    assert_batch(out[2], [SEQS["e"]], 8, reverse=reverse)


def test_sorted_window_pads_to_the_grid(tiny):
    # length_grid=1: one grid value per doubling, [1, 2, 4, 8]; "d" (5) pads to 8.
    out = batches(tiny, dataclasses.replace(WINDOW, length_grid=1))
    assert shapes(out) == [(2, 2), (2, 8), (1, 8)]
    assert_batch(out[1], [SEQS["c"], SEQS["d"]], 8)


def test_sorted_window_efficiency_floor_cuts_sparse_batches(tiny):
    # Sorted lengths 1, 2, 3, 5, 8, batches of up to 4. Without the floor:
    # [a b c d] padded to 5 (11 of 20 real), [e].
    cfg = dataclasses.replace(WINDOW, batch_size=4)
    assert shapes(batches(tiny, cfg)) == [(4, 5), (1, 8)]
    # Floor 0.7: adding c (3) would leave 6 of 9 real (0.67), so [a b] -> T=2;
    # then c, d fit (8 of 10), e would leave 16 of 24: [c d] -> T=5; [e].
    cfg = dataclasses.replace(cfg, min_batch_efficiency=0.7)
    keyless = [({"x": inputs["x"], "mask": inputs["mask"]}, targets, weights)
               for inputs, targets, weights in inference(tiny, cfg)]
    for out in (batches(tiny, cfg), keyless):
        assert shapes(out) == [(2, 2), (2, 5), (1, 8)]
        assert_batch(out[0], [SEQS["a"], SEQS["b"]], 2)
        assert_batch(out[1], [SEQS["c"], SEQS["d"]], 5)
        assert_batch(out[2], [SEQS["e"]], 8)


def test_sorted_window_efficiency_floor_on_the_grid(tiny):
    # Grid [1, 2, 4, 8]: the floor compares with grid-padded lengths 1, 2, 4, 8, 8.
    # [a b] is 3 of 4 real, with c 6 of 12: [a b] -> T=2; c with d would be
    # 8 of 16: [c] -> T=4; [d e] is 13 of 16: its full size, padded to 8.
    cfg = dataclasses.replace(WINDOW, batch_size=4, length_grid=1, min_batch_efficiency=0.7)
    out = batches(tiny, cfg)
    assert shapes(out) == [(2, 2), (1, 4), (2, 8)]
    assert_batch(out[1], [SEQS["c"]], 4)
    assert_batch(out[2], [SEQS["d"], SEQS["e"]], 8)


def test_sorted_window_budget_gives_full_batches(tiny):
    # batch_size 4, budget 6 on the grid 1..8: full batch sizes 4, 3, 2, 1, 1, ...
    # Records a, b (lengths 1, 2) with c (3) do not fit T=2 as a batch of 3, so
    # the first batch is the full batch of T=3: two records.
    cfg = dataclasses.replace(WINDOW, batch_size=4, timestep_budget=6)
    out = batches(tiny, cfg)
    assert shapes(out) == [(2, 3), (1, 4), (1, 5), (1, 8)]
    assert_batch(out[0], [SEQS["a"], SEQS["b"]], 3)
    assert_batch(out[3], [SEQS["e"]], 8)  # longer than the budget: alone, kept


def test_sorted_window_auto_budget(tiny):
    # -1: batch_size x mean length = 4 x 3.8 -> 15 timesteps per batch.
    plan = data.plan_window(dataclasses.replace(WINDOW, batch_size=4, timestep_budget=-1),
                            json.loads((tiny / records.METADATA_FILE).read_text()))
    assert plan.grid == (1, 2, 3, 4, 5, 6, 7, 8)
    assert plan.batch_sizes == (4, 4, 4, 3, 3, 2, 2, 1)


def test_sorted_window_overflow_pads_to_batch_max(tmp_path):
    # Metadata claims max length 4: "d" (5) and "e" (8) are past the grid's
    # end [1..4] and pad to their batch's longest; nothing is dropped.
    root = write_dataset(tmp_path)
    metadata = json.loads((root / records.METADATA_FILE).read_text())
    metadata["length_stats"]["max"] = 4
    out = batches(root, WINDOW, metadata=metadata)
    assert shapes(out) == [(2, 2), (2, 5), (1, 8)]
    assert_batch(out[2], [SEQS["e"]], 8)


def test_sorted_window_shapes_bounded_and_batches_full(tmp_path):
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 41, 60)
    seqs = {f"s{i:02d}": rng.normal(size=(n, 2)) for i, n in enumerate(lengths)}
    root = write_dataset(tmp_path, seqs, num_shards=3)
    cfg = DataConfig(batch_size=6, timestep_budget=60, sort_window=25, length_grid=4,
                     min_batch_efficiency=0.0, normalize=False, reverse_target=False,
                     shuffle_buffer=20, seed=2)
    metadata = records.read_metadata(root)
    plan = data.plan_window(cfg, metadata)
    full = dict(zip(plan.grid, plan.batch_sizes, strict=True))
    ds = data.make_dataset(root, "train", cfg, training=True, with_keys=True)
    for _ in range(2):
        out = list(ds.as_numpy_iterator())
        ids = [sid.decode() for inputs, _, _ in out for sid in inputs["id"]]
        assert sorted(ids) == sorted(seqs)  # the longest (40) included
        partial = [(b, t) for b, t in shapes(out) if b != full[t]]
        assert all(t in full and b <= full[t] for b, t in shapes(out))
        assert len(partial) <= 3  # at most the last batch of each of the 3 windows
        assert all(b * t <= 60 for b, t in shapes(out))
        assert sum(w.sum() for _, _, w in out) == lengths.sum()


# ---------------------------------------------------------------- inference batches


def inference(root, cfg=WINDOW, **kwargs):
    return [tf.nest.map_structure(lambda t: t.numpy(), batch)
            for batch in data.inference_batches(root, "train", cfg, **kwargs)]


@pytest.mark.parametrize("reverse", [False, True])
def test_inference_batches_exact(tmp_path, reverse):
    # Shards read one after another (a, c, e, then b, d), sorted by length, cut into pairs.
    root = write_dataset(tmp_path, num_shards=2, labels=LABELS)
    out = inference(root, dataclasses.replace(WINDOW, reverse_target=reverse))
    assert shapes(out) == [(2, 2), (2, 5), (1, 8)]
    for batch, ids, length in zip(out, [["a", "b"], ["c", "d"], ["e"]], [2, 5, 8], strict=True):
        inputs, targets, weights = batch
        assert [sid.decode() for sid in inputs["id"]] == ids
        assert [label.decode() for label in inputs["label"]] == [LABELS[i] for i in ids]
        np.testing.assert_array_equal(inputs["length"], [len(SEQS[i]) for i in ids])
        assert inputs["length"].dtype == np.int32
        keyless = ({"x": inputs["x"], "mask": inputs["mask"]}, targets, weights)
        assert_batch(keyless, [SEQS[i] for i in ids], length, reverse=reverse)


@pytest.mark.parametrize("cfg", [
    DataConfig(batch_size=2, normalize=True, reverse_target=True),
    DataConfig(batch_size=3, timestep_budget=6, sort_window=2, length_grid=1, normalize=False),
    DataConfig(batch_size=2, sort_window=3, normalize=False),
], ids=["default", "budget_small_windows", "window_across_shards"])
def test_inference_batches_every_record_once(tmp_path, cfg):
    root = write_dataset(tmp_path, num_shards=3)
    out = inference(root, cfg)
    expected = list(data.make_dataset(root, "train", dataclasses.replace(cfg, deterministic=True),
                                      training=False, with_keys=True).as_numpy_iterator())

    def by_id(batches):
        rows = {}
        for inputs, targets, weights in batches:
            for i, sid in enumerate(inputs["id"]):
                n = int(inputs["length"][i])
                rows[sid.decode()] = (inputs["x"][i, :n], targets[i, :n], weights[i].sum())
                np.testing.assert_array_equal(inputs["x"][i, n:], 0.0)
                np.testing.assert_array_equal(weights[i], inputs["mask"][i])
        return rows

    got, want = by_id(out), by_id(expected)
    assert sorted(got) == sorted(SEQS) and len(got) == sum(len(b[2]) for b in out)
    for sid, (x, target, weight) in want.items():
        np.testing.assert_array_equal(got[sid][0], x)
        np.testing.assert_array_equal(got[sid][1], target)
        assert got[sid][2] == weight == len(SEQS[sid])


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_inference_batches_truncated_shard_names_file(tmp_path, compression):
    root = write_dataset(tmp_path, num_shards=2, compression=compression)
    shard = root / records.shard_name("train", 1, 2)
    truncate(shard, shard.stat().st_size - 10)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=re.escape(str(shard)) + ".*corrupt or truncated"):
        inference(root)


def test_inference_batches_read_ahead_yields_the_same_batches(tmp_path):
    root = write_dataset(tmp_path, num_shards=2, labels=LABELS)
    ahead, inline = inference(root, read_ahead=2), inference(root, read_ahead=0)
    assert len(ahead) == len(inline) == 3
    for a, b in zip(ahead, inline, strict=True):
        tf.nest.map_structure(np.testing.assert_array_equal, a, b)


def test_read_ahead_raises_where_the_failing_item_would_come():
    def items():
        yield 1
        yield 2
        raise ValueError("item 3 is bad")

    got = []
    with pytest.raises(ValueError, match="item 3 is bad"):
        for item in data._read_ahead(items(), depth=1):
            got.append(item)
    assert got == [1, 2]


def test_read_ahead_closed_early_stops_its_producer():
    produced = []

    def items():
        for i in range(1000):
            produced.append(i)
            yield i

    reader = data._read_ahead(items(), depth=2)
    assert [next(reader), next(reader)] == [0, 1]
    reader.close()  # joins the producer
    count = len(produced)
    assert count <= 2 + 2 + 1  # consumed, queued, and the one it was offering
    assert not [t for t in threading.enumerate() if t.name == "seqpipe-read-ahead"]


def reference_cuts(lengths, grid, sizes, min_efficiency):
    """`_window_cuts`' documented rule, one batch at a time in plain Python."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    sorted_lengths = [int(lengths[i]) for i in order]
    n = len(order)

    def on_grid(length):
        return next((t for t in grid if t >= length), length)

    batches, start = [], 0
    while start < n:
        g = next((g for g in range(len(grid))
                  if sorted_lengths[min(start + sizes[g] - 1, n - 1)] <= grid[g]), len(grid) - 1)
        size = min(sizes[g], n - start)
        pad = max(grid[g], sorted_lengths[start + size - 1])
        for k in range(1, size if min_efficiency else 0):
            real = sum(sorted_lengths[start:start + k + 1])
            if real < min_efficiency * (k + 1) * on_grid(sorted_lengths[start + k]):
                size, pad = k, on_grid(sorted_lengths[start + k - 1])
                break
        batches.append((order[start:start + size], pad))
        start += size
    return batches


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("batch_size,budget", [(8, 0), (8, 60), (5, 37)])
@pytest.mark.parametrize("length_grid", [0, 1, 4])
@pytest.mark.parametrize("min_efficiency", [0.0, 0.6, 0.9])
def test_window_cuts_match_the_one_batch_at_a_time_rule(seed, batch_size, budget, length_grid,
                                                        min_efficiency):
    rng = np.random.default_rng(seed)
    lengths = np.concatenate([rng.integers(1, 12, 50),  # dense, then a sparse tail
                              np.exp(rng.uniform(2.5, 5.0, 12)).astype(int)])[
        rng.permutation(62)][:rng.integers(1, 63)]
    metadata = {"length_stats": {"max": 100, "mean": 10.0}}
    cfg = DataConfig(batch_size=batch_size, timestep_budget=budget, length_grid=length_grid,
                     min_batch_efficiency=min_efficiency, sort_window=64)
    plan = data.plan_window(cfg, metadata)
    rows, pads = plan.cutter()(tf.constant(lengths, tf.int32))
    got = [([int(i) for i in row if i >= 0], int(pad))
           for row, pad in zip(rows.numpy(), pads.numpy(), strict=True)]
    expected = reference_cuts(lengths, plan.grid, plan.batch_sizes, min_efficiency)
    assert got == expected
    assert sorted(i for row, _ in got for i in row) == list(range(len(lengths)))
