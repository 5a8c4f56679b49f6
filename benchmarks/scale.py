"""Scale run: preprocess and one training epoch at 1x, 4x and 16x a base size, in one run.

Generates seed-shaped synthetic sequences (`seqpipe.synthetic`: 8 features,
lengths 7..356 long-tailed) as many gzip JSON-lines files, then for each size
runs, as subprocesses,

    python -m seqpipe preprocess --input 'DIR/*.jsonl.gz' --output OUT \\
        --direct_num_workers=2 --direct_running_mode=multi_processing
    python -m seqpipe train --data OUT --model-dir M --set train.epochs=1 \\
        --set model.units=16 --set data.batch_size=256 --quiet --json

and prints, per size: wall seconds, records/s and timesteps/s of the job (also
without its startup, which does not grow with the data), the CPU seconds of
its process tree (exact, `RUSAGE_CHILDREN`), the peak RSS of the whole process
tree (the sum over the driver and every SDK worker, sampled every
`SAMPLE_SECONDS`) and of the driver and the largest worker apart (the kernel's
exact `VmHWM`), the output MiB; for training, its wall seconds, the epoch's
timesteps/s as the trainer measures it (the train split's steps: not the
TensorFlow import, the tracing before the epoch nor the validation pass) and
its peak RSS. Then the ratios of every size to the first, side by side. No
thresholds: the numbers are the result.

Inputs: file `k` holds `SynthConfig(seed=k)`'s first sequences with ids
prefixed `f<k>-` (every sequence's draws depend only on its seed and index,
so the files are independent and the ids unique). Every file holds
`base / files_per_base` sequences; size `m x base` reads the first
`m x files_per_base` files (symlinked into one directory per size), so the
larger sizes contain the smaller. Files are written once into `--inputs-dir`
(under `per-file-<n>/`) by `--gen-processes` processes and reused by later
runs; generation time is printed but is not what is measured.

Where the time goes:
- per stage: the job runs under a wrapper that logs, timestamped, each
  bundle the Beam runner starts (its `run_bundle` debug log); bundles run one
  at a time, so the gaps give each fused stage's wall seconds. `startup` is
  everything before the first bundle; the first stage also starts the SDK
  workers; the last one runs to the end of the process (the driver's shard
  renames, metadata and commit).
- per record: `per_record_costs` times the worker's per-record steps alone on
  one input file; the workers' CPU per record beyond their sum is Beam's.

    nice python benchmarks/scale.py [--base 62500] [--multiples 1,4,16] \\
        [--files-per-base 20] [--inputs-dir DIR] [--work-dir DIR] \\
        [--gen-processes 2] [--pipeline-args "..."] [--train-set KEY=VALUE ...] \\
        [--no-train] [--json out.json]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import multiprocessing
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without `pip install` too

SAMPLE_SECONDS = 0.5
PIPELINE_ARGS = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")
TRAIN_SETTINGS = ("train.epochs=1", "model.units=16", "data.batch_size=256")
# `python -m seqpipe`, with the Beam runner's "Running bundle for stage" log on stderr,
# timestamped: the stage timings.
BUNDLE_LOGGER = "apache_beam.runners.portability.fn_api_runner.fn_runner.run_bundle"
LOGGED_CLI = ("import logging, runpy, sys\n"
              "handler = logging.StreamHandler()\n"
              "handler.setFormatter(logging.Formatter('@%(created).3f %(message)s'))\n"
              f"logger = logging.getLogger('{BUNDLE_LOGGER}')\n"
              "logger.setLevel(logging.DEBUG)\n"
              "logger.propagate = False\n"
              "logger.addHandler(handler)\n"
              "sys.argv[0] = 'seqpipe'\n"
              "runpy.run_module('seqpipe', run_name='__main__')\n")


# --- inputs -------------------------------------------------------------------------------

def sequences_per_file(base: int, files_per_base: int) -> int:
    """How many sequences each input file holds: `base / files_per_base`, exactly."""
    per_file, remainder = divmod(base, files_per_base)
    if remainder or not per_file:
        raise SystemExit(f"--base {base} is not a positive multiple of --files-per-base "
                         f"{files_per_base}")
    return per_file


def input_name(index: int) -> str:
    return f"raw-{index:05d}.jsonl.gz"


def _write_input_file(job: tuple[Path, int, int]) -> None:
    """Writes file `index` (seed `index`, `count` sequences) atomically (a killed run
    leaves no file that a later run would take as finished)."""
    from seqpipe import synthetic
    from seqpipe.config import SynthConfig

    path, index, count = job
    temporary = path.with_name(f".{path.name}.tmp")
    with gzip.open(temporary, "wt", encoding="utf-8", compresslevel=6) as handle:
        for record in synthetic.generate(SynthConfig(num_sequences=count, seed=index)):
            record["id"] = f"f{index:05d}-{record['id']}"
            handle.write(json.dumps(record, separators=(",", ":")) + "\n")
    os.replace(temporary, path)


def write_inputs(directory: Path, num_files: int, per_file: int, processes: int) -> float:
    """Writes the missing input files in `processes` processes; returns the seconds taken."""
    directory.mkdir(parents=True, exist_ok=True)
    jobs = [(directory / input_name(k), k, per_file) for k in range(num_files)
            if not (directory / input_name(k)).exists()]
    start = time.perf_counter()
    if jobs:
        with multiprocessing.Pool(processes) as pool:
            for done, _ in enumerate(pool.imap_unordered(_write_input_file, jobs), start=1):
                print(f"\rgenerated {done}/{len(jobs)} files", end="", file=sys.stderr)
        print(file=sys.stderr)
    return time.perf_counter() - start


def link_inputs(inputs_dir: Path, num_files: int, directory: Path) -> str:
    """Symlinks the first `num_files` inputs into `directory`; returns their glob."""
    directory.mkdir(parents=True, exist_ok=True)
    for k in range(num_files):
        link = directory / input_name(k)
        if not link.exists():
            link.symlink_to((inputs_dir / input_name(k)).resolve())
    return str(directory / "*.jsonl.gz")


# --- measuring a process tree -------------------------------------------------------------

def _tree(process) -> list:
    import psutil

    try:
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _peak_rss_mib(pid: int) -> float:
    """The kernel's high-water mark of one process's RSS (`VmHWM`), MiB; 0 if gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else 0.0


