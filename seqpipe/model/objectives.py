"""Training objectives: reconstruction, a T-Loss triplet loss on sub-sequences, or both.

`train.objective` chooses what the training step minimizes:

* `reconstruction` (the default): the autoencoder's masked mean squared error
  (`seqpipe.model.losses`), a sum over the real (timestep, feature) values
  divided by their number.
* `triplet`: the encoder alone (no decoder is built) learns with the
  self-supervised triplet loss of T-Loss (Franceschi et al., 2019,
  "Unsupervised Scalable Representation Learning for Multivariate Time
  Series"), a *per-sequence* loss: a sum over the batch's sequences divided by
  their number.
* `both`: `reconstruction mean + train.triplet_weight * triplet mean`.

The triplet loss of a sequence `i` of length `L` (its real steps; padding never
enters a crop) compares three kinds of crops, each a run of consecutive real
steps, cut from the padded batch with per-row offsets, right-padded again and
given its own mask:

    positive length  l_p ~ U{1..L}          anchor length l_a ~ U{l_p..L}
    anchor start     s_a ~ U{0..L-l_a}      positive start s_a + U{0..l_a-l_p}
    negative length  l_n ~ U{1..L}          negative start U{0..L-l_n}

(the positive lies inside the anchor; a sequence of length 1 crops to its one
step). With `z` the encoder's embedding of a crop:

    loss_i = -log sigmoid(z_a_i . z_p_i)
             - K / (N - 1) * sum_{j != i} log sigmoid(-z_a_i . z_n_j)

where `N` is the number of sequences of the *global* batch (every replica's),
`n_j` the negative crop of sequence `j`, and `K` is `train.triplet_negatives`.
The original draws K negatives per anchor from the whole train set; in-batch
negatives are the usual scalable substitute. The sum over every other
sequence, weighted `K / (N - 1)`, is the expected value of the sum over K
negatives drawn uniformly among them: the same objective without the
sampling noise, and without a random choice that would depend on where each
row sits in the batch (see below). With `N = 1` the negative term is 0.

Exact normalization and distribution: each replica returns `LossTotals`, the
sums of its part of the batch and their counts (values for reconstruction,
sequences for the triplet loss); `seqpipe.training.step` sums them across
replicas and divides by the global counts, so the loss and its gradient are
the same for any number of replicas. The negatives of a replica's anchors are
the negative crops of the whole global batch, gathered across replicas
(`ReplicaContext.all_gather`, whose gradient flows back to the replica that
embedded them).

Reproducible crops: the random draws are a hash of a step seed and of each
sequence's content (its length, first and last steps), not of its row in the
batch. So the crops of a sequence are the same whatever the batch order, the
replica it lands on or the padding, a resumed run draws the crops of the run
it continues, and a 2-worker run takes the steps of one process. The step
seed comes from `train.seed` and the optimizer's iteration during training
(`crop_seed`), and is one fixed value for validation (`VALIDATION_ITERATION`),
so the validation loss is deterministic.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras
import tensorflow as tf

from seqpipe.config import TrainConfig
from seqpipe.model.losses import masked_squared_error, num_valid_values

__all__ = ["CropPlan", "Crops", "LossTotals", "Objective", "crop_seed", "cut",
           "objective_loss", "sample_crops", "triplet_losses"]

VALIDATION_ITERATION = -1  # never an optimizer iteration: validation crops of their own

_GOLDEN = 0x9E3779B9  # odd constant that decorrelates successive hash inputs


class LossTotals(NamedTuple):
    """The sums and counts a step returns; the loss is a function of them (`objective_loss`).

    Attributes:
        squared_error: the sum of squared errors over the real values (0
            without the reconstruction term).
        num_values: how many real values (real timesteps times features).
        triplet: the sum of the triplet losses of the sequences (0 without the
            triplet term).
        num_sequences: how many sequences (rows with at least one real step).
        num_steps: how many real timesteps (the step mask's sum): with missing
            entries `num_values` is not a multiple of them. Not in the loss.
    """

    squared_error: Any
    num_values: Any
    triplet: Any
    num_sequences: Any
    num_steps: Any = 0.0


def objective_loss(cfg: TrainConfig, totals: LossTotals) -> Any:
    """The loss of `cfg.objective` from totals: exact means, counts of 0 read as 1.

    Works on floats (an epoch's totals) and tensors (a step's, with global
    counts) alike.
    """
    reconstruction = totals.squared_error / tf.maximum(totals.num_values, 1.0)
    triplet = totals.triplet / tf.maximum(totals.num_sequences, 1.0)
    if cfg.objective == "reconstruction":
        return reconstruction
    if cfg.objective == "triplet":
        return triplet
    return reconstruction + cfg.triplet_weight * triplet


class Crops(NamedTuple):
    """One crop per row: `x[row, start:start + length]`; length 0 for rows without steps."""

    start: tf.Tensor
    length: tf.Tensor


class CropPlan(NamedTuple):
    """The crops of a batch's rows, and which rows are sequences (have real steps)."""

    anchor: Crops
    positive: Crops
    negative: Crops
    valid: tf.Tensor


def crop_seed(seed: int, iteration) -> tf.Tensor:
    """The uint32 seed of a step's crops: from `train.seed` and the optimizer's iteration."""
    iteration = tf.cast(tf.cast(iteration, tf.int64), tf.uint32)
    return _mix(tf.bitwise.bitwise_xor(_mix(tf.constant(seed % 2**32, tf.uint32)), iteration))


def sample_crops(x: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> CropPlan:
    """Anchor, positive and negative crops of every row, inside its real steps.

    Args:
        x: float32 `[B, T, F]`, right-padded, `T >= 1`.
        mask: float32 `[B, T]`, 1.0 on real steps.
        seed: uint32 scalar (`crop_seed`).

    Returns:
        The plan (the module docstring gives the distributions). Rows without
        real steps get crops of length 0 and `valid` False.
    """
    lengths = tf.reduce_sum(tf.cast(mask > 0.5, tf.int32), axis=1)
    valid = lengths > 0
    span = tf.maximum(lengths, 1)
    keys = _row_keys(x, lengths)

    def draw(index: int, upper: tf.Tensor) -> tf.Tensor:
        """Per row, an integer uniform in `[0, upper)`."""
        salt = tf.constant(index * _GOLDEN % 2**32, tf.uint32)
        bits = _mix(tf.bitwise.bitwise_xor(keys, _mix(seed + salt)))
        return tf.cast(tf.math.floormod(tf.cast(bits, tf.int64), tf.cast(upper, tf.int64)),
                       tf.int32)

    positive_length = 1 + draw(0, span)
    anchor_length = positive_length + draw(1, span - positive_length + 1)
    anchor_start = draw(2, span - anchor_length + 1)
    positive_start = anchor_start + draw(3, anchor_length - positive_length + 1)
    negative_length = 1 + draw(4, span)
    negative_start = draw(5, span - negative_length + 1)

    def crops(start, length):
        return Crops(start, tf.where(valid, length, 0))

    return CropPlan(crops(anchor_start, anchor_length),
                    crops(positive_start, positive_length),
                    crops(negative_start, negative_length), valid)


def cut(x: tf.Tensor, crops: Crops) -> tuple[tf.Tensor, tf.Tensor]:
    """The crops of `x`, right-padded to `x`'s length `T`, and their masks.

    Row `i` of the result is `x[i, start_i:start_i + length_i]` followed by
    zeros; its mask has exactly `length_i` leading ones. Keeping `T` (not the
    longest crop) gives static shapes for XLA; masked steps are skipped anyway.
    """
    steps = tf.range(tf.shape(x)[1])
    inside = steps[tf.newaxis, :] < crops.length[:, tf.newaxis]
    index = tf.where(inside, crops.start[:, tf.newaxis] + steps[tf.newaxis, :], 0)
    gathered = tf.gather(x, index, batch_dims=1)
    cropped = tf.where(inside[..., tf.newaxis], gathered, tf.zeros_like(gathered))
    return cropped, tf.cast(inside, x.dtype)


def triplet_losses(anchor: tf.Tensor, positive: tf.Tensor, pool: tf.Tensor,
                   pool_valid: tf.Tensor, own_index: tf.Tensor, valid: tf.Tensor,
                   negatives: int) -> tf.Tensor:
    """The T-Loss of each anchor row against the in-batch negatives `pool`.

    Args:
        anchor, positive: `[B, E]` embeddings of the rows' anchor and positive crops.
        pool: `[N, E]` embeddings of the negative crops of the global batch.
        pool_valid: float `[N]`, 1.0 for the pool rows that are sequences.
        own_index: int `[B]`, the pool row of each anchor row's own negative crop
            (excluded from its negatives).
        valid: float `[B]`, 1.0 for the anchor rows that are sequences.
        negatives: K, the expected number of negatives per anchor.

    Returns:
        float `[B]`: `-log sig(a.p) - K/(n-1) sum_{j != i} log sig(-a.n_j)`,
        `n = sum(pool_valid)`, over valid pool rows; 0 on rows that are not
        sequences.
    """
    positive_term = tf.nn.softplus(-tf.reduce_sum(anchor * positive, axis=-1))
    logits = tf.matmul(anchor, pool, transpose_b=True)
    others = pool_valid[tf.newaxis, :] * tf.cast(
        tf.range(tf.shape(pool)[0])[tf.newaxis, :]
        != tf.cast(own_index, tf.int32)[:, tf.newaxis], pool.dtype)
    per_negative = negatives / tf.maximum(tf.reduce_sum(pool_valid) - 1.0, 1.0)
    negative_term = per_negative * tf.reduce_sum(tf.nn.softplus(logits) * others, axis=-1)
    return (positive_term + negative_term) * valid


class Objective:
    """What the training step of `cfg.objective` computes per replica.

    Args:
        cfg: the train section (`objective`, `triplet_negatives`,
            `triplet_weight`, `seed`).
        autoencoder: the autoencoder; None for `triplet` (no decoder).
        encoder: the encoder (its embedding is what the triplet loss trains).

    Attributes:
        model: the model whose variables are trained and saved.
    """

    def __init__(self, cfg: TrainConfig, autoencoder: keras.Model | None,
                 encoder: keras.Model):
        self.cfg = cfg
        self.reconstructs = cfg.has_decoder
        self.contrasts = cfg.objective != "reconstruction"
        if self.reconstructs and autoencoder is None:
            raise ValueError(f"train.objective {cfg.objective!r} needs the autoencoder")
        self.autoencoder = autoencoder
        self.encoder = encoder
        self.model = autoencoder if self.reconstructs else encoder

    def gathers_across(self, strategy: tf.distribute.Strategy) -> bool:
        """Whether a step calls collectives (every replica must run it, batch or not)."""
        return self.contrasts and strategy.num_replicas_in_sync > 1

    def training_seed(self, iteration) -> tf.Tensor:
        """The crop seed of the training step at optimizer `iteration`."""
        return crop_seed(self.cfg.seed, iteration)

    def validation_seed(self) -> tf.Tensor:
        """The crop seed of every validation step (a deterministic validation loss)."""
        return crop_seed(self.cfg.seed, VALIDATION_ITERATION)

    @staticmethod
    def counts(targets: tf.Tensor, weights: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """This replica's number of real values and of sequences, known before the forward.

        Per-entry weights `[B, T, F]` (data with missing entries) count the
        observed values (`losses.num_valid_values`).
        """
        real = weights > 0.5
        rows = tf.reduce_any(real, axis=list(range(1, len(real.shape))))
        return (num_valid_values(targets, weights),
                tf.reduce_sum(tf.cast(rows, tf.float32)))

    def totals(self, inputs: dict, targets: tf.Tensor, weights: tf.Tensor, seed: tf.Tensor,
               training: bool) -> LossTotals:
        """This replica's `LossTotals`: the objective's sums and their counts."""
        num_values, num_sequences = self.counts(targets, weights)
        squared_error = tf.constant(0.0)
        triplet = tf.constant(0.0)
        if self.reconstructs:
            predictions = self.autoencoder(inputs, training=training)
            squared_error, num_values = masked_squared_error(targets, predictions, weights)
        if self.contrasts:
            triplet = tf.reduce_sum(self._triplet_losses(inputs, seed, training))
        num_steps = tf.reduce_sum(tf.cast(inputs["mask"] > 0.5, tf.float32))
        return LossTotals(squared_error, num_values, triplet, num_sequences, num_steps)

    def _triplet_losses(self, inputs: dict, seed: tf.Tensor, training: bool) -> tf.Tensor:
        """Per row, the triplet loss against the global batch's negative crops."""
        x, mask = inputs["x"], inputs["mask"]
        plan = sample_crops(x, mask, seed)
        crops = (plan.anchor, plan.positive, plan.negative)
        parts = [cut(x, crop) for crop in crops]
        # One encoder call for the three crops of every row.
        crop_inputs = {"x": tf.concat([p[0] for p in parts], axis=0),
                       "mask": tf.concat([p[1] for p in parts], axis=0)}
        if "observed" in inputs:  # data with missing entries: the crops' observed masks
            crop_inputs["observed"] = tf.concat(
                [cut(inputs["observed"], crop)[0] for crop in crops], axis=0)
        if "time_delta" in inputs:  # data with times: the crops' time gaps
            crop_inputs["time_delta"] = tf.concat(
                [cut(inputs["time_delta"][..., tf.newaxis], crop)[0][..., 0]
                 for crop in crops], axis=0)
        embeddings = self.encoder(crop_inputs, training=training)
        anchor, positive, negative = tf.split(embeddings, 3, axis=0)
        valid = tf.cast(plan.valid, tf.float32)
        pool, pool_valid, offset = _gather_across_replicas(negative, valid)
        own_index = offset + tf.range(tf.shape(x)[0])
        return triplet_losses(anchor, positive, pool, pool_valid, own_index, valid,
                              self.cfg.triplet_negatives)


def _gather_across_replicas(negative: tf.Tensor, valid: tf.Tensor):
    """The global batch's negatives and validity, and where this replica's rows start."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return negative, valid, tf.constant(0)
    sizes = context.all_gather(tf.shape(valid)[:1], axis=0)
    replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
    offset = tf.reduce_sum(tf.where(tf.range(tf.shape(sizes)[0]) < replica, sizes, 0))
    return context.all_gather(negative, axis=0), context.all_gather(valid, axis=0), offset


def _mix(bits: tf.Tensor) -> tf.Tensor:
    """MurmurHash3's 32-bit finalizer: every input bit flips about half the output bits."""
    bits = tf.bitwise.bitwise_xor(bits, tf.bitwise.right_shift(bits, 16))
    bits = bits * tf.constant(0x85EBCA6B, tf.uint32)
    bits = tf.bitwise.bitwise_xor(bits, tf.bitwise.right_shift(bits, 13))
    bits = bits * tf.constant(0xC2B2AE35, tf.uint32)
    return tf.bitwise.bitwise_xor(bits, tf.bitwise.right_shift(bits, 16))


def _row_keys(x: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
    """uint32 `[B]`: a hash of each row's length, first and last real step.

    What identifies a sequence whatever its row, replica and padding; equal
    only for sequences that agree on all three.
    """
    last = tf.gather(x, tf.maximum(lengths - 1, 0), batch_dims=1)
    bits = tf.bitcast(tf.concat([x[:, 0, :], last], axis=-1), tf.uint32)
    salts = tf.range(tf.shape(bits)[1], dtype=tf.int32)
    salts = tf.cast(salts, tf.uint32) * tf.constant(_GOLDEN, tf.uint32)
    per_value = _mix(tf.bitwise.bitwise_xor(bits, salts))
    return _mix(tf.reduce_sum(per_value, axis=1) + _mix(tf.cast(lengths, tf.uint32)))
