"""The training loop: exports, exact epoch losses, resume, and refusals before any step."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from literal_datasets import DETERMINISTIC, write_dataset

from seqpipe.config import TrainConfig
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset import records
from seqpipe.input_pipeline import data
from seqpipe.training import inputs as inputs_lib
from seqpipe.training import trainer as train
from seqpipe.training.model_dir import (
    AUTOENCODER_FILE,
    CONFIG_FILE,
    ENCODER_DIR,
    HISTORY_FILE,
    LOCK_FILE,
    METADATA_COPY,
    SUMMARY_FILE,
)
from seqpipe.training.resume import model_dir_lock
from seqpipe.training.step import make_strategy


@pytest.mark.parametrize("batches, epochs, min_steps, passes", [
    (9, 30, 1000, 4),     # ceil(1000 / 270)
    (9, 30, 0, 1),        # no step budget
    (3125, 30, 2000, 1),  # large data: the epochs already exceed the budget
    (1, 3, 10, 4),        # one (partial) batch per epoch: ceil(10 / 3)
    (2, 30, 61, 2),       # ceil(61 / 60)
    (2, 30, 60, 1),       # exactly enough
])
def test_min_steps_passes_over_small_data_several_times_per_epoch(
        tiny_config, batches, epochs, min_steps, passes):
    cfg = replace_section(tiny_config, "train", epochs=epochs, min_steps=min_steps)
    assert inputs_lib.passes_per_epoch(cfg, batches) == passes


def replace_section(cfg, section, **changes):
    """`cfg` with some keys of one section changed."""
    return dataclasses.replace(cfg, **{section: dataclasses.replace(
        getattr(cfg, section), **changes)})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset, tiny_config):
    """One epoch, so the exported (best) weights are the last ones."""
    cfg = replace_section(tiny_config, "train", epochs=1)
    model_dir = tmp_path_factory.mktemp("run") / "model"
    summary = train.train(tiny_dataset, model_dir, cfg, verbose=False)
    return model_dir, cfg, summary


def test_exports_everything(trained):
    model_dir, cfg, summary = trained
    for name in (AUTOENCODER_FILE, CONFIG_FILE, METADATA_COPY,
                 HISTORY_FILE, SUMMARY_FILE):
        assert (model_dir / name).is_file(), name
    assert (model_dir / ENCODER_DIR / "saved_model.pb").is_file()
    assert list((model_dir / "logs").glob("events.out.tfevents.*"))
    assert not (model_dir / LOCK_FILE).exists()
    assert summary["epochs"] == 1 and summary["stopped_by"] == "epochs"
    assert 0 < summary["padding_efficiency"] <= 1


def test_epoch_losses_are_the_exact_masked_mean(trained, tiny_dataset):
    """history's val_loss == sum of squared errors / valid values over the whole split."""
    model_dir, cfg, _ = trained
    autoencoder = keras.models.load_model(model_dir / AUTOENCODER_FILE, safe_mode=True)
    sse, count = 0.0, 0.0
    for inputs, targets, weights in data.make_dataset(tiny_dataset, "val", cfg.data,
                                                      training=False).as_numpy_iterator():
        predictions = np.asarray(autoencoder(inputs), np.float64)
        valid = weights.astype(bool)
        sse += np.square(predictions - targets)[valid].sum()
        count += valid.sum() * targets.shape[-1]
    history = json.loads((model_dir / HISTORY_FILE).read_text())
    assert history[0]["val_loss"] == pytest.approx(sse / count, rel=1e-5)