class TreeSampler:
    """Samples a process tree: peak summed RSS, each process's peak and CPU seconds."""

    def __init__(self, pid: int):
        import psutil

        self._root = psutil.Process(pid)
        self.peak_tree_mib = 0.0
        self.peak_by_pid: dict[int, float] = {}
        self.cpu_by_pid: dict[int, float] = {}
        self.name_by_pid: dict[int, str] = {}

    def sample(self) -> None:
        import psutil

        total = 0.0
        for process in _tree(self._root):
            try:
                with process.oneshot():
                    rss = process.memory_info().rss / 2**20
                    cpu = process.cpu_times()
                    if process.pid not in self.name_by_pid:
                        self.name_by_pid[process.pid] = " ".join(process.cmdline()[:3])
            except psutil.NoSuchProcess:
                continue
            total += rss
            self.cpu_by_pid[process.pid] = cpu.user + cpu.system
            self.peak_by_pid[process.pid] = max(self.peak_by_pid.get(process.pid, 0.0),
                                                rss, _peak_rss_mib(process.pid))
        self.peak_tree_mib = max(self.peak_tree_mib, total)

    def summary(self) -> dict:
        """Peak tree RSS; peaks of the largest process, the driver and every other process
        (largest first); CPU seconds of the driver and of the rest."""
        root = self._root.pid
        return {"peak_tree_rss_mib": self.peak_tree_mib,
                "peak_process_rss_mib": max(self.peak_by_pid.values(), default=0.0),
                "driver_peak_rss_mib": self.peak_by_pid.get(root, 0.0),
                "workers_peak_rss_mib": sorted(
                    (peak for pid, peak in self.peak_by_pid.items() if pid != root),
                    reverse=True),
                "num_processes": len(self.peak_by_pid),
                "driver_cpu_seconds": self.cpu_by_pid.get(root, 0.0),
                "workers_cpu_seconds": sum(cpu for pid, cpu in self.cpu_by_pid.items()
                                           if pid != root)}


