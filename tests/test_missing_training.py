"""Missing entries from the batches to the loss (issue 16): fill, observed mask, exact loss.

Literal inputs, exact numbers: the batch element with `inputs["observed"]`,
the fills, the per-entry loss against numpy, its independence of the
target's fill value, the model's indicator input, and the chain (train,
embed, score, evaluate) on data with gaps.
"""

from __future__ import annotations

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from literal_datasets import MEAN, STD, WINDOW, batches, inference, small_autoencoder, write_dataset

from seqpipe.commands.evaluate import pooled_statistics
from seqpipe.config import ModelConfig, TrainConfig
from seqpipe.input_pipeline import reading
from seqpipe.model.autoencoder import build_autoencoder, export_encoder, takes_observed
from seqpipe.model.losses import masked_squared_error, masked_step_errors
from seqpipe.model.objectives import Objective
from seqpipe.training.step import make_eval_step

NAN = np.nan
GAPPY = {
    "a": np.array([[1.0, NAN]]),
    "b": np.array([[NAN, 0.5], [3.0, NAN]]),
    "c": np.array([[-1.0, 2.0], [NAN, NAN], [1.0, 6.0]]),
}
OBSERVED = dataclasses.replace(WINDOW, observed_mask="always", batch_size=3)


# ---------------------------------------------------------------- fills


def _fill(steps, starts, fill):
    steps = tf.constant(steps, tf.float32)
    return reading.fill_missing(steps, tf.logical_not(tf.math.is_nan(steps)),
                                tf.constant(starts, tf.int64), fill).numpy()


def test_fill_missing_zero_and_forward_within_each_sequence():
    steps = [[1, NAN], [NAN, NAN], [3, 4], [NAN, 5], [6, NAN]]
    starts = [0, 0, 0, 3, 3]  # two sequences: rows 0-2 and 3-4
    np.testing.assert_array_equal(_fill(steps, starts, "zero"),
                                  [[1, 0], [0, 0], [3, 4], [0, 5], [6, 0]])
    # forward never carries the first sequence's 3 into the second's row 3
    np.testing.assert_array_equal(_fill(steps, starts, "forward"),
                                  [[1, 0], [1, 0], [3, 4], [0, 5], [6, 5]])


# ---------------------------------------------------------------- the batch element


def _expected(seqs, fill, normalize, reverse):
    """x, observed, mask, target, weights of one batch of `seqs` (rows in this order)."""
    length = max(len(s) for s in seqs.values())
    shape = (len(seqs), length, 2)
    x, observed, target, weights = (np.zeros(shape, np.float32) for _ in range(4))
    mask = np.zeros(shape[:2], np.float32)
    std = np.where(np.array(STD) > 0, STD, 1.0)
    for row, steps in enumerate(seqs.values()):
        values = (steps - MEAN) / std if normalize else steps
        seen = ~np.isnan(values)
        filled = np.where(seen, values, 0.0)
        if fill == "forward":
            for t in range(1, len(values)):
                filled[t] = np.where(seen[t], filled[t], filled[t - 1])
        n = len(steps)
        x[row, :n], observed[row, :n], mask[row, :n] = filled, seen, 1.0
        target_rows = np.where(seen, filled, 0.0)
        target[row, :n] = target_rows[::-1] if reverse else target_rows
        weights[row, :n] = seen[::-1] if reverse else seen
    return x, observed, mask, target, weights


@pytest.mark.parametrize("fill", ["zero", "forward"])
@pytest.mark.parametrize("batching", ["sorted_window", "buckets"])
def test_batch_element_carries_the_observed_mask_and_per_entry_weights(tmp_path, fill,
                                                                       batching):
    root = write_dataset(tmp_path / "d", GAPPY, boundaries=[3])
    cfg = dataclasses.replace(OBSERVED, fill=fill, batching=batching, normalize=True,
                              reverse_target=True, bucket_boundaries=(3,))
    [(inputs, target, weights)] = batches(root, cfg)
    assert set(inputs) == {"x", "mask", "observed"}
    x, observed, mask, expected_target, expected_weights = _expected(GAPPY, fill, True, True)
    np.testing.assert_allclose(inputs["x"], x, rtol=1e-6)
    np.testing.assert_array_equal(inputs["observed"], observed)
    np.testing.assert_array_equal(inputs["mask"], mask)
    np.testing.assert_allclose(target, expected_target, rtol=1e-6)
    np.testing.assert_array_equal(weights, expected_weights)
    assert not np.isnan(inputs["x"]).any() and not np.isnan(target).any()


