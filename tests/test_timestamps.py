"""Timestamps (issue 16, item 5) and the history's real-step count, on literal inputs.

The time-delta record field and its encoding, the JSON `t` checks and their
reasons, the train statistics and the normalized feature, the batch
element's `inputs["time_delta"]`, a model that reads it (train step, export,
embedding a raw file), and `valid_timesteps` counted from the step mask.
"""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from seqpipe.config import ModelConfig, PreprocessConfig, TrainConfig
from seqpipe.dataset import records, sources, times
from seqpipe.model.autoencoder import build_autoencoder
from seqpipe.model.objectives import LossTotals, Objective
from seqpipe.training.step import make_eval_step

NAN = np.nan
EPOCH = 1_700_000_000.0  # float32 spacing here is 128 s: only deltas survive float32

# ---------------------------------------------------------------- the record


def test_deltas_of_epoch_times_are_exact_and_round_trip_through_the_record():
    steps = np.array([[1.0], [2.0], [3.0]], np.float32)
    deltas = times.time_deltas(np.array([EPOCH + 0.125, EPOCH + 0.625, EPOCH + 60.125]))
    assert deltas.dtype == np.float32 and deltas.tolist() == [0.0, 0.5, 59.5]
    assert np.diff(np.float32([EPOCH + 0.125, EPOCH + 0.625])).tolist() == [0.0]  # why
    decoded = records.decode_sequence(records.encode_sequence("a", steps, "x", deltas), 1)
    assert decoded["time_delta"].tolist() == [0.0, 0.5, 59.5]
    np.testing.assert_array_equal(decoded["steps"], steps)
    assert records.decode_sequence(records.encode_sequence("a", steps), 1)["time_delta"] is None


def test_a_record_with_times_is_the_deterministic_protobuf_serialization():
    steps = np.array([[1.5, -2.0], [0.0, 3.0]], np.float32)
    deltas = np.float32([0.0, 0.25])
    feature = {
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"q"])),
        "label": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"k"])),
        "length": tf.train.Feature(int64_list=tf.train.Int64List(value=[2])),
        "steps": tf.train.Feature(float_list=tf.train.FloatList(value=steps.ravel())),
        "time_delta": tf.train.Feature(float_list=tf.train.FloatList(value=deltas))}
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    serialized = records.encode_sequence("q", steps, "k", deltas)
    assert serialized == example.SerializeToString(deterministic=True)
    parsed = tf.io.parse_single_example(serialized, records.tf_feature_spec(2, has_times=True))
    assert parsed["time_delta"].numpy().tolist() == [0.0, 0.25]
    features = records.tfds_features(2, has_times=True)
    decoded = features.deserialize_example(serialized)
    assert decoded["time_delta"].numpy().tolist() == [0.0, 0.25]
    with pytest.raises(ValueError, match="time_delta must have shape"):
        records.encode_sequence("q", steps, "k", np.float32([0.0]))


# ---------------------------------------------------------------- parsing and rejects


def _line(t, steps=((1.0,), (2.0,), (3.0,)), **extra) -> str:
    return json.dumps({"id": "a", "steps": [list(s) for s in steps], "t": t, **extra})


@pytest.mark.parametrize("t, message", [
    ("0,1,2", "must be a list of numbers; got str"),
    ([0, 1], "2 times for 3 steps"),
    ([0, True, 2], "times[1] is not a number: True"),
    ([0, "1", 2], "times[1] is not a number: '1'"),
    ([0, 1, math.inf], "times[2] = inf is not finite"),
    ([0, 1, 1], "strictly increasing; times[2] = 1 <= times[1] = 1"),
    ([5, 4, 6], "strictly increasing; times[1] = 4 <= times[0] = 5"),
    ([0, 1, 10**400], "not a finite float64"),
])
def test_bad_times_are_rejected_with_their_reason(t, message):
    result = sources.validate_json_line(_line(t), "in.jsonl", 7)
    assert (result.reason, result.line) == ("bad_times", 7)
    assert message in result.message and result.message.startswith("'t': ")


