"""The sequence autoencoder: its graph, and the encoder export.

Inputs are the data pipeline's dict (the element contract of `seqpipe.input_pipeline`):

    {"x":    float32 [batch, time, features]   right-padded sequences,
     "mask": float32 [batch, time]             1.0 on real steps, 0.0 on padding}

and, for a model built with `observed=True` (data with missing entries: the
trainer decides with `seqpipe.input_pipeline.uses_observed`),

     "observed": float32 [batch, time, features]  1.0 observed, 0.0 missing or padding}

and, for a model built with `time_delta=True` (`data.time_delta`: data with
times),

     "time_delta": float32 [batch, time]   each step's normalized time gap, 0.0 on
                                           padding (`seqpipe.dataset.times`)}

`time` changes from batch to batch (length bucketing), so nothing here fixes it.
With `observed`, the encoder reads `x` and `observed` concatenated
(`observed_indicator`, [batch, time, 2 x features]: GRU-D's indicator form),
so a missing entry's fill value (`data.fill`) is never taken for an
observation. The fill value IS an input the encoder sees (beside its
indicator), so an embedding can change when a missing entry's fill value
changes; what does not depend on it is the loss, whose targets and weights
exclude missing entries (`seqpipe.model.losses`). The decoder reconstructs
the `features` of `x` only. With `time_delta`, the time gap is one more
channel of the encoder's input (`time_delta_input`: the features, then the
gap as `[batch, time, 1]`); it is an input only, never reconstructed and
never in the loss.
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
the encoder as a TensorFlow SavedModel that serves without seqpipe;
`export_scorer` saves the autoencoder's masked reconstruction error per step
and per sequence (the anomaly scores of `seqpipe score`) the same way.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import keras
import tensorflow as tf

from seqpipe.config import ModelConfig
from seqpipe.model.layers import (
    MaskedPooling,
    RepeatToLength,
    SequenceMask,
)
from seqpipe.model.losses import masked_step_errors

__all__ = ["build_autoencoder", "export_encoder", "export_scorer", "reconstruction_errors",
           "scorer_module", "takes_observed", "takes_time_delta"]

EMBEDDING_KEY = "embedding"
OBSERVED_KEY = "observed"
TIME_DELTA_KEY = "time_delta"
STEP_ERROR_KEY = "step_error"
SCORE_KEY = "score"
SERVING_SIGNATURE = "serving_default"

_RECURRENT_LAYERS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}
# Keras activation of each `model.activation`. `relu` is capped at 6 (Keras' relu6):
# an unbounded relu lets a recurrent state grow geometrically over long sequences
# until the loss is not finite, and gradient clipping cannot stop an overflow in the
# forward pass.
RECURRENT_ACTIVATIONS = {"tanh": "tanh", "relu": "relu6"}


def build_autoencoder(cfg: ModelConfig, num_features: int, decoder: bool = True,
                      observed: bool = False, time_delta: bool = False,
                      ) -> tuple[keras.Model | None, keras.Model]:
    """Builds the autoencoder and its encoder, two functional models sharing weights.

    Args:
        cfg: the model section of the config.
        num_features: features per timestep (`F`).
        decoder: False builds the encoder alone (nothing else is trained with
            `train.objective: triplet`); the autoencoder is then None.
        observed: the models also take `observed` [B, T, F] and the encoder
            reads `x` and `observed` concatenated (the module docstring).
        time_delta: the models also take `time_delta` [B, T], one more
            channel of the encoder's input.

    Returns:
        `(autoencoder, encoder)`. Both take `{"x": [B, T, F], "mask": [B, T]}`
        (and `"observed": [B, T, F]` with `observed`, `"time_delta": [B, T]`
        with `time_delta`);
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
    features = inputs["x"]
    if observed:
        inputs[OBSERVED_KEY] = keras.Input(shape=(None, num_features), name=OBSERVED_KEY)
        features = keras.layers.Concatenate(name="observed_indicator")(
            [inputs["x"], inputs[OBSERVED_KEY]])
    if time_delta:
        inputs[TIME_DELTA_KEY] = keras.Input(shape=(None,), name=TIME_DELTA_KEY)
        channel = keras.layers.Reshape((-1, 1), name="time_delta_channel")(
            inputs[TIME_DELTA_KEY])
        features = keras.layers.Concatenate(name="time_delta_input")([features, channel])
    sequence = SequenceMask(name="sequence_mask")([features, inputs["mask"]])

    summary = _encode(cfg, sequence)
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


