"""The sequence autoencoder: its graph, and the encoder export.

Inputs are the data pipeline's dict (the element contract of `seqpipe.input_pipeline`):

    {"x":    float32 [batch, time, features]   right-padded sequences,
     "mask": float32 [batch, time]             1.0 on real steps, 0.0 on padding}

`time` changes from batch to batch (length bucketing), so nothing here fixes it.
The graph, with the layer names `build_autoencoder` gives:

    x, mask ─ sequence_mask ─ encoder_lstm_1..N ─ summary ─ [embedding] ──▶ encoder output
                   │                                                │
                   └──────────────── repeat_to_length ◀─────────────┘
                                            │  (mask of x)
                     decoder_lstm_1 ... decoder_lstm_M ─ reconstruction [batch, time, features]

The summary is the last encoder layer's final state (every layer's with
`embedding_from: all_layers`), with `pooling` (the default) concatenated with
the masked mean and max of the last layer's per-step outputs
(`encoder_states`); the `embedding` projection exists only with
`embedding_dim > 0` (the default 0 exports the summary itself).

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
* `pooling: [mean, max]` also pools the last encoder layer's per-step outputs
  over the real steps only (`encoder_pooling`, `MaskedPooling`) and
  concatenates the pooled features with the final state(s) before the
  projection: the embedding then summarizes every step, not only what the
  final state kept of them.

The loss lives in `seqpipe.model.losses`. `export_encoder` saves
the encoder as a TensorFlow SavedModel that serves without seqpipe.
"""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

from seqpipe.config import ModelConfig
from seqpipe.model.layers import (
    MaskedGaussianNoise,
    MaskedPooling,
    RepeatToLength,
    SequenceMask,
)

__all__ = ["build_autoencoder", "export_encoder"]

EMBEDDING_KEY = "embedding"
SERVING_SIGNATURE = "serving_default"

_RECURRENT_LAYERS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}
# Keras activation of each `model.activation`. `relu` is capped at 6 (Keras' relu6):
# an unbounded relu lets a recurrent state grow geometrically over long sequences
# until the loss is not finite, and gradient clipping cannot stop an overflow in the
# forward pass.
RECURRENT_ACTIVATIONS = {"tanh": "tanh", "relu": "relu6"}


def build_autoencoder(cfg: ModelConfig, num_features: int, decoder: bool = True,
                      ) -> tuple[keras.Model | None, keras.Model]:
    """Builds the autoencoder and its encoder, two functional models sharing weights.

    Args:
        cfg: the model section of the config.
        num_features: features per timestep (`F`).
        decoder: False builds the encoder alone (nothing else is trained with
            `train.objective: triplet`); the autoencoder is then None.

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
    encoder = keras.Model(inputs, embedding, name="encoder")
    if not decoder:
        return None, encoder

    decoded = RepeatToLength(name="repeat_to_length")([embedding, sequence])
    for index in range(cfg.decoder_layers):
        decoded = _recurrent_layer(cfg, cfg.decoder_units or cfg.units, return_sequences=True,
                                   bidirectional=False,
                                   name=f"decoder_{cfg.cell}_{index + 1}")(decoded)
    # Dense acts on the last axis of a 3-D tensor and keeps the mask; TimeDistributed
    # would need a static time axis.
    reconstruction = keras.layers.Dense(num_features, name="reconstruction")(decoded)

    autoencoder = keras.Model(inputs, reconstruction, name="autoencoder")
    return autoencoder, encoder


def _encode(cfg: ModelConfig, sequence):
    """The stacked encoder: the summary vector `[B, S]` of a masked sequence.

    With `embedding_from="last"` the last layer's final state; with
    `"all_layers"` the final states of every layer, concatenated in layer
    order; with `pooling`, the masked pooling of the last layer's per-step
    outputs is appended.
    """
    all_layers = cfg.embedding_from == "all_layers"
    pooling = bool(cfg.pooling)
    hidden, states = sequence, []
    for index in range(cfg.layers):
        is_last = index == cfg.layers - 1
        returns_state = (all_layers and not is_last) or (pooling and is_last)
        layer = _recurrent_layer(cfg, cfg.units, return_sequences=not is_last or pooling,
                                 bidirectional=cfg.bidirectional,
                                 name=f"encoder_{cfg.cell}_{index + 1}",
                                 return_state=returns_state)
        hidden = layer(hidden)
        if returns_state:
            hidden, layer_states = hidden[0], hidden[1:]
            if all_layers or is_last:
                states.extend(_hidden_states(cfg, layer_states))
    if pooling:
        states.append(MaskedPooling(cfg.pooling, name="encoder_pooling")(hidden))
    else:
        states.append(hidden)
    if len(states) == 1:
        return states[0]
    return keras.layers.Concatenate(name="encoder_states")(states)


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
