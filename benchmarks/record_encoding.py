"""Record encoding: flat-float-list `tf.train.Example` vs `tf.train.SequenceExample`.

Encodes the same seed-shaped sequences (`seqpipe.synthetic`: 8 features,
lengths 7..356 long-tailed) two ways and writes each to one uncompressed
TFRecord file:

    example           the seqpipe record (`records.encode_sequence`): id, label,
                      length and `steps` as one flat float list [length * F]
    sequence_example  context {id, label, length}; feature list `steps` with one
                      float-list Feature of F values per timestep

then measures tf.data parse throughput: read, batch the serialized records,
parse the batch (`tf.io.parse_example` / `tf.io.parse_sequence_example`,
both giving steps padded to the batch's longest sequence [B, T, F]), on all
CPUs (AUTOTUNE). Prints sequences/s, timesteps/s (real steps) and bytes on
disk side by side, best of `--repeats` passes after one warm-up pass. No
thresholds.

    python benchmarks/record_encoding.py [--num-sequences 20000] [--batch-size 64] \\
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from seqpipe import synthetic  # noqa: E402
from seqpipe.config import SynthConfig  # noqa: E402
from seqpipe.dataset import records  # noqa: E402

NUM_FEATURES = 8


def encode_sequence_example(sequence_id: str, steps: np.ndarray, label: str) -> bytes:
    """The SequenceExample alternative: one FeatureList entry per timestep."""
    context = tf.train.Features(feature={
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[sequence_id.encode()])),
        "label": tf.train.Feature(bytes_list=tf.train.BytesList(value=[label.encode()])),
        "length": tf.train.Feature(int64_list=tf.train.Int64List(value=[len(steps)])),
    })
    steps_list = tf.train.FeatureList(feature=[
        tf.train.Feature(float_list=tf.train.FloatList(value=row.tolist())) for row in steps])
    example = tf.train.SequenceExample(
        context=context, feature_lists=tf.train.FeatureLists(feature_list={"steps": steps_list}))
    return example.SerializeToString(deterministic=True)


def write_files(directory: Path, num_sequences: int) -> tuple[dict[str, str], int]:
    """Both encodings of the same sequences; returns their paths and the timestep count."""
    paths = {"example": str(directory / "example.tfrecord"),
             "sequence_example": str(directory / "sequence_example.tfrecord")}
    timesteps = 0
    with tf.io.TFRecordWriter(paths["example"]) as flat, \
            tf.io.TFRecordWriter(paths["sequence_example"]) as sequence:
        for record in synthetic.generate(SynthConfig(num_sequences=num_sequences)):
            steps = np.asarray(record["steps"], np.float32)
            timesteps += len(steps)
            flat.write(records.encode_sequence(record["id"], steps, record["label"]))
            sequence.write(encode_sequence_example(record["id"], steps, record["label"]))
    return paths, timesteps


def parse_example_batch(serialized):
    parsed = tf.io.parse_example(serialized, records.tf_feature_spec(NUM_FEATURES))
    return parsed["steps"], parsed["length"]


def parse_sequence_example_batch(serialized):
    context, sequences, _ = tf.io.parse_sequence_example(
        serialized,
        context_features={"id": tf.io.FixedLenFeature([], tf.string),
                          "label": tf.io.FixedLenFeature([], tf.string),
                          "length": tf.io.FixedLenFeature([], tf.int64)},
        sequence_features={"steps": tf.io.FixedLenSequenceFeature([NUM_FEATURES],
                                                                  tf.float32)})
    return sequences["steps"], context["length"]


PARSERS = {"example": parse_example_batch, "sequence_example": parse_sequence_example_batch}


def time_parse(path: str, encoding: str, batch_size: int, repeats: int) -> tuple[float, int]:
    """Best seconds of one pass over the file, and the real timesteps it parsed."""
    dataset = (tf.data.TFRecordDataset(path)
               .batch(batch_size)
               .map(PARSERS[encoding], num_parallel_calls=tf.data.AUTOTUNE)
               .prefetch(tf.data.AUTOTUNE))
    best, steps = float("inf"), 0
    for attempt in range(repeats + 1):  # the first pass warms up (tracing, page cache)
        start = time.perf_counter()
        steps = sum(int(lengths.sum()) for _, lengths in dataset.as_numpy_iterator())
        if attempt:
            best = min(best, time.perf_counter() - start)
    return best, steps


def format_table(results: dict[str, dict]) -> str:
    """Side-by-side rates and sizes, with ratios to the flat Example."""
    base = results["example"]
    lines = [f"{'encoding':<17} {'seq/s':>9} {'timesteps/s':>12} {'MiB':>7} "
             f"{'speed x example':>15} {'size x example':>14}"]
    for name, r in results.items():
        lines.append(f"{name:<17} {r['sequences_per_s']:>9.0f} {r['timesteps_per_s']:>12.0f} "
                     f"{r['bytes'] / 2**20:>7.1f} "
                     f"{r['sequences_per_s'] / base['sequences_per_s']:>15.2f} "
                     f"{r['bytes'] / base['bytes']:>14.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-sequences", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="seqpipe-enc-") as tmp:
        paths, timesteps = write_files(Path(tmp), args.num_sequences)
        for encoding, path in paths.items():
            seconds, parsed_steps = time_parse(path, encoding, args.batch_size, args.repeats)
            assert parsed_steps == timesteps, (encoding, parsed_steps, timesteps)
            results[encoding] = {"seconds": seconds,
                                 "sequences_per_s": args.num_sequences / seconds,
                                 "timesteps_per_s": timesteps / seconds,
                                 "bytes": os.path.getsize(path)}
    print(f"{args.num_sequences} sequences, {timesteps} timesteps, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs")
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"num_sequences": args.num_sequences, "timesteps": timesteps,
             "batch_size": args.batch_size, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
