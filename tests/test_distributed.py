"""Distribution: N replicas give the single-replica masked mean; real multi-worker runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import seqpipe.model.layers  # noqa: F401 - registers the custom layers for load_model
from seqpipe.dataset import metadata as metadata_lib

TINY_OVERRIDES = ("synth.num_sequences=160", "synth.max_length=60", "model.units=16",
                  "model.embedding_dim=8", "train.epochs=2")

MIRRORED_STEP = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from seqpipe.input_pipeline import data
    from seqpipe.dataset import metadata as metadata_lib
    from seqpipe.config import load_config
    from seqpipe.training.trainer import Trainer

    data_dir, work, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    overrides = sys.argv[4:]
    metadata = metadata_lib.read(data_dir)
    strategies = {"single": tf.distribute.get_strategy(),
                  "mirrored": tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])}
    output = {}
    for objective, rows in cases:
        cfg = load_config("tiny", [*overrides, f"train.objective={objective}"])
        case = f"{objective}-{rows}"
        trainers = {name: Trainer(data_dir, f"{work}/{case}/{name}", cfg, metadata=metadata,
                                  strategy=strategy, verbose=False)
                    for name, strategy in strategies.items()}
        trainers["mirrored"].objective.model.set_weights(
            trainers["single"].objective.model.get_weights())

        # One global batch of `rows` sequences of different lengths: the two replicas get
        # parts with different numbers of valid steps (with 1 row, the second gets none).
        dataset = data.make_dataset(data_dir, "train", cfg.data, training=False,
                                    metadata=metadata)
        batch = next(b for b in dataset.unbatch().padded_batch(rows)
                     if b[2].numpy()[:2].sum() != b[2].numpy()[2:].sum())
        results = {}
        for name, trainer in trainers.items():
            distributed = next(iter(strategies[name].experimental_distribute_dataset(
                tf.data.Dataset.from_tensors(batch))))
            totals = trainer.train_step(distributed)
            results[name] = {**{key: float(value) for key, value in totals._asdict().items()},
                             "weights": [w.tolist()
                                         for w in trainer.objective.model.get_weights()]}
        halves = [float(batch[2].numpy()[:2].sum()), float(batch[2].numpy()[2:].sum())]
        output[case] = {"results": results, "halves": halves}
    print(json.dumps(output))
""")
# (objective, global batch rows): a batch of one sequence leaves the second replica no rows.
MIRRORED_CASES = (("reconstruction", 4), ("triplet", 4), ("both", 4), ("both", 1))


def mirrored_step_results(work, data_dir, cases, processes: int = 2) -> dict[str, dict]:
    """MIRRORED_STEP's single and mirrored results of each `(objective, rows)` case, keyed
    `"{objective}-{rows}"`. The cases are dealt to `processes` processes that run at the
    same time (a step's tracing is mostly one core's work; each process starts TensorFlow
    and its logical devices once)."""
    overrides = [*TINY_OVERRIDES, "train.clipnorm=1.0"]
    groups = [cases[index::processes] for index in range(processes) if cases[index::processes]]
    running = [subprocess.Popen([sys.executable, "-c", MIRRORED_STEP, str(data_dir),
                                 str(work), json.dumps(group), *overrides],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for group in groups]
    results = {}
    for process in running:
        out, err = process.communicate(timeout=900)
        assert process.returncode == 0, err[-3000:]
        results.update(json.loads(out.strip().splitlines()[-1]))
    return results


@pytest.fixture(scope="module")
def mirrored_steps(tmp_path_factory, tiny_dataset) -> dict[str, dict]:
    """`mirrored_step_results` of every case of MIRRORED_CASES."""
    return mirrored_step_results(tmp_path_factory.mktemp("mirrored"), tiny_dataset,
                                 MIRRORED_CASES)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["reconstruction", "triplet", "both"])
def test_two_replicas_take_the_single_replica_step(mirrored_steps, objective):
    """Same start, same global batch: loss and updated weights agree to float precision.
    The triplet term's negatives of each replica's anchors are the whole global batch's."""
    assert_same_step(mirrored_steps[f"{objective}-4"], objective, rows=4)


@pytest.mark.slow
def test_a_replica_without_data_joins_the_triplet_step(mirrored_steps):
    """A global batch of one sequence: the second replica gets no rows, yet must join the
    gathers of the triplet term (it steps on one all-padding row)."""
    assert_same_step(mirrored_steps["both-1"], "both", rows=1)


