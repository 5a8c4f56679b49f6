"""Masking layers for variable-length sequences: where the mask comes from and where it goes.

seqpipe never infers padding from the values of `x` (a genuine all-zero
timestep is data). The mask arrives beside `x` as an explicit float tensor
(the `{"x", "mask"}` inputs of `seqpipe.input_pipeline`), and these two layers carry it
through the autoencoder:

    x [B, T, F], mask [B, T] ──SequenceMask──▶ x with a Keras mask ──▶ encoder RNNs
                                                      │                    │
                                                      │            embedding [B, E]
                                                      ▼                    ▼
                                       RepeatToLength([embedding, masked x])
                                                      │
                                embedding repeated to [B, T, E], same Keras mask
                                                      ▼
                                        decoder RNNs ──▶ Dense(F) (mask kept)

`RepeatToLength` is the fix for the classic "mask inputs in an LSTM autoencoder
with `RepeatVector`" problem: `RepeatVector(n)` needs a fixed `n` and its output
carries no mask, so the decoder reconstructs padding and the loss counts it.
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["MaskedPooling", "RepeatToLength", "SequenceMask"]


def _is_shape_pair(input_shape) -> bool:
    return (isinstance(input_shape, (list, tuple)) and len(input_shape) == 2
            and all(isinstance(s, (list, tuple)) for s in input_shape))


@keras.saving.register_keras_serializable(package="seqpipe")
class SequenceMask(keras.layers.Layer):
    """Attaches an explicit float mask to a sequence, for every downstream layer.

    Takes `[x, mask]` and returns `x` with a boolean Keras mask `mask > 0.5`, so
    every following mask-aware layer (RNNs, `Bidirectional`, `Dense`,
    `RepeatToLength`) skips the padded timesteps. Unlike `keras.layers.Masking`,
    padding is never inferred from the values of `x`: an all-zero timestep with
    mask 1.0 stays a real timestep.

    By default the padded timesteps of the output are set to 0 (the real ones are
    returned unchanged). Masked RNN steps do not update the state, so the
    forward pass ignores padding either way; zeroing also keeps garbage or NaN in
    the padding out of the *gradients* (an RNN still multiplies every input step
    by its kernel, and in backprop `NaN * 0 = NaN`).

    Args:
        zero_padding: Boolean, whether to set the padded timesteps of `x` to 0.
            Defaults to `True`.

    Input shape:
        A list of two tensors: `x` with shape `(batch_size, timesteps, features)`
        and `mask` with shape `(batch_size, timesteps)`, float, 1.0 on real
        timesteps and 0.0 on padding.

    Output shape:
        Same as `x`, with a boolean mask of shape `(batch_size, timesteps)`.

    Example:

    >>> x = np.array([[[1., 2.], [0., 0.], [9., 9.]]], dtype="float32")
    >>> mask = np.array([[1., 1., 0.]], dtype="float32")
    >>> y = SequenceMask()([x, mask])
    >>> y
    [[[1., 2.], [0., 0.], [0., 0.]]]
    >>> y._keras_mask
    [[True, True, False]]
    """

    def __init__(self, zero_padding=True, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(zero_padding, bool):
            raise TypeError(
                "Expected a boolean value for `zero_padding`. "
                f"Received: zero_padding={zero_padding!r}"
            )
        self.zero_padding = zero_padding
        self.supports_masking = True

    def build(self, input_shape):
        if not _is_shape_pair(input_shape):
            raise ValueError(
                "`SequenceMask` expects a list of two inputs `[x, mask]`. "
                f"Received: input_shape={input_shape}"
            )
        x_shape, mask_shape = input_shape
        if len(x_shape) != 3 or len(mask_shape) != 2:
            raise ValueError(
                "`SequenceMask` expects `x` of rank 3 (batch, timesteps, features) "
                "and `mask` of rank 2 (batch, timesteps). "
                f"Received: x.shape={tuple(x_shape)}, mask.shape={tuple(mask_shape)}"
            )
        for x_dim, mask_dim in zip(x_shape[:2], mask_shape, strict=True):
            if x_dim is not None and mask_dim is not None and x_dim != mask_dim:
                raise ValueError(
                    "`x` and `mask` must agree on batch and timesteps. "
                    f"Received: x.shape={tuple(x_shape)}, mask.shape={tuple(mask_shape)}"
                )

    def call(self, inputs):
        x, mask = inputs
        boolean_mask = ops.greater(mask, 0.5)
        if self.zero_padding:
            x = ops.where(ops.expand_dims(boolean_mask, -1), x, ops.zeros_like(x))
        else:
            # A new tensor, so that attaching the mask never touches the input.
            x = ops.copy(x)
        return x

    def compute_mask(self, inputs, mask=None):
        return ops.greater(inputs[1], 0.5)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        base_config = super().get_config()
        config = {"zero_padding": self.zero_padding}
        return {**base_config, **config}


@keras.saving.register_keras_serializable(package="seqpipe")
class RepeatToLength(keras.layers.Layer):
    """Repeats a vector to the dynamic length of a sequence, keeping its mask.

    The masked replacement for `RepeatVector` in sequence autoencoders. Takes
    `[vector, sequence]` and repeats `vector` along a new time axis as many times
    as `sequence` has timesteps *at run time* (so batches of different lengths
    go through one model), and the output carries `sequence`'s mask: the
    decoder that follows skips exactly the timesteps the encoder skipped.

    Args:
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        A list of two tensors: `vector` with shape `(batch_size, features)` and
        `sequence` with shape `(batch_size, timesteps, ...)`, usually carrying a
        mask of shape `(batch_size, timesteps)`. Only the shape and mask of
        `sequence` are used, never its values.

    Output shape:
        3D tensor with shape `(batch_size, timesteps, features)` with the mask of
        `sequence`.

    Example:

    >>> vector = keras.Input(shape=(4,))
    >>> sequence = keras.Input(shape=(None, 8))
    >>> y = RepeatToLength()([vector, sequence])
    >>> y.shape
    (None, None, 4)
    >>> RepeatToLength()([np.ones((2, 4)), np.zeros((2, 3, 8))]).shape
    (2, 3, 4)
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def build(self, input_shape):
        if not _is_shape_pair(input_shape):
            raise ValueError(
                "`RepeatToLength` expects a list of two inputs `[vector, sequence]`. "
                f"Received: input_shape={input_shape}"
            )
        vector_shape, sequence_shape = input_shape
        if len(vector_shape) != 2 or len(sequence_shape) < 2:
            raise ValueError(
                "`RepeatToLength` expects `vector` of rank 2 (batch, features) and "
                "`sequence` of rank >= 2 (batch, timesteps, ...). "
                f"Received: vector.shape={tuple(vector_shape)}, "
                f"sequence.shape={tuple(sequence_shape)}"
            )

    def call(self, inputs):
        vector, sequence = inputs
        length = ops.shape(sequence)[1]
        return ops.repeat(ops.expand_dims(vector, 1), length, axis=1)

    def compute_mask(self, inputs, mask=None):
        if mask is None:
            return None
        return mask[1]

    def compute_output_shape(self, input_shape):
        vector_shape, sequence_shape = input_shape
        return (vector_shape[0], sequence_shape[1], vector_shape[1])


