"""Missing-values benchmark: entries removed at random, seqpipe vs the common alternatives.

For every public set (the aeon sets of `benchmarks/real_data.py`, converted by
`benchmarks/aeon_sets.py`; never JapaneseVowels or a spoken-digit set) and
every removal rate, each entry (timestep x channel) of every record, train and
test, is removed independently with that probability (a NaN; a fixed seed per
set and rate), and the same command line as `benchmarks/real_data.py`
(`seqpipe preprocess`, `train`, `evaluate`: SVM on the test split, C and
kernel chosen by cross-validation on train) runs once per way of handling the
gaps:

    keep          seqpipe: missing entries kept (`preprocess.missing: keep`), zero
                  fill after normalization, the observed mask as input features,
                  loss over observed entries (`data.fill: zero`)
    keep_forward  the same with `data.fill: forward` (last observation carried)
    zero_fill     the usual workaround: gaps replaced by 0.0 in the raw values
                  before preprocessing; no indicator, the zeros are data
    forward_fill  gaps replaced by the last observed value of the channel in the
                  raw values (0.0 before the first); no indicator
    reject        `preprocess.missing: reject`: every record with a gap is rejected

and the row `pooled` is the nan-aware pooled-statistics baseline (per-feature
mean, std, min, max, last over observed entries) that `seqpipe evaluate`
reports beside the `keep` model. The keep variants run with
`preprocess.max_missing_fraction` 0.9, so that no record is rejected at these
rates (the default 0.5 would reject about half the records at 50%).

    python benchmarks/missing_values.py --aeon /tmp/aeon-wheel/aeon-1.6.0-py3-none-any.whl \\
        --workdir /tmp/missing-values [--sets BasicMotions,ItalyPowerDemand] \\
        [--rates 0.1,0.3,0.5] [--variants keep,zero_fill,...] [--set train.min_steps=300]

(benchmarks/README.md: the table, measured with `--set train.min_steps=300`; a rate of
0 with `--variants keep` gives the complete set's row.)

Prints one table (a row per set, rate and variant: records written/rejected,
SVM test accuracy of the embedding) and writes the rows as JSON. A run reuses
what WORKDIR holds (models with an `evaluation.json`).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_data  # noqa: E402

from seqpipe.dataset import metadata as metadata_lib  # noqa: E402

DEFAULT_SETS = ("BasicMotions", "ItalyPowerDemand")
DEFAULT_RATES = (0.1, 0.3, 0.5)
KEEP_OVERRIDES = ("preprocess.max_missing_fraction=0.9",)
# variant -> (how the gaps reach the raw file, overrides of preprocess/train/evaluate)
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "keep": ("nan", KEEP_OVERRIDES),
    "keep_forward": ("nan", (*KEEP_OVERRIDES, "data.fill=forward")),
    "zero_fill": ("zero", ()),
    "forward_fill": ("forward", ()),
    "reject": ("nan", ("preprocess.missing=reject",)),
}


def remove_entries(steps: list[list[float]], rate: float, rng: random.Random,
                   how: str) -> list[list[float | None]]:
    """Each entry removed with probability `rate`: None (`nan`), 0.0 (`zero`) or the
    channel's last kept value, 0.0 before the first (`forward`)."""
    last = [0.0] * len(steps[0])
    out = []
    for row in steps:
        new_row: list[float | None] = []
        for channel, value in enumerate(row):
            if rng.random() < rate:
                new_row.append({"nan": None, "zero": 0.0, "forward": last[channel]}[how])
            else:
                new_row.append(value)
                last[channel] = value
        out.append(new_row)
    return out


def gappy_file(source: Path, rate: float, how: str, workdir: Path) -> Path:
    """The raw set with entries removed at `rate` (the same entries for every `how`)."""
    path = workdir / "raw" / f"{source.stem}-{rate:g}-{how}.jsonl"
    if path.is_file():
        return path
    rng = random.Random(f"{source.stem}/{rate}")
    lines = []
    for line in source.read_text().splitlines():
        record = json.loads(line)
        record["steps"] = remove_entries(record["steps"], rate, rng, how)
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    return path


def run_variant(name: str, rate: float, variant: str, base: list[str], workdir: Path,
                aeon: str | None, niceness: int) -> dict[str, Any]:
    """Preprocess, train and evaluate one variant; its row."""
    how, overrides = VARIANTS[variant]
    overrides = [*base, *overrides]
    raw = gappy_file(real_data.raw_file(name, workdir, aeon, niceness), rate, how, workdir)
    key = f"{name}-{rate:g}-{variant}"
    data_dir = workdir / "data" / key
    sets = [arg for override in overrides for arg in ("--set", override)]
    if not (data_dir / "metadata.json").is_file():
        real_data.run_seqpipe(["preprocess", "--input", str(raw), "--output", str(data_dir),
                               *sets], workdir / "logs" / f"{key}-preprocess.log", niceness)
    metadata = metadata_lib.read(data_dir)
    row = {"set": name, "rate": rate, "variant": variant, "written": metadata.counts.written,
           "rejected": metadata.counts.rejected, "embedding": None, "pooled": None}
    if metadata.num_records("train") and metadata.num_records("test"):
        model_dir = real_data.train_and_evaluate(name, f"{rate:g}-{variant}", overrides,
                                                 data_dir, workdir, niceness)
        evaluation = json.loads((model_dir / "evaluation.json").read_text())
        row["embedding"] = evaluation["embedding"]["test_accuracy"]
        row["pooled"] = evaluation["pooled_statistics"]["test_accuracy"]
        row["chance"] = evaluation["chance_accuracy"]
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per set, rate and variant, and a `pooled` line (nan-aware, from `keep`)."""
    lines = [f"{'set':<18} {'rate':>5} {'variant':<13} {'written':>8} {'rejected':>8} "
             f"{'test acc':>8}"]
    for row in rows:
        lines.append(_line(row, row["variant"], row["embedding"]))
        if row["variant"] == "keep":
            lines.append(_line(row, "pooled", row["pooled"]))
    return "\n".join(lines)


def _line(row: dict[str, Any], variant: str, accuracy: float | None) -> str:
    shown = "-" if accuracy is None or math.isnan(accuracy) else f"{accuracy:.3f}"
    return (f"{row['set']:<18} {row['rate']:>5.0%} {variant:<13} {row['written']:>8} "
            f"{row['rejected']:>8} {shown:>8}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aeon", help="the aeon wheel (.whl) or its data directory")
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--sets", default=",".join(DEFAULT_SETS))
    parser.add_argument("--rates", default=",".join(map(str, DEFAULT_RATES)))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every run (before the variant's own)")
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--json", type=Path, help="rows file (default WORKDIR/rows.json)")
    args = parser.parse_args(argv)
    rows = []
    for name in filter(None, args.sets.split(",")):
        if real_data.aeon_sets.is_held_out(name):
            raise real_data.aeon_sets.HeldOutError(f"{name} is held out: not benchmarked")
        for rate in (float(r) for r in args.rates.split(",")):
            for variant in filter(None, args.variants.split(",")):
                rows.append(run_variant(name, rate, variant, args.set, args.workdir,
                                        args.aeon, args.nice))
                print(format_table(rows[-1:]).splitlines()[1], flush=True)
    print("\n" + format_table(rows))
    output = args.json or args.workdir / "rows.json"
    output.write_text(json.dumps(rows, indent=2))
    print(f"rows: {output}")


if __name__ == "__main__":
    main()