def run_sampled(command: Sequence[str], log_path: Path) -> dict:
    """Runs `command` (stdout to `log_path`.out, stderr to `log_path`), sampling its tree.

    Returns:
        Wall seconds, the CPU seconds of the whole tree (`RUSAGE_CHILDREN`, exact),
        `TreeSampler.summary()` and the command's stdout.
    """
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    stdout_path = log_path.with_suffix(".out")
    with log_path.open("w") as log, stdout_path.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=log, cwd=ROOT)
        sampler = TreeSampler(process.pid)
        while process.poll() is None:
            sampler.sample()
            time.sleep(SAMPLE_SECONDS)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if process.returncode:
        raise RuntimeError(f"{command[:4]} failed ({process.returncode}); see {log_path}")
    return {"seconds": seconds, "cpu_seconds": cpu, "stdout": stdout_path.read_text(),
            **sampler.summary()}


# --- where the time goes ------------------------------------------------------------------

_BUNDLE_LINE = re.compile(r"^@(\d+\.\d+) Running bundle for stage (.*)$")
# A transform's top-level label: up to its first "-" (nested) or its "_<index>" suffix.
_TRANSFORM = re.compile(r"ref_AppliedPTransform_([A-Za-z0-9_]+?)(?:-|_\d+\))")


def stage_label(stage: str) -> str:
    """A fused stage's name as the job's top-level transforms in it, e.g. `read_jsonl+...`."""
    return "+".join(dict.fromkeys(_TRANSFORM.findall(stage))) or stage


def stage_seconds(log_path: Path, started: float, finished: float) -> dict[str, float]:
    """Wall seconds per fused stage from the bundle log (bundles run one at a time).

    `startup` is everything before the first bundle (imports, input listing,
    pipeline construction); the first bundle also starts the SDK workers; the
    last bundle's time runs to the end of the process (the shard renames,
    metadata and commit).
    """
    starts = []
    for line in log_path.read_text().splitlines():
        match = _BUNDLE_LINE.match(line)
        if match:
            starts.append((float(match.group(1)), stage_label(match.group(2))))
    seconds: dict[str, float] = {"startup": (starts[0][0] if starts else finished) - started}
    ends = [t for t, _ in starts[1:]] + [finished]
    for (start, label), end in zip(starts, ends, strict=True):
        seconds[label] = seconds.get(label, 0.0) + end - start
    if starts:
        last = starts[-1][1]
        seconds[f"{last} + commit"] = seconds.pop(last)
    return seconds


def per_record_costs(path: Path) -> dict[str, float]:
    """CPU microseconds per record of each step a worker takes, on one input file.

    The job's own per-record functions, one step at a time in this process:
    gunzip and split the lines, parse and validate (`sources.validate_json_line`),
    assign the split and encode (`records.encode_sequence`), frame and checksum
    (Beam's TFRecord codec, as `beam_jobs.write.PartWriter` writes); what the
    job spends beyond their sum is the runner's.
    """
    from apache_beam.io.tfrecordio import _TFRecordUtil

    from seqpipe.dataset import records, sources

    def encode(result: sources.Sequence) -> bytes:
        sources.assign_split(result, 0.8, 0.1)
        return records.encode_sequence(result.id, result.steps, result.label)

    def timed(step, items):
        start = time.process_time()
        results = [step(item) for item in items]
        return results, time.process_time() - start

    start = time.process_time()
    with gzip.open(path, "rb") as stream:
        lines = stream.read().splitlines()
    seconds = {"gunzip and split lines": time.process_time() - start}
    parsed, seconds["parse and validate"] = timed(
        lambda item: sources.validate_json_line(item[1], str(path), item[0]),
        list(enumerate(lines, start=1)))
    encoded, seconds["assign split and encode"] = timed(encode, parsed)
    sink = io.BytesIO()
    _, seconds["TFRecord framing and CRC"] = timed(
        lambda data: _TFRecordUtil.write_record(sink, data), encoded)
    return {step: 1e6 * value / len(lines) for step, value in seconds.items()}


