"""The distributed step: one global batch on every replica, the same result for any number.

Keras 3's `Model.fit` fails under `MultiWorkerMirroredStrategy`
(keras-team/keras#20585), so the trainer runs its own step under
`strategy.run`, the same code on one CPU, several local GPUs and many workers:

* each replica computes the *sums* of its part of the batch and their counts
  (`seqpipe.model.objectives.LossTotals`: squared errors over its valid
  values for reconstruction, triplet losses over its sequences for
  `train.objective: triplet`); the counts are all-reduced first and each
  replica differentiates its sums divided by the *global* counts, and the
  gradients are all-reduced: exactly the gradient of the global means
  (fairseq-style normalization), whatever the number of replicas and however
  padding is spread among them. Replicas whose input ran out first join the
  remaining steps with empty batches;
* gradients are clipped by their *global* norm (`train.clipnorm`) here, after
  the all-reduce, not by the optimizer: Keras clips each replica's partial
  gradient before its own all-reduce, which would change the result with the
  number of replicas.

A step returns the global `LossTotals`, so an epoch's loss is the exact mean
over the epoch (`objectives.objective_loss` of the epoch's totals).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable

import keras
import tensorflow as tf

from seqpipe.config import Config
from seqpipe.model.autoencoder import takes_observed, takes_time_delta
from seqpipe.model.objectives import LossTotals, Objective, objective_loss

logger = logging.getLogger(__name__)

Step = Callable[[tuple], LossTotals]


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy for `train.strategy`.

    `auto` picks `multi_worker` when `TF_CONFIG` describes more than one task,
    `mirrored` when there are several local GPUs, else the default strategy.
    """
    if name == "auto":
        name = _auto_strategy_name()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _auto_strategy_name() -> str:
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if sum(len(tasks) for tasks in cluster.values()) > 1:
        return "multi_worker"
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return "mirrored"
    return "default"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the shared outputs (always, unless multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def single_replica(strategy: tf.distribute.Strategy) -> bool:
    """One replica in one process: batches are plain tensors.

    Then splits are read as epoch streams and the step is traced ahead for
    every shape. With several replicas an epoch's last global batch is split
    unevenly (and across workers, epochs end at different steps):
    `tf.distribute` handles that for an iterator that ends with the epoch.
    """
    return strategy.num_replicas_in_sync == 1 and not isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy)


def use_jit_compile(cfg: Config, strategy: tf.distribute.Strategy) -> bool:
    """`train.jit_compile`, unless several replicas; warns when it will not pay."""
    if not cfg.train.jit_compile:
        return False
    if strategy.num_replicas_in_sync > 1:
        logger.warning("train.jit_compile is for one replica; %d replicas run without XLA",
                       strategy.num_replicas_in_sync)
        return False
    data_cfg = cfg.data
    if data_cfg.batching == "sorted_window" and (
            not data_cfg.length_grid or data_cfg.min_batch_efficiency):
        logger.warning(
            "train.jit_compile compiles every batch shape; batches padded to their "
            "longest record or cut by data.min_batch_efficiency have many: set "
            "data.length_grid (8 or 16) and data.min_batch_efficiency: 0")
    return True


def make_train_step(strategy: tf.distribute.Strategy, objective: Objective,
                    optimizer: keras.optimizers.Optimizer, clipnorm: float,
                    jit_compile: bool = False) -> Step:
    """A `tf.function`: one global batch forward, backward and applied on every replica.

    Args:
        strategy: the strategy the models and `optimizer` were built under.
        objective: what is minimized, and the model it trains.
        optimizer: applies the gradient of the global means.
        clipnorm: the largest global norm of that gradient; 0: no clipping.
        jit_compile: compile the step with XLA.

    Returns:
        `step(batch) -> LossTotals`, the global sums and counts.
    """
    variables = objective.model.trainable_variables

    def replica_step(inputs, targets, weights):
        """This replica's sums, differentiated after dividing by the global counts.

        d(sum / global_count) = d(sum) / global_count, so each replica's
        gradient is its share of the gradient of the global mean, and the
        shares add up in the all-reduce.
        """
        context = tf.distribute.get_replica_context()
        num_values, num_sequences = context.all_reduce(
            tf.distribute.ReduceOp.SUM, objective.counts(targets, weights))
        seed = objective.training_seed(optimizer.iterations)

        def forward_backward(inputs, targets, weights):
            with tf.GradientTape() as tape:
                totals = objective.totals(inputs, targets, weights, seed, training=True)
                loss = objective_loss(objective.cfg, totals._replace(
                    num_values=num_values, num_sequences=num_sequences))
            return totals, tape.gradient(loss, variables)

        def nothing():
            return (_zero_totals(), [tf.zeros_like(variable) for variable in variables])

        totals, gradients = _on_replica_data(objective, strategy, forward_backward, nothing,
                                             inputs, targets, weights)
        gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
        if clipnorm:
            gradients, _ = tf.clip_by_global_norm(gradients, clipnorm)
        # The optimizer all-reduces (sums) replica gradients again: hand it 1/N each.
        scale = 1.0 / strategy.num_replicas_in_sync
        optimizer.apply_gradients(
            zip([gradient * scale for gradient in gradients], variables, strict=True))
        return totals

    return _global_step(strategy, replica_step, jit_compile, objective)


