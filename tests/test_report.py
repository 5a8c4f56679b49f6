"""Tests of seqpipe.commands.report: every figure is written as a sane PNG, and the summary."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from seqpipe.commands import embed, evaluate, report
from seqpipe.config import EvalConfig
from seqpipe.dataset.metadata import DatasetMetadata
from seqpipe.dataset.records import SCHEMA_VERSION

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    """`(width, height)` from the PNG header, checking the signature."""
    header = path.read_bytes()[:24]
    assert header[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model


def _evaluation():
    """An `evaluate_model`-shaped result with two methods (cheap: toy features)."""
    x = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]])
    y = ["class_0"] * 3 + ["class_1"] * 3
    cfg = EvalConfig(kernels=("linear",), c_grid=(1.0,), cv_folds=3)
    rows = [{"method": method, **evaluate.evaluate_svm(x, y, x[::-1], y, cfg)}
            for method in ("autoencoder embedding", "pooled statistics (baseline)")]
    return {"table": rows}


def test_every_figure_is_a_readable_png(tmp_path, tiny_dataset, model_dir):
    evaluation_file = model_dir / report.EVALUATION_FILE
    evaluation_file.write_text(json.dumps(_evaluation()))
    try:
        paths = report.make_report(tiny_dataset, model_dir, tmp_path / "report")
    finally:
        evaluation_file.unlink()
    assert set(paths) == {"lengths", "loss", "reconstructions", "embeddings_pca",
                          "confusion", "summary"}
    for name, path in paths.items():
        assert path.parent == tmp_path / "report" and path.is_file(), name
        if name == "summary":
            continue
        width, height = _png_size(path)
        assert 500 <= width <= 2500 and 400 <= height <= 2500, (name, width, height)
        assert path.stat().st_size > 10_000, name  # not an empty canvas
    summary = paths["summary"].read_text()
    assert "## Evaluation" in summary and "pooled statistics (baseline)" in summary
    assert all(f"]({name}.png)" in summary for name in paths if name != "summary")


def test_tsne_projection_and_a_summary_without_evaluation(tmp_path):
    rng = np.random.default_rng(0)
    embeddings = embed.Embeddings(ids=np.array([f"s{i}" for i in range(40)]),
                                  labels=np.array(["a", "b"] * 20),
                                  lengths=np.full(40, 5, np.int32),
                                  vectors=rng.normal(size=(40, 6)).astype(np.float32),
                                  split="all")
    path = tmp_path / "tsne.png"
    report.plot_projection(embeddings, "tsne").savefig(path)
    assert _png_size(path)[0] >= 500
    metadata = DatasetMetadata.from_json({
        "schema_version": SCHEMA_VERSION, "counts": {"written": 40, "rejected": 0},
        "num_features": 2, "splits": {"train": {"num_records": 40}},
        "length_stats": {"min": 5, "max": 5}})
    summary = report.format_summary(metadata, [], None, {"embeddings_tsne": path})
    assert "## Evaluation" not in summary and "![embeddings_tsne](tsne.png)" in summary
