"""Training objectives: the T-Loss triplet term, its crops, its normalization, resuming."""

from __future__ import annotations

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import seqpipe.model.layers  # noqa: F401 - registers the custom layers for load_model
from seqpipe.commands import report, score
from seqpipe.config import TrainConfig
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset.records import DatasetError
from seqpipe.input_pipeline import data
from seqpipe.model.objectives import (
    LossTotals,
    crop_seed,
    cut,
    objective_loss,
    sample_crops,
    triplet_losses,
)
from seqpipe.training.model_dir import AUTOENCODER_FILE, HISTORY_FILE, SCORER_DIR
from seqpipe.training.trainer import Trainer, train

# Four rows, T=6, F=2: lengths 1, 3, 6 and a row without real steps; padding holds
# garbage (99) that no crop may show.
LENGTHS = np.array([1, 3, 6, 0])
X = np.full((4, 6, 2), 99.0, dtype=np.float32)
for _row, _length in enumerate(LENGTHS):
    X[_row, :_length] = np.arange(_length * 2, dtype=np.float32).reshape(_length, 2) + 10 * _row
MASK = (np.arange(6)[np.newaxis, :] < LENGTHS[:, np.newaxis]).astype(np.float32)


def _softplus(z):
    return np.log1p(np.exp(z))


def test_triplet_losses_equal_a_numpy_computation():
    """-log sig(a.p) - K/(n-1) sum_{j != own, valid} log sig(-a.n_j), 0 on invalid rows."""
    anchor = np.array([[1.0, 0.5], [-0.5, 2.0], [0.3, -1.0]], np.float32)
    positive = np.array([[0.5, 1.0], [1.0, -1.0], [2.0, 0.0]], np.float32)
    pool = np.array([[0.2, 0.1], [-1.0, 0.4], [0.0, 0.0], [3.0, -2.0], [0.7, 0.7]],
                    np.float32)
    pool_valid = np.array([1, 1, 0, 1, 1], np.float32)  # pool row 2: not a sequence
    own_index = np.array([1, 3, 4])  # these anchors' rows start at offset 1 of the pool
    valid = np.array([1, 1, 0], np.float32)
    negatives = 5
    got = triplet_losses(*(tf.constant(v) for v in (anchor, positive, pool, pool_valid,
                                                    own_index, valid)), negatives).numpy()
    expected = []
    for i in range(3):
        terms = [_softplus(anchor[i] @ pool[j]) for j in range(5)
                 if pool_valid[j] and j != own_index[i]]
        loss = _softplus(-(anchor[i] @ positive[i])) + negatives / (4 - 1) * sum(terms)
        expected.append(loss * valid[i])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[2] == 0.0


def test_a_lone_sequence_has_no_negative_term():
    anchor, positive = tf.constant([[1.0, 2.0]]), tf.constant([[0.5, -0.5]])
    got = triplet_losses(anchor, positive, tf.constant([[9.0, 9.0]]), tf.constant([1.0]),
                         tf.constant([0]), tf.constant([1.0]), 5)
    np.testing.assert_allclose(got.numpy(), [_softplus(0.5)], rtol=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_crops_are_runs_of_real_steps(seed):
    """Every crop row equals x[start:start+len] of its sequence, then zeros; its mask has
    exactly len leading ones; the positive lies inside the anchor."""
    plan = sample_crops(tf.constant(X), tf.constant(MASK), crop_seed(seed, 0))
    np.testing.assert_array_equal(plan.valid.numpy(), LENGTHS > 0)
    for crops in (plan.anchor, plan.positive, plan.negative):
        cropped, mask = (t.numpy() for t in cut(tf.constant(X), crops))
        assert cropped.shape == X.shape and mask.shape == MASK.shape
        for row, length in enumerate(LENGTHS):
            start, size = int(crops.start[row]), int(crops.length[row])
            if length == 0:
                assert size == 0 and not mask[row].any() and not cropped[row].any()
                continue
            assert size >= 1 and start >= 0 and start + size <= length
            np.testing.assert_array_equal(cropped[row, :size], X[row, start:start + size])
            np.testing.assert_array_equal(cropped[row, size:], 0.0)
            np.testing.assert_array_equal(mask[row], np.arange(6) < size)
    anchor_end = plan.anchor.start + plan.anchor.length
    positive_end = plan.positive.start + plan.positive.length
    assert np.all(plan.positive.start.numpy() >= plan.anchor.start.numpy())
    assert np.all(positive_end.numpy() <= anchor_end.numpy())
    # A sequence of length 1 crops to its one step.
    assert int(plan.anchor.length[0]) == int(plan.positive.length[0]) == 1


def test_crops_follow_the_sequence_not_its_row_or_padding():
    """The same sequences, reordered and padded further, get the same crops; another
    seed gives others."""
    seed = crop_seed(3, 17)
    plan = sample_crops(tf.constant(X), tf.constant(MASK), seed)
    order = [2, 0, 3, 1]
    wider_x = np.concatenate([X[order], np.zeros((4, 3, 2), np.float32)], axis=1)
    wider_mask = np.concatenate([MASK[order], np.zeros((4, 3), np.float32)], axis=1)
    moved = sample_crops(tf.constant(wider_x), tf.constant(wider_mask), seed)
    for crops, moved_crops in zip(plan[:3], moved[:3], strict=True):
        np.testing.assert_array_equal(moved_crops.start.numpy(), crops.start.numpy()[order])
        np.testing.assert_array_equal(moved_crops.length.numpy(), crops.length.numpy()[order])
    other = sample_crops(tf.constant(X), tf.constant(MASK), crop_seed(3, 18))
    assert any(not np.array_equal(a.start.numpy(), b.start.numpy())
               or not np.array_equal(a.length.numpy(), b.length.numpy())
               for a, b in zip(plan[:3], other[:3], strict=True))


@pytest.mark.parametrize(("objective", "expected"), [
    ("reconstruction", 6.0 / 4.0), ("triplet", 9.0 / 3.0), ("both", 6.0 / 4.0 + 0.5 * 3.0)])
def test_objective_loss_is_the_ratio_of_totals(objective, expected):
    cfg = TrainConfig(objective=objective, triplet_weight=0.5)
    assert float(objective_loss(cfg, LossTotals(6.0, 4.0, 9.0, 3.0))) == pytest.approx(expected)
    assert float(objective_loss(cfg, LossTotals(0.0, 0.0, 0.0, 0.0))) == 0.0


def _with_train(cfg, **changes):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))


