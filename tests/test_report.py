"""Tests of seqpipe.commands.report: every figure is written as a sane PNG, and the summary;
the score figures drawn from a `seqpipe score` Parquet file."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqpipe.commands import cli, embed, evaluate, report, score
from seqpipe.config import EvalConfig
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset import records
from seqpipe.dataset.metadata import DatasetMetadata
from seqpipe.dataset.records import SCHEMA_VERSION, DatasetError

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


# --- anomaly scores ----------------------------------------------------------------------


def _write_scores(path, ids, labels, lengths, *, split="test", seed=0, with_flags=False):
    """A Parquet file following `seqpipe score`'s columns, with made-up errors:
    rank 1 is the highest score, worst_step the argmax of the step errors."""
    rng = np.random.default_rng(seed)
    errors = [rng.uniform(0.0, 1.0, size=length).astype(np.float32) for length in lengths]
    scores = np.array([e.mean() for e in errors], np.float32)
    ranks = np.empty(len(ids), np.int32)
    ranks[np.argsort(-scores, kind="stable")] = np.arange(1, len(ids) + 1)
    columns = {
        "id": pa.array(ids, pa.string()),
        "label": pa.array(labels, pa.string()),
        "split": pa.array([split] * len(ids), pa.string()),
        "length": pa.array(lengths, pa.int32()),
        "score": pa.array(scores, pa.float32()),
        "step_error": pa.array([e.tolist() for e in errors], pa.list_(pa.float32())),
        "worst_step": pa.array([int(np.argmax(e)) for e in errors], pa.int32()),
        "rank": pa.array(ranks, pa.int32()),
    }
    if with_flags:
        columns["is_anomaly"] = pa.array(scores > 0.5, pa.bool_())
    pq.write_table(pa.table(columns), path)
    return scores, errors, ranks


def _labelled(artists, label):
    return [artist for artist in artists if artist.get_label() == label]


def test_score_histogram_stacks_labels_and_marks_the_threshold():
    scores = np.array([0.1, 0.2, 0.25, 0.9, 1.0])
    labels = np.array(["class_0", "class_0", "class_1", "anomaly_spike", "anomaly_spike"])
    axes = report.plot_score_histogram(scores, 0.5, labels).axes[0]
    # One bar container per label, sorted, each holding that label's count.
    counts = [sum(bar.get_height() for bar in container) for container in axes.containers]
    assert counts == [2, 2, 1]  # anomaly_spike, class_0, class_1
    assert [text.get_text() for text in axes.get_legend().get_texts()] == [
        "anomaly_spike (2)", "class_0 (2)", "class_1 (1)", "threshold 0.5 (2 above)"]
    (line,) = _labelled(axes.lines, "threshold 0.5 (2 above)")
    assert list(line.get_xdata()) == [0.5, 0.5]
    assert axes.get_xscale() == "linear"


def test_score_histogram_without_threshold_or_labels_and_log_bins_for_a_long_tail():
    axes = report.plot_score_histogram(np.array([0.01, 0.02, 0.03, 5.0])).axes[0]
    assert len(axes.lines) == 0 and axes.get_xscale() == "log"
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["unlabeled (4)"]
    bars = axes.containers[0]
    assert bars[0].get_x() == pytest.approx(0.01) and sum(b.get_height() for b in bars) == 4


def test_top_anomalies_shade_exactly_the_padding_and_draw_every_step_error():
    steps = np.zeros((5, 4))
    steps[3] = [0.1, 2.0, -3.0, 0.0]  # features 1 and 2 stand out at the worst step
    steps[:, 0] = np.arange(5)  # feature 0 far from its median (2) at step 3 too
    sequences = [
        report.ScoredSequence("s-long", "anomaly_spike", 1, 0.9, np.linspace(0, 1, 9), 8),
        report.ScoredSequence("s-five", "class_0", 2, 0.5, np.array([.1, .2, .3, .9, .2]), 3,
                              steps=steps),
        report.ScoredSequence("s-three", "", 3, 0.1, np.array([.3, .1, .2]), 0),
    ]
    figure = report.plot_top_anomalies(sequences, ["a", "b", "c", "d"])
    assert len(figure.axes) == 6
    for index, sequence in enumerate(sequences):
        for axes in figure.axes[2 * index:2 * index + 2]:
            assert axes.get_xlim() == (-0.5, 8.5)  # the box of the longest
            shaded = _labelled(axes.patches, report.PADDING_LABEL)
            if sequence.length == 9:
                assert shaded == []
                continue
            (patch,) = shaded
            left, right = patch.get_x(), patch.get_x() + patch.get_width()
            assert (left, right) == (sequence.length - 0.5, 8.5)
            assert [t for t in range(9) if left < t < right] == list(range(sequence.length, 9))
            (worst,) = _labelled(axes.lines, "worst step")
            assert list(worst.get_xdata()) == [sequence.worst_step] * 2
        (error_line,) = _labelled(figure.axes[2 * index + 1].lines, "step error")
        np.testing.assert_array_equal(error_line.get_xdata(), np.arange(sequence.length))
        np.testing.assert_array_equal(error_line.get_ydata(), sequence.step_error)
    feature_lines = [line for line in figure.axes[2].lines if line.get_label() != "worst step"]
    assert [line.get_label() for line in feature_lines] == ["a", "b", "c"]
    np.testing.assert_array_equal(feature_lines[2].get_ydata(), steps[:, 2])
    assert figure.axes[0].texts[0].get_text() == "steps not in the dataset"
    assert figure.axes[4].get_title() == ("#3 s-three (unlabeled): score 0.1, length 3, "
                                          "worst step 0")


@pytest.mark.parametrize("columns, message", [
    ({"length": [4]}, "record 'a': step_error has 3 values and worst_step is 0; expected 4"),
    ({"worst_step": [3]}, "record 'a': step_error has 3 values and worst_step is 3"),
    ({"drop": "rank"}, "not a `seqpipe score` output, missing columns ['rank']"),
    ({"rows": 0}, "no scored records"),
])
def test_read_scores_refuses_what_is_not_a_score_file(tmp_path, columns, message):
    table = {"id": ["a"], "label": [""], "split": ["test"], "length": [3], "score": [0.5],
             "step_error": [[0.2, 0.5, 0.8]], "worst_step": [0], "rank": [1]}
    table.update({key: value for key, value in columns.items() if key in table})
    table.pop(columns.get("drop"), None)
    arrow = pa.table(table)
    pq.write_table(arrow.slice(0, columns.get("rows", 1)), tmp_path / "s.parquet")
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 's.parquet'}: {message}")):
        report.read_scores(tmp_path / "s.parquet")


def test_read_scores_refuses_a_missing_or_non_parquet_file(tmp_path):
    with pytest.raises(DatasetError, match="no such score file"):
        report.read_scores(tmp_path / "missing.parquet")
    (tmp_path / "text.parquet").write_text("id,score\n")
    with pytest.raises(DatasetError, match="text.parquet: not a Parquet file"):
        report.read_scores(tmp_path / "text.parquet")


def test_report_scores_flag_adds_the_figures_and_the_summary(tmp_path, tiny_dataset,
                                                             model_dir, capsys):
    metadata = metadata_lib.read(tiny_dataset)
    test_records = list(records.read_split(tiny_dataset, "test", metadata))
    ids = [r["id"] for r in test_records] + ["from-raw-input"]
    lengths = [len(r["steps"]) for r in test_records] + [30]
    labels = [r["label"] for r in test_records] + [""]
    scores, _, ranks = _write_scores(tmp_path / "scores.parquet", ids, labels, lengths,
                                     with_flags=True)
    threshold_file = score.write_threshold(model_dir, score.Threshold(
        threshold=0.5, method="quantile", quantile=0.99, split="val", num_records=10,
        flagged_fraction=0.1, weights_sha256=score.weights_sha256(model_dir)))
    try:
        assert cli.main(["report", "--data", str(tiny_dataset), "--model-dir", str(model_dir),
                         "--output", str(tmp_path / "report"),
                         "--scores", str(tmp_path / "scores.parquet")]) == 0
    finally:
        Path(threshold_file).unlink()
    for name in ("scores", "top_anomalies"):
        path = tmp_path / "report" / f"{name}.png"
        assert str(path) in capsys.readouterr().out if name == "scores" else path.is_file()
        width, height = _png_size(path)
        assert 500 <= width <= 2500 and 400 <= height <= 2500, (name, width, height)
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert f"- {len(ids)} sequences scored (test) from `scores.parquet`" in summary
    assert f"- threshold 0.5: {int(np.sum(scores > 0.5))} sequences above" in summary
    top = np.argsort(ranks)[:report.NUM_TOP_ANOMALIES]
    for rank, row in enumerate(top, start=1):
        assert (f"| {rank} | {ids[row]} | {labels[row]} | {lengths[row]} | "
                f"{scores[row]:.4g} | ") in summary
    assert "![top_anomalies](top_anomalies.png)" in summary


def test_top_sequences_are_the_dataset_steps_normalized_as_in_training(tmp_path, tiny_dataset,
                                                                       model_dir):
    metadata = metadata_lib.read(tiny_dataset)
    by_id = {r["id"]: r for r in records.read_split(tiny_dataset, "val", metadata)}
    ids = sorted(by_id)[:6] + ["from-raw-input"]
    lengths = [len(by_id[i]["steps"]) for i in ids[:-1]] + [12]
    _, errors, ranks = _write_scores(tmp_path / "s.parquet", ids, [""] * 7, lengths,
                                     split="val", seed=3)
    table = report.read_scores(tmp_path / "s.parquet")
    top = report.top_sequences(table, tiny_dataset, model_dir, metadata)
    order = np.argsort(ranks)[:report.NUM_TOP_ANOMALIES]
    assert [s.id for s in top] == [ids[i] for i in order]
    assert [s.rank for s in top] == [1, 2, 3, 4]
    stats = metadata_lib.read_file(model_dir / report.METADATA_COPY).feature_stats
    for sequence, row in zip(top, order, strict=True):
        np.testing.assert_array_equal(sequence.step_error, errors[row])
        assert sequence.worst_step == int(np.argmax(errors[row]))
        if sequence.id == "from-raw-input":
            assert sequence.steps is None
            continue
        expected = (np.asarray(by_id[sequence.id]["steps"]) - stats.mean) / stats.std
        np.testing.assert_allclose(sequence.steps, expected, rtol=1e-5, atol=1e-5)


def test_report_refuses_scores_of_another_dataset_before_drawing(tmp_path, tiny_dataset,
                                                                 model_dir):
    metadata = metadata_lib.read(tiny_dataset)
    record = next(records.read_split(tiny_dataset, "test", metadata))
    _write_scores(tmp_path / "s.parquet", [record["id"]], [""], [len(record["steps"]) + 1])
    table = report.read_scores(tmp_path / "s.parquet")
    with pytest.raises(DatasetError, match=re.escape(
            f"record {record['id']!r} has length {len(record['steps']) + 1}, but "
            f"{len(record['steps'])} steps in {tiny_dataset}")):
        report.top_sequences(table, tiny_dataset, model_dir, metadata)