def test_a_finished_run_continues_to_more_epochs(trained, tmp_path, tiny_dataset):
    model_dir, cfg, _ = trained
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    summary = train.train(tiny_dataset, copy, replace_section(cfg, "train", epochs=2),
                          verbose=False)
    history = json.loads((copy / HISTORY_FILE).read_text())
    original = json.loads((model_dir / HISTORY_FILE).read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    assert history[0] == original[0]
    assert summary["epochs"] == 2


def _epoch_batches(trainer, epoch, skip=0):
    """The x arrays of the train batches `trainer` feeds epoch `epoch` from step `skip`."""
    return [inputs["x"].numpy()
            for inputs, _, _ in trainer.inputs.distributed_dataset("train", epoch, skip)]


def test_an_epoch_is_a_function_of_its_seed_and_resume_skips_exactly(
        tmp_path, tiny_dataset, tiny_config):
    """Small windows and buffer over 2 shards, so the parallel read order matters."""
    cfg = replace_section(tiny_config, "data", batch_size=8, sort_window=24,
                          shuffle_buffer=16)
    trainer = train.Trainer(tiny_dataset, tmp_path / "model", cfg,
                            strategy=make_strategy("default"), verbose=False)
    try:
        first = _epoch_batches(trainer, 3)
        assert len(first) > 6
        for again in (_epoch_batches(trainer, 3), _epoch_batches(trainer, 3)):
            assert len(again) == len(first)
            assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
        resumed = _epoch_batches(trainer, 3, skip=5)
        assert len(resumed) == len(first) - 5
        assert all(np.array_equal(a, b) for a, b in zip(first[5:], resumed, strict=True))
        other_epoch = _epoch_batches(trainer, 4)
        assert not all(np.array_equal(a, b) for a, b in zip(first, other_epoch, strict=False))

        # One replica reads every epoch from one stream: the same batches.
        def streamed(epoch, skip=0):
            stream = trainer.inputs.stream("train", epoch, skip)
            return [inputs["x"].numpy() for inputs, _, _ in stream.epoch()]

        for expected, got in ((first[5:], streamed(3, skip=5)), (other_epoch, streamed(4))):
            assert len(got) == len(expected)
            assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))
        stream = trainer.inputs.stream("train", 5, 0)
        assert trainer.inputs.stream("train", 5, 0) is stream and stream.is_at(5, 0)
        next(stream.epoch())  # stopped after one batch: lost, restarted when asked again
        assert not stream.is_at(5, 1) and trainer.inputs.stream("train", 5, 0) is not stream

        # The stream ends with the run's last epoch; a later epoch gets a new stream.
        last = cfg.train.epochs - 1
        stream = trainer.inputs.stream("train", last, 0)
        expected = _epoch_batches(trainer, last)
        got = [inputs["x"].numpy() for inputs, _, _ in stream.epoch()]
        assert len(got) == len(expected)
        assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))
        assert not stream.is_at(last + 1, 0)
        assert list(stream.epoch()) == []  # nothing read past the last epoch
        after = trainer.inputs.stream("train", last + 1, 0)
        assert after is not stream and after.is_at(last + 1, 0)
        assert len([batch for batch in after.epoch()]) == len(_epoch_batches(trainer, last + 1))
    finally:
        trainer.close()


def test_model_dir_in_use_is_refused(tmp_path, tiny_dataset, tiny_config):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / LOCK_FILE).write_text(str(os.getpid()))
    with pytest.raises(train.TrainingError, match=f"in use by another training run \\(pid "
                                                  f"{os.getpid()}\\)"):
        train.train(tiny_dataset, model_dir, tiny_config, verbose=False)
    assert not (model_dir / "checkpoints").exists()


def _dead_pid() -> str:
    """The pid of a process that has exited."""
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_stale_lock_is_replaced_by_this_process_and_removed_after(tmp_path):
    """The lock `train()` holds: a dead run's pid gives way to ours, then nothing is left."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    dead = _dead_pid()
    (model_dir / LOCK_FILE).write_text(dead)
    with model_dir_lock(model_dir):
        assert (model_dir / LOCK_FILE).read_text() == str(os.getpid()) != dead
        in_use = f"in use by another training run \\(pid {os.getpid()}\\)"
        with pytest.raises(train.TrainingError, match=in_use), model_dir_lock(model_dir):
            pass
        assert (model_dir / LOCK_FILE).read_text() == str(os.getpid())
    assert not (model_dir / LOCK_FILE).exists()


def test_stale_lock_of_a_dead_run_is_taken_over(tmp_path, tiny_dataset, tiny_config,
                                                monkeypatch):
    """`train()` runs while the lock holds its pid instead of the dead one; none is left."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / LOCK_FILE).write_text(_dead_pid())
    locks_seen_by_the_run = []
    run = train.Trainer.run

    def run_and_read_the_lock(trainer):
        locks_seen_by_the_run.append((model_dir / LOCK_FILE).read_text())
        return run(trainer)

    monkeypatch.setattr(train.Trainer, "run", run_and_read_the_lock)
    train.train(tiny_dataset, model_dir, replace_section(tiny_config, "train", epochs=1),
                verbose=False)
    assert locks_seen_by_the_run == [str(os.getpid())]
    assert (model_dir / SUMMARY_FILE).is_file()
    assert not (model_dir / LOCK_FILE).exists()