def test_json_times_give_deltas_under_the_configured_key_and_null_is_no_times():
    result = sources.validate_json_line(_line([EPOCH, EPOCH + 1.5, EPOCH + 4]))
    assert result.time_delta.tolist() == [0.0, 1.5, 2.5]
    other_key = json.dumps({"id": "a", "steps": [[1], [2]], "time": [3, 4]})
    assert sources.validate_json_line(other_key, time_key="time").time_delta.tolist() == [0, 1]
    assert sources.validate_json_line(other_key).time_delta is None  # "t" absent
    assert sources.validate_json_line(_line(None)).time_delta is None
    cut = sources.validate_json_line(_line([0, 1, 3]), max_length=2, too_long="truncate")
    assert cut.time_delta.tolist() == [0.0, 1.0]


def test_long_format_keeps_the_time_columns_gaps_only_when_asked():
    rows = [sources.Row("s", EPOCH + t, (float(t),), line=t) for t in (3, 0, 1)]
    assert sources.assemble_rows(rows).time_delta is None
    kept = sources.assemble_rows(rows, keep_times=True)
    assert kept.time_delta.tolist() == [0.0, 1.0, 2.0]
    assert kept.steps[:, 0].tolist() == [0.0, 1.0, 3.0]  # sorted by time


def test_layout_the_dataset_agrees_on_and_each_verdict():
    assert sources.dataset_layout({(1, True): 3, (1, False): 1, (2, True): 1}) == (1, True)
    assert sources.dataset_layout({(1, True): 2, (1, False): 2}) == (1, False)  # tie
    assert sources.dataset_layout({(2, True): 3, (1, False): 2, (1, True): 2}) == (1, False)
    assert sources.layout_verdict((1, False), (1, True)) == (
        "mixed_times", "the record has no times, the dataset's records have them")
    assert sources.layout_verdict((2, True), (1, True))[0] == "wrong_feature_count"
    origin = ("a.jsonl", 1, -1, "")
    assert sources.dataset_verdicts("d", [(origin, (1, True)), (origin[:1] + (2, -1, ""),
                                                                (1, False))], (1, True)) == [
        None, ("mixed_times", "the record has no times, the dataset's records have them")]


def test_a_rejected_records_times_are_written_relative():
    sequence = sources.Sequence("a", np.float32([[1], [2]]), time_delta=np.float32([0, 2.5]))
    assert json.loads(sources.to_json_line(sequence))["t"] == [0.0, 2.5]


# ---------------------------------------------------------------- the job

RAW = [
    {"id": "a", "steps": [[1], [2], [3]], "t": [EPOCH, EPOCH + 0.5, EPOCH + 2.5],
     "split": "train"},
    {"id": "b", "steps": [[4], [5]], "t": [10, 14], "split": "train"},
    {"id": "c", "steps": [[6]], "t": [3], "split": "test"},
    {"id": "d", "steps": [[7], [8]], "split": "train"},          # mixed_times
    {"id": "e", "steps": [[1], [2]], "t": [2, 1]},                 # bad_times
    {"id": "f", "steps": [[1, 2]], "t": [0], "split": "train"},  # wrong_feature_count
]
INTERVALS = np.array([0.5, 2.0, 4.0])  # the train split's real intervals (a, b)


@pytest.fixture(scope="module")
def timed(tmp_path_factory):
    """RAW preprocessed by the real job: (dataset dir, metadata)."""
    from beam_jobs.preprocess import preprocess

    root = tmp_path_factory.mktemp("timed")
    raw = root / "raw.jsonl"
    raw.write_text("".join(json.dumps(record) + "\n" for record in RAW))
    return root / "data", preprocess([str(raw)], str(root / "data"), PreprocessConfig())


