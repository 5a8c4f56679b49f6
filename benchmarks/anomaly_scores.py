"""Anomaly scores: seqpipe's masked reconstruction error vs the pad-to-max recipe and baselines.

Two parts, each printing one table (`--json FILE` writes the same numbers).

**synthetic**: anomalies that do not depend on length. In one process: the
clean synthetic default of the config (`synth` section; `tiny`: 800
sequences of 7..120 steps, 8 features) is preprocessed and seqpipe trains on
it (`seqpipe.training.trainer.train`, the config as given). A fresh set with
another seed and `--anomalies` of its sequences anomalous (`seqpipe synth
--anomalies`: every length gets them at the same rate) is scored as new raw
input (`seqpipe.commands.score.score_validated`), its scores calibrated for
length as `seqpipe score` calibrates them (`score.calibrate_split`: the
profile of the train and val splits' errors); `seqpipe_error` is the same
autoencoder's error uncalibrated, and `profile_train` / `profile_val` /
`profile_train+val` the error over a length profile fitted on that source
(the calibration picks one: `score.profile_splits`). Beside them, on the
same records:

* `recipe`: the pad-to-max recipe (`vs_pad_to_max.build_recipe`: `Masking(0.0)`
  -> `LSTM(64, tanh)` -> `RepeatVector` -> `LSTM(64, tanh, return_sequences)`
  -> `Dense(8)`, Adam, MSE over the padded tensor), trained with `fit` on the
  same normalized train split padded with zeros to the longest sequence, early
  stopping on the val split as seqpipe's trainer does; its score is a
  sequence's mean squared error over its whole padded row, as the tutorials
  compute it;
* `isolation_forest` and `knn_embedding`: the baselines of `seqpipe score`
  (`seqpipe.commands.score_evaluation`), fitted on the train split.

Columns: ROC-AUC, PR-AUC (chance: the anomaly fraction), and the Spearman
correlation of the score with the length over the normal records and over
all records (the labels' own correlation with length is printed as the
reference: near 0 by construction).

**real**: one class of a labelled UCR/UEA set (the aeon wheel's, converted
offline by `benchmarks/aeon_sets.py` through `real_data.raw_file`) is taken
as normal: the train split keeps only that class's records, the test split
keeps every record, and the command line a user runs does the rest (under
`nice`, logs in WORKDIR/logs/):

    python -m seqpipe preprocess --input NORMAL.jsonl --output DATA
    python -m seqpipe train      --data DATA --model-dir MODEL [--config C] [--set ...]
    python -m seqpipe score      --data DATA --model-dir MODEL --split test \\
                                 --output MODEL/test_scores.parquet --normal-label CLASS

for every class of every set in turn; the table is read from each
`MODEL/score_evaluation.json` (the score command calibrates on the train
split first, the data having no val split: train errors give the length
profile, train scores the threshold): ROC-AUC / PR-AUC of the
reconstruction score, of the uncalibrated error, of the Isolation Forest and
of the k-NN baseline, and the score's Spearman correlation with length.

    nice python benchmarks/anomaly_scores.py synthetic [--config tiny] [--json syn.json]
    nice python benchmarks/anomaly_scores.py real \\
        --aeon /tmp/aeon-wheel/aeon-1.6.0-py3-none-any.whl --workdir /tmp/anomaly-real \\
        [--sets GunPoint,ItalyPowerDemand] [--config default] [--json real.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from seqpipe.config import Config, load_config  # noqa: E402

NORMAL_PATTERN = "class_*"
RECIPE_UNITS = 64
METHODS = ("seqpipe", "seqpipe_error", "profile_train", "profile_val", "profile_train+val",
           "recipe", "isolation_forest", "knn_embedding")
REAL_METHODS = {"reconstruction": "seqpipe", "reconstruction_error": "error",
                "isolation_forest": "iforest", "knn_embedding": "knn"}


# ----------------------------------------------------------------------------- synthetic


@dataclasses.dataclass
class ScoredSet:
    """The scored test records and every method's scores, row-aligned."""

    labels: np.ndarray
    lengths: np.ndarray
    scores: dict[str, np.ndarray]


