"""`seqpipe quickstart`: the whole chain on synthetic data, in a few minutes.

    synth -> preprocess (Beam DirectRunner) -> train (bucketed tf.data, custom
    loop) -> embed (exported encoder) -> evaluate (SVM on embeddings vs the
    pooled-statistics baseline) -> score (anomalies in new raw data) -> report

Every stage is the real library call the individual commands make; the
quickstart only chains them in one work directory and prints a summary.
The anomaly stage does what a user does with new data: a fresh synthetic set
(`ANOMALY_SEQUENCES` sequences, another seed, `ANOMALY_FRACTION` of them with
an injected anomaly, `seqpipe synth --anomalies`) as raw JSON lines, the
length profile fitted on the train and val splits and the threshold on val
(`seqpipe score --threshold-from val`), the new file scored as raw input with
`--normal-label 'class_*'` (`seqpipe score`): the ROC-AUC of the
reconstruction score beside the Isolation Forest and k-NN baselines, and the
score's |Spearman| correlation with length.

    WORKDIR/raw/synthetic.jsonl      labeled raw sequences
    WORKDIR/raw/anomalies.jsonl      new raw sequences, some anomalous
    WORKDIR/data/                    TFRecord shards, metadata.json, rejects/
    WORKDIR/model/                   checkpoints, autoencoder.keras, encoder/,
                                     scorer/, evaluation.json, score_threshold.json,
                                     score_evaluation.json
    WORKDIR/model/report/            PNG figures (the score figures too) and
                                     summary.md (`seqpipe report --scores`)
    WORKDIR/embeddings/test.parquet  test-split embeddings
    WORKDIR/scores/anomalies.parquet the anomaly scores of the new raw sequences
    WORKDIR/quickstart.json          every number of the summary
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from seqpipe.config import Config
from seqpipe.dataset.metadata import DatasetMetadata
from seqpipe.training.model_dir import EVALUATION_FILE, REPORT_DIR

T = TypeVar("T")

ARTEFACTS = ("raw", "data", "model", "embeddings", "scores", "quickstart.json")
ANOMALY_SEQUENCES = 1000
ANOMALY_FRACTION = 0.1
NORMAL_LABELS = ("class_*",)


def run(workdir: str | Path, cfg: Config, overwrite: bool = False) -> dict[str, Any]:
    """Runs the chain in `workdir` and returns (and writes) the summary.

    Raises:
        FileExistsError: `workdir` holds an earlier run and `overwrite` is off.
    """
    workdir = Path(workdir)
    _prepare_workdir(workdir, overwrite)
    paths = {name: workdir / name for name in ("raw", "data", "model", "embeddings", "scores")}
    raw_file = paths["raw"] / "synthetic.jsonl"
    steps = 7
    started = time.monotonic()

    from seqpipe import synthetic
    synth = _stage(1, steps, "synthetic data", lambda: synthetic.write_jsonl(
        cfg.synth, raw_file))

    from beam_jobs.preprocess import preprocess
    metadata = _stage(2, steps, "Beam preprocessing (DirectRunner)", lambda: preprocess(
        [str(raw_file)], str(paths["data"]), cfg.preprocess))

    from seqpipe.training.trainer import train
    training = _stage(3, steps, f"training ({cfg.train.epochs} epochs)", lambda: train(
        paths["data"], paths["model"], cfg))

    from seqpipe.commands import embed
    test_parquet = paths["embeddings"] / "test.parquet"
    _stage(4, steps, "embedding the test split", lambda: embed.write_parquet(
        embed.compute_embeddings(paths["data"], paths["model"], "test"), test_parquet))

    from seqpipe.commands import evaluate
    evaluation = _stage(5, steps, "SVM evaluation", lambda: evaluate.evaluate_model(
        paths["data"], paths["model"], cfg.eval))
    (paths["model"] / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2))

    anomalies = _stage(6, steps, f"anomaly scores of {ANOMALY_SEQUENCES} new sequences",
                       lambda: score_anomalies(cfg, paths))

    from seqpipe.commands import report
    _stage(7, steps, "report figures", lambda: report.make_report(
        paths["data"], paths["model"], paths["model"] / REPORT_DIR,
        scores=anomalies["output"], scored_records=anomalies["scored_records"]))

    summary = _summary(synth, metadata, training, evaluation, time.monotonic() - started)
    summary.update(_anomaly_summary(anomalies))
    summary["artefacts"] = {"raw": str(raw_file), "data": str(paths["data"]),
                            "model": str(paths["model"]), "embeddings": str(test_parquet),
                            "scores": anomalies["output"],
                            "report": str(paths["model"] / REPORT_DIR),
                            "summary": str(workdir / "quickstart.json")}
    (workdir / "quickstart.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    return summary


def score_anomalies(cfg: Config, paths: dict[str, Path]) -> dict[str, Any]:
    """Writes a fresh synthetic set with anomalies and scores it as `seqpipe score` does.

    Calibrates on the val split of `paths["data"]` (`--threshold-from val`), scores the
    new raw file with `--normal-label 'class_*'` against the baselines, and
    writes `paths["scores"]/anomalies.parquet`.

    Returns:
        `score.run`'s result, plus `synth` (the generator's summary) and
        `scored_records` (the new raw records, for the report's figures).
    """
    from seqpipe import synthetic
    from seqpipe.commands import embed, score

    raw_file = paths["raw"] / "anomalies.jsonl"
    synth = synthetic.write_jsonl(dataclasses.replace(
        cfg.synth, num_sequences=ANOMALY_SEQUENCES, seed=cfg.synth.seed + 1,
        anomaly_fraction=ANOMALY_FRACTION), raw_file)
    request = score.Request(model_dir=paths["model"], data_dir=paths["data"],
                            inputs=(str(raw_file),), output=paths["scores"] / "anomalies.parquet",
                            threshold_from="val", normal_labels=NORMAL_LABELS)
    result = score.run(request, cfg.score, echo=lambda line: None)
    raw = embed.read_raw(request.inputs, request.model_dir)
    return {**result, "synth": synth, "scored_records": score.raw_records(raw)}


def _anomaly_summary(anomalies: dict[str, Any]) -> dict[str, Any]:
    evaluation = anomalies["evaluation"]
    methods = evaluation["methods"]
    rho = methods["reconstruction"]["length_spearman"]
    return {
        "anomaly_records_scored": anomalies["num_records"],
        "anomaly_records_anomalous": evaluation["num_anomalous"],
        "anomaly_threshold": anomalies["threshold"]["threshold"],
        "anomaly_records_flagged": anomalies["num_flagged"],
        "anomaly_roc_auc": {method: result.get("roc_auc") for method, result in methods.items()},
        "anomaly_pr_auc": {method: result.get("pr_auc") for method, result in methods.items()},
        "anomaly_score_length_spearman_abs": None if rho is None else abs(rho),
    }


def _prepare_workdir(workdir: Path, overwrite: bool) -> None:
    existing = [workdir / name for name in ARTEFACTS if (workdir / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{workdir} holds an earlier quickstart; pass --overwrite "
                              "to replace it or choose another --workdir")
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    workdir.mkdir(parents=True, exist_ok=True)


def _stage(index: int, total: int, title: str, action: Callable[[], T]) -> T:
    print(f"[{index}/{total}] {title} ...", flush=True)
    started = time.monotonic()
    result = action()
    print(f"[{index}/{total}] {title}: done in {time.monotonic() - started:.1f}s",
          flush=True)
    return result


def _summary(synth: dict[str, Any], metadata: DatasetMetadata, training: dict[str, Any],
             evaluation: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {
        "sequences_generated": synth["num_sequences"],
        "records_read": metadata.counts.read,
        "records_written": metadata.counts.written,
        "records_rejected": metadata.counts.rejected,
        "records_per_split": {split: info.num_records
                              for split, info in metadata.splits.items()},
        "padding_efficiency": training["padding_efficiency"],
        "epochs": training["epochs"],
        "final_train_loss": training["final_loss"],
        "final_val_loss": training["final_val_loss"],
        "embedding_svm_test_accuracy": evaluation["embedding"]["test_accuracy"],
        "pooled_statistics_svm_test_accuracy":
            evaluation["pooled_statistics"]["test_accuracy"],
        "dtw_1nn_test_accuracy": evaluation["dtw_1nn"].get("test_accuracy"),
        "chance_accuracy": evaluation["chance_accuracy"],
        "verdict": evaluation["verdict"]["message"],
        "wall_seconds": seconds,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable summary table."""
    def number(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    roc_auc = summary["anomaly_roc_auc"]

    rows = [
        ("records read / written / rejected",
         f"{summary['records_read']} / {summary['records_written']} / "
         f"{summary['records_rejected']}"),
        ("records per split", ", ".join(f"{k} {v}" for k, v in
                                        summary["records_per_split"].items())),
        ("padding efficiency (real / padded timesteps)",
         number(summary["padding_efficiency"])),
        ("epochs", number(summary["epochs"])),
        ("final train loss (masked MSE)", number(summary["final_train_loss"])),
        ("final val loss (masked MSE)", number(summary["final_val_loss"])),
        ("SVM test accuracy on embeddings", number(summary["embedding_svm_test_accuracy"])),
        ("SVM test accuracy on pooled statistics",
         number(summary["pooled_statistics_svm_test_accuracy"])),
        ("1-NN DTW test accuracy (slow, small sets only)",
         number(summary["dtw_1nn_test_accuracy"])),
        ("chance (majority class)", number(summary["chance_accuracy"])),
        ("new sequences scored / anomalous / above the val threshold",
         f"{summary['anomaly_records_scored']} / {summary['anomaly_records_anomalous']} / "
         f"{summary['anomaly_records_flagged']}"),
        ("anomaly ROC-AUC: reconstruction score (length-calibrated)",
         number(roc_auc["reconstruction"])),
        ("anomaly ROC-AUC: reconstruction error, uncalibrated",
         number(roc_auc.get("reconstruction_error"))),
        ("anomaly ROC-AUC: isolation forest, pooled statistics",
         number(roc_auc["isolation_forest"])),
        ("anomaly ROC-AUC: k-NN distance, embeddings", number(roc_auc["knn_embedding"])),
        ("|Spearman| of the score with the length",
         number(summary["anomaly_score_length_spearman_abs"])),
        ("wall time", f"{summary['wall_seconds']:.0f}s"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = ["", "seqpipe quickstart summary", "-" * (width + 12)]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    lines += ["", f"verdict: {summary['verdict']}", "", "artefacts:"]
    lines += [f"  {name:<11} {path}" for name, path in summary["artefacts"].items()]
    return "\n".join(lines)
