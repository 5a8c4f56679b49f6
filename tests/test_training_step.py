"""The trainer's step applies the gradient of the masked mean, clipped to its global norm."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from seqpipe.input_pipeline import data
from seqpipe.training.trainer import Trainer

SCALE = 1000.0  # inputs and targets this large: the raw gradient norm is far above clipnorm


def _masked_mean_gradient(model, inputs, targets, weights) -> list[np.ndarray]:
    """The gradient of sum over valid entries of (prediction - target)^2 / their count."""
    with tf.GradientTape() as tape:
        predictions = model(inputs, training=True)
        errors = tf.square(predictions - targets) * weights[..., tf.newaxis]
        loss = tf.reduce_sum(errors) / (tf.reduce_sum(weights) * targets.shape[-1])
    return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]


def _adam_first_gradient(trainer: Trainer) -> list[np.ndarray]:
    """The gradient Adam applied in its first step: its first moment is (1 - beta_1) * g."""
    momentums = [v for v in trainer.optimizer.variables if v.name.endswith("_momentum")]
    assert len(momentums) == len(trainer.autoencoder.trainable_variables)
    return [m.numpy() / (1.0 - trainer.optimizer.beta_1) for m in momentums]


def _global_norm(arrays: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in arrays)))


@pytest.mark.parametrize("clipnorm", [0.0, 0.5])
def test_step_applies_the_masked_mean_gradient_clipped_to_global_norm(
        tmp_path, tiny_dataset, tiny_config, clipnorm):
    """One step on huge values: Adam receives exactly the unclipped gradient scaled to
    global norm `clipnorm` (or, with clipnorm 0, the unclipped gradient itself)."""
    cfg = dataclasses.replace(tiny_config, train=dataclasses.replace(
        tiny_config.train, clipnorm=clipnorm))
    trainer = Trainer(tiny_dataset, tmp_path / "model", cfg, verbose=False)
    try:
        records = data.make_dataset(tiny_dataset, "train", cfg.data, training=False)
        # Sequences of different lengths in one batch: padding the gradient must ignore.
        inputs, targets, weights = next(batch for batch in records.unbatch().padded_batch(8)
                                        if float(tf.reduce_min(batch[2])) == 0.0)
        inputs = {"x": inputs["x"] * SCALE, "mask": inputs["mask"]}
        targets = targets * SCALE
        unclipped = _masked_mean_gradient(trainer.autoencoder, inputs, targets, weights)
        unclipped_norm = _global_norm(unclipped)
        assert unclipped_norm > 100 * 0.5

        trainer.train_step((inputs, targets, weights))

        applied = _adam_first_gradient(trainer)
        expected_norm = clipnorm or unclipped_norm
        assert _global_norm(applied) == pytest.approx(expected_norm, rel=1e-4)
        factor = expected_norm / unclipped_norm
        for got, raw in zip(applied, unclipped, strict=True):
            np.testing.assert_allclose(got, raw * factor, rtol=1e-3,
                                       atol=1e-5 * expected_norm)
    finally:
        trainer.close()
