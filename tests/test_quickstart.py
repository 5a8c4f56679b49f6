"""The whole chain, as a user runs it: `seqpipe quickstart` on the tiny config."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from seqpipe.commands import embed
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset import records


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    workdir = tmp_path / "qs"
    result = subprocess.run([sys.executable, "-m", "seqpipe", "quickstart",
                             "--workdir", str(workdir)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for stage in range(1, 8):
        assert f"[{stage}/7]" in result.stdout
    assert "seqpipe quickstart summary" in result.stdout

    summary = json.loads((workdir / "quickstart.json").read_text())
    metadata = metadata_lib.read(workdir / "data")
    # The summary's numbers are the ones the stages computed, not constants.
    assert summary["records_read"] == metadata.counts.read == 800
    assert summary["records_written"] + summary["records_rejected"] == 800
    assert summary["records_per_split"] == {s: metadata.num_records(s)
                                            for s in records.SPLITS}
    history = json.loads((workdir / "model" / "history.json").read_text())
    assert summary["final_train_loss"] == history[-1]["loss"]
    assert 0.3 < summary["padding_efficiency"] < 1.0

    for figure in ("lengths.png", "loss.png", "embeddings_pca.png", "summary.md"):
        assert (workdir / "model" / "report" / figure).is_file(), figure
    test_embeddings = embed.read_parquet(workdir / "embeddings" / "test.parquet")
    assert len(test_embeddings) == metadata.num_records("test")
    assert len(set(test_embeddings.ids)) == len(test_embeddings)

    # Classes differ only in temporal order: pooled statistics stay near chance,
    # the sequence model's embeddings separate them.
    assert summary["pooled_statistics_svm_test_accuracy"] < 0.45
    assert summary["embedding_svm_test_accuracy"] > 0.7
    assert (summary["embedding_svm_test_accuracy"]
            > summary["pooled_statistics_svm_test_accuracy"] + 0.3)
    assert summary["verdict"].startswith("the embedding beats the pooled-statistics baseline")

    # Anomaly scores of the new raw file: every record once, numbers in range.
    raw_ids = [json.loads(line)["id"]
               for line in (workdir / "raw" / "anomalies.jsonl").read_text().splitlines()]
    scores = pq.read_table(workdir / "scores" / "anomalies.parquet").to_pylist()
    assert [row["id"] for row in scores] == raw_ids
    assert len(set(raw_ids)) == len(raw_ids) == summary["anomaly_records_scored"]
    assert {row["split"] for row in scores} == {"raw"}
    labels = [row["label"] for row in scores]
    assert summary["anomaly_records_anomalous"] == sum(
        not label.startswith("class_") for label in labels) > 0
    assert summary["anomaly_records_flagged"] == sum(row["is_anomaly"] for row in scores)
    assert set(summary["anomaly_roc_auc"]) == {"reconstruction", "reconstruction_error",
                                               "isolation_forest", "knn_embedding"}
    for value in [*summary["anomaly_roc_auc"].values(), *summary["anomaly_pr_auc"].values(),
                  summary["anomaly_score_length_spearman_abs"]]:
        assert 0.0 <= value <= 1.0
    evaluation = json.loads((workdir / "model" / "score_evaluation.json").read_text())
    assert summary["anomaly_roc_auc"]["reconstruction"] == evaluation["methods"][
        "reconstruction"]["roc_auc"]
    assert "anomaly ROC-AUC: reconstruction score" in result.stdout
    for figure in ("scores.png", "top_anomalies.png"):
        assert (workdir / "model" / "report" / figure).is_file(), figure
    assert "## Anomaly scores" in (workdir / "model" / "report" / "summary.md").read_text()


def test_quickstart_refuses_an_earlier_run(tmp_path):
    (tmp_path / "data").mkdir()
    result = subprocess.run([sys.executable, "-m", "seqpipe", "quickstart",
                             "--workdir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "holds an earlier quickstart; pass --overwrite" in result.stderr
    assert "Traceback" not in result.stderr
