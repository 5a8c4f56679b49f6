"""Distributed input: a tf.data service makes the train split's batches (`data.service`).

For training runs whose input CPU is the bottleneck: the batches are made by
service workers on other machines (or cores), and the training workers only
train. Opt in by naming a dispatcher:

    seqpipe data-service dispatcher --port 5050 [--work-dir DIR]     # one, anywhere
    seqpipe data-service worker --dispatcher host0:5050 --port 5051  # any number
    seqpipe train ... --set data.service=grpc://host0:5050           # every training worker

What the service makes
----------------------
Each epoch's train batches from the very pipeline of local training
(`seqpipe.input_pipeline.data.make_dataset`: the same batching, padding,
masks and normalization, the train side of a held-out validation share, the
`train.min_steps` passes), batched with each replica's share of the global
batch size, sent to the service with `processing_mode="distributed_epoch"`:
the dispatcher hands the split's shards to the service workers one at a
time, each record is batched by one service worker and each batch goes to one
training worker, so every train record is trained on exactly once per epoch
(per pass). A service worker sorts and shuffles within the shards it got, so
the batches group records differently than local input does (same sizes and
padding rules), and their order is not reproducible.

Training workers in lock step
-----------------------------
Training workers take batches first come, first served, so they get
different numbers of them in an epoch: the situation of local input whose
shards hold different numbers of batches, handled the same way. The iterator
of `strategy.distribute_datasets_from_function` asks every worker at each
step whether it still has a batch (an all-reduce), hands the workers that ran
out empty batches, and ends the epoch on all workers at the same step, when
none has one left; an empty batch adds nothing to the step's sums and counts
(`seqpipe.training.step`). So no collective waits on a worker that stopped,
and the loss is still the exact global masked mean (sums and counts
all-reduced per step, `seqpipe.model.losses`).

Jobs
----
One service job per epoch and run attempt, named `seqpipe-<run id>-e<epoch>`;
the dataset is registered under the same name, so the training workers
share one dataset and one job. tf.data jobs cannot be rewound (a name whose
job was read gives what is left of it, or nothing), so the run id is random,
agreed on by all training workers with one all-reduce when the run starts:
a run resumed after a kill never joins the job its killed attempt half read.

Resume
------
The service keeps no iterator position a checkpoint could save, and which
records a killed epoch trained on is unknown. So with `data.service`,
backups are written at epoch ends only (`train.checkpoint_every_steps` is
not used): a killed run resumes at the start of the epoch it was in, with the
weights, optimizer and history of the end of the epoch before, and trains
that epoch whole. Every finished epoch trained on every train record exactly
once; a kill costs at most the epoch in progress. A mid-epoch backup written
without the service (the same model dir, an earlier run) finishes its epoch
with local input, which skips exactly.

Validation and what is not covered
----------------------------------
Validation (the val split or the held-out share) is read locally by every
training worker, as without the service: it is small and read once per
epoch. tf.data makes no exactly-once promise when a service worker dies
mid-epoch (the shards it was reading may be lost or read again); a
dispatcher started with `--work-dir` journals its state (fault-tolerant
mode) and recovers its jobs when restarted on the same directory.
"""

from __future__ import annotations

import secrets
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import tensorflow as tf

from seqpipe.config import Config
from seqpipe.training.service_address import (
    PROTOCOL,
    ServiceAddress,
    check_reachable,
    check_serve_args,
    free_port,
)


def start_dispatcher(port: int, work_dir: str | None = None
                     ) -> tf.data.experimental.service.DispatchServer:
    """A dispatcher listening on `port`; fault-tolerant (its state journaled) with `work_dir`."""
    config = tf.data.experimental.service.DispatcherConfig(
        port=free_port(port), protocol=PROTOCOL, work_dir=work_dir,
        fault_tolerant_mode=bool(work_dir))
    return tf.data.experimental.service.DispatchServer(config)


def start_worker(dispatcher: str, port: int, host: str | None = None
                 ) -> tuple[tf.data.experimental.service.WorkerServer, str]:
    """A service worker registered with `dispatcher`, and the address it serves at.

    Args:
        dispatcher: `[grpc://]host:port` of a running dispatcher.
        port: the port to listen on (0: a free one).
        host: the name training workers reach this machine by (default: its
            fully qualified name).

    Raises:
        DataServiceError: the port is taken.
    """
    address = ServiceAddress.parse(dispatcher)
    port = free_port(port)
    host = host or socket.getfqdn()
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=address.hostport, worker_address=f"{host}:{port}", port=port,
        protocol=PROTOCOL, data_transfer_address=f"{host}:%dts_port%")
    return tf.data.experimental.service.WorkerServer(config), f"{host}:{port}"