# --- one size -----------------------------------------------------------------------------

def measure_preprocess(pattern: str, output: Path, log_path: Path,
                       pipeline_args: Sequence[str]) -> dict:
    """Runs `seqpipe preprocess` on `pattern`; its measurements and metadata counts."""
    command = [sys.executable, "-c", LOGGED_CLI, "preprocess", "--input", pattern,
               "--output", str(output), *pipeline_args]
    started = time.time()
    result = run_sampled(command, log_path)
    result["stages"] = stage_seconds(log_path, started, time.time())
    del result["stdout"]
    meta = json.loads((output / "metadata.json").read_text())
    result["records"] = meta["counts"]["written"]
    result["rejected"] = meta["counts"]["rejected"]
    result["timesteps"] = sum(split["num_timesteps"] for split in meta["splits"].values())
    result["output_mib"] = sum(p.stat().st_size for p in output.rglob("*") if p.is_file()) / 2**20
    result["records_per_second"] = result["records"] / result["seconds"]
    result["timesteps_per_second"] = result["timesteps"] / result["seconds"]
    result["records_per_cpu_second"] = result["records"] / result["cpu_seconds"]
    result["largest_worker_rss_mib"] = max(result["workers_peak_rss_mib"], default=0.0)
    result["records_per_second_after_startup"] = result["records"] / max(
        result["seconds"] - result["stages"]["startup"], 1e-9)
    return result


def measure_train(data: Path, model_dir: Path, log_path: Path,
                  settings: Sequence[str]) -> dict:
    """Runs one `seqpipe train` epoch on `data`; its measurements and the trainer's rate."""
    command = [sys.executable, "-m", "seqpipe", "train", "--data", str(data), "--model-dir",
               str(model_dir), "--quiet", "--json"]
    for setting in settings:
        command += ["--set", setting]
    result = run_sampled(command, log_path)
    summary = json.loads(result.pop("stdout"))
    result["train_timesteps_per_second"] = summary["timesteps_per_second"]
    result["valid_timesteps"] = sum(h["valid_timesteps"] for h in history(model_dir))
    result["epoch_seconds"] = sum(h["seconds"] for h in history(model_dir))
    return with_cpu_rate(result)


def with_cpu_rate(train: dict) -> dict:
    """Adds the epoch's timesteps per CPU second of the whole training process (its
    import, tracing and export included), which a busy machine disturbs less."""
    return {**train, "timesteps_per_cpu_second": train["valid_timesteps"] / train["cpu_seconds"]}


def history(model_dir: Path) -> list[dict]:
    """The run's per-epoch records (`seqpipe.training.model_dir.HISTORY_FILE`)."""
    from seqpipe.training.model_dir import HISTORY_FILE

    return json.loads((model_dir / HISTORY_FILE).read_text())


def measure_size(num_files: int, args: argparse.Namespace, work: Path) -> dict:
    """Preprocess (and one training epoch) on the first `num_files` input files."""
    per_file = sequences_per_file(args.base, args.files_per_base)
    num_sequences = num_files * per_file
    pattern = link_inputs(Path(args.inputs_dir), num_files, work / f"in-{num_sequences}")
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    data = work / f"data-{num_sequences}"
    row = {"num_sequences": num_sequences, "num_files": num_files,
           "preprocess": measure_preprocess(pattern, data, logs / f"preprocess-{num_sequences}.log",
                                            args.pipeline_args.split())}
    print(f"{num_sequences} sequences: preprocess {row['preprocess']['seconds']:.0f} s",
          file=sys.stderr)
    if not args.no_train:
        row["train"] = measure_train(data, work / f"model-{num_sequences}",
                                     logs / f"train-{num_sequences}.log",
                                     [*TRAIN_SETTINGS, *args.train_set])
        print(f"{num_sequences} sequences: train {row['train']['seconds']:.0f} s",
              file=sys.stderr)
    return row