def test_forward_fill_literal_numbers(tmp_path):
    root = write_dataset(tmp_path / "d", GAPPY)
    [(inputs, target, weights)] = batches(root, dataclasses.replace(OBSERVED, fill="forward"))
    # rows sorted by length: a, b, c; normalize off, no reversal
    np.testing.assert_array_equal(inputs["x"], [
        [[1, 0], [0, 0], [0, 0]],
        [[0, 0.5], [3, 0.5], [0, 0]],
        [[-1, 2], [-1, 2], [1, 6]]])
    np.testing.assert_array_equal(target, [
        [[1, 0], [0, 0], [0, 0]],
        [[0, 0.5], [3, 0], [0, 0]],
        [[-1, 2], [0, 0], [1, 6]]])
    np.testing.assert_array_equal(weights, inputs["observed"])
    np.testing.assert_array_equal(inputs["observed"][2], [[1, 1], [0, 0], [1, 1]])


def test_inference_batches_equal_the_training_batches(tmp_path):
    root = write_dataset(tmp_path / "d", GAPPY)
    cfg = dataclasses.replace(OBSERVED, fill="forward")
    [(inputs, target, weights)] = inference(root, cfg)
    [(expected_inputs, expected_target, expected_weights)] = batches(root, cfg,
                                                                     with_keys=True)
    for key in ("x", "mask", "observed", "id"):
        np.testing.assert_array_equal(inputs[key], expected_inputs[key])
    np.testing.assert_array_equal(target, expected_target)
    np.testing.assert_array_equal(weights, expected_weights)


def test_complete_data_batches_have_no_observed_mask_under_auto(tmp_path):
    root = write_dataset(tmp_path / "d", {"a": np.array([[1.0, 2.0]])})
    [(inputs, _, weights)] = batches(root, WINDOW)
    assert set(inputs) == {"x", "mask"} and weights.shape == (1, 1)


# ---------------------------------------------------------------- the loss

