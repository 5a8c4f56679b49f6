"""Records: exact round trips for any valid sequence, and damaged shards name their file.

sequence -> `records.encode_sequence` -> TFRecord shard -> `make_dataset`
-> padded batch must give back the float32 values bit for bit (also -0.0,
subnormals and the float32 extremes), the id, the label and a mask of exactly
1.0 on the real steps. A shard truncated anywhere or with any single bit
flipped must fail with an error naming the shard, through every reader.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_helpers import write_dataset

from seqpipe.config import DataConfig
from seqpipe.dataset import records
from seqpipe.input_pipeline import data

SETTINGS = settings(max_examples=6, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
float32s = st.floats(width=32, allow_nan=False, allow_infinity=False) | st.sampled_from(
    [-0.0, 1.4e-45, -1.4e-45, 1.1754944e-38, 3.4028235e38, -3.4028235e38])
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)


@st.composite
def datasets(draw):
    width = draw(st.integers(1, 4))
    count = draw(st.integers(1, 12))
    ids = draw(st.lists(texts.filter(str.strip), min_size=count, max_size=count,
                        unique=True))
    out = []
    for sid in ids:
        length = draw(st.integers(1, 9))
        steps = draw(st.lists(st.lists(float32s, min_size=width, max_size=width),
                              min_size=length, max_size=length))
        out.append((sid, np.asarray(steps, np.float32), draw(texts)))
    return width, out


def _bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, np.float32).view(np.uint32)


@SETTINGS
@given(datasets(), st.booleans(), st.integers(1, 3))
def test_round_trip_through_make_dataset_is_exact(tmp_path_factory, drawn, reverse, shards):
    width, sequences = drawn
    data_dir = tmp_path_factory.mktemp("rt")
    metadata = write_dataset(data_dir, sequences, width, num_shards=shards)
    for sid, steps, label in sequences:  # the pure contract first
        decoded = records.decode_sequence(records.encode_sequence(sid, steps, label), width)
        assert decoded["id"] == sid and decoded["label"] == label
        assert np.array_equal(_bits(decoded["steps"]), _bits(steps))
    cfg = DataConfig(normalize=False, reverse_target=reverse, deterministic=True,
                     batch_size=4)
    seen = {}
    for training in (False, True):
        for inputs, targets, weights in data.make_dataset(
                data_dir, "train", cfg, training=training, metadata=metadata,
                with_keys=True):
            x, mask = inputs["x"].numpy(), inputs["mask"].numpy()
            assert np.array_equal(weights.numpy(), mask)
            for row, sid in enumerate(inputs["id"].numpy()):
                length = int(inputs["length"][row])
                key = (training, sid.decode())
                assert key not in seen
                seen[key] = (x[row, :length], inputs["label"][row].numpy().decode())
                assert np.all(mask[row, :length] == 1.0) and np.all(mask[row, length:] == 0.0)
                assert np.all(_bits(x[row, length:]) == 0)  # +0.0 padding
                expected_target = x[row, :length][::-1] if reverse else x[row, :length]
                assert np.array_equal(_bits(targets.numpy()[row, :length]),
                                      _bits(expected_target))
    for training in (False, True):
        for sid, steps, label in sequences:
            got, got_label = seen[(training, sid)]
            assert np.array_equal(_bits(got), _bits(steps)), sid
            assert got_label == label
    assert len(seen) == 2 * len(sequences)


# ---------------------------------------------------------------- damaged shards


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    sequences = [(f"s{i}", rng.normal(size=(int(rng.integers(1, 20)), 3)).astype(np.float32),
                  "a") for i in range(40)]
    data_dir = tmp_path_factory.mktemp("clean")
    metadata = write_dataset(data_dir, sequences, 3, num_shards=2)
    return data_dir, metadata


def _damaged_copy(clean: Path, target: Path, mutate) -> Path:
    target.mkdir()
    for path in clean.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    shard = target / records.shard_name("train", 1, 2)
    shard.write_bytes(mutate(shard.read_bytes()))
    return shard


def _read_everything(data_dir: Path, metadata) -> None:
    cfg = DataConfig(normalize=False, deterministic=True, batch_size=8)
    for _ in data.make_dataset(data_dir, "train", cfg, training=False, metadata=metadata):
        pass


def _damages(seed: int, size: int) -> list[tuple[str, object]]:
    rng = random.Random(seed)
    cuts = sorted({1, 8, 12, 15, 16, size - 1, *(rng.randrange(1, size) for _ in range(4))})
    flips = sorted({0, 9, 13, size - 1, *(rng.randrange(size) for _ in range(6))})
    out = [(f"truncated@{c}", lambda d, c=c: d[:c]) for c in cuts]
    bits = [rng.randrange(8) for _ in flips]
    out += [(f"bitflip@{p}.{b}", lambda d, p=p, b=b: (
        d[:p] + bytes([d[p] ^ (1 << b)]) + d[p + 1:])) for p, b in zip(flips, bits, strict=True)]
    out.append(("appended_garbage", lambda d: d + b"\x00garbage"))
    return out


def test_every_damage_through_make_dataset_names_the_shard(clean_dataset, tmp_path):
    clean, metadata = clean_dataset
    size = (clean / records.shard_name("train", 1, 2)).stat().st_size
    failures = []
    for name, mutate in _damages(7, size):
        shard = _damaged_copy(clean, tmp_path / name, mutate)
        try:
            _read_everything(tmp_path / name, metadata)
        except tf.errors.OpError as error:
            if str(shard) not in error.message:
                failures.append((name, error.message[:300]))
        else:
            failures.append((name, "no error"))
    assert not failures, failures


def test_read_split_error_names_the_shard(clean_dataset, tmp_path):
    clean, metadata = clean_dataset
    shard = _damaged_copy(clean, tmp_path / "cut", lambda d: d[: len(d) - 5])
    with pytest.raises(records.DatasetError, match=f"{shard.name}: corrupt or truncated"):
        list(records.read_split(tmp_path / "cut", "train", metadata))


def test_missing_listed_shard_is_a_dataset_error(clean_dataset, tmp_path):
    clean, metadata = clean_dataset
    shard = _damaged_copy(clean, tmp_path / "gone", lambda d: d)
    shard.unlink()
    with pytest.raises(records.DatasetError, match=shard.name):
        _read_everything(tmp_path / "gone", metadata)


def test_record_with_inconsistent_length_names_the_file(tmp_path):
    from tensorflow.core.example import example_pb2

    good = records.encode_sequence("ok", np.ones((2, 3), np.float32))
    example = example_pb2.Example.FromString(
        records.encode_sequence("liar", np.ones((2, 3), np.float32)))
    example.features.feature[records.LENGTH_KEY].int64_list.value[0] = 5
    metadata = write_dataset(tmp_path, [("a", np.ones((2, 3), np.float32), "")], 3, 1)
    shard = tmp_path / metadata.split("train").files[0]
    with tf.io.TFRecordWriter(str(shard)) as writer:
        writer.write(good)
        writer.write(example.SerializeToString())
    with pytest.raises(tf.errors.OpError) as caught:
        _read_everything(tmp_path, metadata)
    assert str(shard) in caught.value.message and "liar" in caught.value.message
