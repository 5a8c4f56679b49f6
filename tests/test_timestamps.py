"""Timestamps (issue 16, item 5) and the history's real-step count, on literal inputs.

The time-delta record field and its encoding, the JSON `t` checks and their
reasons, the train statistics and the normalized feature, the batch
element's `inputs["time_delta"]`, a model that reads it (train step, export,
embedding a raw file), and `valid_timesteps` counted from the step mask.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from seqpipe.config import ModelConfig, TrainConfig
from seqpipe.model.autoencoder import build_autoencoder
from seqpipe.model.objectives import LossTotals, Objective
from seqpipe.training.step import make_eval_step

NAN = np.nan

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
