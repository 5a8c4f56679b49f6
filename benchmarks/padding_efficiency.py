"""How much of each batch is padding: the default sorted windows vs the older modes.

Writes seed-shaped synthetic data (1,326 sequences, 8 features, lengths 7..356;
once uniform, once long-tailed log-normal) as real TFRecord shards plus a
metadata.json whose bucket boundaries are length quantiles (as the Beam job
suggests them) and whose histogram is exact, runs `seqpipe.input_pipeline.make_dataset`
over the train split in several batching modes, and the pad-to-max recipe as
the baseline (`pad_to_max`: batches of 32 records in file order, each
`padded_batch`-ed to the longest length, built here with plain tf.data;
seqpipe has no such mode), and prints, per mode, the
padding efficiency (real / padded timesteps), the number of batches, the
number of distinct batch shapes (what XLA or `tf.function` retrace on) and
of distinct T, and the batch sizes. No timings: the numbers are properties of
the batching, reproducible up to the shuffle order.

    python benchmarks/padding_efficiency.py [--json results.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Runs from a checkout without `pip install` too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from seqpipe.config import DataConfig  # noqa: E402
from seqpipe.dataset import metadata as metadata_lib  # noqa: E402
from seqpipe.dataset import records  # noqa: E402
from seqpipe.dataset.metadata import (  # noqa: E402
    DatasetMetadata,
    FeatureStats,
    LengthStats,
    SplitInfo,
)
from seqpipe.input_pipeline import batching, data  # noqa: E402

NUM_SEQUENCES = 1326
NUM_FEATURES = 8
MIN_LENGTH, MAX_LENGTH = 7, 356
NUM_BUCKETS = 8
NUM_SHARDS = 4
BATCH_SIZE = 32
TIMESTEP_BUDGET = 4096

BUCKETS = dict(batching="buckets", batch_size=BATCH_SIZE, timestep_budget=0)
MODES = {
    # The default: sorted windows, B = 32 (no timestep budget), each batch padded
    # to its longest, cut early where it would be less than 90% real.
    "default_sorted_window": DataConfig(),
    "window_no_floor": DataConfig(min_batch_efficiency=0.0),
    # With the auto budget: B <= 32 and B*T <= 32 x mean length.
    "window_auto_budget": DataConfig(timestep_budget=-1),
    # Grids of 16 and 8 lengths per doubling (bounded shapes, for XLA).
    "window_grid_16": DataConfig(length_grid=16, min_batch_efficiency=0.0),
    "window_grid_8": DataConfig(length_grid=8, min_batch_efficiency=0.0),
    "pad_to_max": None,  # the recipe's baseline: `pad_to_max_dataset`
    "no_buckets_batch_max": None,  # one bucket (no boundaries), padded to the batch max
    "buckets_batch_max": DataConfig(**BUCKETS, pad_to_bucket_boundary=False),
    "buckets_boundary": DataConfig(**BUCKETS, pad_to_bucket_boundary=True),
    "budget_boundary": DataConfig(**{**BUCKETS, "timestep_budget": TIMESTEP_BUDGET}),
    # Boundaries minimizing padding for the length histogram (batching.optimal_boundaries).
    "dp_buckets_16": DataConfig(**BUCKETS, num_buckets=16),
    "dp_buckets_32": DataConfig(**BUCKETS, num_buckets=32),
}


def sample_lengths(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "uniform":
        return rng.integers(MIN_LENGTH, MAX_LENGTH + 1, NUM_SEQUENCES)
    # Long tail: median ~40, a few up to MAX_LENGTH.
    lengths = np.exp(rng.normal(np.log(40.0), 0.8, NUM_SEQUENCES)).round()
    return np.clip(lengths, MIN_LENGTH, MAX_LENGTH).astype(int)


def quantile_boundaries(lengths: np.ndarray, num_buckets: int) -> list[int]:
    """Upper boundaries at the 1/n..(n-1)/n length quantiles, plus the max length."""
    qs = np.quantile(lengths, np.arange(1, num_buckets) / num_buckets, method="higher")
    return sorted({*(int(q) for q in qs), int(lengths.max())})


def write_dataset(root: Path, lengths: np.ndarray, rng: np.random.Generator,
                  compression: str = "none") -> None:
    """Random normal sequences of `lengths` as NUM_SHARDS train shards + metadata.json."""
    seqs = [rng.normal(size=(n, NUM_FEATURES)).astype(np.float32) for n in lengths]
    options = "GZIP" if compression == "gzip" else None
    writers = [tf.io.TFRecordWriter(str(root / records.shard_name("train", i, NUM_SHARDS)),
                                    options=options)
               for i in range(NUM_SHARDS)]
    for i, seq in enumerate(seqs):
        writers[i % NUM_SHARDS].write(records.encode_sequence(f"seq-{i:06d}", seq))
    for writer in writers:
        writer.close()
    steps = np.concatenate(seqs)
    metadata = DatasetMetadata(
        num_features=NUM_FEATURES,
        feature_names=tuple(f"f{i}" for i in range(NUM_FEATURES)),
        compression=compression,
        splits={"train": SplitInfo(
            num_records=len(seqs), num_timesteps=int(lengths.sum()), num_shards=NUM_SHARDS,
            files=tuple(records.shard_name("train", i, NUM_SHARDS) for i in range(NUM_SHARDS)))},
        length_stats=LengthStats(
            min=int(lengths.min()), max=int(lengths.max()), mean=float(lengths.mean()),
            quantiles={str(q): float(np.quantile(lengths, q))
                       for q in (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)},
            histogram=batching.exact_histogram(
                dict(zip(*np.unique(lengths, return_counts=True), strict=True)))),
        feature_stats=FeatureStats(
            num_timesteps=int(len(steps)), mean=tuple(steps.mean(0).tolist()),
            std=tuple(steps.std(0).tolist()), min=tuple(steps.min(0).tolist()),
            max=tuple(steps.max(0).tolist())),
        bucket_boundaries=tuple(quantile_boundaries(lengths, NUM_BUCKETS)),
    )
    metadata_lib.write(metadata, root)


def pad_to_max_dataset(root: Path, metadata: DatasetMetadata) -> tf.data.Dataset:
    """The recipe: batches of BATCH_SIZE records padded to the dataset's longest length.

    Yields `({"x", "mask"}, x, mask)` like `make_dataset`, so
    `padding_efficiency` measures it the same way.
    """
    spec = records.tf_feature_spec(NUM_FEATURES)
    max_length = metadata.length_stats.max

    def parse(serialized):
        record = tf.io.parse_single_example(serialized, spec)
        return record[records.STEPS_KEY], tf.cast(record[records.LENGTH_KEY], tf.int32)

    ds = tf.data.TFRecordDataset(records.split_files(root, "train")).map(parse)
    ds = ds.padded_batch(BATCH_SIZE, padded_shapes=([max_length, NUM_FEATURES], []))
    return ds.map(lambda x, length: (
        {"x": x, "mask": tf.sequence_mask(length, max_length, tf.float32)}, x,
        tf.sequence_mask(length, max_length, tf.float32)))


def run(seed: int = 0) -> list[dict]:
    rows = []
    rng = np.random.default_rng(seed)
    for kind in ("uniform", "lognormal"):
        lengths = sample_lengths(kind, rng)
        with tempfile.TemporaryDirectory(prefix="seqpipe-bench-") as tmp:
            root = Path(tmp)
            write_dataset(root, lengths, rng)
            metadata = metadata_lib.read(root)
            for mode, cfg in MODES.items():
                meta = metadata
                if mode == "no_buckets_batch_max":
                    cfg = DataConfig(**BUCKETS, pad_to_bucket_boundary=False)
                    meta = dataclasses.replace(metadata, bucket_boundaries=())
                if mode == "pad_to_max":
                    ds = pad_to_max_dataset(root, metadata)
                else:
                    ds = data.make_dataset(root, "train", cfg, training=True, metadata=meta)
                stats = data.padding_efficiency(ds)
                assert stats["num_records"] == NUM_SEQUENCES
                rows.append({"lengths": kind, "mode": mode,
                             "boundaries": list(metadata.bucket_boundaries), **stats})
    return rows


def print_table(rows: list[dict]) -> None:
    header = (f"{'lengths':<10} {'mode':<22} {'efficiency':>10} {'real':>7} {'padded':>8} "
              f"{'batches':>7} {'shapes':>6} {'T values':>8}  batch sizes")
    print(header)
    print("-" * len(header))
    for r in rows:
        sizes = r["batch_sizes"]
        print(f"{r['lengths']:<10} {r['mode']:<22} {r['efficiency']:>10.3f} "
              f"{r['real_timesteps']:>7} {r['padded_timesteps']:>8} {r['num_batches']:>7} "
              f"{r['distinct_shapes']:>6} {r['distinct_lengths']:>8}  "
              f"{min(sizes)}..{max(sizes)}, {sizes.get(BATCH_SIZE, 0)} of {BATCH_SIZE}")
    for kind in dict.fromkeys(r["lengths"] for r in rows):
        bounds = next(r["boundaries"] for r in rows if r["lengths"] == kind)
        print(f"{kind} metadata (quantile) bucket boundaries: {bounds}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = run(args.seed)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