# One sequence, 3 steps (the last padded), 2 features; entry (0, 1) missing.
TARGETS = np.array([[[1.0, 0.0], [1.0, 2.0], [1.0, 1.0]]], np.float32)
PREDICTIONS = np.array([[[0.0, 7.0], [0.0, 1.0], [5.0, 5.0]]], np.float32)
ENTRY_WEIGHTS = np.array([[[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]], np.float32)


def test_per_entry_loss_is_numpy_over_observed_entries():
    total, count = masked_squared_error(TARGETS, PREDICTIONS, ENTRY_WEIGHTS)
    valid = ENTRY_WEIGHTS > 0.5
    assert float(count) == valid.sum() == 3.0
    assert float(total) == np.sum((TARGETS - PREDICTIONS)[valid] ** 2) == 1 + 1 + 1
    step_errors, scores = masked_step_errors(TARGETS, PREDICTIONS, ENTRY_WEIGHTS)
    np.testing.assert_array_equal(step_errors, [[1.0, 1.0, 0.0]])  # mean over observed
    np.testing.assert_array_equal(scores, [3.0 / 3.0])


def test_loss_ignores_the_targets_fill_value_and_missing_predictions_get_no_gradient():
    def loss_and_gradient(targets):
        predictions = tf.Variable(PREDICTIONS)
        with tf.GradientTape() as tape:
            total, count = masked_squared_error(targets, predictions, ENTRY_WEIGHTS)
            loss = total / count
        return float(loss), tape.gradient(loss, predictions).numpy()

    loss, gradient = loss_and_gradient(TARGETS)
    for fill in (123.0, -5.0, NAN):
        other = TARGETS.copy()
        other[0, 0, 1] = fill
        other_loss, other_gradient = loss_and_gradient(other)
        assert other_loss == loss and np.array_equal(other_gradient, gradient)
    assert loss == 1.0
    assert gradient[0, 0, 1] == 0.0 and gradient[0, 2].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(gradient[0, 0, 0], 2 * (0 - 1) / 3)


def test_counts_and_eval_step_divide_by_observed_entries():
    keras.utils.set_random_seed(0)
    autoencoder, encoder = build_autoencoder(ModelConfig(units=4, bidirectional=False), 2,
                                             observed=True)
    objective = Objective(TrainConfig(), autoencoder, encoder)
    num_values, num_sequences = Objective.counts(TARGETS, ENTRY_WEIGHTS)
    assert (float(num_values), float(num_sequences)) == (3.0, 1.0)
    inputs = {"x": TARGETS, "mask": np.array([[1, 1, 0]], np.float32),
              "observed": ENTRY_WEIGHTS}
    step = make_eval_step(tf.distribute.get_strategy(), objective)
    totals = step((inputs, TARGETS, ENTRY_WEIGHTS))
    predictions = autoencoder(inputs).numpy()
    valid = ENTRY_WEIGHTS > 0.5
    assert float(totals.num_values) == 3.0
    np.testing.assert_allclose(float(totals.squared_error),
                               np.sum((TARGETS - predictions)[valid] ** 2), rtol=1e-6)


# ---------------------------------------------------------------- the model


def test_the_encoder_reads_x_and_the_indicator_concatenated():
    autoencoder, encoder = small_autoencoder(observed=True)
    assert takes_observed(encoder) and takes_observed(autoencoder)
    assert set(encoder.input) == {"x", "mask", "observed"}
    indicator = encoder.get_layer("observed_indicator")
    assert tuple(indicator.output.shape) == (None, None, 4)  # 2 features + 2 indicators
    assert autoencoder.output.shape[-1] == 2


def test_an_embedding_sees_the_fill_value_and_the_indicator_but_not_padding():
    _, encoder = small_autoencoder(observed=True)
    inputs = {"x": TARGETS.copy(), "mask": np.array([[1, 1, 0]], np.float32),
              "observed": ENTRY_WEIGHTS}
    base = encoder(inputs).numpy()
    padded = dict(inputs, x=TARGETS.copy())
    padded["x"][0, 2] = 99.0
    np.testing.assert_array_equal(encoder(padded).numpy(), base)  # padding: never seen
    refilled = dict(inputs, x=TARGETS.copy())
    refilled["x"][0, 0, 1] = 5.0  # a missing entry's fill value is an input (documented)
    assert not np.array_equal(encoder(refilled).numpy(), base)
    told = dict(inputs, observed=np.ones_like(ENTRY_WEIGHTS))
    assert not np.array_equal(encoder(told).numpy(), base)  # the indicator is an input


def test_exported_encoder_serves_the_observed_mask(tmp_path):
    _, encoder = small_autoencoder(observed=True)
    path = export_encoder(encoder, tmp_path / "encoder")
    served = tf.saved_model.load(str(path)).signatures["serving_default"]
    mask = np.array([[1, 1, 0]], np.float32)
    out = served(x=tf.constant(TARGETS), mask=tf.constant(mask),
                 observed=tf.constant(ENTRY_WEIGHTS))["embedding"]
    np.testing.assert_allclose(out, encoder({"x": TARGETS, "mask": mask,
                                             "observed": ENTRY_WEIGHTS}), rtol=1e-6)


# ---------------------------------------------------------------- pooled baseline


def test_pooled_statistics_are_nan_aware_over_observed_entries():
    steps = np.array([[1.0, NAN, 4.0], [3.0, NAN, NAN], [NAN, NAN, 2.0]])
    [row] = pooled_statistics([steps])
    observed = steps[:, [0, 2]]
    expected = np.concatenate([np.nanmean(observed, 0), np.nanstd(observed, 0),
                               np.nanmin(observed, 0), np.nanmax(observed, 0), [3.0, 2.0]])
    np.testing.assert_allclose(row.reshape(5, 3)[:, [0, 2]].ravel(), expected.reshape(
        5, 2).ravel(), rtol=1e-6)
    assert row.reshape(5, 3)[:, 1].tolist() == [0.0] * 5  # never observed: 0 for all five
    complete = np.array([[1.0, 2.0], [3.0, 5.0]])
    np.testing.assert_array_equal(pooled_statistics([complete])[0], np.float32(
        [2, 3.5, 1, 1.5, 1, 2, 3, 5, 3, 5]))


# ---------------------------------------------------------------- the chain


@pytest.fixture(scope="module")
def gappy_dataset(tmp_path_factory, tiny_config):
    """The tiny synthetic data with 20% of its entries removed, preprocessed (keep)."""
    from beam_jobs.preprocess import preprocess
    from seqpipe import synthetic

    root = tmp_path_factory.mktemp("gappy")
    raw = root / "gappy.jsonl"
    synthetic.write_jsonl(dataclasses.replace(tiny_config.synth, missing_fraction=0.2), raw)
    preprocess([str(raw)], str(root / "data"), tiny_config.preprocess)
    return root / "data"


@pytest.fixture(scope="module")
def gappy_mirrored_steps(tmp_path_factory, gappy_dataset) -> dict[str, dict]:
    """tests/test_distributed.py's mirrored-step harness on data with gaps, both cases in
    one run."""
    from test_distributed import mirrored_step_results

    return mirrored_step_results(tmp_path_factory.mktemp("gappy-mirrored"), gappy_dataset,
                                 [("reconstruction", 4), ("both", 4)])


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["reconstruction", "both"])
def test_two_replicas_take_the_single_replica_step_on_data_with_gaps(gappy_mirrored_steps,
                                                                     objective):
    """The observed entries' global count: replicas with different numbers of observed
    entries take the single-replica step; the real steps are counted across replicas
    like the other totals (the history's `valid_timesteps`)."""
    from test_distributed import assert_same_step

    case = gappy_mirrored_steps[f"{objective}-4"]
    assert_same_step(case, objective, rows=4)
    # 8 features with gaps: num_values // 8 would undercount the steps.
    assert case["results"]["single"]["num_values"] < 8 * case["results"]["single"]["num_steps"]


