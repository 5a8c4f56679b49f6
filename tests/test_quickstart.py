"""The whole chain, as a user runs it: `seqpipe quickstart` on the tiny config."""

from __future__ import annotations

import json
import subprocess
import sys

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
    for stage in range(1, 7):
        assert f"[{stage}/6]" in result.stdout
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


def test_quickstart_refuses_an_earlier_run(tmp_path):
    (tmp_path / "data").mkdir()
    result = subprocess.run([sys.executable, "-m", "seqpipe", "quickstart",
                             "--workdir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "holds an earlier quickstart; pass --overwrite" in result.stderr
    assert "Traceback" not in result.stderr