def serve(role: str, *, port: int, work_dir: str | None = None,
          dispatcher: str | None = None, host: str | None = None,
          echo: Callable[[str], None] = print) -> dict[str, Any]:
    """`seqpipe data-service ROLE`: starts a dispatcher or a worker and serves until
    SIGTERM or SIGINT, then stops it; what it served.

    Raises:
        DataServiceError: a flag missing for the role, the port in use, the
            dispatcher unreachable.
    """
    check_serve_args(role, port=port, work_dir=work_dir, dispatcher=dispatcher, host=host)
    if role == "dispatcher":
        server = start_dispatcher(port, work_dir)
        listening = server.target.rsplit(":", 1)[1]
        where = f"port {listening}" + (f", state journaled in {work_dir}" if work_dir else "")
        result = {"role": role, "port": int(listening), "work_dir": work_dir}
    else:
        server, served = start_worker(dispatcher, port, host)
        where = f"{served}, for dispatcher {dispatcher}"
        result = {"role": role, "address": served, "dispatcher": dispatcher}
    name = f"seqpipe data-service {role}"
    echo(f"{name}: listening on {where}")
    result["stopped_by"] = _serve_until_signal(server)
    echo(f"{name}: stopped ({result['stopped_by']})")
    return result


def _serve_until_signal(server: Any) -> str:
    """Blocks until SIGTERM or SIGINT, then stops `server`; the signal's name."""
    received: list[str] = []
    stop = threading.Event()

    def handle(signum, _frame):
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
    return received[0]


def backup_every_steps(cfg: Config) -> int:
    """`train.checkpoint_every_steps`, or 0 (epoch ends only) with `data.service`."""
    return 0 if cfg.data.service else cfg.train.checkpoint_every_steps


def agreed_run_id(strategy: tf.distribute.Strategy) -> str:
    """A random id, the same on every worker of `strategy` (one all-reduce).

    The sum of every replica's random draw: 40-bit draws in float64 stay
    exact for thousands of replicas.
    """
    draw = float(secrets.randbits(40))
    if strategy.num_replicas_in_sync == 1 and not isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return f"{int(draw):x}"
    draws = strategy.run(lambda: tf.constant(draw, tf.float64))
    return f"{int(strategy.reduce(tf.distribute.ReduceOp.SUM, draws, axis=None)):x}"


class ServiceInput:
    """The train split's batches of each epoch, made by the tf.data service.

    Args:
        service: `data.service`, the dispatcher's address.
        strategy: the training strategy; creating this runs one all-reduce
            on it (`agreed_run_id`), so every worker creates it at the same point.

    Raises:
        DataServiceError: the address is malformed or unreachable.
    """

    def __init__(self, service: str, strategy: tf.distribute.Strategy):
        self.address = ServiceAddress.parse(service)
        check_reachable(self.address)
        self.strategy = strategy
        self.run_id = agreed_run_id(strategy)

    def job_name(self, epoch: int) -> str:
        """The service job (and dataset id) of `epoch` in this run attempt."""
        return f"seqpipe-{self.run_id}-e{epoch}"

    def epoch_batches(self, epoch: int,
                      pipeline: Callable[[tf.distribute.InputContext], tf.data.Dataset]
                      ) -> Iterator[Any]:
        """The distributed batches of `epoch` from the service (`distributed_epoch`).

        Args:
            epoch: the epoch.
            pipeline: `context -> dataset` of the epoch's train batches for an
                input context: called with one input pipeline (no sharding:
                the service splits the shards) and the run's replica count
                (each batch is one replica's share).
        """
        name = self.job_name(epoch)
        target = self.address.target

        def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
            whole_split = tf.distribute.InputContext(
                num_input_pipelines=1, input_pipeline_id=0,
                num_replicas_in_sync=input_context.num_replicas_in_sync)
            dataset = pipeline(whole_split)
            dataset_id = tf.data.experimental.service.register_dataset(
                target, dataset, dataset_id=name)
            return tf.data.experimental.service.from_dataset_id(
                "distributed_epoch", target, dataset_id, dataset.element_spec, job_name=name)

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def describe(self) -> list[str]:
        """What a user should know about training with the service, one line each."""
        return [f"train batches from the tf.data service at {self.address.target} "
                f"(distributed_epoch, jobs seqpipe-{self.run_id}-e*); validation local; "
                "backups at epoch ends only: a killed run restarts the epoch it was in"]