def train_on_clean(work: Path, cfg: Config) -> tuple[Path, Path]:
    """Writes the clean synthetic set, preprocesses it and trains seqpipe on it."""
    from beam_jobs.preprocess import preprocess
    from seqpipe import synthetic
    from seqpipe.training.trainer import train

    raw, data_dir, model_dir = work / "raw" / "clean.jsonl", work / "data", work / "model"
    synthetic.write_jsonl(cfg.synth, raw)
    preprocess([str(raw)], str(data_dir), cfg.preprocess)
    summary = train(data_dir, model_dir, cfg, verbose=False)
    print(f"seqpipe trained: {summary['epochs']} epochs, final val loss "
          f"{summary['final_val_loss']:.4f}", flush=True)
    return data_dir, model_dir


def score_with_anomalies(work: Path, cfg: Config, data_dir: Path, model_dir: Path,
                         num_sequences: int, fraction: float) -> ScoredSet:
    """Scores a fresh synthetic set with anomalies by seqpipe and both baselines."""
    from seqpipe import synthetic
    from seqpipe.commands import embed, score, score_evaluation
    from seqpipe.dataset import metadata as metadata_lib
    from seqpipe.dataset import records

    test_cfg = dataclasses.replace(cfg.synth, num_sequences=num_sequences,
                                   seed=cfg.synth.seed + 1, anomaly_fraction=fraction)
    raw_path = work / "raw" / "anomalies.jsonl"
    print(json.dumps(synthetic.write_jsonl(test_cfg, raw_path)), flush=True)
    raw = embed.read_raw([str(raw_path)], model_dir)
    score.check_raw_schema(raw, str(raw_path), model_dir)
    threshold, _ = score.calibrate_split(data_dir, model_dir,
                                         score.default_calibration_split(data_dir), cfg.score)
    scores = score.score_validated(raw, model_dir).calibrated(threshold.profile)
    by_profile = profile_alternatives(data_dir, model_dir, cfg, scores)
    test_steps = [sequence.steps for sequence in raw.sequences]
    metadata = metadata_lib.read(data_dir)
    train_steps = [record["steps"] for record in records.read_split(data_dir, "train", metadata)]
    train_embeddings = embed.compute_embeddings(data_dir, model_dir, "train")
    return ScoredSet(labels=scores.labels, lengths=scores.lengths, scores={
        "seqpipe": scores.scores,
        "seqpipe_error": scores.errors,
        **by_profile,
        "recipe": recipe_scores(data_dir, cfg, test_steps),
        "isolation_forest": score_evaluation.isolation_forest_scores(train_steps, test_steps),
        "knn_embedding": score_evaluation.knn_distances(
            train_embeddings.vectors, embed.embed_validated(raw, model_dir).vectors,
            cfg.score.knn),
    })


def profile_alternatives(data_dir: Path, model_dir: Path, cfg: Config,
                         scores) -> dict[str, np.ndarray]:
    """`scores`' errors over the length profile of each source the calibration could use:
    the train split alone, the val split alone, both (`score.profile_splits` picks one)."""
    from seqpipe.commands import score

    errors = {split: score.score_split(data_dir, model_dir, split) for split in ("train", "val")}
    sources = {"train": ["train"], "val": ["val"], "train+val": ["train", "val"]}
    rows = {}
    for name, splits in sources.items():
        profile = score.LengthProfile.fit(
            np.concatenate([errors[split].lengths for split in splits]),
            np.concatenate([errors[split].errors for split in splits]),
            cfg.score.records_per_knot)
        rows[f"profile_{name}"] = scores.calibrated(profile).scores
    return rows


