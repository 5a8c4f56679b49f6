"""Tests of seqpipe score: exact per-step errors, padding-free scores, Parquet, thresholds, AUCs."""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest
from literal_datasets import SEQS, write_dataset
from sklearn.metrics import average_precision_score, roc_auc_score

from seqpipe.commands import cli, embed, report, score, score_evaluation
from seqpipe.config import ModelConfig, ScoreConfig, dump_config, load_config
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset import records, sources
from seqpipe.input_pipeline import reading
from seqpipe.model.autoencoder import build_autoencoder, export_scorer, scorer_module
from seqpipe.model.losses import masked_step_errors
from seqpipe.training.model_dir import (
    AUTOENCODER_FILE,
    CONFIG_FILE,
    METADATA_COPY,
    SCORE_EVALUATION_FILE,
    SCORER_DIR,
    SUMMARY_FILE,
    THRESHOLD_FILE,
    training_metadata,
)

# A small model on the literal sequences' F=2, without the default pooling cost.
TINY = ModelConfig(units=6, embedding_dim=3, bidirectional=False, pooling=())
ORDER = ("a", "b", "c", "d", "e")  # lengths 1, 2, 3, 5, 8


def _built(reverse_target=True, seed=0):
    keras.utils.set_random_seed(seed)
    autoencoder, _ = build_autoencoder(TINY, 2)
    return autoencoder, scorer_module(autoencoder, reverse_target=reverse_target).serve


def _padded(sequences, length, padding_value=0.0):
    x = np.full((len(sequences), length, 2), padding_value, np.float32)
    mask = np.zeros((len(sequences), length), np.float32)
    for row, steps in enumerate(sequences):
        x[row, :len(steps)] = steps
        mask[row, :len(steps)] = 1.0
    return x, mask


def _numpy_step_errors(autoencoder, steps, reverse_target):
    """The step errors of one sequence, from the autoencoder's output on it alone (no padding)."""
    x = np.asarray(steps, np.float32)[None]
    output = np.asarray(autoencoder({"x": x, "mask": np.ones(x.shape[:2], np.float32)},
                                    training=False))[0].astype(np.float64)
    reconstruction = output[::-1] if reverse_target else output  # back to input order
    return np.mean((np.asarray(steps, np.float64) - reconstruction) ** 2, axis=-1)


# --- the definition: per-step errors and scores, exactly ---------------------------------

def test_step_errors_of_the_loss_worked_example():
    targets = np.array([[[1, 2], [1, 2], [1, 1]]], np.float32)
    predictions = np.array([[[0, 0], [0, 1], [5, 5]]], np.float32)
    step_errors, scores = masked_step_errors(targets, predictions, np.array([[1, 1, 0]], "f"))
    np.testing.assert_array_equal(np.asarray(step_errors), [[2.5, 1.0, 0.0]])
    np.testing.assert_array_equal(np.asarray(scores), [1.75])  # the batch loss 7 / 4


@pytest.mark.parametrize("reverse_target", [True, False])
def test_step_errors_equal_numpy_on_the_autoencoder_output(reverse_target):
    autoencoder, scorer = _built(reverse_target)
    x, mask = _padded([SEQS[k] for k in ORDER], 8)
    served = scorer(x=x, mask=mask)
    step_errors, scores = served["step_error"].numpy(), served["score"].numpy()
    assert step_errors.dtype == scores.dtype == np.float32
    for row, key in enumerate(ORDER):
        length = len(SEQS[key])
        expected = _numpy_step_errors(autoencoder, SEQS[key], reverse_target)
        np.testing.assert_allclose(step_errors[row, :length], expected, rtol=1e-5, atol=1e-6,
                                   err_msg=key)
        assert np.all(step_errors[row, length:] == 0.0), key  # exactly 0 on padding
        np.testing.assert_allclose(scores[row], expected.mean(), rtol=1e-5, err_msg=key)
    # Not trivially small: the errors are real numbers that differ by step.
    assert np.ptp(step_errors[ORDER.index("e"), :8]) > 1e-3


