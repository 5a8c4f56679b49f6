"""Throughput of the preprocessing job against a plain Python loop, in one run.

Writes seed-shaped synthetic data (`seqpipe.synthetic`: 8 features, lengths
7..356 long-tailed) as JSON lines, then measures sequences/s of:

    loop        one process: read lines, `sources.validate_json_line`, assign the
                split, `records.encode_sequence`, `tf.io.TFRecordWriter` per split
                (the same per-record functions the job uses; no dataset-level
                checks, no statistics, no rejects file)
    loop_notf   the same loop writing the TFRecord framing with Beam's codec, as
                the job's workers do, so it never imports TensorFlow (the
                stricter baseline: the loop pays the TF import, the workers do not)
    beam_1      `beam_jobs.preprocess.preprocess`, DirectRunner, 1 worker (in-process)
    beam_2mp    the same, `--direct_num_workers 2 --direct_running_mode multi_processing`

Every variant runs in its own subprocess (a fresh interpreter, imports inside
the timing as the job pays them too) and reads the same input files. The wall
time includes everything from the call to the finished output. Variants run
in rounds (`--repeats`), the order rotating each round, so that a machine
shared with other work disturbs them alike; the table shows the median
seconds with the min..max spread, the median sequences/s, and the median of
the per-round ratios to each loop, and the CPU seconds (user + sys) of the
variant's whole process tree, which a busy machine disturbs less than the
wall time. No thresholds: the numbers are the result.

    python benchmarks/preprocess_throughput.py [--num-sequences 50000] \\
        [--num-files 4] [--repeats 3] [--variants loop,loop_notf,beam_1,beam_2mp] \\
        [--inputs-dir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without `pip install` too

VARIANTS = ("loop", "loop_notf", "beam_1", "beam_2mp")
LOOPS = ("loop", "loop_notf")
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


def run_loop(inputs: list[str], output_dir: str, use_tf: bool = True) -> int:
    """The single-process baseline; returns the number of records written."""
    from seqpipe.dataset import records, sources

    os.makedirs(output_dir)
    paths = {split: os.path.join(output_dir, f"{split}.tfrecord") for split in records.SPLITS}
    if use_tf:
        import tensorflow as tf

        writers = {split: tf.io.TFRecordWriter(path) for split, path in paths.items()}
        write = {split: writer.write for split, writer in writers.items()}
    else:
        from apache_beam.io.tfrecordio import _TFRecordUtil

        writers = {split: open(path, "wb") for split, path in paths.items()}  # noqa: SIM115
        write = {split: functools.partial(_TFRecordUtil.write_record, writer)
                 for split, writer in writers.items()}
    written = 0
    for path in inputs:
        with open(path, "rb") as stream:
            for number, line in enumerate(stream, start=1):
                result = sources.validate_json_line(line.rstrip(b"\r\n"), path, number)
                if isinstance(result, sources.Rejection):
                    continue
                split = sources.assign_split(result, 0.8, 0.1)
                write[split](records.encode_sequence(result.id, result.steps, result.label))
                written += 1
    for writer in writers.values():
        writer.close()
    return written


def run_job(inputs: list[str], output_dir: str, pipeline_args: list[str]) -> int:
    """The Beam job; returns the number of records written."""
    from beam_jobs.preprocess import preprocess
    from seqpipe.config import PreprocessConfig

    metadata = preprocess(inputs, output_dir, PreprocessConfig(), pipeline_args)
    return metadata.counts.written


def child(variant: str, inputs: list[str], output_dir: str) -> None:
    """Runs one variant in this process and prints `{seconds, written}` as JSON."""
    start = time.perf_counter()
    if variant in LOOPS:
        written = run_loop(inputs, output_dir, use_tf=variant == "loop")
    else:
        written = run_job(inputs, output_dir, PIPELINE_ARGS[variant])
    print(json.dumps({"seconds": time.perf_counter() - start, "written": written}))


def measure(variant: str, inputs: list[str], work: Path, tag: str) -> dict:
    """Runs `variant` in a fresh subprocess; returns its timing."""
    command = [sys.executable, __file__, "--child", variant, "--output",
               str(work / f"out-{variant}-{tag}"), *inputs]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "cpu_seconds": cpu}


def run_rounds(variants: list[str], inputs: list[str], work: Path,
               repeats: int) -> dict[str, list[dict]]:
    """{variant: [timing per round]}; the order rotates by one variant each round."""
    runs: dict[str, list[dict]] = {variant: [] for variant in variants}
    for round_index in range(repeats):
        shift = round_index % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            result = measure(variant, inputs, work, str(round_index))
            runs[variant].append(result)
            print(f"round {round_index}: {variant:<10} {result['seconds']:6.1f} s",
                  file=sys.stderr)
    return runs


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Median seconds, spread, median rate and median per-round ratio to each loop."""
    summary = {}
    for variant, results in runs.items():
        seconds = [r["seconds"] for r in results]
        rates = [r["written"] / r["seconds"] for r in results]
        summary[variant] = {"median_seconds": statistics.median(seconds),
                            "min_seconds": min(seconds), "max_seconds": max(seconds),
                            "median_cpu_seconds": statistics.median(
                                r["cpu_seconds"] for r in results),
                            "median_rate": statistics.median(rates),
                            "written": results[0]["written"]}
        for loop in LOOPS:
            if loop in runs:
                ratios = [rate * base["seconds"] / base["written"]
                          for rate, base in zip(rates, runs[loop], strict=True)]
                summary[variant][f"x_{loop}"] = statistics.median(ratios)
    return summary


def format_table(summary: dict[str, dict], num_sequences: int, repeats: int) -> str:
    """Side-by-side medians, spread and the ratios to the loops."""
    loops = [loop for loop in LOOPS if loop in summary]
    lines = [f"{num_sequences} sequences, {os.cpu_count()} CPUs, {repeats} rounds (medians)",
             f"{'variant':<10} {'seconds':>8} {'min..max':>11} {'cpu s':>6} {'seq/s':>7}"
             + "".join(f" {'x ' + loop:>11}" for loop in loops)]
    for variant, row in summary.items():
        spread = f"{row['min_seconds']:.1f}..{row['max_seconds']:.1f}"
        lines.append(f"{variant:<10} {row['median_seconds']:>8.1f} {spread:>11} "
                     f"{row['median_cpu_seconds']:>6.1f} {row['median_rate']:>7.0f}"
                     + "".join(f" {row[f'x_{loop}']:>11.2f}" for loop in loops))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-sequences", type=int, default=50_000)
    parser.add_argument("--num-files", type=int, default=4)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=3, help="rounds of all variants")
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
        runs = run_rounds(args.variants.split(","), inputs, work, args.repeats)
    summary = summarize(runs)
    print(format_table(summary, args.num_sequences, args.repeats))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"num_sequences": args.num_sequences, "num_files": args.num_files,
             "cpus": os.cpu_count(), "repeats": args.repeats, "summary": summary,
             "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
