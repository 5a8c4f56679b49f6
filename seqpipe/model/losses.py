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
"""

from __future__ import annotations

from keras import ops

__all__ = ["masked_squared_error"]


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
        weights: float `[B, T]`, 1.0 on real timesteps and 0.0 on padding.

    Returns:
        `(sum_of_squared_errors, num_valid_values)`, float32 scalars;
        `num_valid_values` is the number of real timesteps times `F`.
    """
    targets = ops.cast(targets, "float32")
    predictions = ops.cast(predictions, "float32")
    valid = ops.greater(ops.cast(weights, "float32"), 0.5)
    errors = ops.where(ops.expand_dims(valid, -1), targets - predictions, 0.0)
    sum_of_squared_errors = ops.sum(ops.square(errors))
    num_features = ops.cast(ops.shape(targets)[-1], "float32")
    num_valid_values = ops.sum(ops.cast(valid, "float32")) * num_features
    return sum_of_squared_errors, num_valid_values
