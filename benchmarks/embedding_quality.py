"""Which encoder options make good embeddings: SVM test accuracy per option.

Generates the synthetic default data (`seqpipe synth` defaults unless
`--set synth.*` says otherwise: 1,326 sequences of 7..356 steps, 4 classes
that differ only in event order), preprocesses it once with the real Beam job,
then for every option trains the autoencoder (the base config plus the
option's overrides), and runs `seqpipe.commands.evaluate.evaluate_model` on it. Prints
and writes a table: option -> SVM test accuracy and macro-F1 on the embeddings,
on the embeddings + pooled statistics (hybrid), the pooled-statistics baseline,
the 1-NN DTW baseline, epochs and training time.

    python benchmarks/embedding_quality.py --workdir /tmp/eq [--config default]
        [--set train.epochs=20 ...] [--only bidirectional,noise] [--json out.json]

Trained models are kept in WORKDIR/models/OPTION and reused when the run is
repeated with the same workdir (delete the folder to retrain). Times are wall
seconds of training on whatever this machine has (2 shared CPU cores for the
numbers in the README), so compare them within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Runs from a checkout without `pip install` too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqpipe.config import Config, load_config  # noqa: E402

# option -> overrides on top of the base config, explicit about the two options the
# defaults turn on (reverse_target, bidirectional) so the rows do not change with them.
OPTIONS: dict[str, tuple[str, ...]] = {
    "plain": ("data.reverse_target=false", "model.bidirectional=false"),
    "reverse_target": ("data.reverse_target=true", "model.bidirectional=false"),
    "reverse+bidirectional": ("data.reverse_target=true", "model.bidirectional=true"),
    "reverse+stacked2": ("data.reverse_target=true", "model.bidirectional=false",
                         "model.layers=2"),
    "reverse+stacked2+all_layers": ("data.reverse_target=true", "model.bidirectional=false",
                                    "model.layers=2", "model.embedding_from=all_layers"),
    "reverse+units128": ("data.reverse_target=true", "model.bidirectional=false",
                         "model.units=128"),
    "bidirectional": ("data.reverse_target=false", "model.bidirectional=true"),
    "reverse+bidirectional+stacked2+all_layers": (
        "data.reverse_target=true", "model.bidirectional=true", "model.layers=2",
        "model.embedding_from=all_layers"),
}


def prepare_data(workdir: Path, cfg: Config) -> Path:
    """The synthetic raw file and its preprocessed dataset (made once per workdir)."""
    from beam_jobs.preprocess import preprocess
    from seqpipe import synthetic

    data_dir = workdir / "data"
    if not (data_dir / "metadata.json").is_file():
        raw = workdir / "raw" / "synthetic.jsonl"
        synthetic.write_jsonl(cfg.synth, raw)
        preprocess([str(raw)], str(data_dir), cfg.preprocess)
    return data_dir


def run_option(name: str, overrides: tuple[str, ...], data_dir: Path, workdir: Path,
               base: str, base_overrides: list[str]) -> dict[str, Any]:
    """Trains (unless already trained) and evaluates one option; its table row."""
    from seqpipe.commands import evaluate
    from seqpipe.training.model_dir import SUMMARY_FILE
    from seqpipe.training.trainer import train

    cfg = load_config(base, [*base_overrides, *overrides])
    model_dir = workdir / "models" / name
    if not (model_dir / SUMMARY_FILE).is_file():
        train(data_dir, model_dir, cfg, verbose=False)
    training = json.loads((model_dir / SUMMARY_FILE).read_text())
    started = time.monotonic()
    result = evaluate.evaluate_model(data_dir, model_dir, cfg.eval)
    (model_dir / "evaluation.json").write_text(json.dumps(result, indent=2))
    return {
        "option": name,
        "overrides": list(overrides),
        "embedding": result["embedding"]["test_accuracy"],
        "embedding_macro_f1": result["embedding"]["test_macro_f1"],
        "hybrid": result.get("hybrid", {}).get("test_accuracy"),
        "pooled": result["pooled_statistics"]["test_accuracy"],
        "dtw_1nn": result.get("dtw_1nn", {}).get("test_accuracy"),
        "chance": result["chance_accuracy"],
        "epochs": training["epochs"],
        "train_seconds": training["wall_seconds"],
        "eval_seconds": time.monotonic() - started,
    }


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows."""
    columns = ["option", "embedding", "embedding_macro_f1", "hybrid", "pooled", "dtw_1nn",
               "chance", "epochs", "train_seconds"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [row[c] if isinstance(row[c], (str, int)) or row[c] is None
                 else f"{row[c]:.3f}" if c != "train_seconds" else f"{row[c]:.0f}"
                 for c in columns]
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="data, models and results go here")
    parser.add_argument("--config", default="default", help="base config (name or YAML)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override of the base config, for every option")
    parser.add_argument("--only", help="comma-separated option names (default: all)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    names = args.only.split(",") if args.only else list(OPTIONS)
    unknown = sorted(set(names) - set(OPTIONS))
    if unknown:
        parser.error(f"unknown option(s) {unknown}; known: {list(OPTIONS)}")
    workdir = Path(args.workdir)
    data_dir = prepare_data(workdir, load_config(args.config, args.set))
    rows = []
    for name in names:
        rows.append(run_option(name, OPTIONS[name], data_dir, workdir, args.config, args.set))
        print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
    print(format_rows(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
