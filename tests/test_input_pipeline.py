"""Tests of the element contract (seqpipe.input_pipeline) on tiny literal datasets.

`make_dataset` in every batching mode, `inference_batches` and `array_batches`,
read from real TFRecord shards (`literal_datasets`).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import tensorflow as tf
from literal_datasets import (
    DETERMINISTIC,
    LABELS,
    MEAN,
    SEQS,
    STD,
    WINDOW,
    assert_batch,
    batches,
    inference,
    shapes,
    truncate,
    write_dataset,
)

from seqpipe.config import DataConfig
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset import records
from seqpipe.dataset.metadata import FeatureStats
from seqpipe.input_pipeline import batching, data


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
    # One bucket whose boundary is the longest length: every batch padded to the maximum.
    DataConfig(batching="buckets", batch_size=2, bucket_boundaries=(8,), normalize=False),
    DataConfig(batch_size=2, normalize=False, shuffle_buffer=3),
    DataConfig(batch_size=3, timestep_budget=6, sort_window=2, length_grid=1,
               normalize=False),
], ids=["shuffled", "budget", "overflow", "one_bucket_at_max", "window", "small_windows"])
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
    # One bucket at the longest length: T = the longest length everywhere.
    cfg = DataConfig(batching="buckets", batch_size=2, bucket_boundaries=(8,), normalize=False,
                     deterministic=True)
    assert shapes(batches(tiny, cfg)) == [(2, 8), (2, 8), (1, 8)]


def test_timestep_budget_batch_sizes(tmp_path):
    rng = np.random.default_rng(0)
    seqs = {f"s{i:02d}": rng.normal(size=(n, 2)) for i, n in
            enumerate([1] * 7 + [4] * 5 + [8] * 3)}
    root = write_dataset(tmp_path, seqs, boundaries=[2, 4, 8])
    cfg = DataConfig(batching="buckets", timestep_budget=16, normalize=False, deterministic=True)
    buckets = batching.plan_buckets(cfg, metadata_lib.read(root))
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


def test_padding_efficiency(tiny):
    cfg = DataConfig(batching="buckets", batch_size=2, normalize=False, deterministic=True)
    stats = data.padding_efficiency(data.make_dataset(tiny, "train", cfg, training=False))
    # Batches (2, 2), (2, 5), (1, 8): 4 + 10 + 8 padded steps hold 19 real ones.
    assert stats == {"efficiency": 19 / 22, "real_timesteps": 19, "padded_timesteps": 22,
                     "num_batches": 3, "num_records": 5, "distinct_shapes": 3,
                     "distinct_lengths": 3, "batch_sizes": {1: 1, 2: 2}}


# ---------------------------------------------------------------- sorted windows

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


def test_sorted_window_overflow_pads_to_batch_max(tmp_path):
    # Metadata claims max length 4: "d" (5) and "e" (8) are past the grid's
    # end [1..4] and pad to their batch's longest; nothing is dropped.
    root = write_dataset(tmp_path)
    metadata = metadata_lib.read(root)
    metadata = dataclasses.replace(
        metadata, length_stats=dataclasses.replace(metadata.length_stats, max=4))
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
    metadata = metadata_lib.read(root)
    plan = batching.plan_window(cfg, metadata)
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


@pytest.mark.parametrize("reverse", [False, True])
def test_inference_batches_exact(tmp_path, reverse):
    # Shards hold a, c, e and b, d: read interleaved, sorted by length, cut into pairs.
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




@pytest.mark.parametrize("cfg", [
    WINDOW,
    DataConfig(batch_size=2, normalize=True, reverse_target=True),
    DataConfig(batch_size=3, timestep_budget=6, sort_window=2, length_grid=1, normalize=False),
    DETERMINISTIC,
], ids=["window", "default", "budget_small_windows", "buckets"])
def test_inference_batches_are_the_make_dataset_batches(tmp_path, cfg):
    # Inference always batches in sorted windows (`buckets` configs too).
    root = write_dataset(tmp_path, num_shards=3, labels=LABELS)
    expected = batches(root, dataclasses.replace(cfg, batching="sorted_window"), with_keys=True)
    got = inference(root, cfg)
    assert len(got) == len(expected) >= 3
    for batch, want in zip(got, expected, strict=True):
        tf.nest.assert_same_structure(batch, want)
        tf.nest.map_structure(np.testing.assert_array_equal, batch, want)


# ---------------------------------------------------------------- in-memory arrays


def arrays(cfg, **kwargs):
    return [tf.nest.map_structure(lambda t: t.numpy(), batch)
            for batch in data.array_batches([SEQS[i] for i in SEQS], list(SEQS), cfg, **kwargs)]


@pytest.mark.parametrize("cfg", [
    WINDOW,
    DataConfig(batch_size=2, normalize=True, reverse_target=True),
    DataConfig(batch_size=4, min_batch_efficiency=0.7, normalize=False),
    DataConfig(batch_size=3, timestep_budget=6, sort_window=2, length_grid=1, normalize=False),
], ids=["window", "default", "floor", "budget_small_windows"])
def test_array_batches_are_the_batches_of_the_same_records_read_from_shards(tmp_path, cfg):
    # One shard: records read in the order the arrays are given.
    root = write_dataset(tmp_path, labels=LABELS)
    expected = batches(root, cfg, with_keys=True)
    got = arrays(cfg, labels=[LABELS[i] for i in SEQS],
                 feature_stats=FeatureStats(mean=tuple(MEAN), std=tuple(STD)))
    assert len(got) == len(expected) >= 2
    for batch, want in zip(got, expected, strict=True):
        tf.nest.map_structure(np.testing.assert_array_equal, batch, want)


def test_array_batches_exact_and_normalized_with_the_pipeline_rule():
    out = arrays(WINDOW)
    assert shapes(out) == [(2, 2), (2, 5), (1, 8)]
    for batch, ids, length in zip(out, [["a", "b"], ["c", "d"], ["e"]], [2, 5, 8], strict=True):
        inputs, targets, weights = batch
        assert inputs["id"].astype(str).tolist() == ids
        assert inputs["label"].tolist() == [b""] * len(ids)
        keyless = ({"x": inputs["x"], "mask": inputs["mask"]}, targets, weights)
        assert_batch(keyless, [SEQS[i] for i in ids], length)
    # std 0 acts as 1: feature 1 is only centred.
    stats = FeatureStats(mean=(1.0, 2.0), std=(2.0, 0.0))
    steps = np.array([[3.0, 5.0], [1.0, 2.0]])
    inputs, _, _ = next(data.array_batches([steps], ["s"], WINDOW, feature_stats=stats))
    np.testing.assert_array_equal(inputs["x"][0], steps)  # normalize off in WINDOW
    assert inputs["x"].dtype == tf.float32
    normalized = dataclasses.replace(WINDOW, normalize=True)
    inputs, _, _ = next(data.array_batches([steps], ["s"], normalized, feature_stats=stats))
    np.testing.assert_array_equal(inputs["x"][0], [[1.0, 3.0], [0.0, 0.0]])
