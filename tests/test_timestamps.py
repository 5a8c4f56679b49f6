"""Timestamps (issue 16, item 5) and the history's real-step count, on literal inputs.

The time-delta record field and its encoding, the JSON `t` checks and their
reasons, the train statistics and the normalized feature, the batch
element's `inputs["time_delta"]`, a model that reads it (train step, export,
embedding a raw file), and `valid_timesteps` counted from the step mask.
"""

from __future__ import annotations

import dataclasses
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from beam_helpers import read_rejects
from literal_datasets import (
    DETERMINISTIC,
    SEQS,
    WINDOW,
    batches,
    inference,
    padded,
    small_autoencoder,
    write_dataset,
)

from seqpipe.config import ModelConfig, PreprocessConfig, TrainConfig
from seqpipe.dataset import records, sources, times
from seqpipe.model.autoencoder import (
    build_autoencoder,
    export_encoder,
    export_scorer,
    reconstruction_errors,
    takes_time_delta,
)
from seqpipe.model.objectives import LossTotals, Objective
from seqpipe.training.step import make_eval_step, make_train_step

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
    assert json.loads(sources.to_json_line(sequence, "time")) == {
        "id": "a", "steps": [[1.0], [2.0]], "time": [0.0, 2.5]}


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
    rejects = read_rejects(data_dir)
    mixed = next(r for r in rejects if r["reason"] == "mixed_times")
    assert json.loads(mixed["record"])["id"] == "d"
    written = {r["id"]: r for split in ("train", "test")
               for r in records.read_split(data_dir, split, metadata)}
    assert {k: v["time_delta"].tolist() for k, v in written.items()} == {
        "a": [0.0, 0.5, 2.0], "b": [0.0, 4.0], "c": [0.0]}


def test_records_rejected_after_writing_keep_their_times_under_the_jobs_key(tmp_path):
    """A duplicate id and a record of another width are dropped after the parts are
    written, then re-serialized: under `json_time_key`, so they read back with the
    same config (with times)."""
    from beam_jobs.preprocess import preprocess

    raw = [{"id": "a", "steps": [[1], [2]], "time": [5, 7], "split": "train"},
           {"id": "a", "steps": [[3], [4]], "time": [1, 4], "split": "train"},  # duplicate
           {"id": "b", "steps": [[1], [2]], "time": [0, 1], "split": "train"},
           {"id": "w", "steps": [[1, 2], [3, 4]], "time": [0, 3], "split": "train"}]
    path = tmp_path / "raw.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in raw))
    cfg = PreprocessConfig(json_time_key="time")
    data_dir = tmp_path / "data"
    metadata = preprocess([str(path)], str(data_dir), cfg)
    assert {k: n for k, n in metadata.counts.rejected_by_reason.items() if n} == {
        "duplicate_id": 1, "wrong_feature_count": 1}
    rejected = {r["reason"]: json.loads(r["record"]) for r in read_rejects(data_dir)}
    assert rejected["duplicate_id"] == {"id": "a", "steps": [[3.0], [4.0]],
                                        "split": "train", "time": [0.0, 3.0]}
    assert rejected["wrong_feature_count"]["time"] == [0.0, 3.0]
    for record in rejected.values():
        parsed = sources.validate_json_line(json.dumps(record), time_key="time")
        assert parsed.time_delta.tolist() == [0.0, 3.0]


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


def test_keep_time_column_gives_long_format_records_their_gaps(tmp_path):
    from beam_jobs.preprocess import preprocess

    raw = tmp_path / "rows.csv"
    raw.write_text("id,t,x\n"
                   f"s,{EPOCH + 1.75:.2f},2\ns,{EPOCH:.2f},1\ns,{EPOCH + 9.75:.2f},3\n")
    cfg = PreprocessConfig(keep_time_column=True, train_fraction=1.0, val_fraction=0.0)
    metadata = preprocess([str(raw)], str(tmp_path / "data"), cfg)
    [record] = records.read_split(tmp_path / "data", "train", metadata)
    assert record["time_delta"].tolist() == [0.0, 1.75, 8.0]
    assert record["steps"].ravel().tolist() == [1.0, 2.0, 3.0]
    assert (metadata.time_stats.num_intervals, metadata.time_stats.max) == (2, 8.0)
    plain = preprocess([str(raw)], str(tmp_path / "plain"), dataclasses.replace(
        cfg, keep_time_column=False))
    assert not plain.has_times
    assert next(records.read_split(tmp_path / "plain", "train", plain))["time_delta"] is None


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


# ---------------------------------------------------------------- batches

TIMED = {"b": SEQS["b"], "c": SEQS["c"]}
DELTAS = {"b": np.float32([0, 2]), "c": np.float32([0, 1, 4])}
LOG2 = math.log(2.0)
TIME_STATS = {"num_records": 2, "num_intervals": 3, "log_mean": LOG2, "log_std": 0.5}
# (log(delta) - log 2) / 0.5 after each first step; b then c, padded to T=3.
EXPECTED_TIME_DELTA = np.float32([[0, 0, 0], [0, (0 - LOG2) / 0.5, (math.log(4) - LOG2) / 0.5]])