def test_schema_mismatch_is_refused_before_any_step(tmp_path, tiny_dataset, tiny_config):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    metadata = metadata_lib.read(tiny_dataset)
    metadata_lib.write_file(dataclasses.replace(metadata, num_features=3),
                            model_dir / METADATA_COPY)
    with pytest.raises(records.DatasetError, match="num_features=8 but the model .* "
                                                   "num_features=3"):
        train.train(tiny_dataset, model_dir, tiny_config, verbose=False)
    assert not (model_dir / "checkpoints").exists()


def test_missing_data_dir_is_refused(tmp_path, tiny_config):
    with pytest.raises(records.DatasetError, match="no such dataset directory"):
        train.train(tmp_path / "nope", tmp_path / "model", tiny_config, verbose=False)


@pytest.mark.slow
def test_killed_run_resumes_mid_epoch(tmp_path, tiny_dataset, tiny_config):
    """SIGKILL after the first mid-epoch backup (step 5 of about 28); the same command
    resumes there and finishes."""
    model_dir = tmp_path / "model"
    command = [sys.executable, "-m", "seqpipe", "train", "--data", str(tiny_dataset),
               "--model-dir", str(model_dir), "--config", "tiny", "--quiet",
               *[f"--set={o}" for o in ("synth.num_sequences=160", "model.units=16",
                                        "model.embedding_dim=8", "train.epochs=2",
                                        "train.checkpoint_every_steps=5",
                                        "data.batch_size=4")]]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    backup = model_dir / "checkpoints" / "backup" / "checkpoint"
    deadline = time.monotonic() + 300
    while not backup.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.stdout.read().decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (model_dir / SUMMARY_FILE).exists()

    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
    history = json.loads((model_dir / HISTORY_FILE).read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    assert any(h.get("resumed_at_step", 0) >= 5 for h in history)
    summary = json.loads((model_dir / SUMMARY_FILE).read_text())
    assert summary["epochs"] == 2 and summary["resumed"] is True


def test_learning_rate_schedules():
    cfg = TrainConfig(epochs=5, learning_rate=1.0, min_learning_rate=0.0)
    assert [train.learning_rate_for_epoch(cfg, e, []) for e in range(3)] == [1.0, 1.0, 1.0]
    cosine = dataclasses.replace(cfg, lr_schedule="cosine")
    assert [train.learning_rate_for_epoch(cosine, e, []) for e in range(5)] == pytest.approx(
        [1.0, 0.853553, 0.5, 0.146447, 0.0], abs=1e-6)
    plateau = dataclasses.replace(cfg, lr_schedule="plateau", lr_patience=2, lr_factor=0.5,
                                  min_learning_rate=0.2)
    history = [{"loss": 9, "val_loss": v} for v in (5, 4, 4.5, 4.2, 3, 3.1, 3.2, 3.3, 3.4)]
    rates = [train.learning_rate_for_epoch(plateau, e, history) for e in range(10)]
    # Epochs 2 and 3 do not beat epoch 1 -> halved from epoch 4; epochs 5 and 6 do not
    # beat epoch 4 -> 0.25 from epoch 7; epochs 7 and 8 -> 0.125, clipped to 0.2.
    assert rates == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.2]


def test_early_stopping_and_best_weights_wait_for_min_steps(tmp_path, tiny_dataset,
                                                           tiny_config):
    """40 steps an epoch, min_steps 100: epochs 0-1 (40, 80 steps) never compete, however
    low their validation loss; epoch 2 (120 steps) is the first that does."""
    history = [{"steps": 40, "val_loss": v} for v in (0.1, 0.5, 0.4, 0.45, 0.46)]
    cfg = TrainConfig(min_steps=100, early_stopping_patience=2)
    assert [train.first_eligible_epoch(cfg, history[:n]) for n in range(6)] == [
        None, None, None, 2, 2, 2]
    assert [train.stops_early(cfg, history[:n], True) for n in range(3, 6)] == [
        False, False, True]  # best 0.4 at epoch 2, then 2 epochs without better
    no_budget = dataclasses.replace(cfg, min_steps=0)
    assert train.first_eligible_epoch(no_budget, history[:1]) == 0
    assert train.stops_early(no_budget, history[:3], True)  # 0.1 at epoch 0, 2 worse
    assert not train.stops_early(cfg, history, has_val=False)

    cfg = replace_section(tiny_config, "train", min_steps=100)
    trainer = train.Trainer(tiny_dataset, tmp_path / "model", cfg,
                            strategy=make_strategy("default"), verbose=False)
    try:
        bests = []
        for epoch, record in enumerate(history):
            trainer.end_epoch({**record, "epoch": epoch, "loss": 1.0, "timesteps_per_second": 1.0},
                              history[:epoch + 1])
            bests.append(float(trainer.state.best_val_loss))
        assert bests == [float("inf"), float("inf"), 0.4, 0.4, 0.4]
    finally:
        trainer.close()