def takes_observed(model: keras.Model) -> bool:
    """Whether a model of `build_autoencoder` was built with `observed=True`."""
    return OBSERVED_KEY in model.input


def takes_time_delta(model: keras.Model) -> bool:
    """Whether a model of `build_autoencoder` was built with `time_delta=True`."""
    return TIME_DELTA_KEY in model.input


class ServingModule(tf.Module):
    """An exportable object: a model's variables and one serving function of its inputs.

    Args:
        model: the Keras model whose variables the function uses.
        name: the module's name.
        outputs: `outputs(model, inputs) -> {name: tensor}`, `inputs` the
            model's input dict.

    `serve` is `outputs` as a `tf.function` taking `x` float32
    `[batch, time, F]` and `mask` float32 `[batch, time]` (and `observed`
    float32 `[batch, time, F]` for a model that takes it, `takes_observed`;
    `time_delta` float32 `[batch, time]` for one that takes it,
    `takes_time_delta`), by name; call it in-process
    (`module.serve(x=x, mask=mask)`) or `export` it.
    """

    def __init__(self, model: keras.Model, name: str, outputs):
        super().__init__(name=name)
        self.model = model
        num_features = model.input["x"].shape[-1]
        shapes = {"x": [None, None, num_features], "mask": [None, None],
                  OBSERVED_KEY: [None, None, num_features], TIME_DELTA_KEY: [None, None]}
        names = [key for key in shapes if key in model.input]

        def serve(*tensors):
            return outputs(self.model, dict(zip(names, tensors, strict=True)))

        # One parameter per model input, named like it: callers and the exported
        # signature pass the tensors by name.
        serve.__signature__ = inspect.Signature(
            [inspect.Parameter(key, inspect.Parameter.POSITIONAL_OR_KEYWORD) for key in names])
        self.serve = tf.function(serve, autograph=False, input_signature=[
            tf.TensorSpec(shapes[key], tf.float32, name=key) for key in names])

    def export(self, path: str | Path) -> str | Path:
        """Saves this object as a SavedModel whose `serving_default` is `serve`, at `path`
        (a local path or a URL TensorFlow writes: not made a `Path`, which breaks URLs)."""
        tf.saved_model.save(self, str(path),
                            signatures={SERVING_SIGNATURE: self.serve.get_concrete_function()})
        return path


def _embedding(encoder: keras.Model, inputs: dict) -> dict:
    return {EMBEDDING_KEY: encoder(inputs, training=False)}


def _served_errors(autoencoder: keras.Model, inputs: dict, *, reverse_target: bool) -> dict:
    return reconstruction_errors(autoencoder, inputs["x"], inputs["mask"],
                                 reverse_target=reverse_target,
                                 observed=inputs.get(OBSERVED_KEY),
                                 time_delta=inputs.get(TIME_DELTA_KEY))


