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
    summary.md           the numbers (data, training, evaluation) and the figures

Figures are drawn with matplotlib's object API (`matplotlib.figure.Figure`, no
pyplot, no global backend change), so a report can be made on a headless
machine or in a thread. Reconstructions are shown in the model's normalized
units (what the loss compares), un-reversed when the model was trained with
`data.reverse_target`.

Example:

    paths = make_report("data/", "runs/x", "runs/x/report")
    paths["loss"]   # PosixPath('runs/x/report/loss.png')
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from seqpipe import input_pipeline
from seqpipe.commands import embed
from seqpipe.config import load_config
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset import records
from seqpipe.dataset.metadata import DatasetMetadata
from seqpipe.training.model_dir import (
    AUTOENCODER_FILE,
    CONFIG_FILE,
    EVALUATION_FILE,
    HISTORY_FILE,
    METADATA_COPY,
)

SUMMARY_FILE = "summary.md"
DPI = 110
NUM_RECONSTRUCTIONS = 4
MAX_PLOTTED_FEATURES = 3


def make_report(data_dir: str | Path, model_dir: str | Path, output_dir: str | Path,
                *, split: str = "test", tsne: bool = False) -> dict[str, Path]:
    """Draws every figure that the inputs allow and writes `summary.md`.

    Args:
        data_dir: the preprocessed dataset (the model's feature count).
        model_dir: a trained model directory.
        output_dir: where the PNGs and `summary.md` go (created).
        split: the split whose sequences are reconstructed (falls back to
            `train` when empty).
        tsne: also draw a t-SNE projection.

    Returns:
        `{name: path}` of every file written: `lengths`, `loss`,
        `reconstructions`, `embeddings_pca`, optionally `embeddings_tsne` and
        `confusion`, and `summary`.

    Raises:
        records.DatasetError: missing data or a model that does not fit it.
    """
    data_dir, model_dir, output_dir = Path(data_dir), Path(model_dir), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    metadata = metadata_lib.read(data_dir)
    history = _read_json(model_dir / HISTORY_FILE) or []
    evaluation = _read_json(model_dir / EVALUATION_FILE)
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
    paths = {name: _save(figure, output_dir / f"{name}.png") for name, figure in figures.items()}
    summary = output_dir / SUMMARY_FILE
    summary.write_text(format_summary(metadata, history, evaluation, paths))
    return {**paths, "summary": summary}


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


def plot_reconstructions(data_dir: Path, model_dir: Path, metadata: DatasetMetadata,
                         split: str) -> Figure:
    """A few sequences of `split` (short to long, one batch, so the shorter ones
    are padded) over their reconstructions, padding shaded."""
    import keras

    from seqpipe.model import layers  # noqa: F401  (registers the custom layers)

    cfg = load_config(model_dir / CONFIG_FILE)
    if cfg.train.objective == "triplet":
        figure = Figure(figsize=(8, 2), dpi=DPI, layout="constrained")
        figure.text(0.5, 0.5, "no reconstructions: the model was trained with "
                    "train.objective triplet (an encoder without decoder)",
                    ha="center", va="center")
        return figure
    copy = model_dir / METADATA_COPY
    trained_on = metadata_lib.read_file(copy) if copy.is_file() else metadata
    chosen = _pick_records(list(records.read_split(data_dir, split, metadata)))
    # All of them in one batch, in their (short to long) order, padded to the longest.
    one_batch = dataclasses.replace(cfg.data, batch_size=len(chosen), sort_window=len(chosen),
                                    timestep_budget=0, length_grid=0, min_batch_efficiency=0.0)
    inputs, _, _ = next(input_pipeline.array_batches(
        [record["steps"] for record in chosen], [record["id"] for record in chosen], one_batch,
        feature_stats=trained_on.feature_stats))
    x, mask = inputs["x"].numpy(), inputs["mask"].numpy()
    autoencoder = keras.models.load_model(model_dir / AUTOENCODER_FILE, safe_mode=True)
    predicted = np.asarray(autoencoder({"x": x, "mask": mask}, training=False))

    features = min(MAX_PLOTTED_FEATURES, x.shape[-1])
    names = list(metadata.feature_names) or [f"f{i}" for i in range(x.shape[-1])]
    figure = Figure(figsize=(10, 2.4 * len(chosen) + 0.8), dpi=DPI, layout="constrained")
    axes_list = figure.subplots(len(chosen), 1, sharex=True, squeeze=False)[:, 0]
    for axes, record, original, output in zip(axes_list, chosen, x, predicted, strict=True):
        length = len(record["steps"])
        reconstruction = output[:length][::-1] if cfg.data.reverse_target else output[:length]
        _draw_sequence(axes, original[:length], reconstruction, features, names)
        if length < x.shape[1]:
            axes.axvspan(length - 0.5, x.shape[1] - 0.5, color="0.85",
                         label="padding (masked)")
        axes.set(title=f"{record['id']} ({record['label'] or 'unlabeled'}), length {length}, "
                       f"padded to {x.shape[1]}", ylabel="normalized value")
        axes.set_xlim(-0.5, x.shape[1] - 0.5)
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


def format_summary(metadata: DatasetMetadata, history: list[dict[str, Any]],
                   evaluation: dict[str, Any] | None, paths: dict[str, Path]) -> str:
    """`summary.md`: data, training and evaluation numbers, then the figures."""
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
    lines += ["", "## Figures", ""]
    lines += [f"![{name}]({path.name})" for name, path in paths.items()]
    return "\n".join(lines) + "\n"


def _draw_sequence(axes, original: np.ndarray, reconstruction: np.ndarray,
                   features: int, names: list[str]) -> None:
    for feature in range(features):
        color = f"C{feature}"
        axes.plot(original[:, feature], color=color, linewidth=1.4,
                  label=f"{names[feature]} original")
        axes.plot(reconstruction[:, feature], color=color, linewidth=1.4, linestyle="--",
                  label=f"{names[feature]} reconstruction")
    axes.grid(alpha=0.3)


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


def _all_embeddings(data_dir: Path, model_dir: Path,
                    metadata: DatasetMetadata) -> embed.Embeddings:
    encoder = embed.load_encoder(model_dir)
    parts = [embed.compute_embeddings(data_dir, model_dir, split, encoder=encoder)
             for split in metadata_lib.splits_with_records(metadata)]
    return embed.Embeddings(ids=np.concatenate([p.ids for p in parts]),
                            labels=np.concatenate([p.labels for p in parts]),
                            lengths=np.concatenate([p.lengths for p in parts]),
                            vectors=np.concatenate([p.vectors for p in parts]), split="all")


def _bucket_boundaries(model_dir: Path, metadata: DatasetMetadata) -> list[int]:
    """The boundaries training used: the config's, else the dataset's suggestion."""
    configured = load_config(model_dir / CONFIG_FILE).data.bucket_boundaries
    return list(configured or metadata.bucket_boundaries)


def _split_with_records(metadata: DatasetMetadata, split: str) -> str:
    if metadata.num_records(split) > 0:
        return split
    return "train"


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path)
    return path