def test_non_finite_loss_stops_with_the_step(tmp_path, tiny_dataset, tiny_config):
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_dataset, data_dir)
    metadata = metadata_lib.read(data_dir)
    # A std of 1e-30 normalizes real values to ~1e30: the squared error overflows float32.
    tiny_std = dataclasses.replace(metadata.feature_stats, std=(1e-30,) * metadata.num_features)
    metadata_lib.write(dataclasses.replace(metadata, feature_stats=tiny_std), data_dir)
    with pytest.raises(train.TrainingError,
                       match=r"train loss is not finite at epoch 1, step 1; lower"):
        train.train(data_dir, tmp_path / "model", tiny_config, verbose=False)


def test_another_architecture_is_refused_on_resume(trained, tmp_path, tiny_dataset):
    model_dir, cfg, _ = trained
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    bigger = replace_section(cfg, "model", units=cfg.model.units * 2)
    with pytest.raises(train.TrainingError, match=r"another architecture \(model.units "
                                                  r"16 -> 32\); use a new --model-dir"):
        train.train(tiny_dataset, copy, bigger, verbose=False)


@pytest.mark.slow
def test_naive_relu_settings_train_without_nan(tmp_path):
    """The seed question's settings (relu LSTMs, 100 units) on long-tailed 7..356 data
    (fewer sequences than the default synthetic set, the same lengths)."""
    from beam_jobs.preprocess import preprocess
    from seqpipe import synthetic
    from seqpipe.config import load_config

    cfg = load_config("default", ["model.activation=relu", "model.units=100",
                                  "model.embedding_dim=0", "train.epochs=5",
                                  "synth.num_sequences=500",
                                  "train.early_stopping_patience=0", "train.min_steps=0",
                                  "train.checkpoint_every_steps=0"])
    raw = tmp_path / "raw.jsonl"
    synthetic.write_jsonl(cfg.synth, raw)
    preprocess([str(raw)], str(tmp_path / "data"), cfg.preprocess)
    summary = train.train(tmp_path / "data", tmp_path / "model", cfg, verbose=False)
    history = json.loads((tmp_path / "model" / HISTORY_FILE).read_text())
    assert sum(h["steps"] for h in history) >= 80  # 5 epochs of 20 batches
    assert all(np.isfinite(h["loss"]) and np.isfinite(h["val_loss"]) for h in history)
    assert summary["final_loss"] < history[0]["loss"]


def _literal_sequences(count: int) -> dict[str, np.ndarray]:
    """`count` sequences of lengths 1..8 and 2 features, distinct values."""
    rng = np.random.default_rng(7)
    return {f"s{i:02d}": rng.normal(size=(1 + i % 8, 2)) for i in range(count)}


def _ids(dataset) -> list[str]:
    return [i.decode() for inputs, _, _ in dataset.as_numpy_iterator() for i in inputs["id"]]


def test_holdout_splits_the_records_by_content_whatever_the_order_and_sharding(tmp_path):
    sequences = _literal_sequences(40)
    cfg = dataclasses.replace(DETERMINISTIC, deterministic=False, shuffle_buffer=8)
    sides = {}
    for shards in (1, 3):
        root = write_dataset(tmp_path / f"shards{shards}", sequences, num_shards=shards)
        for seed in (1, 2):
            held_out, kept = (
                _ids(data.make_dataset(root, "train", cfg, training=True, seed=seed,
                                       with_keys=True, holdout=data.Holdout(0.25, side)))
                for side in (True, False))
            assert len(set(held_out)) == len(held_out) and len(set(kept)) == len(kept)
            assert not set(held_out) & set(kept)
            assert sorted(held_out + kept) == sorted(sequences)
            assert data.count_held_out(root, "train", 0.25) == len(held_out)
            sides[shards, seed] = sorted(held_out)
    assert len(set(map(tuple, sides.values()))) == 1
    assert 0 < len(sides[1, 1]) < 40
    with pytest.raises(ValueError, match="fraction"):
        data.Holdout(0.0, held_out=True)