def recipe_scores(data_dir: Path, cfg: Config, test_steps: list[np.ndarray]) -> np.ndarray:
    """Trains the recipe on the normalized train split (val for early stopping) and
    returns its per-sequence score of `test_steps`: the MSE over the padded row."""
    import keras
    from vs_pad_to_max import build_recipe, pad

    from seqpipe.dataset import metadata as metadata_lib
    from seqpipe.dataset import records
    from seqpipe.input_pipeline import reading

    metadata = metadata_lib.read(data_dir)
    normalization = reading.normalization_arrays(metadata.feature_stats, metadata.num_features)

    def normalized(split: str) -> list[np.ndarray]:
        return [reading.normalize(record["steps"], normalization)
                for record in records.read_split(data_dir, split, metadata)]

    train, val = normalized("train"), normalized("val")
    test = [reading.normalize(steps, normalization) for steps in test_steps]
    longest = max(len(steps) for steps in [*train, *val, *test])
    keras.utils.set_random_seed(cfg.train.seed)
    model, _ = build_recipe(longest, metadata.num_features, units=RECIPE_UNITS,
                            decoder_units=RECIPE_UNITS, activation="tanh", output_dense=True)
    stop = keras.callbacks.EarlyStopping(patience=cfg.train.early_stopping_patience,
                                         restore_best_weights=True)
    x_train, x_val = pad(train, longest), pad(val, longest)
    history = model.fit(x_train, x_train, validation_data=(x_val, x_val),
                        batch_size=cfg.data.batch_size, epochs=cfg.train.epochs,
                        callbacks=[stop], verbose=0)
    print(f"recipe trained: {len(history.history['loss'])} epochs, best val loss (padded "
          f"MSE) {min(history.history['val_loss']):.4f}", flush=True)
    x_test = pad(test, longest)
    predicted = model.predict(x_test, batch_size=cfg.data.batch_size, verbose=0)
    return np.mean((predicted - x_test) ** 2, axis=(1, 2))


def synthetic_rows(scored: ScoredSet) -> dict[str, Any]:
    """ROC-AUC, PR-AUC and the length correlations of every method."""
    from seqpipe.commands import score_evaluation

    anomalous = score_evaluation.anomalous(scored.labels, [NORMAL_PATTERN])
    normal = ~anomalous
    rows = {}
    for method in METHODS:
        values = scored.scores[method]
        result = score_evaluation.detection_scores(anomalous, values, scored.lengths)
        rows[method] = {"roc_auc": result["roc_auc"], "pr_auc": result["pr_auc"],
                        "length_spearman_normal": score_evaluation.spearman(
                            values[normal], scored.lengths[normal]),
                        "length_spearman_all": result["length_spearman"]}
    return {"num_records": int(len(scored.labels)), "num_anomalous": int(anomalous.sum()),
            "prevalence": float(anomalous.mean()),
            "label_length_spearman": score_evaluation.spearman(anomalous, scored.lengths),
            "methods": rows}


def format_synthetic(result: dict[str, Any]) -> str:
    lines = [f"{result['num_records']} test records, {result['num_anomalous']} anomalous "
             f"(PR-AUC chance {result['prevalence']:.3f}); Spearman(anomalous, length) = "
             f"{result['label_length_spearman']:.3f}",
             f"{'method':<18} {'ROC-AUC':>8} {'PR-AUC':>8} {'rho_len normal':>15} "
             f"{'rho_len all':>12}"]
    for method, row in result["methods"].items():
        lines.append(f"{method:<18} {row['roc_auc']:>8.3f} {row['pr_auc']:>8.3f} "
                     f"{row['length_spearman_normal']:>15.3f} {row['length_spearman_all']:>12.3f}")
    return "\n".join(lines)


def run_synthetic(args: argparse.Namespace) -> dict[str, Any]:
    cfg = load_config(args.config, args.set)
    with tempfile.TemporaryDirectory(prefix="seqpipe-anomaly-") as tmp:
        work = Path(tmp)
        data_dir, model_dir = train_on_clean(work, cfg)
        scored = score_with_anomalies(work, cfg, data_dir, model_dir, args.num_test,
                                      args.anomalies)
    result = {"config": args.config, "overrides": args.set, **synthetic_rows(scored)}
    print(format_synthetic(result))
    return result


# ----------------------------------------------------------------------------- real


def one_class_raw(raw: Path, normal: str, output: Path) -> dict[str, int]:
    """Writes `raw`'s train records of class `normal` and every test record to `output`."""
    kept = {"train": 0, "test": 0}
    output.parent.mkdir(parents=True, exist_ok=True)
    with raw.open() as lines, output.open("w") as out:
        for line in lines:
            record = json.loads(line)
            if record["split"] == "test" or record["label"] == normal:
                out.write(line)
                kept[record["split"]] += 1
    return kept