def assert_same_step(case: dict, objective: str, rows: int) -> None:
    """The single- and the mirrored-strategy step of one case agree (MIRRORED_STEP)."""
    assert case["halves"][0] != case["halves"][1]  # uneven padding across replicas
    single, mirrored = case["results"]["single"], case["results"]["mirrored"]
    assert mirrored["num_values"] == single["num_values"]
    assert mirrored["num_steps"] == single["num_steps"]  # the history's valid_timesteps
    assert mirrored["num_sequences"] == single["num_sequences"] == rows
    assert mirrored["squared_error"] == pytest.approx(single["squared_error"], rel=1e-6)
    assert mirrored["triplet"] == pytest.approx(single["triplet"], rel=1e-6)
    assert (single["triplet"] > 0) == (objective != "reconstruction")
    for a, b in zip(single["weights"], mirrored["weights"], strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _train_command(data_dir, model_dir, *extra) -> list[str]:
    return [sys.executable, "-m", "seqpipe", "train", "--data", str(data_dir),
            "--model-dir", str(model_dir), "--config", "tiny", "--quiet", "--json",
            *[f"--set={o}" for o in (*TINY_OVERRIDES, *extra)]]


def start_two_workers(data_dir, model_dir, *settings: str,
                      chief_logs: bool = False) -> list[subprocess.Popen]:
    """`seqpipe train` as 2 worker processes on localhost ports (the chief logging each
    step to its stdout with `chief_logs`)."""
    cluster = {"worker": [f"localhost:{p}" for p in _free_ports(2)]}
    workers = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}})}
        command = _train_command(data_dir, model_dir, *settings)
        if chief_logs and index == 0:
            command.remove("--quiet")
        workers.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
    return workers


def start_single(data_dir, model_dir, *settings: str) -> subprocess.Popen:
    """`seqpipe train` as one process."""
    return subprocess.Popen(_train_command(data_dir, model_dir, *settings),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def summaries(processes: list[subprocess.Popen]) -> list[dict]:
    """Waits for every `seqpipe train` process (all of them, also after a failure); their
    `--json` summaries."""
    outputs = [process.communicate(timeout=900) for process in processes]
    failed = [f"process {i}: {err[-2000:]}" for i, (process, (_, err))
              in enumerate(zip(processes, outputs, strict=True)) if process.returncode]
    assert not failed, "\n".join(failed)
    return [json.loads(out[out.index("{"):]) for out, _ in outputs]


def _history(model_dir) -> list[dict]:
    return json.loads((model_dir / "history.json").read_text())


# Each step's global batch is the whole train split, one shard per worker.
WHOLE_SPLIT = ("data.batch_size=512", "data.min_batch_efficiency=0", "train.epochs=4",
               "train.early_stopping_patience=0", "train.objective=both")


@pytest.fixture(scope="module")
def two_worker_runs(tmp_path_factory, tiny_dataset):
    """The runs of the two tests below: 2 workers on batches of the usual size
    ("sharded"); then 2 workers and one process on WHOLE_SPLIT batches ("whole",
    "single") at the same time (three processes of small steps leave the cores idle part
    of the time; five were slower than two groups). The work dir and the summaries of
    the two-worker runs."""
    work = tmp_path_factory.mktemp("two-workers")
    sharded = summaries(start_two_workers(tiny_dataset, work / "sharded"))
    whole = summaries([*start_two_workers(tiny_dataset, work / "whole", *WHOLE_SPLIT),
                       start_single(tiny_dataset, work / "single", *WHOLE_SPLIT)])
    return {"work": work, "sharded": sharded, "whole": whole[:2]}


@pytest.mark.slow
def test_two_workers_train_to_identical_weights(two_worker_runs, tiny_dataset):
    """2 worker processes on localhost ports, the train split sharded between them into
    batches of the usual size (uneven counts per worker): both end with the same weights,
    and every real timestep is seen exactly once per epoch. (That the steps are the
    single process's is `test_two_workers_take_the_single_process_steps`.)"""
    summaries, model_dir = two_worker_runs["sharded"], two_worker_runs["work"] / "sharded"
    assert summaries[0]["num_replicas"] == summaries[1]["num_replicas"] == 2
    assert summaries[0]["weights_sha256"] == summaries[1]["weights_sha256"]
    train_timesteps = metadata_lib.read(tiny_dataset).split("train").num_timesteps
    history = _history(model_dir)
    assert [h["epoch"] for h in history] == [0, 1]
    for record in history:
        assert record["valid_timesteps"] == train_timesteps
        assert np.isfinite(record["loss"]) and np.isfinite(record["val_loss"])
    assert not list(model_dir.glob("checkpoints/backup/*worker*"))


@pytest.mark.slow
def test_two_workers_take_the_single_process_steps(two_worker_runs):
    """Each step's global batch is the whole train split (one shard per worker, padded to
    different lengths, with different valid counts): the 2-worker run takes the steps of
    one process to float rounding, so its losses and weights match tightly. Both terms of
    the loss: the reconstruction sums and counts are global (a loss normalized per worker
    fails this), and a sequence's triplet crops do not depend on its worker or row."""
    whole = two_worker_runs["whole"]
    assert whole[0]["weights_sha256"] == whole[1]["weights_sha256"]
    multi_dir, single_dir = two_worker_runs["work"] / "whole", two_worker_runs["work"] / "single"
    multi_history, single_history = _history(multi_dir), _history(single_dir)
    assert [h["steps"] for h in multi_history] == [h["steps"] for h in single_history]
    assert len(single_history) == 4 and all(h["steps"] == 1 for h in single_history)
    for multi, one in zip(multi_history, single_history, strict=True):
        assert multi["loss"] == pytest.approx(one["loss"], rel=1e-5)
        assert multi["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)
    multi_weights = keras.models.load_model(multi_dir / "autoencoder.keras",
                                            safe_mode=True).get_weights()
    single_weights = keras.models.load_model(single_dir / "autoencoder.keras",
                                             safe_mode=True).get_weights()
    for a, b in zip(single_weights, multi_weights, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