@pytest.mark.slow
def test_train_embed_score_evaluate_on_data_with_gaps(tmp_path, tiny_config, gappy_dataset):
    from seqpipe.commands import embed, evaluate, score
    from seqpipe.dataset import metadata as metadata_lib
    from seqpipe.training.trainer import train

    data_dir = gappy_dataset
    metadata = metadata_lib.read(data_dir)
    assert metadata.counts.rejected == 0 and metadata.has_missing
    cfg = dataclasses.replace(tiny_config, data=dataclasses.replace(tiny_config.data,
                                                                   fill="forward"))
    model_dir = tmp_path / "run"
    summary = train(data_dir, model_dir, cfg, verbose=False)
    assert "NaN" not in json.dumps(summary)
    embeddings = embed.compute_embeddings(data_dir, model_dir, "test")
    assert np.isfinite(embeddings.vectors).all()
    assert len(embeddings.ids) == metadata.num_records("test")
    scores = score.score_split(data_dir, model_dir, "test")
    assert np.isfinite(scores.scores).all()
    result = evaluate.evaluate_model(data_dir, model_dir, cfg.eval)
    assert 0.0 <= result["pooled_statistics"]["test_accuracy"] <= 1.0
    raw = next(data_dir.parent.glob("*.jsonl"))
    raw_embeddings, rejections = embed.embed_raw(str(raw), model_dir)
    assert not rejections and np.isfinite(raw_embeddings.vectors).all()