def run_real_class(name: str, raw: Path, normal: str, args: argparse.Namespace) -> dict:
    """preprocess, train and score (`--normal-label normal`) one set with one class normal."""
    from real_data import run_seqpipe

    tag = f"{name}-{normal}"
    work, logs = args.workdir, args.workdir / "logs"
    data_dir, model_dir = work / "data" / tag, work / "models" / tag
    evaluation_file = model_dir / "score_evaluation.json"
    counts = one_class_raw(raw, normal, work / "raw" / f"{tag}.jsonl")
    if not (data_dir / "metadata.json").is_file():
        run_seqpipe(["preprocess", "--input", str(work / "raw" / f"{tag}.jsonl"), "--output",
                     str(data_dir)], logs / f"{tag}-preprocess.log", args.nice)
    config = ["--config", args.config, *[a for s in args.set for a in ("--set", s)]]
    if not (model_dir / "summary.json").is_file():
        run_seqpipe(["train", "--data", str(data_dir), "--model-dir", str(model_dir),
                     "--quiet", *config], logs / f"{tag}-train.log", args.nice)
    if not evaluation_file.is_file():
        run_seqpipe(["score", "--data", str(data_dir), "--model-dir", str(model_dir),
                     "--split", "test", "--output", str(model_dir / "test_scores.parquet"),
                     "--normal-label", normal, *config], logs / f"{tag}-score.log", args.nice)
    evaluation = json.loads(evaluation_file.read_text())
    summary = json.loads((model_dir / "summary.json").read_text())
    return {"set": name, "normal": normal, "num_train": counts["train"],
            "num_test": counts["test"], "prevalence": evaluation["prevalence"],
            "epochs": summary["epochs"],
            "methods": {short: {key: evaluation["methods"][method].get(key)
                                for key in ("roc_auc", "pr_auc", "length_spearman")}
                        for method, short in REAL_METHODS.items()}}


def format_real(rows: list[dict[str, Any]]) -> str:
    methods = list(REAL_METHODS.values())
    header = (f"{'set':<18} {'normal':>6} {'train':>5} {'test':>5} {'anom%':>5}  "
              + "  ".join(f"{m + ' ROC':>11} {m + ' PR':>10}" for m in methods)
              + f"  {'rho_len':>7}")
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = "  ".join(f"{row['methods'][m]['roc_auc']:>11.3f} "
                          f"{row['methods'][m]['pr_auc']:>10.3f}" for m in methods)
        rho = row["methods"]["seqpipe"]["length_spearman"]
        lines.append(f"{row['set']:<18} {row['normal']:>6} {row['num_train']:>5} "
                     f"{row['num_test']:>5} {100 * row['prevalence']:>5.0f}  {cells}  "
                     f"{'-' if rho is None else f'{rho:.3f}':>7}")
    means = {m: np.mean([row["methods"][m]["roc_auc"] for row in rows]) for m in methods}
    lines.append("mean ROC-AUC: " + ", ".join(f"{m} {v:.3f}" for m, v in means.items()))
    return "\n".join(lines)


def run_real(args: argparse.Namespace) -> list[dict[str, Any]]:
    import aeon_sets
    from real_data import raw_file

    rows = []
    for name in [n for n in args.sets.split(",") if n]:
        if aeon_sets.is_held_out(name):
            raise aeon_sets.HeldOutError(f"{name} is held out for judging: not benchmarked")
        raw = raw_file(name, args.workdir, args.aeon, args.nice)
        with raw.open() as lines:
            classes = sorted({json.loads(line)["label"] for line in lines})
        for normal in classes:
            rows.append(run_real_class(name, raw, normal, args))
            print(format_real(rows[-1:]).splitlines()[2], flush=True)
    print(format_real(rows))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("synthetic", "real"))
    parser.add_argument("--config", default=None,
                        help="bundled config or YAML (default: tiny for synthetic, default "
                             "for real)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--num-test", type=int, default=400,
                        help="synthetic: sequences in the scored set")
    parser.add_argument("--anomalies", type=float, default=0.1,
                        help="synthetic: the anomalous fraction of the scored set")
    parser.add_argument("--aeon", help="real: the aeon wheel (.whl) or its data directory")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/seqpipe-anomaly-real"),
                        help="real: raw, data, models and logs (reused by a re-run)")
    parser.add_argument("--sets", default="GunPoint,ItalyPowerDemand,ArrowHead",
                        help="real: comma-separated aeon set names")
    parser.add_argument("--nice", type=int, default=10, help="real: niceness of the runs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.config = args.config or ("tiny" if args.part == "synthetic" else "default")
    result = run_synthetic(args) if args.part == "synthetic" else run_real(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
