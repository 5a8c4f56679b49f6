"""Unit tests of seqpipe.model.layers: literal inputs, exact numbers, masks, save/reload."""

import keras
import numpy as np
import pytest

from seqpipe.model.layers import (
    MaskedPooling,
    RepeatToLength,
    SequenceMask,
)

# One sequence, 3 steps, 2 features, the last step padded (the seed Q&A's example),
# padded with garbage on purpose.
X = np.array([[[1.0, 2.0], [1.0, 2.0], [7.0, -9.0]]], dtype="float32")
MASK = np.array([[1.0, 1.0, 0.0]], dtype="float32")


def _mask_of(tensor):
    mask = getattr(tensor, "_keras_mask", None)
    return None if mask is None else np.asarray(mask)


def _sum_rnn(return_sequences, name):
    """h_t = h_{t-1} + sum(x_t) + 1: counts steps, so a padded step (even zeroed) shows."""
    return keras.layers.SimpleRNN(
        1, activation="linear", return_sequences=return_sequences, kernel_initializer="ones",
        recurrent_initializer="ones", bias_initializer="ones", name=name)


def _tiny_model():
    x = keras.Input((None, 2), name="x")
    mask = keras.Input((None,), name="mask")
    sequence = SequenceMask(name="sequence_mask")([x, mask])
    summary = _sum_rnn(False, "encoder")(sequence)
    repeated = RepeatToLength(name="repeat_to_length")([summary, sequence])
    decoded = _sum_rnn(True, "decoder")(repeated)
    return keras.Model({"x": x, "mask": mask}, [summary, repeated, decoded])


class TestSequenceMask:
    def test_values_and_mask_exact(self):
        y = SequenceMask()([X, MASK])
        np.testing.assert_array_equal(y, [[[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]]])
        np.testing.assert_array_equal(_mask_of(y), [[True, True, False]])

    def test_without_zero_padding_returns_x_unchanged(self):
        y = SequenceMask(zero_padding=False)([X, MASK])
        np.testing.assert_array_equal(y, X)
        np.testing.assert_array_equal(_mask_of(y), [[True, True, False]])

    def test_all_zero_real_step_is_not_masked(self):
        x = np.zeros((1, 3, 2), dtype="float32")
        y = SequenceMask()([x, np.ones((1, 3), dtype="float32")])
        np.testing.assert_array_equal(_mask_of(y), [[True, True, True]])

    def test_symbolic_shape_and_mask(self):
        y = SequenceMask()([keras.Input((None, 5)), keras.Input((None,))])
        assert y.shape == (None, None, 5)
        assert y._keras_mask.shape == (None, None)
        assert y._keras_mask.dtype == "bool"

    def test_does_not_touch_the_input_tensor(self):
        x = keras.ops.convert_to_tensor(X)
        SequenceMask(zero_padding=False)([x, MASK])
        assert _mask_of(x) is None

    @pytest.mark.parametrize("shapes", [
        [(None, 4, 2)],
        [(None, 4), (None, 4)],
        [(None, 4, 2), (None, 4, 1)],
        [(None, 4, 2), (None, 5)],
    ])
    def test_rejects_bad_inputs(self, shapes):
        with pytest.raises(ValueError, match="Received"):
            SequenceMask()([keras.Input(batch_shape=s) for s in shapes])

    def test_rejects_non_boolean_zero_padding(self):
        with pytest.raises(TypeError, match="Received: zero_padding=1"):
            SequenceMask(zero_padding=1)

    def test_config_round_trip(self):
        layer = SequenceMask(zero_padding=False, name="m")
        clone = SequenceMask.from_config(layer.get_config())
        assert clone.zero_padding is False
        assert clone.get_config() == layer.get_config()


class TestRepeatToLength:
    def test_values_and_mask_exact(self):
        sequence = SequenceMask()([X, MASK])
        y = RepeatToLength()([np.array([[3.0, -1.0, 0.5]], dtype="float32"), sequence])
        np.testing.assert_array_equal(y, [[[3.0, -1.0, 0.5]] * 3])
        np.testing.assert_array_equal(_mask_of(y), [[True, True, False]])

    def test_without_a_sequence_mask_there_is_none(self):
        y = RepeatToLength()([np.ones((2, 4), dtype="float32"), np.zeros((2, 3, 8), "float32")])
        assert y.shape == (2, 3, 4)
        assert _mask_of(y) is None

    def test_dynamic_length_in_one_model(self):
        vector = keras.Input((4,))
        sequence = keras.Input((None, 2))
        model = keras.Model([vector, sequence], RepeatToLength()([vector, sequence]))
        assert model.output.shape == (None, None, 4)
        v = np.arange(8, dtype="float32").reshape(2, 4)
        for length in (3, 11):
            y = model([v, np.zeros((2, length, 2), "float32")])
            assert y.shape == (2, length, 4)
            np.testing.assert_array_equal(y, np.repeat(v[:, None, :], length, axis=1))

    def test_static_length_is_kept(self):
        y = RepeatToLength()([keras.Input((4,)), keras.Input((7, 2))])
        assert y.shape == (None, 7, 4)

    @pytest.mark.parametrize("shapes", [
        [(None, 4)],
        [(None, 4, 1), (None, 3, 2)],
        [(None, 4), (None,)],
    ])
    def test_rejects_bad_inputs(self, shapes):
        with pytest.raises(ValueError, match="Received"):
            RepeatToLength()([keras.Input(batch_shape=s) for s in shapes])

    def test_config_round_trip(self):
        layer = RepeatToLength(name="r")
        assert RepeatToLength.from_config(layer.get_config()).get_config() == layer.get_config()


