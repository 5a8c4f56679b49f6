"""Training budget: what the default config does with small, medium and large data.

For data shaped like public sets without a `val` split (a train/test split
only, as UEA/UCR sets come), runs what a user runs, default config, no flags:

    python -m seqpipe synth --output RAW --set synth.num_sequences=N ...
    python -m seqpipe preprocess --input RAW --output DATA --set preprocess.val_fraction=0
    python -m seqpipe train --data DATA --model-dir MODEL

and prints, per shape, from `summary.json` and `history.json`: the records
trained on and held out for validation, passes per epoch (`train.min_steps`),
epochs run and why the run stopped, optimizer steps, and training seconds.
Shapes too large to train here (`--plan-only`) print the plan alone: the same
`plan` arithmetic the trainer uses (`seqpipe.training.inputs.passes_per_epoch`),
with the held-out share at its expected size.

    python benchmarks/training_budget.py --workdir /tmp/budget [--shapes small,medium]

Times are wall seconds on whatever the machine has; compare within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from real_data import run_seqpipe  # noqa: E402

from seqpipe.config import load_config  # noqa: E402
from seqpipe.training.inputs import passes_per_epoch  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Shape:
    """A data shape: sequences (train + test), features, lengths, classes."""

    sequences: int
    features: int
    min_length: int
    max_length: int
    classes: int
    train_only_plan: bool = False  # too large to train here: print the plan only

    def synth_overrides(self) -> list[str]:
        return [f"synth.num_sequences={self.sequences}", f"synth.num_features={self.features}",
                f"synth.min_length={self.min_length}", f"synth.max_length={self.max_length}",
                f"synth.num_classes={self.classes}"]


SHAPES = {
    # A few hundred short multivariate sequences (a small speech or gesture set).
    "small": Shape(640, 12, 7, 29, 9),
    # Thousands of medium-length sequences (a spoken-digit-sized set).
    "medium": Shape(8800, 13, 4, 93, 10),
    # The seed problem's shape at 100,000 sequences: the plan only.
    "large": Shape(125_000, 8, 7, 356, 4, train_only_plan=True),
}
TRAIN_SHARE = 0.8  # preprocess.train_fraction's default; the rest is test


def planned(shape: Shape) -> dict[str, Any]:
    """The default config's plan for `shape`, by the trainer's own arithmetic."""
    cfg = load_config("default")
    records = round(shape.sequences * TRAIN_SHARE)
    held_out = round(records * cfg.train.validation_fraction)
    trained = records - held_out
    batches = math.ceil(trained / cfg.data.batch_size)  # fewer than a pass cuts: a floor
    passes = passes_per_epoch(cfg, batches)
    steps_per_epoch = passes * batches
    return {"train_records": trained, "val_records": held_out, "passes_per_epoch": passes,
            "steps_per_epoch": steps_per_epoch, "max_steps": steps_per_epoch * cfg.train.epochs}


def trained(name: str, shape: Shape, workdir: Path, niceness: int) -> dict[str, Any]:
    """Generates, preprocesses and trains one shape with the default config."""
    raw, data, model = (workdir / part / name for part in ("raw", "data", "models"))
    logs = workdir / "logs"
    sets = [arg for o in shape.synth_overrides() for arg in ("--set", o)]
    if not (raw / "synthetic.jsonl").is_file():
        run_seqpipe(["synth", "--output", str(raw), *sets], logs / f"{name}-synth.log",
                    niceness)
    if not (data / "metadata.json").is_file():
        run_seqpipe(["preprocess", "--input", str(raw / "synthetic.jsonl"), "--output",
                     str(data), "--set", "preprocess.val_fraction=0"],
                    logs / f"{name}-preprocess.log", niceness)
    if not (model / "summary.json").is_file():
        run_seqpipe(["train", "--data", str(data), "--model-dir", str(model), "--quiet"],
                    logs / f"{name}-train.log", niceness)
    summary = json.loads((model / "summary.json").read_text())
    history = json.loads((model / "history.json").read_text())
    return {"train_records": summary["num_train_records"],
            "val_records": summary["num_val_records"],
            "passes_per_epoch": summary["passes_per_epoch"], "epochs": summary["epochs"],
            "stopped_by": summary["stopped_by"], "steps": sum(h["steps"] for h in history),
            "train_seconds": round(sum(h["seconds"] for h in history)),
            "wall_seconds": round(summary["wall_seconds"])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help=f"comma-separated of {sorted(SHAPES)}")
    parser.add_argument("--nice", type=int, default=10)
    args = parser.parse_args(argv)
    for name in filter(None, args.shapes.split(",")):
        shape = SHAPES[name]
        row = {"shape": name, **dataclasses.asdict(shape), "plan": planned(shape)}
        if not shape.train_only_plan:
            row["run"] = trained(name, shape, args.workdir, args.nice)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
