"""tf.data service mode (`data.service`): servers, one-line errors, exact epochs, resume.

The service runs on localhost: in this process for the training tests, as
`seqpipe data-service` processes for the command tests. Training workers are
real processes with `TF_CONFIG` (`test_distributed`'s launcher).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest
from test_cli import run_cli
from test_distributed import _free_ports, _history, start_single, start_two_workers, summaries

from seqpipe.config import ConfigError, load_config
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.training.model_dir import SUMMARY_FILE
from seqpipe.training.service_address import (
    DataServiceError,
    ServiceAddress,
    check_reachable,
    free_port,
)


def test_addresses_parse_and_bad_ones_name_the_key():
    assert ServiceAddress.parse("grpc://host0:5050") == ServiceAddress("host0", 5050)
    assert ServiceAddress.parse("10.0.0.7:5050").target == "grpc://10.0.0.7:5050"
    assert ServiceAddress.parse("[::1]:80").hostport == "[::1]:80"
    for bad in ("host0", "http://host0:5050", "host0:port", "host0:5050/x"):
        with pytest.raises(DataServiceError, match="is not a dispatcher address"):
            ServiceAddress.parse(bad)
    assert load_config("tiny", ["data.service=grpc://host0:5050"]).data.service == (
        "grpc://host0:5050")
    assert load_config("tiny", []).data.service == ""
    with pytest.raises(ConfigError, match="data.service: expected '' or grpc://host:port"):
        load_config("tiny", ["data.service=host0"])


def test_a_port_in_use_and_a_silent_dispatcher_are_refused():
    with socket.socket() as held:
        held.bind(("", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(DataServiceError, match=f"port {port} is in use"):
            free_port(port)
    assert free_port(0) > 0
    closed = _free_ports(1)[0]
    with pytest.raises(DataServiceError,
                       match=f"no tf.data service dispatcher answers at localhost:{closed}"):
        check_reachable(ServiceAddress("localhost", closed))


def test_command_errors_are_one_line(tmp_path, tiny_dataset):
    """Checked before TensorFlow loads: exactly one line on stderr, exit status 2."""
    closed = _free_ports(1)[0]
    with socket.socket() as held:
        held.bind(("", 0))
        held.listen()
        taken = held.getsockname()[1]
        cases = [
            (["data-service", "dispatcher", "--port", str(taken)], f"port {taken} is in use"),
            (["data-service", "worker", "--port", "0", "--dispatcher", f"localhost:{closed}"],
             f"no tf.data service dispatcher answers at localhost:{closed}"),
            (["data-service", "worker", "--port", "0"], "a worker needs --dispatcher"),
            (["train", "--data", str(tiny_dataset), "--model-dir", str(tmp_path / "m"),
              "--set", f"data.service=grpc://localhost:{closed}"],
             f"no tf.data service dispatcher answers at localhost:{closed}"),
        ]
        for args, message in cases:
            result = run_cli(*args, cwd=tmp_path)
            assert result.returncode == 2, result.stderr
            assert result.stderr.count("\n") == 1, result.stderr
            assert result.stderr.startswith(f"seqpipe {args[0]}: error: "), result.stderr
            assert message in result.stderr


def test_a_first_step_on_an_empty_batch_adds_nothing(tmp_path, tiny_dataset, tiny_config):
    """A training worker whose service job was read by the others before its first step
    steps first on tf.distribute's stand-in batch, of static shape [0, 0, F]: the step
    traces on it, adds nothing and leaves the weights as they were."""
    import numpy as np
    import tensorflow as tf

    from seqpipe.training.trainer import Trainer

    trainer = Trainer(tiny_dataset, tmp_path / "model", tiny_config, verbose=False)
    features = trainer.metadata.num_features
    steps, mask = tf.zeros([0, 0, features]), tf.zeros([0, 0])
    before = trainer.objective.model.get_weights()
    totals = trainer.train_step(({"x": steps, "mask": mask}, steps, mask))
    assert [float(value) for value in totals] == [0.0] * len(totals)
    for old, new in zip(before, trainer.objective.model.get_weights(), strict=True):
        np.testing.assert_array_equal(new, old)


def _start_server(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "seqpipe", "data-service", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _first_line(server: subprocess.Popen) -> str:
    line = server.stdout.readline()
    assert line, server.stderr.read()[-3000:]
    return line.strip()


@pytest.mark.slow
def test_commands_listen_serve_and_stop_on_signals(tmp_path):
    """A dispatcher (fault-tolerant, with a work dir) and a worker as `seqpipe
    data-service` processes: they say where they listen, serve a distributed
    epoch, refuse a second server on their port, and stop on SIGTERM / SIGINT."""
    import tensorflow as tf

    port, worker_port = _free_ports(2)
    dispatcher = _start_server("dispatcher", "--port", str(port),
                               "--work-dir", str(tmp_path / "journal"))
    servers = [dispatcher]
    try:
        assert _first_line(dispatcher) == (
            f"seqpipe data-service dispatcher: listening on port {port}, state journaled "
            f"in {tmp_path / 'journal'}")
        worker = _start_server("worker", "--dispatcher", f"localhost:{port}",
                               "--port", str(worker_port), "--host", "localhost")
        servers.append(worker)
        assert _first_line(worker) == (f"seqpipe data-service worker: listening on "
                                       f"localhost:{worker_port}, for dispatcher "
                                       f"localhost:{port}")
        served = tf.data.Dataset.range(10).apply(tf.data.experimental.service.distribute(
            "distributed_epoch", f"grpc://localhost:{port}"))
        assert sorted(int(x) for x in served) == list(range(10))
        assert list((tmp_path / "journal").iterdir())  # the journal is written

        second = run_cli("data-service", "dispatcher", "--port", str(port))
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert f"port {port} is in use" in second.stderr

        for server, sig in ((worker, signal.SIGINT), (dispatcher, signal.SIGTERM)):
            server.send_signal(sig)
            out, err = server.communicate(timeout=60)
            assert server.returncode == 0, err[-3000:]
            assert out.strip().endswith(f"stopped ({sig.name})"), out
    finally:
        for server in servers:
            if server.poll() is None:
                server.kill()
                server.wait()


@pytest.fixture(scope="module")
def service():
    """A dispatcher and two workers in this process; the dispatcher's address."""
    from seqpipe.training import data_service

    dispatcher = data_service.start_dispatcher(0)
    address = dispatcher.target
    workers = [data_service.start_worker(address, 0, "localhost")[0] for _ in range(2)]
    yield address
    for server in (*workers, dispatcher):
        server.stop()


