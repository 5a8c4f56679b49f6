"""Does the input pipeline keep up? Throughput from gzip shards and epoch-time ratio.

Writes seed-shaped synthetic data (1,326 sequences, 8 features, lengths 7..356,
uniform or long-tailed) as gzip TFRecord shards, then with the default
`DataConfig` (sorted windows):

1. input throughput: iterates `seqpipe.data.make_dataset` (training order,
   shuffled) for a few epochs and prints sequences/s and timesteps/s;
2. training epoch ratio: the real autoencoder (`build_autoencoder`) and a
   training step like `seqpipe.train`'s (`tf.function(reduce_retracing=True)`,
   `masked_squared_error`, Adam), alternating an epoch fed by the pipeline with
   an epoch fed by the same batches cached in memory, several times; prints
   pipeline time / cached time per pair and the median (target <= 1.05), and
   how many times the step was traced.

Pin the cores as the target machine has them, e.g. `taskset -c 0,1`:

    python benchmarks/input_pipeline.py [--lengths lognormal] [--repeats 3] [--units 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from padding_efficiency import sample_lengths, write_dataset  # noqa: E402

from seqpipe import data, models  # noqa: E402
from seqpipe.config import DataConfig, ModelConfig  # noqa: E402


def throughput(root: Path, cfg: DataConfig, epochs: int) -> list[dict]:
    """Sequences/s and timesteps/s of `epochs` full passes of the train split."""
    rows = []
    for epoch in range(epochs):
        ds = data.make_dataset(root, "train", DataConfig(**{**cfg.__dict__,
                                                            "seed": cfg.seed + epoch}),
                               training=True)
        started = time.perf_counter()
        sequences = timesteps = 0
        for _, _, weights in ds:
            sequences += int(weights.shape[0])
            timesteps += int(tf.reduce_sum(weights))
        seconds = time.perf_counter() - started
        rows.append({"epoch": epoch, "seconds": seconds,
                     "sequences_per_s": sequences / seconds,
                     "timesteps_per_s": timesteps / seconds})
    return rows


def make_train_step(units: int):
    """A compiled training step as in `seqpipe.train` (one replica)."""
    autoencoder, _ = models.build_autoencoder(ModelConfig(units=units), 8)
    optimizer = keras.optimizers.Adam(1e-3)

    @tf.function(reduce_retracing=True)
    def step(inputs, targets, weights):
        with tf.GradientTape() as tape:
            predictions = autoencoder(inputs, training=True)
            sse, count = models.masked_squared_error(targets, predictions, weights)
            loss = sse / tf.maximum(count, 1.0)
        variables = autoencoder.trainable_variables
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return loss

    return step


def timed_epoch(step, batches) -> float:
    """Seconds to run `step` over every batch (the loss is read back, as the trainer does)."""
    started = time.perf_counter()
    for inputs, targets, weights in batches:
        float(step(inputs, targets, weights))
    return time.perf_counter() - started


def epoch_ratios(root: Path, cfg: DataConfig, repeats: int, units: int) -> dict:
    """Alternates pipeline-fed and cached epochs of the same batches."""
    step = make_train_step(units)

    def dataset(seed: int) -> tf.data.Dataset:
        return data.make_dataset(root, "train", DataConfig(**{**cfg.__dict__, "seed": seed}),
                                 training=True)

    timed_epoch(step, list(dataset(cfg.seed)))  # warm-up: traces and builds the optimizer
    pairs = []
    for repeat in range(repeats):
        seed = cfg.seed + 1 + repeat
        cached = list(dataset(seed))  # the batches a fresh pipeline with this seed yields
        if repeat % 2:  # alternate which goes first, so drift in load cancels out
            from_memory = timed_epoch(step, cached)
            fed = timed_epoch(step, dataset(seed))
        else:
            fed = timed_epoch(step, dataset(seed))
            from_memory = timed_epoch(step, cached)
        pairs.append({"pipeline_s": fed, "cached_s": from_memory, "ratio": fed / from_memory,
                      "batches": len(cached)})
    return {"pairs": pairs, "median_ratio": statistics.median(p["ratio"] for p in pairs),
            "traces": step.experimental_get_tracing_count()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", choices=["uniform", "lognormal"], default="lognormal")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    lengths = sample_lengths(args.lengths, rng)
    cfg = DataConfig()
    with tempfile.TemporaryDirectory(prefix="seqpipe-bench-") as tmp:
        root = Path(tmp)
        write_dataset(root, lengths, rng, compression="gzip")
        print(f"{len(lengths)} sequences, {lengths.sum()} timesteps ({args.lengths}), gzip "
              f"shards, default DataConfig, {os.cpu_count()} cores visible")
        for row in throughput(root, cfg, epochs=3):
            print(f"input only, epoch {row['epoch']}: {row['seconds']:.2f} s, "
                  f"{row['sequences_per_s']:,.0f} sequences/s, "
                  f"{row['timesteps_per_s']:,.0f} timesteps/s")
        result = epoch_ratios(root, cfg, args.repeats, args.units)
        for pair in result["pairs"]:
            print(f"training epoch ({pair['batches']} batches): pipeline "
                  f"{pair['pipeline_s']:.2f} s / cached {pair['cached_s']:.2f} s = "
                  f"{pair['ratio']:.3f}")
        print(f"median ratio {result['median_ratio']:.3f} (target <= 1.05); "
              f"step traced {result['traces']} times")


if __name__ == "__main__":
    main()