# --- the table ----------------------------------------------------------------------------

PREPROCESS_COLUMNS = (  # (key, header, format)
    ("seconds", "s", ".0f"), ("records_per_second", "rec/s", ".0f"),
    ("timesteps_per_second", "steps/s", ".0f"),
    ("records_per_second_after_startup", "rec/s w/o startup", ".0f"),
    ("cpu_seconds", "cpu s", ".0f"),
    ("records_per_cpu_second", "rec/cpu-s", ".0f"), ("peak_tree_rss_mib", "tree MiB", ".0f"),
    ("peak_process_rss_mib", "max proc MiB", ".0f"), ("driver_peak_rss_mib", "driver MiB", ".0f"),
    ("largest_worker_rss_mib", "worker MiB", ".0f"),
    ("output_mib", "out MiB", ".0f"))
TRAIN_COLUMNS = (
    ("seconds", "s", ".0f"), ("train_timesteps_per_second", "epoch steps/s", ".0f"),
    ("cpu_seconds", "cpu s", ".0f"), ("timesteps_per_cpu_second", "steps/cpu-s", ".0f"),
    ("peak_tree_rss_mib", "peak MiB", ".0f"))
RATIO_KEYS = (
    ("preprocess", "records_per_second", "preprocess records/s"),
    ("preprocess", "records_per_second_after_startup", "preprocess records/s without startup"),
    ("preprocess", "records_per_cpu_second", "preprocess records/CPU-s"),
    ("preprocess", "peak_tree_rss_mib", "preprocess peak RSS, tree"),
    ("preprocess", "peak_process_rss_mib", "preprocess peak RSS, largest process"),
    ("train", "train_timesteps_per_second", "train epoch timesteps/s"),
    ("train", "timesteps_per_cpu_second", "train timesteps/CPU-s"),
    ("train", "peak_tree_rss_mib", "train peak RSS"))


def _table(rows: list[dict], section: str, columns) -> list[str]:
    widths = [max(len(header), 9) for _, header, _ in columns]
    lines = [f"{section:<10} {'sequences':>9} " + " ".join(
        f"{header:>{w}}" for (_, header, _), w in zip(columns, widths, strict=True))]
    for row in rows:
        values = row[section]
        lines.append(f"{'':<10} {row['num_sequences']:>9} " + " ".join(
            f"{values[key]:>{w}{fmt}}" for (key, _, fmt), w in zip(columns, widths, strict=True)))
    return lines


def ratios(rows: list[dict]) -> dict[str, list[float]]:
    """{measure: [value at each size / value at the first size]}."""
    result = {}
    for section, key, label in RATIO_KEYS:
        if all(section in row for row in rows):
            base = rows[0][section][key]
            result[label] = [row[section][key] / base for row in rows]
    return result


def stage_table(rows: list[dict]) -> list[str]:
    """Each stage's share of the job's wall time, per size, side by side."""
    stages = list(dict.fromkeys(name for row in rows for name in row["preprocess"]["stages"]))
    title = "share of the job's wall time per stage:"
    lines = [f"{title:<70} " + " ".join(
        f"{row['num_sequences']:>9}" for row in rows)]
    for stage in stages:
        shares = [row["preprocess"]["stages"].get(stage, 0.0) / row["preprocess"]["seconds"]
                  for row in rows]
        lines.append(f"  {stage[:68]:<68} " + " ".join(f"{share:>9.1%}" for share in shares))
    return lines


