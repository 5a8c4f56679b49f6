"""Tests of seqpipe.model: the exact masked loss, mask flow, padding, saving, export."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from seqpipe.config import ModelConfig
from seqpipe.model.autoencoder import build_autoencoder, export_encoder
from seqpipe.model.losses import masked_squared_error

F = 3
TINY = ModelConfig(units=8, embedding_dim=4, bidirectional=False)

# The seed Q&A's worked example: 1 sequence, 3 steps, 2 features, last step padded.
QA_X = np.array([[[1.0, 2.0], [1.0, 2.0], [1.0, 1.0]]], dtype="float32")
QA_MASK = np.array([[1.0, 1.0, 0.0]], dtype="float32")
QA_PRED = np.array([[[0.0, 0.0], [0.0, 1.0], [5.0, 5.0]]], dtype="float32")
# Valid squared errors: 1, 4, 1, 1 -> 7 over 4 entries. The padded step adds 32.
QA_LOSS = 7.0 / 4.0


def _inputs(x, mask):
    return {"x": np.asarray(x, "float32"), "mask": np.asarray(mask, "float32")}


def _build(cfg=TINY, num_features=F, seed=0):
    keras.utils.set_random_seed(seed)
    return build_autoencoder(cfg, num_features)


def _random_batch(rng, lengths, max_length, num_features=F, scale=1.0):
    x = np.zeros((len(lengths), max_length, num_features), "float32")
    mask = np.zeros((len(lengths), max_length), "float32")
    for i, length in enumerate(lengths):
        x[i, :length] = scale * rng.normal(size=(length, num_features))
        mask[i, :length] = 1.0
    return x, mask


def _masked_mean(targets, predictions, mask):
    """The loss the trainer computes: the sum over the valid entries / their count."""
    total, count = masked_squared_error(targets, predictions, mask)
    return total / count


def _numpy_masked_mse(targets, predictions, mask):
    valid = np.broadcast_to(mask[..., None] > 0.5, targets.shape)
    return float(np.sum((targets - predictions)[valid] ** 2) / valid.sum())


class TestMaskedLoss:
    def test_worked_example_divides_by_valid_entries(self):
        total, count = masked_squared_error(QA_X, QA_PRED, QA_MASK)
        assert float(total) == 7.0
        assert float(count) == 4.0
        assert float(total / count) == QA_LOSS

    def test_nan_in_padding_does_not_leak(self):
        targets, predictions = QA_X.copy(), QA_PRED.copy()
        targets[0, 2, 0] = np.nan
        predictions[0, 2, 1] = np.nan
        total, count = masked_squared_error(targets, predictions, QA_MASK)
        assert (float(total), float(count)) == (7.0, 4.0)

    def test_no_valid_step_gives_zero_not_nan(self):
        total, count = masked_squared_error(QA_X, QA_PRED, np.zeros_like(QA_MASK))
        assert (float(total), float(count)) == (0.0, 0.0)

    def test_divides_by_valid_count_not_batch_times_time(self):
        assert float(_masked_mean(QA_X, QA_PRED, QA_MASK)) == QA_LOSS
        # Keras' own MSE with a temporal sample_weight divides by batch * time instead.
        keras_mse = keras.losses.MeanSquaredError()(QA_X, QA_PRED, sample_weight=QA_MASK)
        assert float(keras_mse) == pytest.approx(7.0 / 2 / 3)

    def test_gradient_is_exactly_zero_on_padding(self):
        targets = QA_X.copy()
        targets[0, 2] = np.nan
        predictions = tf.Variable(np.where(QA_MASK[..., None] > 0, QA_PRED, np.nan))
        with tf.GradientTape() as tape:
            loss = _masked_mean(targets, predictions, QA_MASK)
        gradient = tape.gradient(loss, predictions).numpy()
        np.testing.assert_array_equal(gradient[0, 2], [0.0, 0.0])
        expected = -2.0 * (QA_X[0, :2] - QA_PRED[0, :2]) / 4.0
        np.testing.assert_allclose(gradient[0, :2], expected, rtol=1e-6)

    def test_loss_of_the_model_output_is_the_masked_mean(self):
        autoencoder, _ = _build(num_features=2)
        inputs = _inputs(QA_X, QA_MASK)
        predictions = np.asarray(autoencoder(inputs, training=False))
        expected = _numpy_masked_mse(QA_X, predictions, QA_MASK)
        padded_too = float(np.mean((QA_X - predictions)[0, :2] ** 2) * 4 / 6)
        assert expected != pytest.approx(padded_too)

        reported = float(_masked_mean(QA_X, predictions, QA_MASK))
        assert reported == pytest.approx(expected, rel=1e-6)

        # NaN in the padded step of both input and target changes nothing.
        dirty = QA_X.copy()
        dirty[0, 2] = np.nan
        dirty_predictions = autoencoder(_inputs(dirty, QA_MASK), training=False)
        reported = float(_masked_mean(dirty, dirty_predictions, QA_MASK))
        assert reported == pytest.approx(expected, rel=1e-6)


class TestArchitecture:
    def test_the_default_embedding_is_final_states_and_masked_pooling(self):
        _, encoder = _build(ModelConfig(units=8))  # bidirectional, pooling mean+max, no projection
        names = [layer.name for layer in encoder.layers]
        assert "encoder_pooling" in names and "embedding" not in names
        assert encoder.output.shape == (None, 2 * 8 + 2 * (2 * 8))

    def test_layer_names_and_shapes(self):
        autoencoder, encoder = _build(ModelConfig(units=8, layers=2, decoder_layers=2,
                                                  decoder_units=5, embedding_dim=4,
                                                  bidirectional=False, pooling=()))
        names = [layer.name for layer in autoencoder.layers]
        assert names == ["x", "mask", "sequence_mask", "encoder_lstm_1", "encoder_lstm_2",
                         "embedding", "repeat_to_length", "decoder_lstm_1", "decoder_lstm_2",
                         "reconstruction"]
        assert autoencoder.get_layer("decoder_lstm_2").units == 5
        assert encoder.output.shape == (None, 4)
        assert autoencoder.output.shape == (None, None, F)
        # The encoder shares the autoencoder's weights.
        assert encoder.get_layer("embedding") is autoencoder.get_layer("embedding")

    @pytest.mark.parametrize("cfg, width", [
        (ModelConfig(units=6, embedding_dim=0, bidirectional=False, pooling=()), 6),
        (ModelConfig(cell="gru", units=6, embedding_dim=0, bidirectional=True, pooling=()), 12),
    ])
    def test_without_projection_the_last_state_is_the_embedding(self, cfg, width):
        _, encoder = _build(cfg)
        assert encoder.output.shape == (None, width)
        assert "embedding" not in [layer.name for layer in encoder.layers]

    @pytest.mark.parametrize("cfg, width", [
        (ModelConfig(units=6, layers=2, embedding_dim=0, embedding_from="all_layers",
                     bidirectional=False, pooling=()), 12),
        (ModelConfig(cell="gru", units=5, layers=3, embedding_dim=0, bidirectional=True,
                     embedding_from="all_layers", pooling=()), 30),
    ], ids=["lstm2", "bigru3"])
    def test_all_layers_concatenates_every_final_state(self, cfg, width):
        _, encoder = _build(cfg)
        assert encoder.output.shape == (None, width)
        x, mask = _random_batch(np.random.default_rng(8), [5, 2], 5)
        embedding = np.asarray(encoder(_inputs(x, mask)))
        last = keras.Model(encoder.input, encoder.get_layer(
            encoder.layers[-2].name).output)  # the last encoder layer's final state
        np.testing.assert_allclose(embedding[:, -last.output.shape[-1]:],
                                   np.asarray(last(_inputs(x, mask))), atol=1e-6)

    @pytest.mark.parametrize("cfg, width", [
        (ModelConfig(units=6, embedding_dim=0, bidirectional=False, pooling=("mean", "max")),
         18),
        (ModelConfig(cell="gru", units=5, layers=2, embedding_dim=0, bidirectional=True,
                     embedding_from="all_layers", pooling=("max",)), 30),
    ], ids=["lstm_mean_max", "bigru2_all_layers_max"])
    def test_pooling_appends_masked_statistics_of_the_last_layer(self, cfg, width):
        _, encoder = _build(cfg)
        assert encoder.output.shape == (None, width)
        rng = np.random.default_rng(9)
        x, mask = _random_batch(rng, [5, 2], 5)
        x[1, 2:] = 1e3  # large padding: must reach neither the mean nor the max
        embedding = np.asarray(encoder(_inputs(x, mask)))
        last_layer = encoder.get_layer(f"encoder_{cfg.cell}_{cfg.layers}"
                                       + ("_bidirectional" if cfg.bidirectional else ""))
        steps = np.asarray(keras.Model(encoder.input, last_layer.output[0])(_inputs(x, mask)))
        expected = []
        for row, length in enumerate([5, 2]):
            real = steps[row, :length]
            expected.append(np.concatenate([real.mean(0) if mode == "mean" else real.max(0)
                                            for mode in cfg.pooling]))
        pooled_width = steps.shape[-1] * len(cfg.pooling)
        np.testing.assert_allclose(embedding[:, -pooled_width:], np.stack(expected), atol=1e-5)

    def test_one_model_serves_several_lengths(self):
        autoencoder, encoder = _build()
        rng = np.random.default_rng(0)
        for length in (3, 9):
            x, mask = _random_batch(rng, [length, 2], length)
            assert autoencoder(_inputs(x, mask)).shape == (2, length, F)
            assert encoder(_inputs(x, mask)).shape == (2, 4)


class TestMaskFlow:
    LAYERS_WITH_TIME = ["sequence_mask", "encoder_lstm_1", "repeat_to_length",
                        "decoder_lstm_1", "decoder_lstm_2", "reconstruction"]

    def test_every_sequence_output_carries_the_input_mask(self):
        autoencoder, _ = _build(ModelConfig(units=8, layers=2, decoder_layers=2,
                                            embedding_dim=4, bidirectional=False))
        mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], "float32")
        x = np.random.default_rng(0).normal(size=(2, 6, F)).astype("float32")
        x[0, 1] = 0.0  # a genuine all-zero step stays unmasked
        for name in self.LAYERS_WITH_TIME:
            probe = keras.Model(autoencoder.input, autoencoder.get_layer(name).output)
            output = probe(_inputs(x, mask))
            assert output.shape[:2] == (2, 6), name
            np.testing.assert_array_equal(output._keras_mask, mask > 0.5, err_msg=name)

    def test_the_embedding_has_no_time_axis_and_no_mask(self):
        autoencoder, encoder = _build()
        embedding = encoder(_inputs(QA_X.repeat(2, -1)[..., :F], QA_MASK))
        assert getattr(embedding, "_keras_mask", None) is None


class TestPaddingInvariance:
    SEQUENCE = np.random.default_rng(1).normal(size=(4, F)).astype("float32")

    def _padded(self, steps, total, padding):
        x = np.asarray(padding, "float32").copy()[:total][None]
        x[0, :len(steps)] = steps
        mask = np.zeros((1, total), "float32")
        mask[0, :len(steps)] = 1.0
        return _inputs(x, mask)

    @pytest.mark.parametrize("cfg", [
        TINY,
        ModelConfig(cell="gru", units=8, layers=2, embedding_dim=4, bidirectional=True),
        ModelConfig(units=8, layers=2, embedding_dim=4, bidirectional=True,
                    embedding_from="all_layers"),
        ModelConfig(units=8, embedding_dim=4, pooling=("mean", "max")),
    ], ids=["lstm", "bigru2", "bilstm2_all_layers", "bilstm_pooling"])
    def test_embedding_ignores_padding_length_and_content(self, cfg):
        autoencoder, encoder = _build(cfg)
        garbage = 100.0 * np.random.default_rng(2).normal(size=(50, F))
        short = self._padded(self.SEQUENCE, 5, np.zeros((5, F)))
        long = self._padded(self.SEQUENCE, 50, garbage)
        np.testing.assert_allclose(encoder(short), encoder(long), atol=1e-6)
        np.testing.assert_allclose(autoencoder(short)[:, :4], autoencoder(long)[:, :4],
                                   atol=1e-6)

    def test_embedding_alone_equals_embedding_in_a_batch_of_longer_sequences(self):
        """Padded to its own length alone, or to 10x in a batch with long sequences."""
        autoencoder, encoder = _build(ModelConfig(units=8, embedding_dim=4))
        length = len(self.SEQUENCE)
        alone = self._padded(self.SEQUENCE, length, np.zeros((length, F)))
        rng = np.random.default_rng(4)
        x, mask = _random_batch(rng, [10 * length, length, 7 * length], 10 * length)
        x[1] = 0.0
        x[1, :length] = self.SEQUENCE
        batched = _inputs(x, mask)
        np.testing.assert_allclose(np.asarray(encoder(batched))[1], np.asarray(encoder(alone))[0],
                                   atol=1e-6)
        np.testing.assert_allclose(np.asarray(autoencoder(batched))[1, :length],
                                   np.asarray(autoencoder(alone))[0], atol=1e-6)

    def test_a_genuine_zero_step_is_data_not_padding(self):
        _, encoder = _build()
        with_zero = np.insert(self.SEQUENCE, 2, 0.0, axis=0)
        assert not np.any(with_zero[2])
        a = encoder(self._padded(with_zero, 8, np.zeros((8, F))))
        b = encoder(self._padded(self.SEQUENCE, 8, np.zeros((8, F))))
        assert np.max(np.abs(np.asarray(a) - np.asarray(b))) > 1e-4

    def test_padding_gets_exactly_zero_gradient(self):
        autoencoder, _ = _build()
        rng = np.random.default_rng(3)
        x, mask = _random_batch(rng, [5, 2], 6)
        x[1, 2:] = np.nan  # garbage padding must not poison the weight gradients either
        x = tf.Variable(x)
        with tf.GradientTape() as tape:
            inputs = {"x": x, "mask": tf.constant(mask)}
            loss = _masked_mean(tf.where(tf.math.is_nan(x), 0.0, x), autoencoder(inputs), mask)
        x_gradient, *weight_gradients = tape.gradient(
            loss, [x, *autoencoder.trainable_variables])
        x_gradient = x_gradient.numpy()
        assert np.all(x_gradient[mask == 0] == 0.0)
        assert np.all(np.isfinite(x_gradient)) and np.any(x_gradient[mask == 1] != 0.0)
        assert all(np.all(np.isfinite(g)) for g in weight_gradients)


class TestSaving:
    @pytest.mark.parametrize("cfg", [
        ModelConfig(units=8, layers=2, embedding_dim=4, bidirectional=True),
        ModelConfig(units=8, layers=2, embedding_dim=4, bidirectional=True,
                    embedding_from="all_layers"),
        ModelConfig(units=8, layers=2, embedding_dim=4, pooling=("max", "mean")),
    ], ids=["bilstm2", "all_layers", "pooling"])
    def test_keras_file_round_trip_in_safe_mode(self, tmp_path, cfg):
        autoencoder, _ = _build(cfg)
        inputs = _inputs(*_random_batch(np.random.default_rng(4), [4, 2], 5))
        autoencoder.save(tmp_path / "ae.keras")
        reloaded = keras.models.load_model(tmp_path / "ae.keras", safe_mode=True)
        np.testing.assert_array_equal(autoencoder(inputs), reloaded(inputs))
        encoder = keras.Model(reloaded.input, reloaded.get_layer("embedding").output)
        assert encoder(inputs).shape == (2, 4)

    def test_config_round_trip(self):
        autoencoder, _ = _build()
        clone = keras.Model.from_config(autoencoder.get_config())
        assert clone.get_config() == autoencoder.get_config()

    def test_saved_model_serves_without_seqpipe(self, tmp_path):
        _, encoder = _build()
        x, mask = _random_batch(np.random.default_rng(5), [6, 3, 1], 6)
        expected = np.asarray(encoder(_inputs(x, mask)))
        export_encoder(encoder, tmp_path / "encoder")
        np.savez(tmp_path / "batch.npz", x=x, mask=mask)
        script = (
            "import json, sys, numpy as np, tensorflow as tf\n"
            f"batch = np.load({str(tmp_path / 'batch.npz')!r})\n"
            f"serve = tf.saved_model.load({str(tmp_path / 'encoder')!r})"
            ".signatures['serving_default']\n"
            "out = serve(x=tf.constant(batch['x']), mask=tf.constant(batch['mask']))\n"
            "assert 'seqpipe' not in sys.modules\n"
            "print(json.dumps({k: v.numpy().tolist() for k, v in out.items()}))\n"
        )
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                cwd=tmp_path, timeout=120, check=True)
        served = json.loads(result.stdout.strip().splitlines()[-1])
        assert list(served) == ["embedding"]
        np.testing.assert_allclose(served["embedding"], expected, atol=1e-6)


def _train(autoencoder, optimizer, batches, steps):
    @tf.function
    def step(x, mask):
        with tf.GradientTape() as tape:
            predictions = autoencoder({"x": x, "mask": mask}, training=True)
            loss = _masked_mean(x, predictions, mask)
        gradients = tape.gradient(loss, autoencoder.trainable_variables)
        optimizer.apply_gradients(zip(gradients, autoencoder.trainable_variables, strict=True))
        return loss

    return [float(step(*batches[i % len(batches)])) for i in range(steps)]


class TestTraining:
    def test_custom_step_reduces_the_masked_loss(self):
        autoencoder, _ = _build()
        optimizer = keras.optimizers.Adam(learning_rate=1e-2, global_clipnorm=1.0)
        rng = np.random.default_rng(6)
        # Two buckets of different lengths: one traced function per shape.
        batches = [_random_batch(rng, [5, 3, 4, 5], 5), _random_batch(rng, [9, 7], 9)]
        losses = _train(autoencoder, optimizer, batches, steps=40)
        assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
