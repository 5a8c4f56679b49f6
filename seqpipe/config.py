"""Typed, frozen configuration for every seqpipe stage, loaded from YAML.

A configuration is a tree of frozen dataclasses, one section per stage:

    Config
      synth       SynthConfig       synthetic data generator (`seqpipe synth`)
      preprocess  PreprocessConfig  the Beam job (`seqpipe preprocess`)
      data        DataConfig        the tf.data input pipeline
      model       ModelConfig       the autoencoder
      train       TrainConfig       the training loop
      eval        EvalConfig        SVM evaluation of the embeddings
      score       ScoreConfig       anomaly scores: threshold, baselines (`seqpipe score`)

A YAML file names only what it changes; everything else keeps the dataclass
default. Overrides from the command line use dotted keys and YAML values:

    cfg = load_config("tiny", overrides=["model.units=64", "train.epochs=3"])

Unknown sections or keys, and values of the wrong type, raise `ConfigError`
naming the offending key; nothing falls back silently to a default. YAML is
read with `yaml.safe_load` only.

Bundled configs are the YAML files of the repository's top-level `configs/`
folder (`default`: every key with its default; `tiny`: the quickstart and the
tests; `dataflow`, `multi_worker`: examples), shipped inside the installed
package as `seqpipe.configs`. `--config` takes a bundled name (the file name
without `.yaml`) or a path to a YAML file.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from seqpipe.errors import SeqpipeError


class ConfigError(SeqpipeError, ValueError):
    """A configuration file or override that does not fit the schema."""


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Synthetic labeled sequences shaped like the problem seqpipe was born from.

    Attributes:
        num_sequences: how many sequences to generate.
        num_features: features per timestep.
        min_length: shortest sequence.
        max_length: longest sequence.
        length_sigma: spread of the log-normal length distribution (long tail).
        num_classes: number of labels; classes differ only in temporal structure.
        zero_step_fraction: fraction of sequences that contain genuine all-zero
            timesteps in their middle (which must never be taken for padding).
        noise: standard deviation of the additive Gaussian noise.
        anomaly_fraction: expected fraction of the sequences that get one injected
            anomaly (labelled `anomaly_<kind>`; `seqpipe.synthetic` describes the
            kinds); 0 gives exactly the output without anomalies. Needs
            `num_classes >= 3` (with 2 classes a swap gives the other class).
        time_jitter: > 0 writes each sequence's step times (`"t"`): step t
            is at `t + U(-time_jitter / 2, time_jitter / 2)` (uniform, from
            a generator of its own), strictly increasing while
            `time_jitter < 1`; 0 (default) writes no times and exactly the
            output without them.
        missing_fraction: the probability that each entry (timestep x feature)
            is removed (written as JSON null: a missing entry, kept by
            `preprocess.missing: keep`), independently per entry and channel;
            0 (default) gives exactly the output without missing entries.
        seed: random seed; the same seed gives byte-identical output.
    """

    num_sequences: int = 1326
    num_features: int = 8
    min_length: int = 7
    max_length: int = 356
    length_sigma: float = 0.8
    num_classes: int = 4
    zero_step_fraction: float = 0.2
    noise: float = 0.1
    anomaly_fraction: float = 0.0
    missing_fraction: float = 0.0
    time_jitter: float = 0.0
    seed: int = 0

    def __post_init__(self):
        _require(self.num_sequences > 0, "synth.num_sequences", "must be > 0")
        _require(0.0 <= self.missing_fraction < 1.0, "synth.missing_fraction",
                 "must be in [0, 1)")
        _require(0.0 <= self.time_jitter < 1.0, "synth.time_jitter", "must be in [0, 1)")
        _require(self.num_features > 0, "synth.num_features", "must be > 0")
        _require(1 <= self.min_length <= self.max_length, "synth.min_length",
                 "must satisfy 1 <= min_length <= max_length")
        _require(self.num_classes >= 2, "synth.num_classes", "must be >= 2")
        _require(0.0 <= self.zero_step_fraction <= 1.0, "synth.zero_step_fraction",
                 "must be in [0, 1]")
        _require(self.length_sigma >= 0, "synth.length_sigma", "must be >= 0")
        _require(self.noise >= 0, "synth.noise", "must be >= 0")
        _require(0.0 <= self.anomaly_fraction <= 1.0, "synth.anomaly_fraction",
                 "must be in [0, 1]")
        _require(self.anomaly_fraction == 0.0 or self.num_classes >= 3,
                 "synth.anomaly_fraction", "needs num_classes >= 3 (with 2 classes "
                 "every swapped event order is the other class's)")
        _require(self.seed >= 0, "synth.seed", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """The Beam preprocessing job.

    Attributes:
        input_format: `auto` (from the file suffix), `jsonl`, `csv` or `parquet`.
        min_length: sequences shorter than this are rejected (`too_short`).
        max_length: sequences longer than this are rejected or truncated;
            0 means no limit.
        too_long: `reject` or `truncate` (keep the first `max_length` steps);
            both are counted.
        train_fraction, val_fraction: split fractions for records without a
            `split` field; the rest goes to `test`. Splits come from a stable
            hash of the id, so re-running on grown data keeps old records put.
        num_shards: shards per split; 0 sizes them to the data.
        compression: `none` (default; TFDS-readable) or `gzip`.
        id_column, time_column, label_column, split_column: column names of
            long-format (CSV/Parquet) inputs.
        feature_columns: feature column names of long-format inputs; empty
            means every column not named above.
        missing: `keep` (default): NaN, JSON null, empty CSV cells and Parquet
            nulls inside a sequence are missing entries, stored as NaN in the
            record (`seqpipe.dataset.records`) and left out of the statistics;
            `reject`: such a record is rejected (`non_numeric` / `non_finite`),
            as before missing values were supported. +-Infinity is always
            `non_finite`.
        max_missing_fraction: with `keep`, a record with more than this
            fraction of its entries (length x features) missing is rejected
            (`too_many_missing`), and one with every entry missing always is
            (`all_missing`). The default 0.5 keeps a record while at least
            half of it is observed.
        json_time_key: the key of a JSON line's step times (default `t`): a
            list of finite numbers, one per step, strictly increasing
            (`bad_times` otherwise); absent or null: the record has no times.
            The records keep the gaps between them (`time_delta`,
            `seqpipe.dataset.times`). A dataset has times on every record or
            on none (the other side is rejected: `mixed_times`).
        keep_time_column: long-format inputs: the records keep the gaps of
            `time_column` as their times, like a JSON line's `t`; false
            (default): the time column only orders the rows, and the records
            are what they were before times were kept.
    """

    input_format: str = "auto"
    min_length: int = 1
    max_length: int = 0
    too_long: str = "reject"
    train_fraction: float = 0.8
    val_fraction: float = 0.1
    num_shards: int = 0
    compression: str = "none"
    id_column: str = "id"
    time_column: str = "t"
    label_column: str = "label"
    split_column: str = "split"
    feature_columns: tuple[str, ...] = ()
    missing: str = "keep"
    max_missing_fraction: float = 0.5
    json_time_key: str = "t"
    keep_time_column: bool = False

    def __post_init__(self):
        _require_choice(self.missing, ("keep", "reject"), "preprocess.missing")
        _require(0.0 <= self.max_missing_fraction <= 1.0, "preprocess.max_missing_fraction",
                 "must be in [0, 1]")
        _require_choice(self.input_format, ("auto", "jsonl", "csv", "parquet"),
                        "preprocess.input_format")
        _require_choice(self.too_long, ("reject", "truncate"), "preprocess.too_long")
        _require_choice(self.compression, ("none", "gzip"), "preprocess.compression")
        _require(self.min_length >= 1, "preprocess.min_length", "must be >= 1")
        _require(self.max_length == 0 or self.max_length >= self.min_length,
                 "preprocess.max_length", "must be 0 (no limit) or >= min_length")
        _require(self.train_fraction >= 0.0 and self.val_fraction >= 0.0
                 and self.train_fraction + self.val_fraction <= 1.0,
                 "preprocess.train_fraction",
                 "train_fraction and val_fraction must be >= 0 and sum to <= 1")
        _require(self.num_shards >= 0, "preprocess.num_shards", "must be >= 0")
        _require(bool(self.json_time_key), "preprocess.json_time_key", "must not be empty")


# A tf.data service dispatcher's address (`data.service`, `seqpipe data-service worker
# --dispatcher`): `[grpc://]host:port`, IPv6 hosts in brackets; groups: host, port.
SERVICE_ADDRESS = re.compile(r"(?:grpc://)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The tf.data input pipeline (`seqpipe.input_pipeline`).

    Attributes:
        batching: `sorted_window` (default): sort windows of `sort_window`
            shuffled records by length, cut them into batches padded to the
            `length_grid`, shuffle the batches; `buckets`: group records by
            length bucket (`bucket_boundaries`) as they stream by.
        batch_size: global (summed over replicas) records per batch; with a
            timestep budget, the most records per batch.
        timestep_budget: global most timesteps (B x T) per batch: a batch
            padded to T holds `min(batch_size, max(1, budget // T))` records,
            so long sequences come in smaller batches. 0 (default): none,
            every full batch holds `batch_size` records (faster on CPU, where
            a recurrent step costs about the same for a smaller batch, so
            fewer, fuller batches win: see benchmarks/README.md); -1: auto,
            `batch_size x length_stats.mean` with `sorted_window`, no budget
            with `buckets`.
        sort_window: `sorted_window` only: records sorted together, per input
            pipeline (memory: that many parsed sequences). Padding efficiency
            grows with sort_window / batch_size (about 64 is enough).
        length_grid: `sorted_window` only: 0 (default): each batch is padded
            to its longest sequence; N > 0: to the first value >= it of a grid
            of N lengths per doubling of T (`seqpipe.input_pipeline.batching.length_grid`), so
            padding adds < 1/N and T takes at most ~N * log2(max length)
            values: what `train.jit_compile` needs (XLA compiles every shape).
        min_batch_efficiency: `sorted_window` only: a batch ends before a
            record that would leave less than this fraction of its padded
            timesteps real; 0 turns it off. It only bites in sparse tails of
            long sequences, where it trades a few more batches for less
            padding (see benchmarks/README.md).
        bucket_boundaries: `buckets` only: length boundaries; empty means
            `num_buckets` derived ones, else the metadata's suggestion.
        num_buckets: the number of length buckets. `buckets` batching: if > 0
            (and no `bucket_boundaries`), derive this many boundaries
            minimizing padding from the metadata's length histogram
            (`seqpipe.input_pipeline.batching.optimal_boundaries`). The
            preprocessing job suggests as many in the metadata's
            `bucket_boundaries` (the same function on the exact lengths), or
            8 when 0 (`beam_jobs.statistics.SUGGESTED_NUM_BUCKETS`).
        pad_to_bucket_boundary: `buckets` only: pad every batch to its
            bucket's upper boundary, bounding the number of distinct shapes.
        shuffle_buffer: records in the shuffle buffer.
        normalize: standardize features with the train split's mean/std.
        reverse_target: the target is each sequence reversed within its own
            length.
        deterministic: fixed order and no shuffling (tests, evaluation).
        seed: shuffle seed.
        observed_mask: `auto` (default): batches carry `inputs["observed"]`
            (1 observed, 0 missing or padding, per entry) and the model takes
            it as extra input features when the training data has missing
            entries (its metadata says so); `always`: also on complete data.
            Complete data under `auto` gives exactly the batches and the
            model of before (`seqpipe.input_pipeline`).
        fill: what a missing entry's `x` holds, after normalization: `zero`
            (default: 0, the train mean) or `forward` (the last observation
            of that feature in the same sequence, 0 before the first).
        time_delta: batches carry `inputs["time_delta"]` [B, T], each step's
            time gap to the previous step, normalized with the train split's
            statistics (z-score of its log; 0 at the first step and on
            padding: `seqpipe.dataset.times`), and the encoder reads it as one
            more input channel. An input only: never reconstructed, never in
            the loss. Needs a dataset with times (training refuses one
            without); default false: batches and model as without times.
        service: `""` (default): every training worker makes its own batches.
            Else the address of a tf.data service dispatcher
            (`grpc://host:port` or `host:port`, started with `seqpipe
            data-service dispatcher`): the train split's batches (the same
            pipeline) are made by the service's workers, each record once per
            epoch across all of them (`distributed_epoch`), for runs whose
            input CPU is the bottleneck. Validation stays local, and a killed
            run resumes at the start of the epoch it was in (backups at epoch
            ends only): `seqpipe.training.data_service` says why.
    """

    batching: str = "sorted_window"
    batch_size: int = 32
    timestep_budget: int = 0
    sort_window: int = 2048
    length_grid: int = 0
    min_batch_efficiency: float = 0.9
    bucket_boundaries: tuple[int, ...] = ()
    num_buckets: int = 0
    pad_to_bucket_boundary: bool = True
    shuffle_buffer: int = 10000
    normalize: bool = True
    reverse_target: bool = True
    deterministic: bool = False
    seed: int = 0
    observed_mask: str = "auto"
    fill: str = "zero"
    time_delta: bool = False
    service: str = ""

    def __post_init__(self):
        _require(self.batch_size >= 1, "data.batch_size", "must be >= 1")
        _require_choice(self.observed_mask, ("auto", "always"), "data.observed_mask")
        _require_choice(self.fill, ("zero", "forward"), "data.fill")
        _require(not self.service or SERVICE_ADDRESS.fullmatch(self.service) is not None,
                 "data.service", f"expected '' or grpc://host:port or host:port, got "
                 f"{self.service!r}")
        _require_choice(self.batching, ("sorted_window", "buckets"), "data.batching")
        _require(self.timestep_budget >= -1, "data.timestep_budget",
                 "must be -1 (auto), 0 (none) or > 0")
        _require(self.sort_window >= 1, "data.sort_window", "must be >= 1")
        _require(self.length_grid >= 0, "data.length_grid", "must be >= 0 (0: no grid)")
        _require(0.0 <= self.min_batch_efficiency < 1.0, "data.min_batch_efficiency",
                 "must be in [0, 1) (0: off)")
        _require(self.num_buckets >= 0, "data.num_buckets", "must be >= 0")
        _require(list(self.bucket_boundaries) == sorted(set(self.bucket_boundaries))
                 and all(b >= 1 for b in self.bucket_boundaries),
                 "data.bucket_boundaries", "must be strictly increasing positive ints")
        _require(self.shuffle_buffer >= 1, "data.shuffle_buffer", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The LSTM/GRU autoencoder (`seqpipe.model.autoencoder`).

    Attributes:
        cell: `lstm` or `gru`.
        units: recurrent units of every encoder layer.
        layers: number of stacked encoder layers (the last one summarizes).
        decoder_units: recurrent units of every decoder layer; 0 means `units`.
        decoder_layers: number of stacked decoder layers.
        embedding_dim: size of the embedding; 0 (default) means the
            encoder's summary (final state(s), plus the pooled features with
            `pooling`) is the embedding, with no projection. Chosen on the
            real-data benchmark (benchmarks/README.md).
        bidirectional: bidirectional encoder layers. On by default: with
            `data.reverse_target` it makes markedly better embeddings (SVM
            test accuracy; see benchmarks/README.md).
        dropout: dropout on the recurrent layers' inputs.
        activation: recurrent activation. `tanh` (default) keeps the cuDNN
            path. `relu` is ReLU capped at 6 (relu6): an unbounded ReLU state
            explodes over hundreds of steps, whatever the gradient clipping.
            `relu` leaves the cuDNN path.
        embedding_from: `last` (the last encoder layer's final state) or
            `all_layers` (the final states of every encoder layer,
            concatenated, before the optional projection).
        pooling: any of `mean`, `max` (default both) or `[]`: also pool the
            last encoder layer's per-step outputs over the real steps only
            and concatenate them to the final state(s) before the
            projection. Chosen on the real-data benchmark
            (benchmarks/README.md).
    """

    cell: str = "lstm"
    units: int = 64
    layers: int = 1
    decoder_units: int = 0
    decoder_layers: int = 1
    embedding_dim: int = 0
    bidirectional: bool = True
    dropout: float = 0.0
    activation: str = "tanh"
    embedding_from: str = "last"
    pooling: tuple[str, ...] = ("mean", "max")

    def __post_init__(self):
        _require_choice(self.cell, ("lstm", "gru"), "model.cell")
        _require_choice(self.embedding_from, ("last", "all_layers"), "model.embedding_from")
        for mode in self.pooling:
            _require_choice(mode, ("mean", "max"), "model.pooling")
        _require(len(set(self.pooling)) == len(self.pooling), "model.pooling",
                 "must not repeat a mode")
        _require_choice(self.activation, ("tanh", "relu"), "model.activation")
        _require(self.units >= 1, "model.units", "must be >= 1")
        _require(self.layers >= 1, "model.layers", "must be >= 1")
        _require(self.decoder_units >= 0, "model.decoder_units", "must be >= 0")
        _require(self.decoder_layers >= 1, "model.decoder_layers", "must be >= 1")
        _require(self.embedding_dim >= 0, "model.embedding_dim", "must be >= 0")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop (`seqpipe.training.trainer`).

    Attributes:
        epochs: the most epochs a run takes (early stopping may end it sooner).
        min_steps: the fewest optimizer steps a run of `epochs` epochs takes:
            when the train split has fewer than `min_steps / epochs` batches,
            each epoch passes over it several times, `ceil(min_steps /
            (epochs * batches))` (batches estimated as `ceil(train records /
            data.batch_size)`), each pass in a new order. Epochs stay the
            unit of validation, backups, history and learning-rate
            schedules, so their overhead does not grow with the budget. The
            best weights and early stopping consider only the epochs that
            end at or after `min_steps` steps, so a run is never cut, nor
            its weights taken, before it. 0: one pass per epoch.
        validation_fraction: when the dataset has no `val` records, this
            share of the train split (chosen by a hash of each record,
            `seqpipe.input_pipeline.data.Holdout`) is held out of training
            to validate each epoch (early stopping, best weights, learning
            rate on plateau); 0 trains on all of it and validates on nothing
            (the best weights are then those of the lowest training loss).
            Datasets with a `val` split use it and ignore this.
        learning_rate: Adam learning rate.
        clipnorm: gradient clipping by global norm; 0 disables it.
        early_stopping_patience: epochs without a better validation loss
            before stopping; 0 disables early stopping.
        checkpoint_every_steps: mid-epoch backup interval (for resuming a
            killed run); 0 backs up only at epoch ends.
        strategy: `auto`, `default` (one device), `mirrored` or `multi_worker`.
        seed: weight initialization seed.
        lr_schedule: `constant`; `cosine` (per epoch, from `learning_rate` down
            to `min_learning_rate` at the last epoch); or `plateau` (multiply
            by `lr_factor` after `lr_patience` epochs without a better
            validation loss, not below `min_learning_rate`).
        lr_patience, lr_factor, min_learning_rate: see `lr_schedule`.
        log_every_steps: when not on a terminal, a progress line every this
            many steps (0: epoch lines only).
        jit_compile: compile the training step with XLA (one replica only);
            set `data.length_grid: 16` and `data.min_batch_efficiency: 0`
            with it, so batches have few shapes. Off by default: an epoch is
            faster once compiled, but every distinct batch shape compiles
            first, so it pays off only for long runs on large data (see
            benchmarks/README.md).
        objective: what training minimizes (`seqpipe.model.objectives`):
            `reconstruction`, the autoencoder's masked mean squared error;
            `triplet`, the T-Loss triplet loss of the encoder's embeddings of
            random sub-sequences (anchor, positive inside it, negatives from
            the other sequences of the batch); no decoder is built; or
            `both`, reconstruction + `triplet_weight` * triplet.
        triplet_negatives: K, negatives per anchor of the triplet loss (the
            weight of its negative term: the expected sum over K of the
            batch's other sequences).
        triplet_weight: the weight of the triplet term with `objective: both`.
    """

    epochs: int = 20
    min_steps: int = 1000
    validation_fraction: float = 0.1
    learning_rate: float = 1e-3
    clipnorm: float = 1.0
    early_stopping_patience: int = 5
    checkpoint_every_steps: int = 200
    strategy: str = "auto"
    seed: int = 0
    lr_schedule: str = "constant"
    lr_patience: int = 2
    lr_factor: float = 0.5
    min_learning_rate: float = 1e-5
    log_every_steps: int = 100
    jit_compile: bool = False
    objective: str = "reconstruction"
    triplet_negatives: int = 5
    triplet_weight: float = 1.0

    @property
    def has_decoder(self) -> bool:
        """Whether the objective trains a decoder (`reconstruction`, `both`): with
        `triplet` the encoder is trained alone, and nothing reconstructs the input
        (no scorer, no reconstruction figures)."""
        return self.objective != "triplet"

    def __post_init__(self):
        _require(self.epochs >= 1, "train.epochs", "must be >= 1")
        _require(self.min_steps >= 0, "train.min_steps", "must be >= 0")
        _require(0.0 <= self.validation_fraction < 0.5, "train.validation_fraction",
                 "must be in [0, 0.5)")
        _require(self.learning_rate > 0, "train.learning_rate", "must be > 0")
        _require(self.clipnorm >= 0, "train.clipnorm", "must be >= 0")
        _require(self.early_stopping_patience >= 0, "train.early_stopping_patience",
                 "must be >= 0")
        _require(self.checkpoint_every_steps >= 0, "train.checkpoint_every_steps",
                 "must be >= 0")
        _require_choice(self.strategy, ("auto", "default", "mirrored", "multi_worker"),
                        "train.strategy")
        _require_choice(self.lr_schedule, ("constant", "cosine", "plateau"),
                        "train.lr_schedule")
        _require(self.lr_patience >= 1, "train.lr_patience", "must be >= 1")
        _require(0.0 < self.lr_factor < 1.0, "train.lr_factor", "must be in (0, 1)")
        _require(0.0 <= self.min_learning_rate <= self.learning_rate,
                 "train.min_learning_rate", "must be in [0, learning_rate]")
        _require(self.log_every_steps >= 0, "train.log_every_steps", "must be >= 0")
        _require_choice(self.objective, ("reconstruction", "triplet", "both"),
                        "train.objective")
        _require(self.triplet_negatives >= 1, "train.triplet_negatives", "must be >= 1")
        _require(self.triplet_weight >= 0, "train.triplet_weight", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """SVM evaluation of embeddings and baselines (`seqpipe.commands.evaluate`).

    Attributes:
        kernels: SVM kernels to try, chosen by cross-validation.
        c_grid: values of C searched.
        gamma_grid: values of gamma searched (RBF); `scale` is sklearn's.
        cv_folds: cross-validation folds on the train split.
        seed: seed of the cross-validation split.
        hybrid_pooled: also evaluate the embeddings concatenated with the
            pooled statistics (an extra row, "embedding + pooled statistics").
        dtw_max_pairs: the 1-NN DTW baseline runs only when
            `num_train * num_test` (and `num_train * num_val`) is at most
            this many sequence pairs; above it the row is skipped with a
            note. 0 disables the baseline.
        dtw_window: Sakoe-Chiba band of the DTW baseline, as a fraction of
            the longest sequence's length (1.0: no band); pairs of very
            different lengths always get a band wide enough to align.
    """

    kernels: tuple[str, ...] = ("rbf", "linear")
    c_grid: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
    gamma_grid: tuple[str, ...] = ("scale",)
    cv_folds: int = 3
    seed: int = 0
    hybrid_pooled: bool = True
    dtw_max_pairs: int = 200_000
    dtw_window: float = 0.1

    def __post_init__(self):
        _require(bool(self.kernels) and set(self.kernels) <= {"rbf", "linear"},
                 "eval.kernels", "must be a non-empty subset of [rbf, linear]")
        _require(bool(self.c_grid) and all(c > 0 for c in self.c_grid), "eval.c_grid",
                 "must be non-empty and positive")
        _require(self.cv_folds >= 2, "eval.cv_folds", "must be >= 2")
        _require(self.dtw_max_pairs >= 0, "eval.dtw_max_pairs", "must be >= 0")
        _require(0.0 < self.dtw_window <= 1.0, "eval.dtw_window", "must be in (0, 1]")


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """Anomaly scores: calibration and baselines (`seqpipe.commands.score`).

    Attributes:
        quantile: `seqpipe score --threshold-from SPLIT` stores this quantile
            of that split's scores as the anomaly threshold: a record whose
            score is above it is flagged `is_anomaly`.
        threshold: a fixed threshold on the score (an error over the typical
            error at its length: 2.0 flags twice the typical error) to store
            instead of the quantile; null (default) uses the quantile.
        knn: the k of the nearest-neighbour baseline (mean distance to the k
            nearest train-split embeddings).
        records_per_knot: the calibration split's records per knot of the
            length profile (`seqpipe.commands.score.LengthProfile`), which
            divides each error by the typical error at its length.
    """

    quantile: float = 0.99
    threshold: float | None = None
    knn: int = 5
    records_per_knot: int = 25

    def __post_init__(self):
        _require(0.0 < self.quantile < 1.0, "score.quantile", "must be in (0, 1)")
        _require(self.threshold is None or self.threshold >= 0.0, "score.threshold",
                 "must be null (use the quantile) or >= 0 (scores are error ratios)")
        _require(self.knn >= 1, "score.knn", "must be >= 1")
        _require(self.records_per_knot >= 1, "score.records_per_knot", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole configuration: one section per stage."""

    synth: SynthConfig = dataclasses.field(default_factory=SynthConfig)
    preprocess: PreprocessConfig = dataclasses.field(default_factory=PreprocessConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    score: ScoreConfig = dataclasses.field(default_factory=ScoreConfig)


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def load_config(source: str | Path | None = None,
                overrides: Sequence[str] = ()) -> Config:
    """Loads a config from a bundled name or a YAML path, then applies overrides.

    Args:
        source: `None` (the defaults), a bundled name (`default`, `tiny`,
            `dataflow`, `multi_worker`) or a path to a YAML file.
        overrides: `section.key=value` strings; values are parsed as YAML.

    Returns:
        The frozen `Config`.

    Raises:
        ConfigError: the file is missing or malformed, or a key or value does
            not fit the schema.
    """
    tree = _read_yaml(source) if source is not None else {}
    for override in overrides:
        _apply_override(tree, override)
    return from_dict(tree)


def from_dict(tree: Mapping[str, Any]) -> Config:
    """Builds a `Config` from a nested mapping, checking every key and type."""
    return _build(Config, tree, prefix="")


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain YAML/JSON-friendly data (tuples become lists)."""
    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(dataclasses.asdict(config))


def dump_config(config: Config, path: str | Path) -> None:
    """Writes the resolved config as YAML (loadable with `load_config`), atomically, to a
    local path or a URL (`seqpipe.storage`)."""
    from seqpipe import storage

    storage.write_text_atomic(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def _read_yaml(source: str | Path) -> dict[str, Any]:
    path = _resolve_source(source)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        # one line: the location and the problem (a !!python/object tag lands here too)
        raise ConfigError(f"{path}: not valid YAML: {_one_line(error)}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a UTF-8 text file ({error.reason} at byte "
                          f"{error.start})") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config: {error.strerror}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got "
                          f"{type(tree).__name__}")
    return tree


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _resolve_source(source: str | Path) -> Path | Traversable:
    """The file of a bundled config name, else `source` as a path that must exist."""
    bundled = bundled_configs()
    if str(source) in bundled:
        return _bundled_folder() / f"{source}.yaml"
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"config {str(source)!r} is neither a file nor one of the "
                          f"bundled configs {bundled}")
    return path


def bundled_configs() -> list[str]:
    """The names `load_config` accepts for the bundled configs, sorted."""
    return sorted(entry.name.removesuffix(".yaml") for entry in _bundled_folder().iterdir()
                  if entry.name.endswith(".yaml"))


def _bundled_folder() -> Traversable:
    """The folder of the bundled configs: the repository's top-level `configs/`.

    An install ships that folder as the package `seqpipe.configs` (pyproject.toml
    maps the package to the folder), read through `importlib.resources`. A
    source checkout (the package imported from the repository, with
    `PYTHONPATH` or an editable install) has no such package folder, so there
    the folder is read in place, beside the `seqpipe` package.
    """
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "configs").is_dir():
        return checkout / "configs"
    return resources.files("seqpipe.configs")


def _apply_override(tree: dict[str, Any], override: str) -> None:
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like section.key=value")
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML: "
                          f"{_one_line(error)}") from None
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, tree: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if tree is None:
        tree = {}
    if not isinstance(tree, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(tree).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(key) for key in set(tree) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}'; "
                          f"{where} has: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(hints[name], value, f"{prefix}{name}")
              for name, value in tree.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from None


def _convert(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=f"{key}.")
    origin = typing.get_origin(hint)
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_convert(item_type, item, f"{key}[{i}]")
                     for i, item in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        # Only `X | None` (an optional value, null in YAML); other unions are ambiguous.
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(options) != 1 or len(typing.get_args(hint)) != 2:
            raise ConfigError(f"{key}: union types are not supported in configs")
        return None if value is None else _convert(options[0], value, key)
    return _convert_scalar(hint, value, key)


def _convert_scalar(hint: type, value: Any, key: str) -> Any:
    # bool is an int subclass in Python: check it first so `units: true` fails.
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            # PyYAML (YAML 1.1) reads `1e-3` as a string; it means a float here.
            return float(value)
    elif hint is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r} "
                      f"({type(value).__name__})")


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _require_choice(value: str, choices: Sequence[str], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: expected one of {list(choices)}, got {value!r}")