def test_without_a_val_split_validation_is_held_out_and_min_steps_repeats_epochs(
        tmp_path, tiny_config):
    """The held-out records are validated on exactly (masked mean), never trained on, and
    `min_steps` makes the one epoch several passes."""
    root = write_dataset(tmp_path / "data", _literal_sequences(40))
    held_out = data.Holdout(0.25, held_out=True)
    num_val = data.count_held_out(root, "train", 0.25)
    data_cfg = dataclasses.replace(DETERMINISTIC, batch_size=4)
    one_pass = len(list(data.make_dataset(root, "train", data_cfg, training=True,
                                          holdout=data.Holdout(0.25, held_out=False))))
    cfg = dataclasses.replace(
        tiny_config, data=data_cfg,
        train=dataclasses.replace(tiny_config.train, epochs=1, min_steps=3 * one_pass - 1,
                                  validation_fraction=0.25))
    summary = train.train(root, tmp_path / "model", cfg, verbose=False)

    assert summary["validation"] == "held out of train"
    assert (summary["num_val_records"], summary["num_train_records"]) == (num_val, 40 - num_val)
    assert summary["passes_per_epoch"] == 3
    history = json.loads((tmp_path / "model" / HISTORY_FILE).read_text())
    assert history[0]["steps"] == 3 * one_pass
    autoencoder = keras.models.load_model(tmp_path / "model" / AUTOENCODER_FILE, safe_mode=True)
    sse, count = 0.0, 0.0
    for inputs, targets, weights in data.make_dataset(root, "train", data_cfg, training=False,
                                                      holdout=held_out).as_numpy_iterator():
        predictions = np.asarray(autoencoder(inputs), np.float64)
        valid = weights.astype(bool)
        sse += np.square(predictions - targets)[valid].sum()
        count += valid.sum() * targets.shape[-1]
    assert count == sum(1 + int(i[1:]) % 8 for i in _ids(data.make_dataset(
        root, "train", data_cfg, training=False, with_keys=True, holdout=held_out))) * 2
    assert history[0]["val_loss"] == pytest.approx(sse / count, rel=1e-5)


def test_no_holdout_when_the_dataset_has_val_or_the_fraction_is_zero(tiny_dataset, tiny_config):
    metadata = metadata_lib.read(tiny_dataset)
    plan = inputs_lib.plan_inputs(tiny_dataset, tiny_config, metadata)
    assert plan.holdout is None and plan.val_records == metadata.num_records("val") > 0
    assert plan.describe() == []
    no_fraction = replace_section(tiny_config, "train", validation_fraction=0.0)
    assert inputs_lib.plan_inputs(tiny_dataset, no_fraction, metadata).holdout is None


def test_passes_of_an_epoch_are_seeded_and_resume_skips_across_them(
        tmp_path, tiny_dataset, tiny_config):
    cfg = replace_section(tiny_config, "data", batch_size=8, sort_window=24, shuffle_buffer=16)
    counted = len(list(data.make_dataset(tiny_dataset, "train", cfg.data, training=True)))
    cfg = replace_section(cfg, "train", epochs=1, min_steps=counted + 1)
    trainer = train.Trainer(tiny_dataset, tmp_path / "model", cfg,
                            strategy=make_strategy("default"), verbose=False)
    try:
        assert trainer.inputs.plan.passes_per_epoch == 2
        one_pass = replace_section(cfg, "train", min_steps=0)
        single = train.Trainer(tiny_dataset, tmp_path / "single", one_pass,
                               strategy=make_strategy("default"), verbose=False)
        try:
            first_pass = _epoch_batches(single, 3)
        finally:
            single.close()
        both = _epoch_batches(trainer, 3)
        assert all(np.array_equal(a, b) for a, b in zip(first_pass, both, strict=False))
        second_pass = both[len(first_pass):]
        assert len(second_pass) > 0
        assert not all(np.array_equal(a, b)
                       for a, b in zip(first_pass, second_pass, strict=False))
        skip = len(first_pass) + 1
        resumed = _epoch_batches(trainer, 3, skip=skip)
        assert len(resumed) == len(both) - skip
        assert all(np.array_equal(a, b) for a, b in zip(both[skip:], resumed, strict=True))
    finally:
        trainer.close()