def test_a_score_does_not_see_padding_nor_its_neighbours():
    _, scorer = _built()
    c = SEQS["c"]
    alone = scorer(x=np.asarray(c, np.float32)[None], mask=np.ones((1, 3), np.float32))
    # padded to 10x its length with garbage in the padding
    x, mask = _padded([c], 30, padding_value=1e3)
    padded = scorer(x=x, mask=mask)
    np.testing.assert_allclose(padded["score"].numpy(), alone["score"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(padded["step_error"].numpy()[0, :3],
                               alone["step_error"].numpy()[0], rtol=1e-6, atol=1e-7)
    assert np.all(padded["step_error"].numpy()[0, 3:] == 0.0)
    # beside short and long neighbours
    long_neighbour = np.tile(SEQS["e"], (4, 1))  # length 32
    for neighbours, length in (([SEQS["a"]], 3), ([SEQS["e"]], 8), ([long_neighbour], 32)):
        x, mask = _padded([*neighbours, c], length)
        in_batch = scorer(x=x, mask=mask)["score"].numpy()[-1]
        np.testing.assert_allclose(in_batch, alone["score"].numpy()[0], rtol=1e-6)


def test_exported_and_rebuilt_scorers_equal_the_in_process_one(tmp_path):
    autoencoder, scorer = _built()
    x, mask = _padded([SEQS[k] for k in ORDER], 8)
    expected = scorer(x=x, mask=mask)["step_error"].numpy()
    # the export, loaded with TensorFlow alone
    export_scorer(autoencoder, tmp_path / SCORER_DIR, reverse_target=True)
    exported = score.load_scorer(tmp_path)
    np.testing.assert_allclose(exported(x=x, mask=mask)["step_error"].numpy(), expected,
                               rtol=1e-6, atol=1e-7)
    # a model dir without scorer/: rebuilt from autoencoder.keras and the config
    old = tmp_path / "old"
    old.mkdir()
    autoencoder.save(old / AUTOENCODER_FILE)
    dump_config(load_config("tiny", ["data.reverse_target=true"]), old / CONFIG_FILE)
    rebuilt = score.load_scorer(old)
    np.testing.assert_allclose(rebuilt(x=x, mask=mask)["step_error"].numpy(), expected,
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(records.DatasetError, match="no exported scorer"):
        score.load_scorer(tmp_path / "nothing")


# --- a trained model: splits, raw input, Parquet -----------------------------------------

@pytest.fixture()
def raw_file(tiny_dataset) -> Path:
    """The raw JSON lines of the tiny dataset (conftest)."""
    return tiny_dataset.parent / "raw" / "synthetic.jsonl"


@pytest.fixture()
def own_model(tmp_path, tiny_model) -> Path:
    """A copy of the trained model dir that a test may write thresholds into."""
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


def _split_ids(data_dir, split):
    return [r["id"] for r in records.read_split(data_dir, split, metadata_lib.read(data_dir))]


def _check_parquet(path, profile=None):
    """The column contract on a written file (scores calibrated by `profile`, if
    given); returns its rows."""
    table = pq.read_table(path)
    assert [(f.name, str(f.type)) for f in table.schema][:9] == [
        ("id", "string"), ("label", "string"), ("split", "string"), ("length", "int32"),
        ("error", "float"), ("score", "float"), ("step_error", "list<element: float>"),
        ("worst_step", "int32"), ("rank", "int32")]
    rows = table.to_pylist()
    assert len({row["id"] for row in rows}) == len(rows)
    for row in rows:
        errors = np.asarray(row["step_error"], np.float32)
        assert len(errors) == row["length"] and np.all(errors >= 0)
        assert row["worst_step"] == int(np.argmax(errors))
        np.testing.assert_allclose(row["error"], errors.mean(dtype=np.float64), rtol=1e-5)
        typical = 1.0 if profile is None else profile.expected([row["length"]])[0]
        np.testing.assert_allclose(row["score"], row["error"] / typical, rtol=1e-5)
    by_rank = sorted(rows, key=lambda row: row["rank"])
    assert [row["rank"] for row in by_rank] == list(range(1, len(rows) + 1))
    assert by_rank == sorted(rows, key=lambda row: (-row["score"], row["id"]))
    return rows


def test_a_split_is_scored_once_per_record_whatever_the_batching(tmp_path, tiny_dataset,
                                                                   tiny_model):
    scores = score.score_split(tiny_dataset, tiny_model, "test")
    assert sorted(scores.ids.tolist()) == sorted(_split_ids(tiny_dataset, "test"))
    one_by_one = score.score_split(tiny_dataset, tiny_model, "test", batch_size=1)
    rows = embed.rows_for(one_by_one.ids, scores.ids.tolist())
    np.testing.assert_allclose(one_by_one.scores[rows], scores.scores, rtol=1e-5)
    for a, b in zip(one_by_one.step_errors[rows], scores.step_errors, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    rows = _check_parquet(score.write_parquet(scores, tmp_path / "test.parquet"))
    assert {row["split"] for row in rows} == {"test"}
    assert "is_anomaly" not in pq.read_schema(tmp_path / "test.parquet").names
    assert not list(tmp_path.glob(".*.tmp"))


def test_raw_input_every_record_once_rejects_beside_the_output(tmp_path, tiny_dataset,
                                                              tiny_model, raw_file):
    good = raw_file.read_text().splitlines()[:5]
    first = json.loads(good[0])
    bad = ["{not json", json.dumps({"id": "narrow", "steps": [[1.0, 2.0]]}),
           json.dumps({"id": "nan", "steps": [[float("nan")] * 8]}),
           json.dumps({**first, "label": "copy"})]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("\n".join([good[0], *bad]) + "\n")
    with gzip.open(tmp_path / "in" / "b.jsonl.gz", "wt") as handle:
        handle.write("\n".join(good[1:]) + "\n")
    output = tmp_path / "out" / "new.parquet"
    result = score.run(score.Request(model_dir=tiny_model, inputs=(str(tmp_path / "in/*"),),
                                     output=output), ScoreConfig(), echo=lambda line: None)
    rows = _check_parquet(output)
    assert [row["id"] for row in rows] == [json.loads(line)["id"] for line in good]
    assert {row["split"] for row in rows} == {score.RAW_SPLIT}
    assert result["rejected"] == {sources.UNPARSEABLE: 1, sources.WRONG_FEATURE_COUNT: 1,
                                  sources.NON_FINITE: 1, sources.DUPLICATE_ID: 1}
    rejects = score.rejects_path(output).read_text().splitlines()
    assert sorted(json.loads(line)["line"] for line in rejects) == [2, 3, 4, 5]
    # the same scores as the preprocessed splits hold for these records
    by_id = {row["id"]: row["score"] for row in rows}
    for split in ("train", "val", "test"):
        scores = score.score_split(tiny_dataset, tiny_model, split)
        for record_id, value in zip(scores.ids.tolist(), scores.scores, strict=True):
            if record_id in by_id:
                np.testing.assert_allclose(by_id.pop(record_id), value, rtol=1e-5)
    assert by_id == {}


def test_threshold_round_trip_and_is_anomaly(tmp_path, tiny_dataset, own_model, raw_file):
    quiet = dict(echo=lambda line: None)
    result = score.run(score.Request(model_dir=own_model, data_dir=tiny_dataset,
                                     threshold_from="val"), ScoreConfig(quantile=0.8), **quiet)
    val = score.score_split(tiny_dataset, own_model, "val")
    train = score.score_split(tiny_dataset, own_model, "train")
    stored = score.read_threshold(own_model)
    assert stored == score.Threshold(**json.loads((own_model / THRESHOLD_FILE).read_text()))
    assert result["threshold"] == dataclasses.asdict(stored)
    # the profile is the train and val splits' (too few val records for the val split
    # alone); the quantile is of val's calibrated scores
    assert score.profile_splits(tiny_dataset, ScoreConfig()) == ("train", "val")
    profile = score.LengthProfile.fit(np.concatenate([train.lengths, val.lengths]),
                                      np.concatenate([train.errors, val.errors]),
                                      ScoreConfig().records_per_knot)
    np.testing.assert_allclose(stored.profile.lengths, profile.lengths, rtol=1e-12)
    np.testing.assert_allclose(stored.profile.errors, profile.errors, rtol=1e-6)
    val_scores = val.errors.astype(float) / profile.expected(val.lengths)
    assert stored.threshold == pytest.approx(float(np.quantile(val_scores, 0.8)), rel=1e-5)
    assert (stored.method, stored.quantile, stored.split, stored.num_records) == (
        "quantile", 0.8, "val", len(val))
    assert stored.weights_sha256 == json.loads((own_model / SUMMARY_FILE).read_text())[
        "weights_sha256"]
    # a later run on raw input flags with it
    output = tmp_path / "flagged.parquet"
    score.run(score.Request(model_dir=own_model, inputs=(str(raw_file),), output=output),
              ScoreConfig(), **quiet)
    rows = _check_parquet(output, stored.profile)
    assert [row["is_anomaly"] for row in rows] == [row["score"] > stored.threshold
                                                   for row in rows]
    assert 0 < sum(row["is_anomaly"] for row in rows) < len(rows)
    # a fixed threshold overrides the quantile
    score.run(score.Request(model_dir=own_model, data_dir=tiny_dataset, threshold_from="train"),
              ScoreConfig(threshold=0.25), **quiet)
    fixed = score.read_threshold(own_model)
    assert (fixed.threshold, fixed.method, fixed.quantile, fixed.split) == (
        0.25, "fixed", None, "train")
    # other weights: refused
    summary = json.loads((own_model / SUMMARY_FILE).read_text())
    (own_model / SUMMARY_FILE).write_text(json.dumps({**summary, "weights_sha256": "0" * 64}))
    with pytest.raises(score.ScoreError, match="calibrated on other weights"):
        score.read_threshold(own_model)


def test_a_schema_mismatch_is_refused_before_any_work(tmp_path, own_model, capsys):
    # Without a scorer or an autoencoder, any attempt to score would fail differently.
    shutil.rmtree(own_model / SCORER_DIR)
    (own_model / AUTOENCODER_FILE).unlink()
    (tmp_path / "two.jsonl").write_text(
        "\n".join(json.dumps({"id": key, "steps": SEQS[key].tolist()}) for key in ORDER) + "\n")
    with pytest.raises(records.DatasetError, match="num_features=2 but the model in .* "
                                                   "num_features=8"):
        score.score_raw(str(tmp_path / "two.jsonl"), own_model)
    two_features = write_dataset(tmp_path / "data")
    with pytest.raises(records.DatasetError, match="num_features=2 but the model"):
        score.score_split(two_features, own_model, "train")
    output = tmp_path / "out.parquet"
    for source in (["--input", str(tmp_path / "two.jsonl")], ["--data", str(two_features)]):
        assert cli.main(["score", "--model-dir", str(own_model), *source,
                         "--output", str(output)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "num_features=2" in err, err
    assert not output.exists()


# --- evaluation with labels ---------------------------------------------------------------

def _scores(labels, values, lengths, split="test"):
    n = len(labels)
    return score.Scores(ids=np.asarray([f"r{i:02d}" for i in range(n)]),
                        labels=np.asarray(labels), lengths=np.asarray(lengths, np.int32),
                        split=split, errors=np.asarray(values, np.float32),
                        scores=np.asarray(values, np.float32), step_errors=np.empty(n, object))


def test_aucs_are_sklearn_on_the_same_arrays():
    labels = ["ok_a", "ok_b", "bad", "ok_a", "weird", "bad", "ok_b", "ok_a"]
    values = [0.1, 0.4, 0.35, 0.2, 0.9, 0.3, 0.05, 0.5]
    lengths = [10, 20, 30, 40, 50, 60, 70, 80]
    baseline = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])  # grows with length
    result = score_evaluation.evaluate_scores(_scores(labels, values, lengths), ["ok_*"],
                                              {"isolation_forest": baseline,
                                               "knn_embedding": "skipped: no reference"})
    truth = np.array([0, 0, 1, 0, 1, 1, 0, 0])
    reconstruction = result["methods"]["reconstruction"]
    assert reconstruction["roc_auc"] == pytest.approx(roc_auc_score(truth, values))
    assert reconstruction["pr_auc"] == pytest.approx(average_precision_score(truth, values))
    assert result["methods"]["isolation_forest"]["roc_auc"] == pytest.approx(
        roc_auc_score(truth, baseline))
    assert result["methods"]["isolation_forest"]["length_spearman"] == pytest.approx(1.0)
    assert result["methods"]["knn_embedding"] == {"skipped": "skipped: no reference"}
    assert (result["num_anomalous"], result["prevalence"]) == (3, 3 / 8)
    assert result["anomalous_labels"] == ["bad", "weird"]
    text = score_evaluation.format_evaluation(result)
    assert "note: skipped: no reference" in text and "roc_auc" in text


def test_a_perfect_score_has_auc_one_and_patterns_are_globs():
    labels = ["n1", "n2", "x", "n1", "y"]
    result = score_evaluation.evaluate_scores(
        _scores(labels, [0.1, 0.2, 0.8, 0.3, 0.9], [5, 4, 3, 2, 1]), ["n1", "n[2]"], {})
    assert result["methods"]["reconstruction"]["roc_auc"] == 1.0
    assert result["methods"]["reconstruction"]["pr_auc"] == 1.0
    assert result["methods"]["reconstruction"]["length_spearman"] == pytest.approx(-0.9)


@pytest.mark.parametrize("labels, patterns, message", [
    (["a", "b"], ["c*"], "no label matches"),
    (["a", "b"], ["*"], "every label matches"),
    (["a", ""], ["a"], "1 of 2 scored records are unlabeled"),
])
def test_labels_that_tell_nothing_apart_are_refused(labels, patterns, message):
    with pytest.raises(score.ScoreError, match=message):
        score_evaluation.anomalous(labels, patterns)


def test_the_baselines_on_literal_values():
    train = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    query = np.array([[0.0, 0.0], [3.0, 4.0]])
    # k=2: distances [0, 1, 2] and [5, sqrt(20), sqrt(13)]
    expected = [(0.0 + 1.0) / 2, (np.sqrt(13) + np.sqrt(20)) / 2]
    np.testing.assert_allclose(score_evaluation.knn_distances(train, query, 2), expected)
    # the train rows themselves, not counting themselves: nearest other rows
    np.testing.assert_allclose(
        score_evaluation.knn_distances(train, train, 1, exclude_self=True),
        [1.0, 1.0, 2.0])
    sequences = [SEQS[k] for k in ORDER]
    first = score_evaluation.isolation_forest_scores(sequences, sequences)
    np.testing.assert_array_equal(first, score_evaluation.isolation_forest_scores(sequences,
                                                                                  sequences))
    assert first.shape == (5,) and np.ptp(first) > 0


def test_evaluation_of_a_trained_model_against_the_baselines(tmp_path, tiny_dataset,
                                                            own_model, capsys):
    output = tmp_path / "test.parquet"
    assert cli.main(["score", "--model-dir", str(own_model), "--data", str(tiny_dataset),
                     "--output", str(output), "--normal-label", "class_0",
                     "--normal-label", "class_1", "--json"]) == 0
    captured = capsys.readouterr()
    printed, printed_lines = json.loads(captured.out), captured.err
    stored = json.loads((own_model / SCORE_EVALUATION_FILE).read_text())
    assert printed["evaluation"] == stored
    rows = pq.read_table(output).to_pylist()
    truth = [row["label"] not in ("class_0", "class_1") for row in rows]
    methods = stored["methods"]
    # calibrated on first use: the score, and the uncalibrated error beside it
    assert "calibrated: a length profile of" in printed_lines
    assert (own_model / THRESHOLD_FILE).is_file()
    for method, column in (("reconstruction", "score"), ("reconstruction_error", "error")):
        values = [row[column] for row in rows]
        assert methods[method]["roc_auc"] == pytest.approx(roc_auc_score(truth, values))
    for method in ("isolation_forest", "knn_embedding"):
        assert 0.0 <= methods[method]["roc_auc"] <= 1.0
        assert methods[method]["num_records"] == len(rows)
    assert stored["num_records"] == len(rows) == len(_split_ids(tiny_dataset, "test"))


# --- the command line -----------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--output", "x.parquet"], "needs --data"),
    (["--input", "{raw}", "--threshold-from", "val"], "--threshold-from needs --data"),
    (["--data", "{data}"], "needs --output"),
    (["--data", "{data}", "--output", "{data}/x.parquet"], "inside --data"),
    (["--data", "{data}", "--output", "x.parquet", "--normal-label", "nothing*"],
     "no label matches"),
    (["--data", "{data}", "--threshold-from", "val", "--plot"], "--plot draws the scores"),
])
def test_cli_errors_are_one_line(tmp_path, monkeypatch, tiny_dataset, tiny_model, raw_file,
                                 capsys, args, message):
    monkeypatch.chdir(tmp_path)
    args = [a.format(raw=raw_file, data=tiny_dataset) for a in args]
    assert cli.main(["score", "--model-dir", str(tiny_model), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("seqpipe score: error:") and "\n" not in err and message in err, err
    assert not (tmp_path / "x.parquet").exists()


def test_cli_refuses_a_stale_threshold_and_hints_without_one(tmp_path, tiny_dataset, own_model,
                                                             raw_file, capsys):
    output = str(tmp_path / "x.parquet")
    assert cli.main(["score", "--model-dir", str(own_model), "--input", str(raw_file),
                     "--output", output]) == 0
    assert "--threshold-from val" in capsys.readouterr().out  # the hint
    assert not (own_model / THRESHOLD_FILE).exists()
    base = ["score", "--model-dir", str(own_model), "--data", str(tiny_dataset)]
    assert cli.main([*base, "--output", output]) == 0  # calibrates on first use
    assert "stored in" in capsys.readouterr().out
    assert score.read_threshold(own_model).split == "val"
    summary = json.loads((own_model / SUMMARY_FILE).read_text())
    (own_model / SUMMARY_FILE).write_text(json.dumps({**summary, "weights_sha256": "f" * 64}))
    assert cli.main([*base, "--output", output]) == 2
    err = capsys.readouterr().err.strip()
    assert "calibrated on other weights" in err and "\n" not in err


def test_plot_draws_beside_the_output_the_raw_steps_of_the_top_anomalies(tmp_path, tiny_model,
                                                                        raw_file, capsys):
    output = tmp_path / "new.parquet"
    assert cli.main(["score", "--input", str(raw_file), "--model-dir", str(tiny_model),
                     "--output", str(output), "--plot"]) == 0
    paths = score.figure_paths(output)
    assert paths == {"scores": tmp_path / "new.scores.png",
                     "top_anomalies": tmp_path / "new.top_anomalies.png"}
    assert f"figures: {paths['scores']}, {paths['top_anomalies']}" in capsys.readouterr().out
    for path in paths.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    # What the top panel draws: the best-ranked raw records, normalized as in training.
    raw = embed.read_raw([str(raw_file)], tiny_model)
    trained_on = training_metadata(tiny_model)
    top = report.top_sequences(report.read_scores(output), None, tiny_model, trained_on,
                               scored_records=score.raw_records(raw))
    rows = pq.read_table(output).to_pylist()
    best = sorted(rows, key=lambda row: row["rank"])[:report.NUM_TOP_ANOMALIES]
    assert [(s.id, s.rank) for s in top] == [(row["id"], row["rank"]) for row in best]
    mean, std = reading.normalization_arrays(trained_on.feature_stats, trained_on.num_features)
    steps_of = {sequence.id: sequence.steps for sequence in raw.sequences}
    for sequence in top:
        np.testing.assert_allclose(sequence.steps, (steps_of[sequence.id] - mean) / std,
                                   rtol=1e-5, atol=1e-6)
        assert sequence.length == len(steps_of[sequence.id])


def test_a_model_dir_of_an_older_version_scores_from_its_keras_file(tmp_path, tiny_dataset,
                                                                    own_model, tiny_model):
    shutil.rmtree(own_model / SCORER_DIR)
    for name in (METADATA_COPY, CONFIG_FILE):
        assert (own_model / name).is_file()
    old = score.score_split(tiny_dataset, own_model, "test")
    new = score.score_split(tiny_dataset, tiny_model, "test")
    np.testing.assert_array_equal(old.ids, new.ids)
    np.testing.assert_allclose(old.scores, new.scores, rtol=1e-5)


def test_score_config_defaults():
    assert load_config("default").score == ScoreConfig(quantile=0.99, threshold=None, knn=5,
                                                        records_per_knot=25)
    assert load_config("default", ["score.threshold=0.5"]).score.threshold == 0.5


# --- the length profile ---------------------------------------------------------------------

def test_length_profile_knots_interpolation_and_flat_ends():
    lengths = np.arange(1, 9)
    profile = score.LengthProfile.fit(lengths, errors=lengths.astype(float), records_per_knot=2)
    # four groups [1,2] [3,4] [5,6] [7,8]: each knot the geometric mean of its two lengths
    expected_knots = [np.sqrt(2), np.sqrt(12), np.sqrt(30), np.sqrt(56)]
    np.testing.assert_allclose(profile.lengths, expected_knots, rtol=1e-12)
    np.testing.assert_allclose(profile.errors, expected_knots, rtol=1e-12)
    # error == length is a straight line in log-log: reproduced between the knots
    np.testing.assert_allclose(profile.expected([2, 3, 5, 7]), [2, 3, 5, 7], rtol=1e-12)
    # flat beyond the ends
    np.testing.assert_allclose(profile.expected([1, 100]), [np.sqrt(2), np.sqrt(56)], rtol=1e-12)


def test_length_profile_medians_ties_zeros_and_knot_limit():
    # one length: one knot whatever the bins, at the median error (the outlier does not move it)
    profile = score.LengthProfile.fit(np.full(9, 10), [1, 2, 3, 4, 5, 6, 7, 8, 900.0], 3)
    assert profile.lengths == pytest.approx((10.0,))
    # three groups of 3, medians 2, 5, 8 in log: the knot is their geometric mean
    assert profile.errors == pytest.approx((np.exp(np.mean(np.log([2, 5, 8]))),))
    # an error of exactly 0 counts as the smallest positive one
    zero = score.LengthProfile.fit(np.array([4, 4, 4]), np.array([0.0, 0.5, 2.0]), 3)
    assert zero.errors == pytest.approx((0.5,))
    # never more than 32 knots, never fewer than one
    many = score.LengthProfile.fit(np.arange(1, 1001), np.ones(1000), 1)
    assert len(many.lengths) == 32 and len(score.LengthProfile.fit([5], [1.0], 50).lengths) == 1


def test_calibrated_scores_do_not_grow_with_length_where_errors_do():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 400, size=2000)
    errors = 0.01 * lengths * rng.lognormal(0.0, 0.5, size=2000)  # error grows with length
    scores = _scores(["class_0"] * 2000, errors, lengths)
    profile = score.LengthProfile.fit(lengths, errors, records_per_knot=50)
    calibrated = scores.calibrated(profile)
    assert spearman_of(scores.scores, lengths) > 0.7
    assert abs(spearman_of(calibrated.scores, lengths)) < 0.05
    np.testing.assert_array_equal(calibrated.errors, scores.errors)
    assert scores.calibrated(None).scores is scores.errors


def spearman_of(values, lengths):
    return score_evaluation.spearman(np.asarray(values), np.asarray(lengths))


def test_a_large_enough_val_split_alone_gives_the_profile(tiny_dataset):
    num_val = metadata_lib.read(tiny_dataset).num_records("val")
    assert num_val >= score.MIN_HELD_OUT_KNOTS
    enough = ScoreConfig(records_per_knot=num_val // score.MIN_HELD_OUT_KNOTS)
    assert score.profile_splits(tiny_dataset, enough) == ("val",)
    too_few = ScoreConfig(records_per_knot=num_val // score.MIN_HELD_OUT_KNOTS + 1)
    assert score.profile_splits(tiny_dataset, too_few) == ("train", "val")
