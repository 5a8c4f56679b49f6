"""Peak memory of the preprocessing job on N and 4N sequences, in one run.

Writes seed-shaped synthetic JSONL (8 features, lengths 7..356 long-tailed;
`seqpipe.synthetic`) with N and 4N sequences, runs the job on each in a fresh
subprocess (DirectRunner; pipeline options from `--pipeline-args`) and reads
the peak resident set size of that subprocess and its descendants from
`resource.getrusage(RUSAGE_CHILDREN)` in a wrapper process, so each run is
measured alone. Prints peak RSS per size and the growth ratio 4N / N; no
thresholds.

Note: `ru_maxrss` of RUSAGE_CHILDREN is the largest single descendant's
peak, not a sum; with multi-process DirectRunner the peak is the largest
process. What grows with N: the runner process holds one small
`beam_jobs.validate.Candidate` per record (a few fields, `CandidateCoder`) for
the duplicate-id check; the records themselves stay in the workers, a bundle
at a time.

    python benchmarks/preprocess_memory.py [--num-sequences 5000] [--json out.json] \\
        [--pipeline-args="--direct_num_workers=2 --direct_running_mode=multi_processing"]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without `pip install` too


def write_input(path: Path, num_sequences: int) -> Path:
    """Seed-shaped JSONL with `num_sequences` records."""
    from seqpipe import synthetic
    from seqpipe.config import SynthConfig

    synthetic.write_jsonl(SynthConfig(num_sequences=num_sequences), path)
    return path


def run_measured(input_path: Path, output_dir: Path, pipeline_args: list[str]) -> dict:
    """Runs the job in a wrapper process that reports its children's peak RSS."""
    wrapper = (
        "import json, resource, subprocess, sys\n"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
        "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps({'max_rss_kib': usage.ru_maxrss}))\n")
    job = [sys.executable, "-m", "beam_jobs.preprocess", f"--input={input_path}",
           f"--output={output_dir}", *pipeline_args]
    done = subprocess.run([sys.executable, "-c", wrapper, *job], check=True,
                          capture_output=True, text=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_table(results: list[dict]) -> str:
    """Peak RSS per size and the growth ratio to the smallest size."""
    base = results[0]["max_rss_mib"]
    lines = [f"{'sequences':>9} {'input MiB':>9} {'peak RSS MiB':>12} {'x smallest':>10}"]
    lines += [f"{r['num_sequences']:>9} {r['input_mib']:>9.1f} {r['max_rss_mib']:>12.0f} "
              f"{r['max_rss_mib'] / base:>10.2f}" for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-sequences", type=int, default=5000, help="N (also runs 4N)")
    parser.add_argument("--pipeline-args", default="", help="Beam options, one string")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="seqpipe-mem-") as tmp:
        for n in (args.num_sequences, 4 * args.num_sequences):
            raw = write_input(Path(tmp) / f"raw-{n}.jsonl", n)
            usage = run_measured(raw, Path(tmp) / f"out-{n}", shlex.split(args.pipeline_args))
            results.append({"num_sequences": n, "input_mib": raw.stat().st_size / 2**20,
                            "max_rss_mib": usage["max_rss_kib"] / 1024})
    print(format_table(results))
    print(f"growth 4N / N: {results[1]['max_rss_mib'] / results[0]['max_rss_mib']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"pipeline_args": args.pipeline_args, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
