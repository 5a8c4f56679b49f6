"""Does the input pipeline keep up? Throughput from gzip shards and epoch-time ratio.

Writes seed-shaped synthetic data (1,326 sequences, 8 features, lengths 7..356,
uniform or long-tailed) as gzip TFRecord shards, then with the default
`DataConfig` (sorted windows):

1. input throughput: iterates `seqpipe.input_pipeline.data.make_dataset` (training order,
   shuffled) for a few epochs, one dataset each, then the trainer's epoch
   stream (every epoch from one iterator, as training reads them), and prints
   sequences/s and timesteps/s;
2. training epoch ratio: seqpipe's trainer itself (`seqpipe.training.trainer.Trainer.
   train_epoch`: the real step, loop, backups and epoch stream, as `run()`
   uses them), alternating blocks of 3 consecutive epochs fed by the
   pipeline with the same 3 epochs fed by their batches cached in memory
   (`train_epoch(batches=...)`: the same loop), several times; prints
   pipeline time / cached time per pair of blocks and the median (target
   <= 1.05), and how many times the step was traced.

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

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from padding_efficiency import sample_lengths, write_dataset  # noqa: E402

from seqpipe.config import DataConfig, load_config  # noqa: E402
from seqpipe.dataset import metadata as metadata_lib  # noqa: E402
from seqpipe.input_pipeline import data  # noqa: E402
from seqpipe.training import trainer as train  # noqa: E402


def throughput(root: Path, cfg: DataConfig, epochs: int) -> list[dict]:
    """Sequences/s and timesteps/s of `epochs` full passes of the train split."""
    rows = []
    for epoch in range(epochs):
        ds = data.make_dataset(root, "train", cfg, training=True, seed=cfg.seed + epoch)
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


def epoch_ratios(root: Path, repeats: int, units: int, work: Path,
                 epochs_per_block: int = 3) -> dict:
    """Alternates blocks of pipeline-fed and cached epochs of the same batches.

    A pipeline block trains consecutive epochs as `run()` does (the trainer's
    epoch stream reads the next epoch's first window while the current one
    finishes); its first epoch is not counted (its read happened before the
    block). A cached block trains the same epochs from the batches listed in
    memory beforehand; before it, the stream's read-ahead is left to finish
    untimed, so no pipeline work runs during cached epochs.
    """
    cfg = load_config("default", [f"model.units={units}", "train.epochs=1000"])
    trainer = train.Trainer(root, work, cfg, metadata=metadata_lib.read(root),
                            strategy=tf.distribute.get_strategy(), verbose=False)

    def cached_batches(epoch: int) -> list:
        """The batches the pipeline of `epoch` yields (its order is seeded by the epoch)."""
        return list(trainer.inputs.distributed_dataset("train", epoch))

    def timed(epoch: int, batches=None) -> float:
        trainer.state.step_in_epoch.assign(0)
        return trainer.train_epoch(epoch, batches=batches).seconds

    streamed = stream_throughput(trainer, epochs=range(100, 106))
    trainer.close()
    timed(0)  # warm-up: traces the step, builds the optimizer and the epoch stream
    pairs, epoch = [], 1
    for repeat in range(repeats):
        epochs = list(range(epoch, epoch + 1 + epochs_per_block))
        epoch = epochs[-1] + 1
        cached = {e: cached_batches(e) for e in epochs[1:]}
        time.sleep(1.0)  # the stream's read-ahead finishes, untimed

        if repeat % 2:  # alternate which goes first, so drift in load cancels out
            from_memory = sum(timed(e, cached[e]) for e in epochs[1:])
            fed = sum([timed(e) for e in epochs][1:])
        else:
            fed = sum([timed(e) for e in epochs][1:])
            time.sleep(1.0)
            from_memory = sum(timed(e, cached[e]) for e in epochs[1:])
        pairs.append({"pipeline_s": fed, "cached_s": from_memory, "ratio": fed / from_memory,
                      "batches": sum(len(b) for b in cached.values())})
    trainer.close()
    return {"pairs": pairs, "median_ratio": statistics.median(p["ratio"] for p in pairs),
            "traces": trainer.train_step.experimental_get_tracing_count(),
            "stream": streamed}


def stream_throughput(trainer: train.Trainer, epochs: range) -> dict:
    """Input only, as the trainer reads it: consecutive epochs from its epoch stream
    (the first one, which builds the stream, not counted)."""
    for _ in trainer.inputs.stream("train", epochs[0]).epoch():
        pass
    started = time.perf_counter()
    sequences = timesteps = 0
    for epoch in epochs[1:]:
        for _, _, weights in trainer.inputs.stream("train", epoch).epoch():
            sequences += int(weights.shape[0])
            timesteps += int(tf.reduce_sum(weights))
    seconds = time.perf_counter() - started
    return {"epochs": len(epochs) - 1, "seconds": seconds,
            "sequences_per_s": sequences / seconds, "timesteps_per_s": timesteps / seconds}


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
        result = epoch_ratios(root, args.repeats, args.units, root / "model")
        stream = result["stream"]
        print(f"input only, {stream['epochs']} epochs from the trainer's epoch stream (one "
              f"iterator): {stream['seconds'] / stream['epochs']:.2f} s per epoch, "
              f"{stream['sequences_per_s']:,.0f} sequences/s, "
              f"{stream['timesteps_per_s']:,.0f} timesteps/s")
        for pair in result["pairs"]:
            print(f"3 training epochs ({pair['batches']} batches): pipeline "
                  f"{pair['pipeline_s']:.2f} s / cached {pair['cached_s']:.2f} s = "
                  f"{pair['ratio']:.3f}")
        print(f"median ratio {result['median_ratio']:.3f} (target <= 1.05); "
              f"step traced {result['traces']} times")


if __name__ == "__main__":
    main()
