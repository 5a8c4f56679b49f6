"""Real-data benchmark: embedding vs baselines on public sets, per candidate config.

For every set (the aeon wheel's classification sets, converted offline by
`benchmarks/aeon_sets.py`, plus the synthetic default of `seqpipe synth`) and every
candidate configuration (a name -> `--set key=value` overrides, `CANDIDATES`;
"default" is the default config untouched), runs the command line a user runs:

    python -m seqpipe preprocess --input RAW.jsonl --output DATA      # WORKDIR/data/SET
    python -m seqpipe train      --data DATA --model-dir MODEL --set ... # WORKDIR/models/SET/CONFIG
    python -m seqpipe evaluate   --data DATA --model-dir MODEL --set ...

(under `nice`, logs in WORKDIR/logs/), then prints one table, a row per set and
config, read from the files those commands write (`metadata.json`,
`summary.json`, `history.json`, `evaluation.json`): train/test sizes, lengths,
features, SVM test accuracy of the embedding, of the hybrid (embedding + pooled
statistics) and of the pooled-statistics baseline, 1-NN DTW, the embedding's
cross-validation accuracy on the train split, training seconds, epochs and
optimizer steps. All rows also go to a JSON file.

Ensembles (`--ensembles ensemble3`, `ENSEMBLES`): the embeddings of several
trained candidates (the default config under three seeds), concatenated per
record and scored under the same SVM protocol; the row's seconds and steps are
its members' sums.

Choosing a config: the `*` marks, per set, the candidate whose embedding has the
best cross-validation accuracy on the train split (labels of train only; the
test split is scored once per candidate and never used to choose).

    pip download 'aeon==1.6.*' --no-deps -d /tmp/aeon-wheel
    python benchmarks/real_data.py --aeon /tmp/aeon-wheel/aeon-1.6.0-py3-none-any.whl \\
        --workdir /tmp/real-data [--sets GunPoint,BasicMotions] [--configs default,batch8] \\
        [--no-synthetic] [--ensembles ensemble3] [--json rows.json] \\
        [--set train.epochs=50 ...]

A run reuses what WORKDIR already holds (converted sets, datasets, and models that
have an `evaluation.json`): delete a model folder to train it again. Times are
wall seconds on whatever the machine has, so compare them within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

sys.path.insert(0, str(REPO))

import aeon_sets  # noqa: E402

from seqpipe.dataset import metadata as metadata_lib  # noqa: E402

DEFAULT_SETS = ("ItalyPowerDemand", "BasicMotions", "GunPoint", "ArrowHead",
                "PickupGestureWiimoteZ", "OSULeaf", "ACSF1")
SYNTHETIC = "synthetic"

# candidate -> overrides on top of the default config (existing config keys only).
CANDIDATES: dict[str, tuple[str, ...]] = {
    "default": (),
    "epochs100": ("train.epochs=100",),
    "epochs20": ("train.epochs=20",),
    "batch8": ("data.batch_size=8",),
    "batch8+epochs100": ("data.batch_size=8", "train.epochs=100"),
    "stacked2+all_layers": ("model.layers=2", "model.embedding_from=all_layers"),
    "units128": ("model.units=128",),
    "batch8+cosine": ("data.batch_size=8", "train.lr_schedule=cosine"),
    "pool": ("model.pooling=[mean,max]",),
    "steps2000": ("train.min_steps=2000",),
    "pool+steps2000": ("model.pooling=[mean,max]", "train.min_steps=2000"),
    "pool+steps2000+wide": ("model.pooling=[mean,max]", "train.min_steps=2000",
                            "model.embedding_dim=0"),
    "pool+wide": ("model.pooling=[mean,max]", "model.embedding_dim=0"),
    "pool+steps500": ("model.pooling=[mean,max]", "train.min_steps=500"),
    "steps1000": ("train.min_steps=1000",),
    "no_holdout": ("train.validation_fraction=0",),
    "triplet": ("train.objective=triplet",),
    "both": ("train.objective=both",),
    "triplet+steps500": ("train.objective=triplet", "train.min_steps=500"),
    "seed1": ("train.seed=1", "data.seed=1"),
    "seed2": ("train.seed=2", "data.seed=2"),
}

# ensemble -> member candidates: the members' embeddings, concatenated, under the same
# SVM protocol (`--ensembles`); its seconds and steps are the members' sums.
ENSEMBLES: dict[str, tuple[str, ...]] = {
    "ensemble3": ("default", "seed1", "seed2"),
}

METHODS = ("embedding", "hybrid", "pooled_statistics", "dtw_1nn")


def run_seqpipe(args: list[str], log: Path, niceness: int) -> None:
    """Runs `python -m seqpipe ARGS` from this checkout, output to `log`.

    Raises:
        RuntimeError: the command failed (with the last lines of its log).
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                      os.environ.get("PYTHONPATH")]))}
    command = ["nice", "-n", str(niceness), sys.executable, "-m", "seqpipe", *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        status = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=REPO, check=False).returncode
    if status:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(command)} failed ({status}); {log}:\n{tail}")