class TestMaskThroughABottleneck:
    """SequenceMask -> RNN -> RepeatToLength -> RNN with constant weights."""

    def test_exact_numbers_and_masks(self):
        summary, repeated, decoded = _tiny_model()({"x": X, "mask": MASK})
        # Real steps only: (1 + 2 + 1) + (1 + 2 + 1) = 8; the padded step would add 1 more.
        np.testing.assert_array_equal(summary, [[8.0]])
        np.testing.assert_array_equal(repeated, [[[8.0], [8.0], [8.0]]])
        np.testing.assert_array_equal(_mask_of(repeated), [[True, True, False]])
        # The decoder: 8 + 1, then 9 + 8 + 1, then holds at the padded step (not 27).
        np.testing.assert_array_equal(decoded, [[[9.0], [18.0], [18.0]]])
        np.testing.assert_array_equal(_mask_of(decoded), [[True, True, False]])

    def test_save_and_reload_in_safe_mode(self, tmp_path):
        model = _tiny_model()
        model.save(tmp_path / "tiny.keras")
        reloaded = keras.models.load_model(tmp_path / "tiny.keras", safe_mode=True)
        assert isinstance(reloaded.get_layer("sequence_mask"), SequenceMask)
        assert isinstance(reloaded.get_layer("repeat_to_length"), RepeatToLength)
        inputs = {"x": X, "mask": MASK}
        for before, after in zip(model(inputs), reloaded(inputs), strict=True):
            np.testing.assert_array_equal(before, after)


class TestMaskedPooling:
    # Two sequences, 3 steps, 2 features; padded steps hold large garbage on purpose.
    X = np.array([[[1.0, -2.0], [3.0, -4.0], [100.0, 100.0]],
                  [[-5.0, 0.0], [50.0, 50.0], [70.0, 70.0]]], dtype="float32")
    MASK = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype="float32")

    def test_mean_and_max_over_real_steps_only(self):
        pooled = MaskedPooling(("mean", "max"))(SequenceMask()([self.X, self.MASK]))
        np.testing.assert_array_equal(pooled, [[2.0, -3.0, 3.0, -2.0],
                                               [-5.0, 0.0, -5.0, 0.0]])

    def test_modes_keep_their_order_and_no_mask_goes_on(self):
        sequence = SequenceMask()([self.X, self.MASK])
        layer = MaskedPooling(("max",))
        np.testing.assert_array_equal(layer(sequence), [[3.0, -2.0], [-5.0, 0.0]])
        assert layer.compute_mask(sequence, sequence._keras_mask) is None
        assert layer.compute_output_shape((None, None, 2)) == (None, 2)

    def test_without_a_mask_every_step_counts(self):
        np.testing.assert_allclose(MaskedPooling(("mean",))(self.X[:1]),
                                   [[104.0 / 3, 94.0 / 3]], rtol=1e-6)

    def test_a_row_without_real_steps_pools_to_zero(self):
        mask = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype="float32")
        pooled = np.asarray(MaskedPooling()(SequenceMask()([self.X, mask])))
        np.testing.assert_array_equal(pooled[0], 0.0)
        np.testing.assert_allclose(pooled[1], [115.0 / 3, 40.0, 70.0, 70.0], rtol=1e-6)

    def test_rejects_bad_modes(self):
        with pytest.raises(ValueError, match="Received: modes=\\('median',\\)"):
            MaskedPooling(("median",))
        with pytest.raises(ValueError, match="Received: modes=\\('max', 'max'\\)"):
            MaskedPooling(("max", "max"))

    def test_saves_and_reloads(self, tmp_path):
        x = keras.Input((None, 2), name="x")
        mask = keras.Input((None,), name="mask")
        pooled = MaskedPooling(("max", "mean"), name="pool")(SequenceMask()([x, mask]))
        model = keras.Model({"x": x, "mask": mask}, pooled)
        model.save(tmp_path / "m.keras")
        reloaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
        np.testing.assert_array_equal(reloaded({"x": self.X, "mask": self.MASK}),
                                      model({"x": self.X, "mask": self.MASK}))
        assert reloaded.get_layer("pool").modes == ("max", "mean")
