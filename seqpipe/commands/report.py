"""`seqpipe report`: PNG figures and a Markdown summary of a dataset and a trained model.

    lengths.png          length histogram of the dataset, bucket boundaries marked
    loss.png             training and validation loss per epoch (MODEL_DIR/history.json)
    reconstructions.png  a few sequences and their reconstructions, padding shaded
                         (MODEL_DIR/autoencoder.keras, loaded in safe mode; a note
                         instead when `train.objective: triplet` built no decoder)
    embeddings_pca.png   2-D PCA of the embeddings, coloured by label
    embeddings_tsne.png  the same with t-SNE (only with `tsne=True`: slower)
    confusion.png        test confusion matrices per method (MODEL_DIR/evaluation.json,
                         written by `seqpipe evaluate`; skipped when absent)
    scores.png           (with `scores=`) the histogram of a `seqpipe score` Parquet's
                         scores, stacked by label, with the threshold of
                         MODEL_DIR/score_threshold.json when there is one
    top_anomalies.png    (with `scores=`) the 4 highest-ranked sequences: up to 3
                         features over their steps, the per-step error in a panel
                         under each, the worst step marked, padding shaded
    summary.md           the numbers (data, training, evaluation, scores) and the figures

Figures are drawn with matplotlib's object API (`matplotlib.figure.Figure`, no
pyplot, no global backend change), so a report can be made on a headless
machine or in a thread. Reconstructions are shown in the model's normalized
units (what the loss compares), un-reversed when the model was trained with
`data.reverse_target`; so are the top anomalies (the units of their errors).

Every sequence of `top_anomalies.png` is drawn in a box as wide as the longest
one, the steps past its own length shaded: they are padding in any batch that
holds it with the longest, and are never part of its error or score.
`plot_score_histogram` and `plot_top_anomalies` take plain arrays and
`ScoredSequence`s, for any caller that has scores at hand.

Example:

    paths = make_report("data/", "runs/x", "runs/x/report")
    paths["loss"]   # PosixPath('runs/x/report/loss.png')
    paths = make_report("data/", "runs/x", "runs/x/report", scores="test_scores.parquet")
    paths["top_anomalies"]   # PosixPath('runs/x/report/top_anomalies.png')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from seqpipe import input_pipeline, storage
from seqpipe.commands import embed, score
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset import records
from seqpipe.dataset.metadata import DatasetMetadata
from seqpipe.training.model_dir import (
    AUTOENCODER_FILE,
    EVALUATION_FILE,
    HISTORY_FILE,
    METADATA_COPY,
    THRESHOLD_FILE,
    read_config,
    read_json,
)

SUMMARY_FILE = "summary.md"
DPI = 110
NUM_RECONSTRUCTIONS = 4
NUM_TOP_ANOMALIES = 4
MAX_PLOTTED_FEATURES = 3
PADDING_LABEL = "padding (masked)"
SCORE_COLUMNS = ("id", "label", "split", "length", "score", "step_error", "worst_step", "rank")


@dataclasses.dataclass(frozen=True)
class ScoreTable:
    """The columns of a `seqpipe score` Parquet file, row-aligned.

    Attributes:
        path: the file read.
        ids, labels, splits: `[N]` arrays of Python strings.
        lengths, worst_steps, ranks: int `[N]`.
        scores: float `[N]`.
        step_errors: `N` float arrays, each of its record's length.
    """

    path: str | Path
    ids: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    lengths: np.ndarray
    scores: np.ndarray
    step_errors: list[np.ndarray]
    worst_steps: np.ndarray
    ranks: np.ndarray

    def top(self, k: int) -> np.ndarray:
        """Row indices of the `k` best-ranked records (rank 1 first)."""
        return np.argsort(self.ranks, kind="stable")[:k]


@dataclasses.dataclass(frozen=True)
class ScoredSequence:
    """One sequence as `plot_top_anomalies` draws it.

    Attributes:
        id, label: the record's.
        rank: 1 for the highest score.
        score: its mean step error.
        step_error: float `[length]`, one error per real step.
        worst_step: the step with the largest error.
        steps: float `[length, F]` in the model's normalized units, or None
            when the steps are not at hand (only the error is drawn).
    """

    id: str
    label: str
    rank: int
    score: float
    step_error: np.ndarray
    worst_step: int
    steps: np.ndarray | None = None

    @property
    def length(self) -> int:
        return len(self.step_error)


def make_report(data_dir: str | Path, model_dir: str | Path, output_dir: str | Path,
                *, split: str = "test", tsne: bool = False,
                scores: str | Path | None = None,
                scored_records: Sequence[dict[str, Any]] = ()) -> dict[str, str | Path]:
    """Draws every figure that the inputs allow and writes `summary.md`.

    Args:
        data_dir: the preprocessed dataset (the model's feature count).
        model_dir: a trained model directory.
        output_dir: where the PNGs and `summary.md` go (created). Every path
            may be a local path or a URL (`seqpipe.storage`).
        split: the split whose sequences are reconstructed (falls back to
            `train` when empty).
        tsne: also draw a t-SNE projection.
        scores: a `seqpipe score` Parquet file of this model: adds the score
            figures (the top anomalies' steps are looked up in `data_dir`).
        scored_records: `{"id", "steps"}` of records scored from raw input
            (`seqpipe score --input`, `score.raw_records`), whose steps the
            dataset does not hold: the top anomalies among them are drawn too.

    Returns:
        `{name: path}` of every file written: `lengths`, `loss`,
        `reconstructions`, `embeddings_pca`, optionally `embeddings_tsne`,
        `confusion`, `scores` and `top_anomalies`, and `summary` (`Path`s
        for a local `output_dir`, else strings).

    Raises:
        records.DatasetError: missing data, a model that does not fit it, or a
            score file that is not a `seqpipe score` output of this data.
        score.ScoreError: with `scores`, the stored threshold was calibrated
            on other weights (`score.read_threshold`).
    """
    score_table = read_scores(scores) if scores is not None else None  # fail before work
    storage.makedirs(output_dir)
    metadata = metadata_lib.read(data_dir)
    history = read_json(model_dir, HISTORY_FILE) or []
    evaluation = read_json(model_dir, EVALUATION_FILE)
    embeddings = _all_embeddings(data_dir, model_dir, metadata)

    figures = {
        "lengths": plot_lengths(metadata, _bucket_boundaries(model_dir, metadata)),
        "loss": plot_loss(history),
        "reconstructions": plot_reconstructions(data_dir, model_dir, metadata,
                                                _split_with_records(metadata, split)),
        "embeddings_pca": plot_projection(embeddings, "pca"),
    }
    if tsne:
        figures["embeddings_tsne"] = plot_projection(embeddings, "tsne")
    if evaluation:
        figures["confusion"] = plot_confusion(evaluation)
    threshold = None
    if score_table is not None:
        stored = score.read_threshold(model_dir)
        threshold = None if stored is None else stored.threshold
        top = top_sequences(score_table, data_dir, model_dir, metadata,
                            scored_records=scored_records)
        figures["scores"] = plot_score_histogram(score_table.scores, threshold,
                                                 score_table.labels)
        figures["top_anomalies"] = plot_top_anomalies(top, metadata.feature_names)
    paths = {name: _save(figure, storage.join(output_dir, f"{name}.png"))
             for name, figure in figures.items()}
    summary = storage.write_text_atomic(
        storage.join(output_dir, SUMMARY_FILE),
        format_summary(metadata, history, evaluation, paths, score_table=score_table,
                       threshold=threshold))
    return {**paths, "summary": storage.as_path(summary)}


def plot_lengths(metadata: DatasetMetadata, boundaries: list[int]) -> Figure:
    """The length histogram (all splits) with the bucket boundaries as lines."""
    stats = metadata.length_stats
    edges = np.asarray(stats.histogram.edges, dtype=float)
    counts = np.asarray(stats.histogram.counts, dtype=float)
    figure = Figure(figsize=(8, 4.5), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:blue",
             edgecolor="white", label="sequences")
    for index, boundary in enumerate(boundaries):
        axes.axvline(boundary, color="tab:red", linestyle="--", linewidth=1.2,
                     label="bucket boundary" if index == 0 else None)
    axes.set(title=f"Sequence lengths (n={int(counts.sum())}; min {stats.min}, "
                   f"mean {stats.mean:.0f}, max {stats.max})",
             xlabel="length (timesteps)", ylabel="number of sequences")
    axes.legend(loc="upper right")
    return figure


def plot_loss(history: list[dict[str, Any]]) -> Figure:
    """Masked MSE per epoch: training and (if present) validation."""
    figure = Figure(figsize=(8, 4.5), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    if not history:
        axes.text(0.5, 0.5, f"no {HISTORY_FILE} in the model directory", ha="center",
                  va="center", transform=axes.transAxes)
    epochs = [record["epoch"] + 1 for record in history]
    axes.plot(epochs, [record["loss"] for record in history], marker="o", markersize=3,
              label="training")
    validation = [(record["epoch"] + 1, record["val_loss"]) for record in history
                  if record.get("val_loss") is not None]
    if validation:
        axes.plot(*zip(*validation, strict=True), marker="o", markersize=3,
                  label="validation")
        best_epoch, best = min(validation, key=lambda item: item[1])
        axes.scatter([best_epoch], [best], s=80, facecolors="none", edgecolors="black",
                     zorder=3, label=f"best validation ({best:.4f}, epoch {best_epoch})")
    axes.set(title="Reconstruction loss (masked MSE over real timesteps)", xlabel="epoch",
             ylabel="loss (normalized units²)")
    axes.grid(alpha=0.3)
    if history:
        axes.legend()
    return figure


def plot_reconstructions(data_dir: str | Path, model_dir: str | Path, metadata: DatasetMetadata,
                         split: str) -> Figure:
    """A few sequences of `split` (short to long, one batch, so the shorter ones
    are padded) over their reconstructions, padding shaded."""
    import keras

    from seqpipe.model import layers  # noqa: F401  (registers the custom layers)

    cfg = read_config(model_dir)
    if not cfg.train.has_decoder:
        figure = Figure(figsize=(8, 2), dpi=DPI, layout="constrained")
        figure.text(0.5, 0.5, "no reconstructions: the model was trained with "
                    "train.objective triplet (an encoder without decoder)",
                    ha="center", va="center")
        return figure
    chosen = _pick_records(list(records.read_split(data_dir, split, metadata)))
    batch, _ = _one_batch(chosen, model_dir, metadata)  # chosen is sorted short to long
    x = batch["x"]
    path = storage.join(model_dir, AUTOENCODER_FILE)
    autoencoder = keras.models.load_model(path, safe_mode=True)
    predicted = np.asarray(autoencoder(batch, training=False))

    features = min(MAX_PLOTTED_FEATURES, x.shape[-1])
    names = list(metadata.feature_names) or [f"f{i}" for i in range(x.shape[-1])]
    figure = Figure(figsize=(10, 2.4 * len(chosen) + 0.8), dpi=DPI, layout="constrained")
    axes_list = figure.subplots(len(chosen), 1, sharex=True, squeeze=False)[:, 0]
    for axes, record, original, output in zip(axes_list, chosen, x, predicted, strict=True):
        length = len(record["steps"])
        reconstruction = output[:length][::-1] if cfg.data.reverse_target else output[:length]
        _draw_sequence(axes, original[:length], reconstruction, features, names)
        _shade_padding(axes, length, x.shape[1])
        axes.set(title=f"{record['id']} ({record['label'] or 'unlabeled'}), length {length}, "
                       f"padded to {x.shape[1]}", ylabel="normalized value")
    axes_list[-1].set_xlabel("timestep")
    axes_list[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    figure.suptitle(f"Reconstructions ({split} split; first {features} features: "
                    "solid original, dashed reconstruction)")
    return figure


def plot_projection(embeddings: embed.Embeddings, method: str) -> Figure:
    """A 2-D PCA or t-SNE projection of the embeddings, one colour per label."""
    points, subtitle = _project(embeddings.vectors, method)
    figure = Figure(figsize=(7.5, 6), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    labels = embeddings.labels
    for index, label in enumerate(sorted(set(labels.tolist()))):
        chosen = labels == label
        axes.scatter(points[chosen, 0], points[chosen, 1], s=12, alpha=0.75,
                     color=f"C{index % 10}", label=f"{label or 'unlabeled'} ({chosen.sum()})")
    name = "PCA" if method == "pca" else "t-SNE"
    axes.set(title=f"Embeddings, {name} ({len(labels)} sequences, all splits){subtitle}",
             xlabel=f"{name} 1", ylabel=f"{name} 2")
    axes.legend(title="label", markerscale=2, fontsize="small")
    return figure


def plot_confusion(evaluation: dict[str, Any]) -> Figure:
    """Test confusion matrices, one panel per evaluated method, counts in the cells."""
    rows = [row for row in evaluation.get("table", []) if row.get("confusion_matrix")]
    columns = min(2, len(rows))
    grid_rows = -(-len(rows) // columns)
    figure = Figure(figsize=(5 * columns, 4.6 * grid_rows + 0.4), dpi=DPI,
                    layout="constrained")
    panels = np.atleast_1d(figure.subplots(grid_rows, columns)).ravel()
    for axes in panels[len(rows):]:
        axes.set_visible(False)
    for axes, row in zip(panels, rows, strict=False):
        matrix = np.asarray(row["confusion_matrix"])
        labels = row["labels"]
        axes.imshow(matrix, cmap="Blues", vmin=0)
        for (true, predicted), count in np.ndenumerate(matrix):
            axes.text(predicted, true, str(count), ha="center", va="center",
                      color="white" if count > matrix.max() / 2 else "black")
        axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        axes.set_yticks(range(len(labels)), labels)
        axes.set(title=f"{row['method']}\ntest accuracy {row['test_accuracy']:.3f}",
                 xlabel="predicted label", ylabel="true label")
    figure.suptitle("Test confusion matrices")
    return figure


def plot_score_histogram(scores: np.ndarray, threshold: float | None = None,
                         labels: np.ndarray | None = None) -> Figure:
    """The histogram of anomaly scores, stacked by label, the threshold as a line.

    Args:
        scores: float `[N]`, one score per sequence.
        threshold: the calibrated threshold, or None when there is none.
        labels: str `[N]` to stack the bars by (None or all "": one colour).

    Bins are logarithmic when the scores are positive and span more than two
    decades (reconstruction errors are long-tailed), linear otherwise.
    """
    scores = np.asarray(scores, dtype=float)
    labels = np.full(len(scores), "", dtype=object) if labels is None else np.asarray(labels)
    names = sorted(set(labels.tolist()))
    bins, log_scale = _score_bins(scores)
    figure = Figure(figsize=(8, 4.5), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.hist([scores[labels == name] for name in names], bins=bins, stacked=True,
              color=[f"C{index % 10}" for index in range(len(names))],
              label=[f"{name or 'unlabeled'} ({np.sum(labels == name)})" for name in names])
    if threshold is not None:
        above = int(np.sum(scores > threshold))
        axes.axvline(threshold, color="black", linestyle="--", linewidth=1.4,
                     label=f"threshold {threshold:.4g} ({above} above)")
    if log_scale:
        axes.set_xscale("log")
    axes.set(title=f"Anomaly scores ({len(scores)} sequences; masked MSE over real steps)",
             xlabel="score (normalized units²)", ylabel="number of sequences")
    axes.legend(fontsize="small")
    return figure


def plot_top_anomalies(sequences: Sequence[ScoredSequence],
                       feature_names: Sequence[str] = ()) -> Figure:
    """Each sequence over its per-step error, in a box as long as the longest one.

    For each sequence, top panel: up to `MAX_PLOTTED_FEATURES` features, those
    that stand out most at the worst step (farthest from their median over the
    sequence); bottom panel: its step errors, one point per real step. The
    worst step is marked in both, and the steps past the sequence's length
    (padding) are shaded in both.

    Args:
        sequences: what to draw, top to bottom (at least one).
        feature_names: names of the features ("" or missing: `f<index>`).

    Raises:
        ValueError: no sequences.
    """
    if not sequences:
        raise ValueError("plot_top_anomalies needs at least one sequence; Received: []")
    longest = max(sequence.length for sequence in sequences)
    figure = Figure(figsize=(10, 3.3 * len(sequences) + 0.8), dpi=DPI, layout="constrained")
    panels = figure.subplots(2 * len(sequences), 1, sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [2, 1] * len(sequences)})[:, 0]
    for index, sequence in enumerate(sequences):
        steps_axes, error_axes = panels[2 * index], panels[2 * index + 1]
        _draw_features(steps_axes, sequence, feature_names)
        error_axes.plot(np.arange(sequence.length), sequence.step_error, color="tab:red",
                        linewidth=1.2, label="step error")
        error_axes.scatter([sequence.worst_step], [sequence.step_error[sequence.worst_step]],
                           color="black", zorder=3, s=18)
        for axes in (steps_axes, error_axes):
            axes.axvline(sequence.worst_step, color="black", linestyle=":", linewidth=1.2,
                         label="worst step")
            _shade_padding(axes, sequence.length, longest)
            axes.grid(alpha=0.3)
        steps_axes.set(title=f"#{sequence.rank} {sequence.id} "
                             f"({sequence.label or 'unlabeled'}): score {sequence.score:.4g}, "
                             f"length {sequence.length}, worst step {sequence.worst_step}",
                       ylabel="normalized value")
        error_axes.set(ylabel="step error")
        steps_axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    panels[-1].set_xlabel("timestep")
    figure.suptitle("Top anomalies: features over their per-step reconstruction error")
    return figure


def format_summary(metadata: DatasetMetadata, history: list[dict[str, Any]],
                   evaluation: dict[str, Any] | None, paths: dict[str, str | Path], *,
                   score_table: ScoreTable | None = None,
                   threshold: float | None = None) -> str:
    """`summary.md`: data, training, evaluation and score numbers, then the figures."""
    from seqpipe.commands.evaluate import format_table

    per_split = ", ".join(f"{split} {info.num_records}"
                          for split, info in metadata.splits.items())
    lengths = metadata.length_stats
    lines = ["# seqpipe report", "",
             f"- records: {metadata.counts.written} written, "
             f"{metadata.counts.rejected} rejected ({per_split})",
             f"- features: {metadata.num_features}; lengths {lengths.min}..{lengths.max}"]
    if history:
        validation = [h["val_loss"] for h in history if h.get("val_loss") is not None]
        lines.append(f"- training: {len(history)} epochs, final loss {history[-1]['loss']:.4f}"
                     + (f", best validation loss {min(validation):.4f}" if validation else ""))
    if evaluation:
        lines += ["", "## Evaluation (test split)", "", "```",
                  format_table(evaluation["table"]), "```"]
    if score_table is not None:
        lines += ["", "## Anomaly scores", "", *format_scores(score_table, threshold)]
    lines += ["", "## Figures", ""]
    lines += [f"![{name}]({storage.name(path)})" for name, path in paths.items()]
    return "\n".join(lines) + "\n"


def format_scores(table: ScoreTable, threshold: float | None) -> list[str]:
    """The score lines of `summary.md`: what was scored, the threshold, and a
    Markdown table of the top-ranked sequences."""
    splits = ", ".join(sorted(set(table.splits.tolist())))
    lines = [f"- {len(table.ids)} sequences scored ({splits}) from `{storage.name(table.path)}`; "
             f"median score {np.median(table.scores):.4g}, max {table.scores.max():.4g}"]
    if threshold is None:
        lines.append(f"- threshold: none ({THRESHOLD_FILE} not in the model directory)")
    else:
        lines.append(f"- threshold {threshold:.4g}: {int(np.sum(table.scores > threshold))} "
                     "sequences above")
    lines += ["", "| rank | id | label | length | score | worst step |",
              "|---:|---|---|---:|---:|---:|"]
    lines += [f"| {table.ranks[row]} | {table.ids[row]} | {table.labels[row]} | "
              f"{table.lengths[row]} | {table.scores[row]:.4g} | {table.worst_steps[row]} |"
              for row in table.top(NUM_TOP_ANOMALIES)]
    return lines


def read_scores(path: str | Path) -> ScoreTable:
    """Reads and checks a `seqpipe score` Parquet file.

    Raises:
        records.DatasetError: not a Parquet file, a missing column, no rows, or a
            record whose `step_error` does not hold `length` values or whose
            `worst_step` is outside them (the first such record named).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = storage.as_path(path)
    if not storage.isfile(path):
        raise records.DatasetError(f"{path}: no such score file")
    try:
        table = pq.read_table(pa.BufferReader(storage.read_bytes(path)))
    except (pa.ArrowException, OSError) as error:
        raise records.DatasetError(f"{path}: not a Parquet file ({error})") from None
    missing = [name for name in SCORE_COLUMNS if name not in table.column_names]
    if missing:
        raise records.DatasetError(f"{path}: not a `seqpipe score` output, missing columns "
                                   f"{missing}")
    if table.num_rows == 0:
        raise records.DatasetError(f"{path}: no scored records")
    columns = {name: table.column(name).to_pylist() for name in SCORE_COLUMNS}
    scores = ScoreTable(
        path=path, ids=np.asarray(columns["id"], dtype=object),
        labels=np.asarray(columns["label"], dtype=object),
        splits=np.asarray(columns["split"], dtype=object),
        lengths=np.asarray(columns["length"], dtype=int),
        scores=np.asarray(columns["score"], dtype=float),
        step_errors=[np.asarray(errors, dtype=float) for errors in columns["step_error"]],
        worst_steps=np.asarray(columns["worst_step"], dtype=int),
        ranks=np.asarray(columns["rank"], dtype=int))
    _check_step_errors(scores)
    return scores


def top_sequences(table: ScoreTable, data_dir: str | Path | None, model_dir: str | Path,
                  metadata: DatasetMetadata,
                  scored_records: Sequence[dict[str, Any]] = ()) -> list[ScoredSequence]:
    """The `NUM_TOP_ANOMALIES` best-ranked records, rank 1 first, with their steps
    looked up in `scored_records` (`{"id", "steps"}`: raw input) or in `data_dir`
    (in the splits the file names; None: none is read) and normalized as the
    model was trained; a record found in neither has none.

    Raises:
        records.DatasetError: a record found with another length than its score's.
    """
    top = table.top(NUM_TOP_ANOMALIES)
    wanted = {table.ids[row]: row for row in top}
    found = {record["id"]: record for record in scored_records if record["id"] in wanted}
    splits = set(table.splits[top].tolist()) & set(metadata.splits) if data_dir else set()
    for split in sorted(splits):
        found.update((record["id"], record) for record in records.read_split(
            data_dir, split, metadata) if record["id"] in wanted)
    for record_id, record in found.items():
        if len(record["steps"]) != table.lengths[wanted[record_id]]:
            raise records.DatasetError(
                f"{table.path}: record {record_id!r} has length "
                f"{table.lengths[wanted[record_id]]}, but {len(record['steps'])} steps in "
                f"{data_dir}: the scores are not of this dataset")
    steps = {}
    if found:
        batch, ids = _one_batch(list(found.values()), model_dir, metadata)
        steps = {record_id: batch["x"][row, :len(found[record_id]["steps"])]
                 for row, record_id in enumerate(ids)}
    return [ScoredSequence(id=table.ids[row], label=table.labels[row],
                           rank=int(table.ranks[row]), score=float(table.scores[row]),
                           step_error=table.step_errors[row],
                           worst_step=int(table.worst_steps[row]),
                           steps=steps.get(table.ids[row])) for row in top]


def _check_step_errors(table: ScoreTable) -> None:
    for record_id, length, errors, worst in zip(table.ids, table.lengths, table.step_errors,
                                                table.worst_steps, strict=True):
        if len(errors) != length or not 0 <= worst < length:
            raise records.DatasetError(
                f"{table.path}: record {record_id!r}: step_error has {len(errors)} values and "
                f"worst_step is {worst}; expected {length} values (its length) and a step "
                "inside them")


def _draw_sequence(axes, original: np.ndarray, reconstruction: np.ndarray,
                   features: int, names: list[str]) -> None:
    for feature in range(features):
        color = f"C{feature}"
        axes.plot(original[:, feature], color=color, linewidth=1.4,
                  label=f"{names[feature]} original")
        axes.plot(reconstruction[:, feature], color=color, linewidth=1.4, linestyle="--",
                  label=f"{names[feature]} reconstruction")
    axes.grid(alpha=0.3)


def _draw_features(axes, sequence: ScoredSequence, feature_names: Sequence[str]) -> None:
    if sequence.steps is None:
        axes.text(0.5, 0.5, "steps not in the dataset", ha="center", va="center",
                  transform=axes.transAxes)
        return
    for index, feature in enumerate(_standout_features(sequence.steps, sequence.worst_step)):
        name = feature_names[feature] if feature < len(feature_names) else ""
        axes.plot(np.arange(sequence.length), sequence.steps[:, feature], color=f"C{index}",
                  linewidth=1.3, label=name or f"f{feature}")


def _standout_features(steps: np.ndarray, step: int) -> list[int]:
    """The `MAX_PLOTTED_FEATURES` features farthest from their median at `step`, in order."""
    distance = np.abs(steps[step] - np.median(steps, axis=0))
    return sorted(np.argsort(-distance, kind="stable")[:MAX_PLOTTED_FEATURES].tolist())


def _shade_padding(axes, length: int, padded_length: int) -> None:
    """Shades steps `length .. padded_length - 1` (if any) and fits the box to them all."""
    if length < padded_length:
        axes.axvspan(length - 0.5, padded_length - 0.5, color="0.85", label=PADDING_LABEL)
    axes.set_xlim(-0.5, padded_length - 0.5)


def _score_bins(scores: np.ndarray, count: int = 40) -> tuple[np.ndarray, bool]:
    """`(bin edges, log scale)`: log bins for positive scores spanning > 2 decades."""
    low, high = float(scores.min()), float(scores.max())
    if low > 0 and high > 100 * low:
        return np.geomspace(low, high, count + 1), True
    return np.histogram_bin_edges(scores, bins=count), False


def _one_batch(chosen: list[dict[str, Any]], model_dir: str | Path,
               metadata: DatasetMetadata) -> tuple[dict[str, np.ndarray], list[str]]:
    """`(model inputs, ids)` of the records in one batch padded to the longest,
    normalized as the model was trained (its data config and training
    statistics): `x`, `mask` (and `observed` for a model trained with it); rows
    sorted short to long (`ids` says which record each row is)."""
    cfg = read_config(model_dir)
    copy = storage.join(model_dir, METADATA_COPY)
    trained_on = metadata_lib.read_file(copy) if storage.isfile(copy) else metadata
    one_batch = dataclasses.replace(cfg.data, batch_size=len(chosen), sort_window=len(chosen),
                                    timestep_budget=0, length_grid=0, min_batch_efficiency=0.0)
    inputs, _, _ = next(input_pipeline.array_batches(
        [record["steps"] for record in chosen], [record["id"] for record in chosen], one_batch,
        feature_stats=trained_on.feature_stats,
        observed=input_pipeline.uses_observed(cfg.data, trained_on),
        time_deltas=[record.get("time_delta") for record in chosen],
        time_stats=trained_on.time_stats))
    ids = [record_id.decode() for record_id in inputs["id"].numpy()]
    return {key: value.numpy() for key, value in input_pipeline.model_inputs(inputs).items()}, ids


def _pick_records(split_records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Up to `NUM_RECONSTRUCTIONS` records spread from short to long (a fixed choice)."""
    if not split_records:
        raise records.DatasetError("no records to reconstruct")
    ordered = sorted(split_records, key=lambda r: (len(r["steps"]), r["id"]))
    # Quantiles up to 0.75: the longest sequence would squeeze every other one.
    positions = np.linspace(0, 0.75 * (len(ordered) - 1), NUM_RECONSTRUCTIONS)
    unique = sorted(set(int(round(p)) for p in positions))
    return [ordered[i] for i in unique]


def _project(vectors: np.ndarray, method: str) -> tuple[np.ndarray, str]:
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=0).fit(vectors)
        share = pca.explained_variance_ratio_
        return pca.transform(vectors), f"\nexplained variance {share[0]:.0%} + {share[1]:.0%}"
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(vectors) - 1) // 3)))
    return TSNE(n_components=2, perplexity=perplexity, random_state=0,
                init="pca").fit_transform(vectors), ""


def _all_embeddings(data_dir: str | Path, model_dir: str | Path,
                    metadata: DatasetMetadata) -> embed.Embeddings:
    encoder = embed.load_encoder(model_dir)
    parts = [embed.compute_embeddings(data_dir, model_dir, split, encoder=encoder)
             for split in metadata_lib.splits_with_records(metadata)]
    return embed.Embeddings(ids=np.concatenate([p.ids for p in parts]),
                            labels=np.concatenate([p.labels for p in parts]),
                            lengths=np.concatenate([p.lengths for p in parts]),
                            vectors=np.concatenate([p.vectors for p in parts]), split="all")


def _bucket_boundaries(model_dir: str | Path, metadata: DatasetMetadata) -> list[int]:
    """The boundaries training used: the config's, else the dataset's suggestion."""
    configured = read_config(model_dir).data.bucket_boundaries
    return list(configured or metadata.bucket_boundaries)


def _split_with_records(metadata: DatasetMetadata, split: str) -> str:
    if metadata.num_records(split) > 0:
        return split
    return "train"


def _save(figure: Figure, path: str) -> str | Path:
    """Writes `figure` as a PNG to `path` (local or a URL), atomically."""
    with storage.local_file(path) as local:
        figure.savefig(local, format="png")
    return storage.as_path(path)