@pytest.fixture()
def timed_literal(tmp_path):
    return write_dataset(tmp_path / "timed", TIMED, deltas=DELTAS, time_stats=TIME_STATS)


ONE_BUCKET = dataclasses.replace(DETERMINISTIC, bucket_boundaries=(5,),
                                 pad_to_bucket_boundary=False)


@pytest.mark.parametrize("cfg", [WINDOW, ONE_BUCKET], ids=["sorted_window", "buckets"])
def test_the_batch_carries_the_normalized_time_delta_element_by_element(timed_literal, cfg):
    cfg = dataclasses.replace(cfg, time_delta=True, batch_size=2)
    [batch] = batches(timed_literal, cfg)
    inputs, targets, weights = batch
    assert set(inputs) == {"x", "mask", "time_delta"}
    np.testing.assert_allclose(inputs["time_delta"], EXPECTED_TIME_DELTA, rtol=1e-6)
    assert inputs["time_delta"].dtype == np.float32
    x, mask = padded(list(TIMED.values()), 3)
    np.testing.assert_array_equal(inputs["x"], x)
    np.testing.assert_array_equal(targets, x)  # an input only: the target is x
    np.testing.assert_array_equal(weights, mask)
    [inferred] = inference(timed_literal, dataclasses.replace(WINDOW, time_delta=True))
    np.testing.assert_array_equal(inferred[0]["time_delta"], inputs["time_delta"])


def test_without_time_delta_a_timed_dataset_batches_exactly_as_one_without_times(
        tmp_path, timed_literal):
    plain = write_dataset(tmp_path / "plain", TIMED)
    for cfg in (WINDOW, DETERMINISTIC):
        with_times, without = batches(timed_literal, cfg), batches(plain, cfg)
        assert len(with_times) == len(without)
        for a, b in zip(with_times, without, strict=True):
            assert set(a[0]) == {"x", "mask"}
            for got, expected in zip(tf.nest.flatten(a), tf.nest.flatten(b), strict=True):
                np.testing.assert_array_equal(got, expected)


def test_time_delta_on_data_without_times_is_refused_before_training(tmp_path, tiny_config):
    from seqpipe.dataset.records import DatasetError
    from seqpipe.training.trainer import Trainer

    plain = write_dataset(tmp_path / "plain", TIMED)
    cfg = dataclasses.replace(tiny_config, data=dataclasses.replace(tiny_config.data,
                                                                   time_delta=True))
    with pytest.raises(DatasetError, match="data.time_delta needs times, but the dataset has "
                                           "none"):
        Trainer(plain, tmp_path / "model", cfg, verbose=False)
    assert not (tmp_path / "model").exists()


# ---------------------------------------------------------------- the model


def test_the_encoder_reads_the_time_gap_as_one_more_channel():
    autoencoder, encoder = small_autoencoder(time_delta=True)
    assert takes_time_delta(encoder) and takes_time_delta(autoencoder)
    assert set(encoder.input) == {"x", "mask", "time_delta"}
    assert tuple(encoder.get_layer("time_delta_input").output.shape) == (None, None, 3)
    assert autoencoder.output.shape[-1] == 2  # never reconstructed
    x, mask = padded(list(TIMED.values()), 3)
    inputs = {"x": x, "mask": mask, "time_delta": EXPECTED_TIME_DELTA}
    base = encoder(inputs).numpy()
    gap = dict(inputs, time_delta=EXPECTED_TIME_DELTA.copy())
    gap["time_delta"][0, 2] = 7.0  # padding: never seen
    np.testing.assert_array_equal(encoder(gap).numpy(), base)
    gap["time_delta"][1, 2] = 7.0  # a real step's gap is an input
    assert not np.array_equal(encoder(gap).numpy()[1], base[1])
    np.testing.assert_array_equal(encoder(gap).numpy()[0], base[0])


def test_a_train_step_with_time_delta_has_the_loss_of_x_only(timed_literal):
    autoencoder, encoder = small_autoencoder(time_delta=True)
    objective = Objective(TrainConfig(), autoencoder, encoder)
    cfg = dataclasses.replace(WINDOW, time_delta=True, batch_size=2)
    [(inputs, targets, weights)] = batches(timed_literal, cfg)
    optimizer = keras.optimizers.Adam(0.01)
    optimizer.build(autoencoder.trainable_variables)
    before = autoencoder(inputs).numpy()
    step = make_train_step(tf.distribute.get_strategy(), objective, optimizer, clipnorm=1.0)
    totals = step((inputs, targets, weights))
    expected = float(np.sum(((before - targets) ** 2)[weights > 0.5]))
    assert float(totals.squared_error) == pytest.approx(expected, rel=1e-5)
    assert (float(totals.num_values), float(totals.num_steps)) == (10.0, 5.0)
    assert not np.array_equal(autoencoder(inputs).numpy(), before)  # it stepped