def raw_file(name: str, workdir: Path, aeon: str | None, niceness: int) -> Path:
    """The raw JSON lines of a set, converted (or generated) once per workdir."""
    raw_dir = workdir / "raw"
    if name == SYNTHETIC:
        path = raw_dir / SYNTHETIC / "synthetic.jsonl"
        if not path.is_file():
            run_seqpipe(["synth", "--output", str(path.parent)],
                        workdir / "logs" / "synthetic-synth.log", niceness)
        return path
    path = raw_dir / f"{name}.jsonl"
    if not path.is_file():
        print(json.dumps(aeon_sets.convert_set(aeon_sets.AeonData(aeon), name, raw_dir)))
    return path


def dataset(name: str, workdir: Path, aeon: str | None, niceness: int) -> Path:
    """The preprocessed dataset of a set (made once per workdir)."""
    data_dir = workdir / "data" / name
    if not (data_dir / "metadata.json").is_file():
        raw = raw_file(name, workdir, aeon, niceness)
        run_seqpipe(["preprocess", "--input", str(raw), "--output", str(data_dir)],
                    workdir / "logs" / f"{name}-preprocess.log", niceness)
    return data_dir


def train_and_evaluate(name: str, config: str, overrides: list[str], data_dir: Path,
                       workdir: Path, niceness: int) -> Path:
    """Trains and evaluates one candidate on one set, unless already evaluated."""
    model_dir = workdir / "models" / name / config
    if (model_dir / "evaluation.json").is_file():
        return model_dir
    sets = [arg for override in overrides for arg in ("--set", override)]
    logs = workdir / "logs"
    if not (model_dir / "summary.json").is_file():
        run_seqpipe(["train", "--data", str(data_dir), "--model-dir", str(model_dir),
                     "--quiet", *sets], logs / f"{name}-{config}-train.log", niceness)
    run_seqpipe(["evaluate", "--data", str(data_dir), "--model-dir", str(model_dir), *sets],
                logs / f"{name}-{config}-evaluate.log", niceness)
    return model_dir


def result_row(name: str, config: str, overrides: list[str], data_dir: Path,
               model_dir: Path) -> dict[str, Any]:
    """One table row from the files `preprocess`, `train` and `evaluate` wrote."""
    metadata = metadata_lib.read(data_dir)
    summary = _read_json(model_dir / "summary.json")
    history = _read_json(model_dir / "history.json")
    evaluation = _read_json(model_dir / "evaluation.json")
    row: dict[str, Any] = {
        "set": name, "config": config, "overrides": overrides,
        "num_train": metadata.num_records("train"), "num_val": metadata.num_records("val"),
        "num_test": metadata.num_records("test"),
        "min_length": metadata.length_stats.min, "max_length": metadata.length_stats.max,
        "num_features": metadata.num_features, "classes": len(metadata.labels),
        "chance": evaluation["chance_accuracy"],
        "train_seconds": summary["wall_seconds"], "epochs": summary["epochs"],
        "stopped_by": summary["stopped_by"], "final_loss": summary["final_loss"],
        "optimizer_steps": sum(epoch["steps"] for epoch in history),
    }
    for method in METHODS:
        scores = evaluation.get(method, {})
        row[method] = scores.get("test_accuracy")
        row[f"{method}_cv"] = scores.get("cv_accuracy")
    return row