def format_report(rows: list[dict], generation_seconds: float,
                  costs: dict[str, float]) -> str:
    """The per-size tables, the ratios to the smallest size, the stage shares and the
    per-record costs of the worker's steps."""
    lines = _table(rows, "preprocess", PREPROCESS_COLUMNS)
    if all("train" in row for row in rows):
        lines += _table(rows, "train", TRAIN_COLUMNS)
    sizes = [f"{row['num_sequences'] // rows[0]['num_sequences']}x" for row in rows]
    lines.append(f"ratio to {rows[0]['num_sequences']} sequences:{'':<19}"
                 + " ".join(f"{s:>6}" for s in sizes))
    for label, values in ratios(rows).items():
        lines.append(f"  {label:<42}" + " ".join(f"{v:>6.2f}" for v in values))
    lines += stage_table(rows)
    largest = rows[-1]["preprocess"]
    job_us = 1e6 * largest["workers_cpu_seconds"] / largest["records"]
    lines.append(f"workers' CPU per record at {rows[-1]['num_sequences']} sequences: "
                 f"{job_us:.0f} us, of which the per-record steps alone (one file):")
    lines += [f"  {step:<40} {us:>6.0f} us" for step, us in costs.items()]
    lines.append(f"  {'the rest (Beam: data plane, coders, bundles)':<40} "
                 f"{job_us - sum(costs.values()):>6.0f} us")
    lines.append(f"input generation (not measured above): {generation_seconds:.0f} s")
    return "\n".join(lines)


def report_from_json(path: Path) -> str:
    """`format_report` of the results a run wrote with `--json`."""
    saved = json.loads(path.read_text())
    rows = [{**row, "train": with_cpu_rate(row["train"])} if "train" in row else row
            for row in saved["rows"]]
    return format_report(rows, saved["generation_seconds"], saved["per_record_microseconds"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=int, default=62_500, help="sequences at 1x")
    parser.add_argument("--multiples", default="1,4,16", help="sizes, in multiples of --base")
    parser.add_argument("--files-per-base", type=int, default=20,
                        help="input files per --base sequences (every file the same size)")
    parser.add_argument("--inputs-dir", default=None,
                        help="keep (and reuse) the generated inputs here (default: a temp dir)")
    parser.add_argument("--work-dir", default=None,
                        help="datasets, model dirs and logs (default: a temp dir, removed)")
    parser.add_argument("--gen-processes", type=int, default=os.cpu_count())
    parser.add_argument("--pipeline-args", default=" ".join(PIPELINE_ARGS),
                        help="Beam options, one string")
    parser.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"more training overrides (always: {' '.join(TRAIN_SETTINGS)})")
    parser.add_argument("--no-train", action="store_true", help="preprocess only")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--report", default=None, metavar="JSON",
                        help="print the report of a run's --json file again; run nothing")
    args = parser.parse_args(argv)
    if args.report:
        print(report_from_json(Path(args.report)))
        return
    per_file = sequences_per_file(args.base, args.files_per_base)
    multiples = [int(m) for m in args.multiples.split(",")]
    with tempfile.TemporaryDirectory(prefix="seqpipe-scale-") as tmp:
        work = Path(args.work_dir or tmp)
        args.inputs_dir = str(Path(args.inputs_dir or work / "inputs") / f"per-file-{per_file}")
        generation = write_inputs(Path(args.inputs_dir), max(multiples) * args.files_per_base,
                                  per_file, args.gen_processes)
        rows = [measure_size(m * args.files_per_base, args, work) for m in multiples]
        costs = per_record_costs(Path(args.inputs_dir) / input_name(0))
    print(format_report(rows, generation, costs))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"base": args.base, "multiples": multiples, "files_per_base": args.files_per_base,
             "pipeline_args": args.pipeline_args, "train_settings": [*TRAIN_SETTINGS,
                                                                     *args.train_set],
             "cpus": os.cpu_count(), "generation_seconds": generation,
             "ratios": ratios(rows), "per_record_microseconds": costs, "rows": rows},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