def test_the_exported_models_take_time_delta_by_name(tmp_path):
    autoencoder, encoder = small_autoencoder(time_delta=True)
    x, mask = padded(list(TIMED.values()), 3)
    inputs = {"x": x, "mask": mask, "time_delta": EXPECTED_TIME_DELTA}
    served = tf.saved_model.load(str(export_encoder(encoder, tmp_path / "encoder")))
    out = served.signatures["serving_default"](**{k: tf.constant(v) for k, v in inputs.items()})
    np.testing.assert_allclose(out["embedding"], encoder(inputs), rtol=1e-6)
    scorer = tf.saved_model.load(str(export_scorer(autoencoder, tmp_path / "scorer",
                                                   reverse_target=False)))
    errors = scorer.signatures["serving_default"](**{k: tf.constant(v)
                                                     for k, v in inputs.items()})
    expected = reconstruction_errors(autoencoder, x, mask, reverse_target=False,
                                     time_delta=EXPECTED_TIME_DELTA)
    np.testing.assert_allclose(errors["score"], expected["score"], rtol=1e-6)


# ---------------------------------------------------------------- synthetic times, the chain


def test_synth_time_jitter_writes_increasing_times_and_changes_nothing_else(tiny_config):
    from seqpipe import synthetic

    cfg = dataclasses.replace(tiny_config.synth, num_sequences=20)
    plain = list(synthetic.generate(cfg))
    jittered = list(synthetic.generate(dataclasses.replace(cfg, time_jitter=0.5)))
    assert all("t" not in record for record in plain)
    for before, after in zip(plain, jittered, strict=True):
        t = np.array(after.pop("t"))
        assert after == before and len(t) == len(before["steps"])
        gaps = np.diff(t)
        assert gaps.min() > 0.5 and gaps.max() < 1.5
        assert np.abs(t - np.arange(len(t))).max() <= 0.25


@pytest.fixture(scope="module")
def jittered(tmp_path_factory, tiny_config):
    """Synthetic data with jittered times, preprocessed, and a model trained with
    `data.time_delta` on it: (raw file, data dir, model dir)."""
    from beam_jobs.preprocess import preprocess
    from seqpipe import synthetic
    from seqpipe.training.trainer import train

    root = tmp_path_factory.mktemp("jittered")
    raw = root / "raw.jsonl"
    synthetic.write_jsonl(dataclasses.replace(tiny_config.synth, num_sequences=48,
                                              max_length=24, time_jitter=0.6), raw)
    preprocess([str(raw)], str(root / "data"), tiny_config.preprocess)
    cfg = dataclasses.replace(
        tiny_config, data=dataclasses.replace(tiny_config.data, time_delta=True),
        train=dataclasses.replace(tiny_config.train, epochs=1))
    train(root / "data", root / "model", cfg, verbose=False)
    return raw, root / "data", root / "model"


@pytest.mark.slow
def test_a_time_delta_model_trains_and_embeds_raw_lines_with_times(jittered, tmp_path):
    from seqpipe.commands import embed, score
    from seqpipe.dataset import metadata as metadata_lib

    raw, data_dir, model_dir = jittered
    metadata = metadata_lib.read(data_dir)
    assert metadata.has_times and metadata.time_stats.num_records == 48
    [record] = json.loads((model_dir / "history.json").read_text())
    assert math.isfinite(record["loss"]) and record["valid_timesteps"] == (
        metadata.split("train").num_timesteps)
    lines = raw.read_text().splitlines()
    untimed = json.loads(lines[0])
    del untimed["t"]
    untimed["id"] = "no-times"
    (tmp_path / "new.jsonl").write_text("\n".join([*lines[:5], json.dumps(untimed)]) + "\n")
    embeddings, rejections = embed.embed_raw(str(tmp_path / "new.jsonl"), model_dir)
    assert [(r.reason, r.line) for r in rejections] == [("mixed_times", 6)]
    assert len(embeddings.ids) == 5 and np.isfinite(embeddings.vectors).all()
    split = embed.compute_embeddings(data_dir, model_dir, "train")
    by_id = dict(zip(split.ids, split.vectors, strict=True))
    for sequence_id, vector in zip(embeddings.ids, embeddings.vectors, strict=True):
        if sequence_id in by_id:  # the same record embeds the same from the raw line
            np.testing.assert_allclose(vector, by_id[sequence_id], rtol=1e-4, atol=1e-5)
    scores = score.score_split(data_dir, model_dir, "train")
    assert np.isfinite(scores.scores).all()
    from seqpipe.commands import report

    assert "reconstructions" in report.make_report(data_dir, model_dir, tmp_path / "report")


@pytest.mark.slow
def test_embedding_data_without_times_is_refused_for_a_time_delta_model(jittered,
                                                                        tiny_dataset):
    from seqpipe.commands import embed
    from seqpipe.dataset.records import DatasetError

    with pytest.raises(DatasetError, match="data.time_delta needs times"):
        embed.compute_embeddings(tiny_dataset, jittered[2], "train")
