"""Throughput of the preprocessing job against a plain Python loop, in one run.

Writes seed-shaped synthetic data (`seqpipe.synthetic`: 8 features, lengths
7..356 long-tailed) as JSON lines, then measures sequences/s of:

    loop        one process: read lines, `sources.validate_json_line`, assign the
                split, `records.encode_sequence`, `tf.io.TFRecordWriter` per split
                (the same per-record functions the job uses; no dataset-level
                checks, no statistics, no rejects file)
    beam_1      `beam_jobs.preprocess.preprocess`, DirectRunner, 1 worker (in-process)
    beam_2mp    the same, `--direct_num_workers 2 --direct_running_mode multi_processing`

Every variant runs in its own subprocess (a fresh interpreter, TF imported
inside the timing as the job pays it too) and reads the same input files. The
wall time includes everything from the call to the finished output; the
table shows sequences/s and the ratio to the loop. No thresholds: the numbers
are the result.

    python benchmarks/preprocess_throughput.py [--num-sequences 50000] \\
        [--num-files 4] [--variants loop,beam_1,beam_2mp] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without `pip install` too

VARIANTS = ("loop", "beam_1", "beam_2mp")
PIPELINE_ARGS = {
    "beam_1": [],
    "beam_2mp": ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
}


def write_inputs(directory: Path, num_sequences: int, num_files: int) -> list[str]:
    """Seed-shaped JSONL split round-robin over `num_files` files; returns their paths."""
    from seqpipe import synthetic
    from seqpipe.config import SynthConfig

    paths = [directory / f"raw-{i:02d}.jsonl" for i in range(num_files)]
    handles = [p.open("w") for p in paths]
    for index, record in enumerate(synthetic.generate(SynthConfig(num_sequences=num_sequences))):
        handles[index % num_files].write(json.dumps(record, separators=(",", ":")) + "\n")
    for handle in handles:
        handle.close()
    return [str(p) for p in paths]


def run_loop(inputs: list[str], output_dir: str) -> int:
    """The single-process baseline; returns the number of records written."""
    import tensorflow as tf

    from seqpipe import records, sources

    os.makedirs(output_dir)
    writers = {split: tf.io.TFRecordWriter(os.path.join(output_dir, f"{split}.tfrecord"))
               for split in records.SPLITS}
    written = 0
    for path in inputs:
        with open(path, "rb") as stream:
            for number, line in enumerate(stream, start=1):
                result = sources.validate_json_line(line.rstrip(b"\r\n"), path, number)
                if isinstance(result, sources.Rejection):
                    continue
                split = sources.assign_split(result, 0.8, 0.1)
                writers[split].write(records.encode_sequence(result.id, result.steps,
                                                             result.label))
                written += 1
    for writer in writers.values():
        writer.close()
    return written


def run_job(inputs: list[str], output_dir: str, pipeline_args: list[str]) -> int:
    """The Beam job; returns the number of records written."""
    from beam_jobs.preprocess import preprocess
    from seqpipe.config import PreprocessConfig

    metadata = preprocess(inputs, output_dir, PreprocessConfig(), pipeline_args)
    return metadata["counts"]["written"]


def child(variant: str, inputs: list[str], output_dir: str) -> None:
    """Runs one variant in this process and prints `{seconds, written}` as JSON."""
    start = time.perf_counter()
    if variant == "loop":
        written = run_loop(inputs, output_dir)
    else:
        written = run_job(inputs, output_dir, PIPELINE_ARGS[variant])
    print(json.dumps({"seconds": time.perf_counter() - start, "written": written}))


def measure(variant: str, inputs: list[str], work: Path) -> dict:
    """Runs `variant` in a fresh subprocess; returns its timing."""
    command = [sys.executable, __file__, "--child", variant, "--output",
               str(work / f"out-{variant}"), *inputs]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_table(results: dict[str, dict], num_sequences: int) -> str:
    """Side-by-side sequences/s and the ratio to the loop."""
    base = results.get("loop")
    lines = [f"{num_sequences} sequences, {os.cpu_count()} CPUs",
             f"{'variant':<10} {'seconds':>8} {'seq/s':>8} {'x loop':>7}"]
    for variant, result in results.items():
        rate = result["written"] / result["seconds"]
        ratio = rate / (base["written"] / base["seconds"]) if base else float("nan")
        lines.append(f"{variant:<10} {result['seconds']:>8.1f} {rate:>8.0f} {ratio:>7.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-sequences", type=int, default=50_000)
    parser.add_argument("--num-files", type=int, default=4)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--inputs-dir", default=None,
                        help="reuse (or create) the generated inputs here")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None, help=argparse.SUPPRESS)
    parser.add_argument("inputs", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.inputs, args.output)
        return
    with tempfile.TemporaryDirectory(prefix="seqpipe-bench-") as tmp:
        work = Path(tmp)
        inputs_dir = Path(args.inputs_dir or work / "raw")
        inputs_dir.mkdir(parents=True, exist_ok=True)
        inputs = sorted(str(p) for p in inputs_dir.glob("raw-*.jsonl"))
        if len(inputs) != args.num_files:
            inputs = write_inputs(inputs_dir, args.num_sequences, args.num_files)
        results = {variant: measure(variant, inputs, work)
                   for variant in args.variants.split(",")}
    print(format_table(results, args.num_sequences))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"num_sequences": args.num_sequences, "num_files": args.num_files,
             "cpus": os.cpu_count(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
