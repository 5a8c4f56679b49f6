"""The sequence autoencoder, its exact masked loss, and the encoder export.

Inputs are the data pipeline's dict (see `seqpipe.input_pipeline.data`):

    {"x":    float32 [batch, time, features]   right-padded sequences,
     "mask": float32 [batch, time]             1.0 on real steps, 0.0 on padding}

`time` changes from batch to batch (length bucketing), so nothing here fixes it.
The graph, with the layer names `build_autoencoder` gives:

    x, mask ─ sequence_mask ─ encoder_lstm_1 ... encoder_lstm_N ─ embedding ──▶ encoder output
                   │          (last one: return_sequences=False)      │
                   └──────────────── repeat_to_length ◀───────────────┘
                                            │  (mask of x)
                     decoder_lstm_1 ... decoder_lstm_M ─ reconstruction [batch, time, features]

Every tensor from `sequence_mask` to `reconstruction` that has a time axis
carries the input mask, so the decoder skips padded steps like the encoder.

Options that change the graph (measured in `benchmarks/embedding_quality.py`):

* `input_noise > 0` inserts `input_noise` (`MaskedGaussianNoise`) after
  `sequence_mask`: noise on the real steps in training only (denoising); the
  targets stay clean, the exported encoder is unaffected at inference.
* `embedding_from: all_layers` makes every encoder layer also return its final
  state (the state at each sequence's last *real* step: masked steps do not
  update it; for a bidirectional layer both directions' final states) and
  concatenates them (`encoder_states`) before the projection, instead of using
  the last layer's state only.

The loss is the mean squared error over the valid (timestep, feature) entries
only: `sum of squared errors / (number of valid timesteps * features)`. Keras'
default reduction with a temporal `sample_weight` divides by `batch * time`
instead, which changes the loss scale with every bucket. The custom training
loop reduces `masked_squared_error` (a sum and a count) across replicas, so the
global loss is the exact masked mean; `MaskedMeanSquaredError` gives the same
number to `model.compile`/`fit`/`evaluate` on one device.
"""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf
from keras import ops

from seqpipe.config import ModelConfig
from seqpipe.model.layers import MaskedGaussianNoise, RepeatToLength, SequenceMask

__all__ = [
    "MaskedMeanSquaredError",
    "build_autoencoder",
    "compile_autoencoder",
    "export_encoder",
    "masked_mse",
    "masked_squared_error",
]

EMBEDDING_KEY = "embedding"
SERVING_SIGNATURE = "serving_default"

_RECURRENT_LAYERS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}
# Keras activation of each `model.activation`. `relu` is capped at 6 (Keras' relu6):
# an unbounded relu lets a recurrent state grow geometrically over long sequences
# (measured on 7..356-step data: embeddings ~1e23 after one epoch, then a non-finite
# loss), and gradient clipping cannot stop an overflow in the forward pass.
RECURRENT_ACTIVATIONS = {"tanh": "tanh", "relu": "relu6", "relu_unbounded": "relu"}


def build_autoencoder(cfg: ModelConfig, num_features: int) -> tuple[keras.Model, keras.Model]:
    """Builds the autoencoder and its encoder, two functional models sharing weights.

    Args:
        cfg: the model section of the config.
        num_features: features per timestep (`F`).

    Returns:
        `(autoencoder, encoder)`. Both take `{"x": [B, T, F], "mask": [B, T]}`;
        the autoencoder returns the reconstruction `[B, T, F]` (with the input
        mask attached), the encoder the embedding `[B, E]`, where `E` is
        `cfg.embedding_dim`, or the summary's width when that is 0 (`units`,
        doubled if bidirectional, times `layers` with `embedding_from:
        all_layers`).
    """
    if not isinstance(num_features, int) or num_features < 1:
        raise ValueError(f"`num_features` must be a positive integer. "
                         f"Received: num_features={num_features!r}")
    inputs = {
        "x": keras.Input(shape=(None, num_features), name="x"),
        "mask": keras.Input(shape=(None,), name="mask"),
    }
    sequence = SequenceMask(name="sequence_mask")([inputs["x"], inputs["mask"]])
    encoder_input = sequence
    if cfg.input_noise > 0:
        encoder_input = MaskedGaussianNoise(cfg.input_noise, name="input_noise")(sequence)

    summary = _encode(cfg, encoder_input)
    embedding = summary
    if cfg.embedding_dim > 0:
        embedding = keras.layers.Dense(cfg.embedding_dim, name="embedding")(summary)

    decoded = RepeatToLength(name="repeat_to_length")([embedding, sequence])
    for index in range(cfg.decoder_layers):
        decoded = _recurrent_layer(cfg, cfg.decoder_units or cfg.units, return_sequences=True,
                                   bidirectional=False,
                                   name=f"decoder_{cfg.cell}_{index + 1}")(decoded)
    # Dense acts on the last axis of a 3-D tensor and keeps the mask; TimeDistributed
    # would need a static time axis.
    reconstruction = keras.layers.Dense(num_features, name="reconstruction")(decoded)

    autoencoder = keras.Model(inputs, reconstruction, name="autoencoder")
    encoder = keras.Model(inputs, embedding, name="encoder")
    return autoencoder, encoder