def ensemble_row(name: str, ensemble: str, data_dir: Path, workdir: Path,
                 member_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row of an ensemble: SVM scores of its members' embeddings concatenated.

    Computed once per workdir (`models/SET/ENSEMBLE.json`); the baselines are the
    first member's (they do not depend on the model).
    """
    path = workdir / "models" / name / f"{ensemble}.json"
    if not path.is_file():
        members = ENSEMBLES[ensemble]
        scores = ensemble_scores(data_dir, [workdir / "models" / name / m for m in members])
        first = member_rows[0]
        row = {**first, "config": ensemble, "overrides": [f"members: {', '.join(members)}"],
               "embedding": scores["test_accuracy"], "embedding_cv": scores["cv_accuracy"],
               "hybrid": None, "hybrid_cv": None,
               "train_seconds": sum(r["train_seconds"] for r in member_rows),
               "epochs": sum(r["epochs"] for r in member_rows),
               "optimizer_steps": sum(r["optimizer_steps"] for r in member_rows)}
        path.write_text(json.dumps(row, indent=2))
    return _read_json(path)


def ensemble_scores(data_dir: Path, model_dirs: list[Path]) -> dict[str, Any]:
    """`evaluate_svm` on the train/test embeddings of several models, concatenated
    per record (rows aligned by record id), with the default evaluation config."""
    from seqpipe.commands import embed, evaluate
    from seqpipe.config import EvalConfig

    by_split: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in ("train", "test"):
        parts = [embed.compute_embeddings(data_dir, model_dir, split) for model_dir in model_dirs]
        order = sorted(parts[0].ids.tolist())
        aligned = [part.take(embed.rows_for(part.ids, order)) for part in parts]
        by_split[split] = (np.hstack([part.vectors for part in aligned]), aligned[0].labels)
    (train_x, train_y), (test_x, test_y) = by_split["train"], by_split["test"]
    return evaluate.evaluate_svm(train_x, train_y, test_x, test_y, EvalConfig())


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def mark_cv_choice(rows: list[dict[str, Any]]) -> None:
    """Sets `cv_choice` on each row: True for the set's best embedding CV accuracy
    on train (the first candidate wins ties)."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        current = best.get(row["set"])
        if current is None or row["embedding_cv"] > current["embedding_cv"]:
            best[row["set"]] = row
    for row in rows:
        row["cv_choice"] = best[row["set"]] is row


COLUMNS = (  # (title, key, format)
    ("set", "set", "{:<21}"), ("config", "config", "{:<20}"),
    ("train/test", None, "{:>10}"), ("len", None, "{:>10}"), ("F", "num_features", "{:>2}"),
    ("emb", "embedding", "{:>5.3f}"), ("hybrid", "hybrid", "{:>6.3f}"),
    ("pooled", "pooled_statistics", "{:>6.3f}"), ("dtw", "dtw_1nn", "{:>5.3f}"),
    ("emb_cv", "embedding_cv", "{:>6.3f}"), ("pool_cv", "pooled_statistics_cv", "{:>7.3f}"),
    ("secs", "train_seconds", "{:>5.0f}"), ("ep", "epochs", "{:>3}"),
    ("steps", "optimizer_steps", "{:>5}"),
)


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The human table; `*` after a config marks the train-CV choice for its set."""
    lines = ["  ".join(_pad(fmt, title) for title, _, fmt in COLUMNS)]
    for row in rows:
        lines.append("  ".join(_cell(row, title, key, fmt) for title, key, fmt in COLUMNS))
    return "\n".join(lines)


def _cell(row: dict[str, Any], title: str, key: str | None, fmt: str) -> str:
    """One formatted cell: numbers by `fmt`, text padded to its width, None as `-`."""
    if title == "train/test":
        value = f"{row['num_train']}/{row['num_test']}"
    elif title == "len":
        value = f"{row['min_length']}..{row['max_length']}"
    elif title == "config":
        value = row["config"] + ("*" if row.get("cv_choice") else "")
    else:
        value = row[key]
    if value is None:
        return _pad(fmt, "-")
    return _pad(fmt, value) if isinstance(value, str) else fmt.format(value)


def _pad(fmt: str, text: str) -> str:
    """`text` left- or right-aligned to the width in `fmt` ("{:<21}", "{:>5.3f}")."""
    width = int("".join(ch for ch in fmt.split(".")[0] if ch.isdigit()))
    return text.ljust(width) if "<" in fmt else text.rjust(width)


def format_config_summary(rows: list[dict[str, Any]]) -> str:
    """Per config, over the real sets every config was run on: mean embedding test
    and train-CV accuracy, and on how many sets the embedding reaches the
    pooled-statistics baseline."""
    configs = list(dict.fromkeys(row["config"] for row in rows))
    covered = [{row["set"] for row in rows if row["config"] == config} for config in configs]
    common = set.intersection(*covered) - {SYNTHETIC} if covered else set()
    lines = [f"over {len(common)} sets: {', '.join(sorted(common))}",
             "config                mean_emb  mean_emb_cv  emb>=pooled"]
    for config in configs:
        real = [row for row in rows if row["config"] == config and row["set"] in common]
        if not real:
            continue
        wins = sum(row["embedding"] >= row["pooled_statistics"] for row in real)
        lines.append(f"{config:<20}  {_mean(real, 'embedding'):>8.3f}  "
                     f"{_mean(real, 'embedding_cv'):>11.3f}  {wins:>11}")
    return "\n".join(lines)


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return sum(row[key] for row in rows) / len(rows)


def run(names: list[str], configs: list[str], base_overrides: list[str], workdir: Path,
        aeon: str | None, niceness: int, table_only: bool = False,
        ensembles: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every set x config: preprocess, train, evaluate; the rows, in that order, then
    a row per ensemble (its members trained as configs if not listed).

    With `table_only`, nothing runs: the rows are those WORKDIR already holds.
    """
    members = [m for ensemble in ensembles for m in ENSEMBLES[ensemble]]
    configs = list(dict.fromkeys([*configs, *members]))
    rows = []
    for name in names:
        if aeon_sets.is_held_out(name):
            raise aeon_sets.HeldOutError(f"{name} is held out for judging: not benchmarked")
        data_dir = workdir / "data" / name
        if not table_only:
            dataset(name, workdir, aeon, niceness)
        for config in configs:
            overrides = [*base_overrides, *CANDIDATES[config]]
            model_dir = workdir / "models" / name / config
            if table_only and not (model_dir / "evaluation.json").is_file():
                continue
            if not table_only:
                train_and_evaluate(name, config, overrides, data_dir, workdir, niceness)
            rows.append(result_row(name, config, overrides, data_dir, model_dir))
            print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
        for ensemble in ensembles:
            by_config = {row["config"]: row for row in rows if row["set"] == name}
            member_rows = [by_config.get(m) for m in ENSEMBLES[ensemble]]
            if all(member_rows):
                rows.append(ensemble_row(name, ensemble, data_dir, workdir, member_rows))
                print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aeon", help="the aeon wheel (.whl) or its aeon/datasets/data "
                                       "directory (default: the installed aeon)")
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--sets", default=",".join(DEFAULT_SETS),
                        help="comma-separated aeon set names")
    parser.add_argument("--no-synthetic", action="store_true",
                        help="leave out the synthetic default")
    parser.add_argument("--configs", default="default",
                        help=f"comma-separated candidates of {sorted(CANDIDATES)}")
    parser.add_argument("--ensembles", default="",
                        help=f"comma-separated ensembles of {sorted(ENSEMBLES)} (their "
                             "members are trained as candidates)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every candidate (before the candidate's own)")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the seqpipe runs")
    parser.add_argument("--table-only", action="store_true",
                        help="run nothing: tabulate the evaluated models WORKDIR holds")
    parser.add_argument("--json", type=Path, help="rows file (default WORKDIR/real_data.json)")
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(configs) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidates {unknown}; known: {sorted(CANDIDATES)}")
    names = [n for n in args.sets.split(",") if n] + ([] if args.no_synthetic else [SYNTHETIC])
    ensembles = tuple(e for e in args.ensembles.split(",") if e)
    unknown = sorted(set(ensembles) - set(ENSEMBLES))
    if unknown:
        parser.error(f"unknown ensembles {unknown}; known: {sorted(ENSEMBLES)}")
    rows = run(names, configs, args.set, args.workdir, args.aeon, args.nice, args.table_only,
               ensembles)
    mark_cv_choice(rows)
    print("\n" + format_rows(rows) + "\n\n" + format_config_summary(rows))
    output = args.json or args.workdir / "real_data.json"
    output.write_text(json.dumps(rows, indent=2))
    print(f"rows: {output}")


if __name__ == "__main__":
    main()