@keras.saving.register_keras_serializable(package="seqpipe")
class MaskedPooling(keras.layers.Layer):
    """Mean and/or max of a sequence over its real timesteps only.

    Pools the encoder's per-step outputs into fixed-size features that the
    final state alone may lose over long sequences. Padded timesteps (mask
    False) count in neither statistic: the mean divides by the number of real
    steps, and the max ignores padded values however large. A row without any
    real step (never produced by seqpipe's input pipeline) pools to 0.

    Args:
        modes: Tuple of `"mean"` and/or `"max"`, in output order.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        3D tensor `(batch_size, timesteps, features)`, usually carrying a mask
        of shape `(batch_size, timesteps)`; without a mask every step is real.

    Output shape:
        2D tensor `(batch_size, features * len(modes))`: the statistics
        concatenated in `modes` order. No mask.

    Example:

    >>> x = SequenceMask()([np.array([[[1.], [3.], [99.]]], "float32"),
    ...                     np.array([[1., 1., 0.]], "float32")])
    >>> MaskedPooling(("mean", "max"))(x)
    [[2., 3.]]
    """

    MODES = ("mean", "max")

    def __init__(self, modes=("mean", "max"), **kwargs):
        super().__init__(**kwargs)
        modes = tuple(modes) if isinstance(modes, (list, tuple)) else (modes,)
        if not modes or any(m not in self.MODES for m in modes) or len(set(modes)) < len(modes):
            raise ValueError(
                f"`modes` must be distinct values among {self.MODES}. Received: modes={modes!r}"
            )
        self.modes = modes
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is None:
            real = ops.ones(ops.shape(inputs)[:2], dtype="bool")
        else:
            real = ops.cast(mask, "bool")
        weights = ops.expand_dims(ops.cast(real, inputs.dtype), -1)
        count = ops.sum(weights, axis=1)
        pooled = []
        for mode in self.modes:
            if mode == "mean":
                pooled.append(ops.sum(inputs * weights, axis=1) / ops.maximum(count, 1.0))
            else:
                lowest = ops.where(ops.expand_dims(real, -1), inputs, float("-inf"))
                pooled.append(ops.where(count > 0, ops.max(lowest, axis=1), 0.0))
        return ops.concatenate(pooled, axis=-1) if len(pooled) > 1 else pooled[0]

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        features = input_shape[-1]
        return (input_shape[0], None if features is None else features * len(self.modes))

    def get_config(self):
        base_config = super().get_config()
        return {**base_config, "modes": list(self.modes)}