def _fixed_batches(data_dir, cfg, count: int) -> list:
    dataset = data.make_dataset(data_dir, "train", cfg.data, training=False)
    return list(dataset.take(count))


def _step_totals(trainer: Trainer, batches: list) -> list[list[float]]:
    return [[float(v) for v in trainer.train_step(batch)] for batch in batches]


@pytest.mark.parametrize("objective", ["triplet", "both"])
def test_a_resumed_run_takes_the_same_steps(tmp_path, tiny_dataset, tiny_config, objective):
    """Steps 3-4 after a restore from step 2's backup draw the crops of the uninterrupted
    run: same losses; the validation loss is the same at every call. (A small model: the
    crops, not the model, are what a restore must reproduce.)"""
    cfg = _with_train(tiny_config, objective=objective, checkpoint_every_steps=0)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, units=16,
                                                             embedding_dim=8))
    batches = _fixed_batches(tiny_dataset, cfg, 4)
    straight = Trainer(tiny_dataset, tmp_path / "run", cfg, verbose=False)
    _step_totals(straight, batches[:2])
    straight.state.backup.save()  # the run goes on: the backup a kill would leave
    expected = _step_totals(straight, batches[2:])
    first = [float(v) for v in straight.eval_step(batches[0])]
    assert first == [float(v) for v in straight.eval_step(batches[0])]
    straight.close()

    resumed = Trainer(tiny_dataset, tmp_path / "run", cfg, verbose=False)
    assert resumed.state.restore() and int(resumed.optimizer.iterations) == 2
    got = _step_totals(resumed, batches[2:])
    resumed.close()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert all(totals[2] > 0 for totals in got)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["triplet", "both"])
def test_training_lowers_the_loss(tmp_path, tiny_dataset, tiny_config, objective):
    """A short real run; with `triplet` the saved model is the encoder and the report
    draws a note instead of reconstructions."""
    cfg = _with_train(tiny_config, objective=objective, epochs=3, early_stopping_patience=0)
    model_dir = tmp_path / "model"
    summary = train(tiny_dataset, model_dir, cfg, verbose=False)
    losses = [record["loss"] for record in json.loads((model_dir / HISTORY_FILE).read_text())]
    assert summary["epochs"] == len(losses) == 3
    assert losses[-1] < losses[0]
    saved = keras.models.load_model(model_dir / AUTOENCODER_FILE, safe_mode=True)
    assert len(saved.output.shape) == (2 if objective == "triplet" else 3)
    figure = report.plot_reconstructions(tiny_dataset, model_dir,
                                         metadata_lib.read(tiny_dataset), "test")
    texts = [text.get_text() for text in figure.texts]
    assert any("no reconstructions" in text for text in texts) == (objective == "triplet")
    # Only a model with a decoder has reconstruction scores.
    assert (model_dir / SCORER_DIR).is_dir() == (objective == "both")
    if objective == "triplet":
        with pytest.raises(DatasetError, match="train.objective triplet, an encoder without "
                                               "decoder: it reconstructs nothing"):
            score.load_scorer(model_dir)
    else:
        x = tf.random.normal([2, 5, metadata_lib.read(tiny_dataset).num_features])
        mask = tf.constant([[1.0] * 5, [1.0] * 3 + [0.0] * 2])
        step_error = score.load_scorer(model_dir)(x=x, mask=mask)["step_error"].numpy()
        assert step_error.shape == (2, 5) and np.all(step_error[1, 3:] == 0.0)
