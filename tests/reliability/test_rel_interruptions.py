"""Interruptions: SIGKILL of real `seqpipe` subprocesses at random moments.

* `preprocess` killed mid-run leaves nothing at `--output` that looks finished
  (no `metadata.json`), and a re-run succeeds and removes what it left
  (tests/reliability/test_rel_object_store.py kills it at every commit step);
* `train` killed several times in a loop always resumes and finishes with the
  configured epochs and an honest history (each epoch once, in order);
* `embed` killed mid-run leaves no partial Parquet at `--output`.

Kill delays come from `random.Random(RELIABILITY_SEED)` (environment variable,
default 0) and are printed, so a failure can be replayed.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import time
from pathlib import Path

import pytest
from beam_helpers import committed_names
from reliability_helpers import run_cli, start_cli

from beam_jobs import commit
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset import records

SEED = int(os.environ.get("RELIABILITY_SEED", "0"))


def _kill_after(proc, delay: float) -> bool:
    """SIGKILLs `proc` after `delay` s; True if it was still running (a real kill)."""
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return alive


@pytest.mark.slow
def test_preprocess_killed_leaves_no_finished_output_and_rerun_succeeds(tmp_path):
    rng = random.Random(SEED)
    raw = tmp_path / "raw"
    proc = run_cli("synth", "--output", raw, "--n", "12000", "--set", "synth.max_length=60")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "data"
    kills = 0
    for attempt in range(3):
        proc = start_cli("preprocess", "--input", raw / "*.jsonl", "--output", out,
                         log=tmp_path / "preprocess.log")
        # the job is fast: wait until its staging directory exists, then a random delay
        while proc.poll() is None and not list(out.glob(f".staging-{proc.pid}@*")):
            time.sleep(0.01)
        delay = rng.uniform(0.0, 1.2)
        killed = _kill_after(proc, delay)
        print(f"preprocess attempt {attempt}: kill after {delay:.2f}s -> killed={killed}")
        if not killed:
            break
        kills += 1
        assert not (out / records.METADATA_FILE).exists()
        # left: the run's staging directory, and shards or rejects it had moved into
        # place; never metadata.json, so no reader takes them for a dataset, and the
        # next run deletes them (their run is dead)
        left = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
        assert all(commit.staging_owner(name) or commit.is_dataset_name(name)
                   for name in left), left
        assert {commit.staging_owner(name).rsplit("-", 1)[0] for name in left
                if commit.staging_owner(name)} <= {f"{proc.pid}@{socket.gethostname()}"}
    assert kills >= 1, "the job finished before any kill: make the corpus bigger"
    if not (out / records.METADATA_FILE).exists():
        proc = run_cli("preprocess", "--input", raw / "*.jsonl", "--output", out)
        assert proc.returncode == 0, proc.stderr[-2000:]
    metadata = metadata_lib.read(out)
    assert metadata.counts.read == metadata.counts.written == 12000
    # the killed runs' leftovers removed: only the listed files remain
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == (
        sorted(committed_names(metadata)))


@pytest.mark.slow
def test_training_killed_repeatedly_resumes_and_finishes(small_dataset, small_overrides,
                                                         tmp_path):
    rng = random.Random(SEED + 1)
    epochs = 4
    model = tmp_path / "model"
    args = ["train", "--data", small_dataset, "--model-dir", model, "--config", "tiny",
            *[a for o in small_overrides for a in ("--set", o)],
            "--set", f"train.epochs={epochs}", "--set", "train.checkpoint_every_steps=1",
            "--set", "data.batch_size=4"]
    kills, log = 0, tmp_path / "train.log"
    for attempt in range(2):
        delay = rng.uniform(6.0, 13.0)
        proc = start_cli(*args, log=log)
        killed = _kill_after(proc, delay)
        print(f"train attempt {attempt}: kill after {delay:.2f}s -> killed={killed}")
        if not killed:
            break
        kills += 1
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert kills >= 1
    summary = json.loads((model / "summary.json").read_text())
    history = json.loads((model / "history.json").read_text())
    assert summary["epochs"] == epochs and summary["stopped_by"] == "epochs"
    assert [h["epoch"] for h in history] == list(range(epochs)), history
    for record in history:
        assert math.isfinite(record["loss"]) and math.isfinite(record["val_loss"])
        assert record["steps"] >= record.get("resumed_at_step", 0) >= 0
    assert not (model / ".lock").exists()
    assert (model / "encoder" / "saved_model.pb").is_file()
    import keras

    import seqpipe.model.layers  # noqa: F401 - registers the layers the file names

    keras.models.load_model(model / "autoencoder.keras", safe_mode=True)
    print(f"training: {kills} kills, log {log.read_text()[-400:]}")


@pytest.mark.slow
def test_kill_between_backup_and_history_keeps_history_honest(small_dataset,
                                                               small_overrides, tmp_path,
                                                               monkeypatch):
    from seqpipe.config import load_config
    from seqpipe.training import trainer as train_lib
    from seqpipe.training.outputs import RunOutputs

    cfg = load_config("tiny", [*small_overrides, "train.epochs=2"])
    original = RunOutputs.write_epoch

    def dies_at_epoch_1(self, record, history):
        if record["epoch"] == 0:
            raise KeyboardInterrupt("simulated SIGKILL after the backup")
        return original(self, record, history)

    monkeypatch.setattr(RunOutputs, "write_epoch", dies_at_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train_lib.train(small_dataset, tmp_path / "m", cfg, verbose=False)
    monkeypatch.setattr(RunOutputs, "write_epoch", original)
    summary = train_lib.train(small_dataset, tmp_path / "m", cfg, verbose=False)
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    assert summary["epochs"] == 2


@pytest.mark.slow
def test_kill_after_last_step_backup_keeps_loss_honest(small_dataset, small_overrides,
                                                       tmp_path, monkeypatch):
    from seqpipe.config import load_config
    from seqpipe.training import trainer as train_lib

    cfg = load_config("tiny", [*small_overrides, "train.epochs=2",
                               "train.checkpoint_every_steps=1"])
    original = train_lib.Trainer.end_epoch

    def dies_before_epoch_end(self, record, history):
        raise KeyboardInterrupt("simulated SIGKILL after the last step's backup")

    monkeypatch.setattr(train_lib.Trainer, "end_epoch", dies_before_epoch_end)
    with pytest.raises(KeyboardInterrupt):
        train_lib.train(small_dataset, tmp_path / "m", cfg, verbose=False)
    monkeypatch.setattr(train_lib.Trainer, "end_epoch", original)
    train_lib.train(small_dataset, tmp_path / "m", cfg, verbose=False)
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    # The resumed epoch trained 0 steps, yet its record covers the whole epoch.
    train_timesteps = metadata_lib.read(small_dataset).split("train").num_timesteps
    assert history[0]["valid_timesteps"] == train_timesteps, history[0]
    assert history[0]["resumed_at_step"] == history[0]["steps"]


@pytest.mark.slow
def test_embed_killed_leaves_no_partial_parquet(small_dataset, small_model, tmp_path):
    import pyarrow.parquet as pq

    rng = random.Random(SEED + 2)
    out = tmp_path / "emb.parquet"
    expected = metadata_lib.read(small_dataset).num_records("train")
    args = ["embed", "--data", small_dataset, "--model-dir", small_model, "--split",
            "train", "--output", out]
    for attempt in range(1):
        delay = rng.uniform(4.0, 9.0)
        proc = start_cli(*args, log=tmp_path / "embed.log")
        killed = _kill_after(proc, delay)
        print(f"embed attempt {attempt}: kill after {delay:.2f}s -> killed={killed}")
        if out.exists():  # only ever a complete file (written to a temp name, renamed)
            assert pq.read_table(out).num_rows == expected
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert pq.read_table(out).num_rows == expected


def test_failed_parquet_write_leaves_nothing(small_dataset, small_model, tmp_path,
                                             monkeypatch):
    """Fault injection inside `embed.write_parquet`: the write dies half way."""
    import numpy as np
    import pyarrow.parquet as pq

    from seqpipe.commands import embed

    embeddings = embed.Embeddings(ids=np.array(["a", "b"]), labels=np.array(["", ""]),
                                  lengths=np.array([1, 2], np.int32),
                                  vectors=np.ones((2, 4), np.float32), split="test")
    out = tmp_path / "e.parquet"
    embed.write_parquet(embeddings, out)
    good = out.read_bytes()

    def dies_half_way(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1" + b"\x00" * 100)  # a partial file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", dies_half_way)
    with pytest.raises(OSError):
        embed.write_parquet(embeddings, out)
    assert out.read_bytes() == good  # the earlier complete file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["e.parquet"]  # no temp left
