"""The reconstruction loss: squared errors over the real (timestep, feature) entries only.

The loss of a global batch is the mean squared error over its valid entries:

    loss = sum of squared errors over the valid entries
           / max(number of valid timesteps * features, 1)

where a timestep is valid when its weight (the batch's third element, the
mask) is above 0.5, and both sums run over every replica's part of the batch.
A batch with no valid entry has loss 0, not NaN. The loss of an epoch, as the
trainer reports it, is the same fraction with both sums over all its batches.

Keras' default reduction with a temporal `sample_weight` divides by
`batch * time` instead, which changes the loss scale with every bucket's padded
length; a per-replica mean averaged over replicas changes it with how padding
is spread among them. `masked_squared_error` returns the two numbers of the
fraction for one replica's batch; `seqpipe.training.step` sums both across
replicas and divides (the gradient too), so the loss is exact under any strategy.

Missing entries (data with an observed mask, `seqpipe.input_pipeline`): the
weights are then per entry, `[B, T, F]` (the target's observed mask: 1.0 on
observed real entries, 0.0 on missing entries and padding), and the same
fraction runs one level finer:

    loss = sum of squared errors over the observed entries
           / max(number of observed entries, 1)

both sums over every replica again. A missing entry is selected away before
squaring like padding, so its target value (0.0, or anything: NaN too) and its
prediction reach neither the loss nor the gradient. With `[B, T]` weights
every entry of a real step counts, as before.

The anomaly score of one sequence is the same fraction over that sequence
alone (`masked_step_errors`): its per-step errors (mean over features of the
squared error, exactly 0 on padding) averaged over its real steps. Both come
from one definition of the masked squared errors (`masked_squared_errors`),
so a sequence's score is the loss a batch holding only it would have.
"""

from __future__ import annotations

from keras import ops

__all__ = ["masked_squared_error", "masked_squared_errors", "masked_step_errors",
           "num_valid_values"]


def masked_squared_error(targets, predictions, weights):
    """Sum of squared errors over the valid entries, and how many there are.

    The loss is `sum_of_squared_errors / max(num_valid_values, 1)`, each of the
    two summed over replicas first (see the module docstring). Padded entries
    contribute exactly nothing, even if the padded targets or predictions hold
    NaN or garbage: they are selected away before squaring, so neither the
    value nor the gradient sees them.

    Example: targets `[[[1, 2], [1, 2], [1, 1]]]`, predictions
    `[[[0, 0], [0, 1], [5, 5]]]`, weights `[[1, 1, 0]]` give `(7.0, 4.0)`:
    squared errors 1 + 4 + 1 + 1 on the two real steps, 4 valid entries; the
    padded step's 16 + 16 is not counted. The loss is 7 / 4, not 7 / 6.

    Args:
        targets: float `[B, T, F]`.
        predictions: float `[B, T, F]`.
        weights: float `[B, T]`, 1.0 on real timesteps and 0.0 on padding;
            or float `[B, T, F]`, 1.0 on observed entries of real timesteps.

    Returns:
        `(sum_of_squared_errors, num_valid_values)`, float32 scalars;
        `num_valid_values` is the number of real timesteps times `F` (with
        `[B, T, F]` weights: the number of observed entries).
    """
    squared_errors, _ = masked_squared_errors(targets, predictions, weights)
    return ops.sum(squared_errors), num_valid_values(targets, weights)


def num_valid_values(targets, weights):
    """How many entries count in the loss: real timesteps x `F`, or observed entries.

    Args:
        targets: float `[B, T, F]` (only its `F` is used).
        weights: float `[B, T]` or `[B, T, F]`, as `masked_squared_error`.
    """
    valid = ops.cast(ops.greater(ops.cast(weights, "float32"), 0.5), "float32")
    if ops.ndim(valid) == 3:
        return ops.sum(valid)
    return ops.sum(valid) * ops.cast(ops.shape(targets)[-1], "float32")


def masked_squared_errors(targets, predictions, weights):
    """The squared error of every entry, exactly 0 on padding, and the valid steps.

    The one definition behind the loss (`masked_squared_error`) and the
    anomaly scores (`masked_step_errors`). A timestep is valid when its weight
    is above 0.5; a padded entry is selected away before squaring, so NaN or
    garbage there reaches neither the value nor the gradient.

    Args:
        targets: float `[B, T, F]`.
        predictions: float `[B, T, F]`.
        weights: float `[B, T]`, 1.0 on real timesteps and 0.0 on padding;
            or float `[B, T, F]`, 1.0 on the observed entries of real timesteps.

    Returns:
        `(squared_errors, valid)`: float32 `[B, T, F]` and float32 of the
        weights' shape (1.0 on valid steps or entries, 0.0 elsewhere).
    """
    targets = ops.cast(targets, "float32")
    predictions = ops.cast(predictions, "float32")
    valid = ops.greater(ops.cast(weights, "float32"), 0.5)
    per_entry = valid if ops.ndim(valid) == 3 else ops.expand_dims(valid, -1)
    errors = ops.where(per_entry, targets - predictions, 0.0)
    return ops.square(errors), ops.cast(valid, "float32")


def masked_step_errors(targets, predictions, weights):
    """Per-step errors and per-sequence scores: the loss of each sequence on its own.

    Example: the `masked_squared_error` example (targets `[[[1, 2], [1, 2],
    [1, 1]]]`, predictions `[[[0, 0], [0, 1], [5, 5]]]`, weights `[[1, 1, 0]]`)
    gives step errors `[[2.5, 1.0, 0.0]]` and the score `[1.75]` = 7 / 4, the
    batch's loss: a sequence's score is the loss of a batch holding only it,
    however much padding surrounds it.

    Args:
        targets: float `[B, T, F]`.
        predictions: float `[B, T, F]`.
        weights: float `[B, T]`, 1.0 on real timesteps and 0.0 on padding;
            or float `[B, T, F]`, the observed entries of real timesteps.

    Returns:
        `(step_errors, scores)`: float32 `[B, T]`, the mean over features of
        the squared error, exactly 0.0 on padding; float32 `[B]`, the mean of
        a sequence's step errors over its valid steps (0.0 for a sequence
        without any). With `[B, T, F]` weights both are over observed entries
        only: a step's error is the mean over its observed features (0.0 with
        none), a sequence's score its squared errors summed over its observed
        entries and divided by their number (again the loss of a batch
        holding only it).
    """
    squared_errors, valid = masked_squared_errors(targets, predictions, weights)
    if ops.ndim(valid) == 3:
        step_errors = (ops.sum(squared_errors, axis=-1)
                       / ops.maximum(ops.sum(valid, axis=-1), 1.0))
        scores = (ops.sum(squared_errors, axis=(1, 2))
                  / ops.maximum(ops.sum(valid, axis=(1, 2)), 1.0))
        return step_errors, scores
    step_errors = ops.mean(squared_errors, axis=-1)
    scores = ops.sum(step_errors, axis=-1) / ops.maximum(ops.sum(valid, axis=-1), 1.0)
    return step_errors, scores