def _encode(cfg: ModelConfig, sequence):
    """The stacked encoder: the summary vector `[B, S]` of a masked sequence.

    With `embedding_from="last"` the last layer's final state; with
    `"all_layers"` the final states of every layer, concatenated in layer order.
    """
    all_layers = cfg.embedding_from == "all_layers"
    hidden, states = sequence, []
    for index in range(cfg.layers):
        is_last = index == cfg.layers - 1
        layer = _recurrent_layer(cfg, cfg.units, return_sequences=not is_last,
                                 bidirectional=cfg.bidirectional,
                                 name=f"encoder_{cfg.cell}_{index + 1}",
                                 return_state=all_layers and not is_last)
        hidden = layer(hidden)
        if all_layers and not is_last:
            hidden, layer_states = hidden[0], hidden[1:]
            states.extend(_hidden_states(cfg, layer_states))
    if not states:
        return hidden
    return keras.layers.Concatenate(name="encoder_states")([*states, hidden])


def _hidden_states(cfg: ModelConfig, states: list) -> list:
    """The hidden states `h` among a recurrent layer's returned states.

    An LSTM returns `[h, c]` per direction, a GRU `[h]`; a bidirectional layer
    returns the forward direction's states, then the backward one's.
    """
    per_direction = 2 if cfg.cell == "lstm" else 1
    return list(states[::per_direction])


def _recurrent_layer(cfg: ModelConfig, units: int, return_sequences: bool,
                     bidirectional: bool, name: str,
                     return_state: bool = False) -> keras.layers.Layer:
    layer = _RECURRENT_LAYERS[cfg.cell](
        units,
        activation=RECURRENT_ACTIVATIONS[cfg.activation],
        dropout=cfg.dropout,
        return_sequences=return_sequences,
        return_state=return_state,
        name=name,
    )
    if bidirectional:
        return keras.layers.Bidirectional(layer, name=f"{name}_bidirectional")
    return layer