def test_the_job_keeps_times_and_rejects_each_reason(timed):
    data_dir, metadata = timed
    counts = metadata.counts
    assert (counts.read, counts.written, counts.rejected) == (6, 3, 3)
    assert {reason: n for reason, n in counts.rejected_by_reason.items() if n} == {
        "mixed_times": 1, "bad_times": 1, "wrong_feature_count": 1}
    rejects = [json.loads(line) for path in sorted((data_dir / "rejects").glob("*.jsonl"))
               for line in path.read_text().splitlines()]
    mixed = next(r for r in rejects if r["reason"] == "mixed_times")
    assert json.loads(mixed["record"])["id"] == "d"
    written = {r["id"]: r for split in ("train", "test")
               for r in records.read_split(data_dir, split, metadata)}
    assert {k: v["time_delta"].tolist() for k, v in written.items()} == {
        "a": [0.0, 0.5, 2.0], "b": [0.0, 4.0], "c": [0.0]}


def test_metadata_has_the_train_intervals_statistics(timed):
    _, metadata = timed
    stats = metadata.time_stats
    assert metadata.has_times and (stats.num_records, stats.num_intervals) == (3, 3)
    logs = np.log(INTERVALS)
    assert stats.mean == pytest.approx(INTERVALS.mean(), rel=1e-12)
    assert stats.std == pytest.approx(INTERVALS.std(), rel=1e-12)
    assert (stats.min, stats.max) == (0.5, 4.0)
    assert stats.log_mean == pytest.approx(logs.mean(), rel=1e-12)
    assert stats.log_std == pytest.approx(logs.std(), rel=1e-12)


def test_tfds_reads_a_dataset_with_times(timed):
    import tensorflow_datasets as tfds

    data_dir, metadata = timed
    assert metadata.tfds_readable
    builder = tfds.builder_from_directory(str(data_dir))
    examples = {e["id"].decode(): e for e in tfds.as_numpy(builder.as_dataset(split="train"))}
    assert examples["a"]["time_delta"].tolist() == [0.0, 0.5, 2.0]
    assert examples["b"]["steps"].tolist() == [[4.0], [5.0]]


def test_old_metadata_without_time_fields_loads_without_times(timed):
    from seqpipe.dataset.metadata import DatasetMetadata

    tree = timed[1].to_json()
    assert "time_stats" in tree
    del tree["time_stats"]
    old = DatasetMetadata.from_json(tree)
    assert not old.has_times and old.to_json() == tree

# ---------------------------------------------------------------- real steps, not values / F

# One sequence of 3 real steps and 1 padded one, F=2, 2 entries missing: 4 observed
# values, so `num_values // F` would say 2 steps.
GAPPY_X = np.array([[[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [0.0, 0.0]]], np.float32)
GAPPY_MASK = np.array([[1, 1, 1, 0]], np.float32)
GAPPY_OBSERVED = np.array([[[1, 0], [0, 1], [1, 1], [0, 0]]], np.float32)


def test_a_step_counts_real_timesteps_from_the_mask_on_data_with_gaps():
    keras.utils.set_random_seed(0)
    autoencoder, encoder = build_autoencoder(ModelConfig(units=4, bidirectional=False), 2,
                                             observed=True)
    objective = Objective(TrainConfig(), autoencoder, encoder)
    inputs = {"x": GAPPY_X, "mask": GAPPY_MASK, "observed": GAPPY_OBSERVED}
    totals = make_eval_step(tf.distribute.get_strategy(), objective)(
        (inputs, GAPPY_X, GAPPY_OBSERVED))
    assert (float(totals.num_values), float(totals.num_steps)) == (4.0, 3.0)


def test_the_epochs_step_count_is_checkpointed_and_resumed(tmp_path):
    from seqpipe.training.resume import RunState

    def state():
        model, _ = build_autoencoder(ModelConfig(units=2, bidirectional=False), 2)
        optimizer = keras.optimizers.Adam()
        optimizer.build(model.trainable_variables)
        return RunState(model, optimizer, str(tmp_path / "backup"), str(tmp_path / "best"),
                        checkpoint_every_steps=2)

    first = state()
    first.count_step(LossTotals(1.0, 4.0, 0.0, 1.0, 3.0))
    first.count_step(LossTotals(2.0, 5.0, 0.0, 2.0, 4.0))  # the backup after step 2
    resumed = state()
    assert resumed.restore()
    assert resumed.epoch_totals() == LossTotals(3.0, 9.0, 0.0, 3.0, 7.0)