def make_eval_step(strategy: tf.distribute.Strategy, objective: Objective,
                   jit_compile: bool = False) -> Step:
    """A `tf.function`: the global `LossTotals` of one global batch (validation crops)."""
    def replica_step(inputs, targets, weights):
        def evaluate(inputs, targets, weights):
            return objective.totals(inputs, targets, weights, objective.validation_seed(),
                                    training=False)

        return _on_replica_data(objective, strategy, evaluate, _zero_totals,
                                inputs, targets, weights)

    return _global_step(strategy, replica_step, jit_compile, objective)


def _on_replica_data(objective: Objective, strategy: tf.distribute.Strategy,
                     compute: Callable, nothing: Callable, inputs, targets, weights):
    """`compute(inputs, targets, weights)`, or `nothing()` for an empty batch.

    When `compute` calls collectives every replica must run it, so an empty
    batch is padded to one row of one step, all padding: it adds nothing to
    any sum or count (the models fail on zero rows or steps).
    """
    if objective.gathers_across(strategy):
        return compute(*_at_least_one_step(inputs, targets, weights))
    if weights.shape.num_elements() == 0:
        # Empty by its static shape: the stand-in batch of a replica whose input ran out
        # before its first step (a tf.data service job read by others first); the models
        # cannot be traced on zero sizes, not even in a branch that never runs.
        return nothing()
    return tf.cond(_has_data(weights), lambda: compute(inputs, targets, weights), nothing)


def _global_step(strategy: tf.distribute.Strategy, replica_step: Callable,
                 jit_compile: bool, objective: Objective) -> Step:
    @tf.function(reduce_retracing=True, jit_compile=jit_compile)
    def step(batch):
        inputs, targets, weights = batch
        totals = strategy.run(replica_step, args=(inputs, targets, weights))
        return LossTotals(*(strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                            for value in totals))

    # Batches of data with missing entries carry `observed` and per-entry weights;
    # with `data.time_delta`, `time_delta`.
    step.takes_observed = takes_observed(objective.model)
    step.takes_time_delta = takes_time_delta(objective.model)
    return step


def trace_for_any_shape(step: Step, strategy: tf.distribute.Strategy, batch_size: int,
                        num_features: int) -> None:
    """Traces `step` for full batches `[batch_size, T]`, then for any `[B, T]`.

    A call dispatches to the most specific trace, so full batches run the
    graph with a static batch size, which is faster per timestep (the
    recurrent loop's shape arithmetic folds away), and other batches (a
    window's last one, timestep-budget sizes) run the general one. Lazily,
    `reduce_retracing` would trace the first shape, then `[32, None]`, then
    `[None, None]` when the first partial batch comes, possibly epochs later.
    Distributed batches (several replicas) keep the lazy tracing; a step
    traced already is left alone.
    """
    if not single_replica(strategy) or step.experimental_get_tracing_count():
        return
    for size in (batch_size, None):  # the specific trace first
        steps = tf.TensorSpec([size, None, num_features], tf.float32)
        mask = tf.TensorSpec([size, None], tf.float32)
        inputs = {"x": steps, "mask": mask}
        if getattr(step, "takes_observed", False):
            inputs["observed"] = steps
        if getattr(step, "takes_time_delta", False):
            inputs["time_delta"] = mask
        weights = steps if "observed" in inputs else mask
        step.get_concrete_function((inputs, steps, weights))


def _has_data(weights: tf.Tensor) -> tf.Tensor:
    """False for the empty batch a replica gets when its input ran out first.

    Workers' pipelines may hold different numbers of batches; `tf.distribute`
    then hands exhausted replicas empty batches (zero rows or zero steps) so
    that every replica still joins the step's all-reduces.
    """
    return tf.size(weights) > 0


def _at_least_one_step(inputs: dict, targets: tf.Tensor, weights: tf.Tensor):
    """The batch padded to at least one row and one step (zeros, weight 0)."""
    shape = tf.shape(weights)
    rows, steps = tf.maximum(1 - shape[0], 0), tf.maximum(1 - shape[1], 0)

    def pad(tensor):
        return tf.pad(tensor, [[0, rows], [0, steps]] + [[0, 0]] * (len(tensor.shape) - 2))

    padded = {key: pad(inputs[key]) for key in ("x", "mask", "observed", "time_delta")
              if key in inputs}
    return padded, pad(targets), pad(weights)


def _zero_totals() -> LossTotals:
    return LossTotals(*(tf.constant(0.0) for _ in LossTotals._fields))