def masked_squared_error(targets, predictions, weights):
    """Sum of squared errors over the valid entries, and how many there are.

    The building block of the distributed loss: sum both numbers over replicas,
    then divide. Padded entries contribute exactly nothing, even if the padded
    targets or predictions hold NaN or garbage (they are selected away before
    squaring, so neither the value nor the gradient sees them).

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


def masked_mse(targets, predictions, weights):
    """Mean squared error over the valid timesteps and features only.

    `sum_of_squared_errors / max(num_valid_values, 1)`: for a batch with no real
    timestep at all the loss is 0, not NaN.

    Example: targets `[[[1, 2], [1, 2], [1, 1]]]` with weights `[[1, 1, 0]]`
    average the 4 squared errors of the first two steps (divide by 4, not 6).
    """
    sum_of_squared_errors, num_valid_values = masked_squared_error(targets, predictions, weights)
    return sum_of_squared_errors / ops.maximum(num_valid_values, 1.0)


@keras.saving.register_keras_serializable(package="seqpipe")
class MaskedMeanSquaredError(keras.losses.Loss):
    """`masked_mse` as a Keras loss, for `compile`, `fit` and `evaluate`.

    The timestep weights come from `sample_weight` (the dataset's third element)
    or, when that is absent, from the mask Keras attached to `y_pred`; with both,
    a timestep counts only if both allow it. Without either, every timestep
    counts. The result is exactly `masked_mse`, not Keras' temporal
    `sample_weight` reduction (which divides by `batch * time`).

    Under a `tf.distribute` strategy with several replicas the per-replica value
    is divided by the number of replicas, as Keras' own losses do; the exact
    global masked mean needs the counts all-reduced, as `seqpipe.training.trainer` does.

    Args:
        name: name of the loss instance.

    Example:

    ```python
    model.compile(optimizer="adam", loss=MaskedMeanSquaredError())
    model.evaluate(inputs, targets, sample_weight=inputs["mask"])
    ```
    """

    def __init__(self, name="masked_mean_squared_error", **kwargs):
        # `reduction` may come back from a serialized base config; the
        # reduction here is always the masked mean.
        kwargs.pop("reduction", None)
        super().__init__(name=name, **kwargs)

    def __call__(self, y_true, y_pred, sample_weight=None):
        weights = _timestep_weights(y_pred, sample_weight)
        loss = masked_mse(y_true, y_pred, weights)
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if num_replicas > 1:
            loss = loss / num_replicas
        return ops.cast(loss, self.dtype)

    def call(self, y_true, y_pred):
        """Unreduced squared errors; `__call__` applies the masked mean."""
        return ops.square(ops.cast(y_true, self.dtype) - ops.cast(y_pred, self.dtype))

    def get_config(self):
        return {"name": self.name}


def _timestep_weights(y_pred, sample_weight):
    # Keras keeps a layer's output mask on the tensor as `_keras_mask`.
    keras_mask = getattr(y_pred, "_keras_mask", None)
    if sample_weight is None and keras_mask is None:
        return ops.ones(ops.shape(y_pred)[:2], dtype="float32")
    if sample_weight is None:
        return ops.cast(keras_mask, "float32")
    sample_weight = ops.cast(sample_weight, "float32")
    if keras_mask is None:
        return sample_weight
    return ops.where(keras_mask, sample_weight, 0.0)


def compile_autoencoder(model: keras.Model, learning_rate: float = 1e-3,
                        clipnorm: float = 1.0) -> keras.Model:
    """Compiles `model` with Adam and `MaskedMeanSquaredError`; returns it.

    Args:
        model: the autoencoder from `build_autoencoder`.
        learning_rate: Adam learning rate.
        clipnorm: clip the gradients by their *global* norm (all variables
            together, Adam's `global_clipnorm`); 0 disables clipping. On by
            default: `relu` recurrent layers diverge without it.
    """
    if learning_rate <= 0:
        raise ValueError(f"`learning_rate` must be > 0. Received: learning_rate={learning_rate}")
    if clipnorm < 0:
        raise ValueError(f"`clipnorm` must be >= 0 (0 disables clipping). "
                         f"Received: clipnorm={clipnorm}")
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate,
                                      global_clipnorm=clipnorm or None)
    model.compile(optimizer=optimizer, loss=MaskedMeanSquaredError())
    # Create the slot variables now (inside the caller's strategy scope, if any), so a
    # model saved before its first step reloads without an optimizer mismatch.
    optimizer.build(model.trainable_variables)
    return model


class _EncoderServing(tf.Module):
    """The exported object: the encoder's variables and one serving function."""

    def __init__(self, encoder: keras.Model, num_features: int):
        super().__init__(name="seqpipe_encoder")
        self.encoder = encoder
        self.serve = tf.function(self._serve, input_signature=[
            tf.TensorSpec([None, None, num_features], tf.float32, name="x"),
            tf.TensorSpec([None, None], tf.float32, name="mask"),
        ])

    def _serve(self, x, mask):
        embedding = self.encoder({"x": x, "mask": mask}, training=False)
        return {EMBEDDING_KEY: embedding}


def export_encoder(encoder: keras.Model, path: str | Path) -> Path:
    """Exports the encoder as a TF SavedModel with a `serving_default` signature.

    The signature takes `x` float32 `[batch, time, F]` and `mask` float32
    `[batch, time]` and returns `{"embedding": float32 [batch, E]}`. Loading needs
    only TensorFlow, not seqpipe:

        served = tf.saved_model.load(path).signatures["serving_default"]
        embedding = served(x=x, mask=mask)["embedding"]

    Returns:
        `path`, as a `Path`.
    """
    num_features = encoder.input["x"].shape[-1]
    module = _EncoderServing(encoder, num_features)
    path = Path(path)
    tf.saved_model.save(module, str(path),
                        signatures={SERVING_SIGNATURE: module.serve.get_concrete_function()})
    return path
