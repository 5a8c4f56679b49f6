"""The record contract: exact round trips, TF parsing, TFDS decoding, shard names."""


import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from seqpipe.dataset import records


def test_round_trip_is_exact():
    steps = np.array([[1.5, -2.0], [0.0, 0.0], [3.25, 1e-30]], dtype=np.float32)
    parsed = records.decode_sequence(records.encode_sequence("a", steps, "cat"), 2)
    assert parsed["id"] == "a" and parsed["label"] == "cat"
    np.testing.assert_array_equal(parsed["steps"], steps)


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 20), st.integers(1, 6)),
                  elements=st.floats(allow_nan=False, allow_infinity=False, width=32)),
       st.text(min_size=1, max_size=20), st.text(max_size=10))
def test_round_trip_any_valid_sequence(steps, sequence_id, label):
    parsed = records.decode_sequence(records.encode_sequence(sequence_id, steps, label),
                                     steps.shape[1])
    assert (parsed["id"], parsed["label"]) == (sequence_id, label)
    np.testing.assert_array_equal(parsed["steps"], steps)


def test_tf_parsing_gives_length_by_features():
    steps = np.arange(6, dtype=np.float32).reshape(3, 2)
    parsed = tf.io.parse_single_example(records.encode_sequence("x", steps),
                                        records.tf_feature_spec(2))
    np.testing.assert_array_equal(parsed["steps"].numpy(), steps)
    assert int(parsed["length"]) == 3
    assert parsed["label"].numpy() == b""


def test_tfds_features_decode_the_same_bytes():
    steps = np.array([[1.0, 2.0], [0.0, 0.0]], dtype=np.float32)
    features = records.tfds_features(2)
    decoded = features.deserialize_example(records.encode_sequence("q", steps, "k"))
    np.testing.assert_array_equal(decoded["steps"].numpy(), steps)
    assert decoded["id"].numpy() == b"q" and int(decoded["length"]) == 2
    expected = features.serialize_example({"id": "q", "label": "k", "length": 2,
                                           "steps": steps})
    assert tf.train.Example.FromString(expected) == tf.train.Example.FromString(
        records.encode_sequence("q", steps, "k"))


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 300), st.integers(0, 40)),
                  elements=st.floats(width=32)),
       st.text(min_size=1, max_size=200), st.text(max_size=200))
def test_encoding_is_the_deterministic_protobuf_serialization(steps, sequence_id, label):
    example = tf.train.Example(features=tf.train.Features(feature={
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[sequence_id.encode()])),
        "label": tf.train.Feature(bytes_list=tf.train.BytesList(value=[label.encode()])),
        "length": tf.train.Feature(int64_list=tf.train.Int64List(value=[len(steps)])),
        "steps": tf.train.Feature(float_list=tf.train.FloatList(
            value=steps.ravel().tolist()))}))
    assert records.encode_sequence(sequence_id, steps, label) == (
        example.SerializeToString(deterministic=True))


@pytest.mark.parametrize("steps", [np.zeros((0, 2)), np.zeros(3), np.zeros((1, 2, 3))])
def test_encode_rejects_bad_shapes(steps):
    with pytest.raises(ValueError, match="Received: shape="):
        records.encode_sequence("a", steps)


def test_decode_rejects_wrong_feature_count():
    with pytest.raises(ValueError, match="6 values, expected length 3 x 4"):
        records.decode_sequence(records.encode_sequence("a", np.zeros((3, 2))), 4)


def test_shard_names_follow_the_tfds_template():
    assert records.shard_name("train", 3, 16) == "seqpipe-train.tfrecord-00003-of-00016"