def _train_timesteps(data_dir) -> int:
    return metadata_lib.read(data_dir).split("train").num_timesteps


@pytest.mark.slow
def test_two_training_workers_read_every_train_timestep_once_per_epoch(
        tmp_path, tiny_dataset, service):
    """Two training workers share each epoch's service job: their steps together hold
    every real train timestep exactly once per epoch, however unevenly the job's batches
    fell to them, and the losses follow the plain single-process run's."""
    served = start_two_workers(tiny_dataset, tmp_path / "served", f"data.service={service}")
    plain = start_single(tiny_dataset, tmp_path / "plain")  # at the same time: idle cores
    served_summaries = summaries([*served, plain])[:2]
    assert served_summaries[0]["weights_sha256"] == served_summaries[1]["weights_sha256"]
    served_history, plain_history = _history(tmp_path / "served"), _history(tmp_path / "plain")
    assert len(served_history) == len(plain_history) == 2
    for with_service, local in zip(served_history, plain_history, strict=True):
        assert with_service["valid_timesteps"] == local["valid_timesteps"] == (
            _train_timesteps(tiny_dataset))
        assert with_service["loss"] == pytest.approx(local["loss"], rel=0.1)
        assert with_service["val_loss"] == pytest.approx(local["val_loss"], rel=0.1)


@pytest.mark.slow
def test_a_killed_run_restarts_its_epoch_from_the_epoch_before(tmp_path, tiny_dataset,
                                                               service):
    """SIGKILL both training workers at the second step of epoch 2; the same command
    resumes from the backup of epoch 1's end, in new service jobs (the killed run's job
    of epoch 2 is half read), and trains epoch 2 whole: each epoch of the history holds
    every train timestep once."""
    model_dir = tmp_path / "model"
    settings = (f"data.service={service}", "train.epochs=3", "train.log_every_steps=1",
                "train.early_stopping_patience=0")
    workers = start_two_workers(tiny_dataset, model_dir, *settings, chief_logs=True)
    try:
        lines = []
        for line in workers[0].stdout:
            lines.append(line)
            if line.startswith("epoch 2 train step 2:"):
                break
        assert lines and lines[-1].startswith("epoch 2 train step 2:"), "".join(lines)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGKILL)
            worker.communicate()
    assert not (model_dir / SUMMARY_FILE).exists()
    killed = _history(model_dir)
    assert [h["epoch"] for h in killed] == [0]

    summaries(start_two_workers(tiny_dataset, model_dir, *settings))
    history = _history(model_dir)
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[0] == killed[0]  # resumed after epoch 1, not started again
    assert not any("resumed_at_step" in h for h in history)
    assert all(h["valid_timesteps"] == _train_timesteps(tiny_dataset) for h in history)