def reconstruction_errors(autoencoder: keras.Model, x, mask, *, reverse_target: bool,
                          observed=None, time_delta=None) -> dict:
    """The autoencoder's masked reconstruction errors per step and per sequence.

    `step_error` float32 `[batch, time]` is, at each input step, the mean over
    features of the squared difference between the (normalized) input and its
    reconstruction, exactly 0.0 on padding; `score` float32 `[batch]` is the
    mean of a sequence's step errors over its real steps. Both come from
    `seqpipe.model.losses.masked_step_errors`, the definition of the training
    loss: a sequence's score is the loss of a batch holding it alone, so it
    depends neither on the padding nor on the other sequences of its batch.

    A model trained with `data.reverse_target` reconstructs each sequence
    reversed within its own length; the reconstruction is reversed back
    before comparing, so `step_error[t]` always belongs to input step `t`.

    Args:
        autoencoder: the model of `build_autoencoder` (or reloaded from `.keras`).
        x: float32 `[batch, time, F]`, right-padded.
        mask: float32 `[batch, time]`, 1.0 on real steps, 0.0 on padding.
        reverse_target: whether it was trained on reversed targets (the
            model config's `data.reverse_target`).
        observed: float32 `[batch, time, F]` for a model that takes it
            (`takes_observed`); the errors are then over observed entries only
            (`masked_step_errors` with per-entry weights).
        time_delta: float32 `[batch, time]` for a model that takes it
            (`takes_time_delta`): an input only.

    Returns:
        `{"step_error": [batch, time], "score": [batch]}`.
    """
    inputs = {"x": x, "mask": mask}
    if observed is not None:
        inputs[OBSERVED_KEY] = observed
    if time_delta is not None:
        inputs[TIME_DELTA_KEY] = time_delta
    reconstruction = autoencoder(inputs, training=False)
    if reverse_target:
        # Right padding: the real steps are the first `length`, reversed in place.
        lengths = tf.reduce_sum(tf.cast(mask > 0.5, tf.int32), axis=1)
        reconstruction = tf.reverse_sequence(reconstruction, lengths, seq_axis=1, batch_axis=0)
    step_errors, scores = masked_step_errors(x, reconstruction,
                                             mask if observed is None else observed)
    return {STEP_ERROR_KEY: step_errors, SCORE_KEY: scores}


def scorer_module(autoencoder: keras.Model, *, reverse_target: bool) -> ServingModule:
    """`reconstruction_errors` of `autoencoder` as a `ServingModule` (`export_scorer` saves it)."""
    return ServingModule(autoencoder, "seqpipe_scorer", functools.partial(
        _served_errors, reverse_target=bool(reverse_target)))


def export_encoder(encoder: keras.Model, path: str | Path) -> str | Path:
    """Exports the encoder as a TF SavedModel with a `serving_default` signature.

    The signature takes `x` float32 `[batch, time, F]` and `mask` float32
    `[batch, time]` (and `observed` float32 `[batch, time, F]` for a model built
    with it: `takes_observed`; `time_delta` float32 `[batch, time]` for one built
    with it: `takes_time_delta`) and returns `{"embedding": float32 [batch, E]}`.
    Loading needs only TensorFlow, not seqpipe:

        served = tf.saved_model.load(path).signatures["serving_default"]
        embedding = served(x=x, mask=mask)["embedding"]

    Returns:
        `path`, as given.
    """
    return ServingModule(encoder, "seqpipe_encoder", _embedding).export(path)


def export_scorer(autoencoder: keras.Model, path: str | Path, *,
                  reverse_target: bool) -> str | Path:
    """Exports the reconstruction errors as a TF SavedModel with a `serving_default` signature.

    The signature takes `x` float32 `[batch, time, F]` (normalized with the
    training data's statistics) and `mask` float32 `[batch, time]` (and
    `observed` for a model built with it, the errors then over observed
    entries only; `time_delta` for a model built with it), and returns
    `{"step_error": float32 [batch, time], "score": float32 [batch]}`
    (`reconstruction_errors`: per-step mean squared error over features, exactly 0.0
    on padding; its mean over each sequence's real steps). Loading needs
    only TensorFlow:

        served = tf.saved_model.load(path).signatures["serving_default"]
        scores = served(x=x, mask=mask)["score"]

    Args:
        autoencoder: the trained autoencoder.
        path: the SavedModel directory to write.
        reverse_target: whether it was trained on reversed targets
            (`data.reverse_target`); the errors are then taken against the
            reconstruction put back in input order.

    Returns:
        `path`, as given.
    """
    return scorer_module(autoencoder, reverse_target=reverse_target).export(path)
