"""Anomaly scores against labels: ROC-AUC and PR-AUC beside two baselines, and length checks.

The labels say what is normal: a record whose label matches any of the
`--normal-label` patterns (`fnmatch` globs, e.g. `class_*`) is normal, every
other one is an anomaly, the positive class. Every method gives each scored
record an anomaly score (higher: more anomalous) and is scored the same way:

* `roc_auc`: `sklearn.metrics.roc_auc_score` (0.5: chance, 1.0: every anomaly
  above every normal record);
* `pr_auc`: `sklearn.metrics.average_precision_score` (chance: `prevalence`,
  the fraction of anomalies);
* `length_spearman`: the Spearman correlation of the score with the sequence
  length; near 0 on data whose anomalies do not depend on length is what
  a padding-free score gives (`label_length_spearman` is the same
  correlation for the labels themselves, the reference).

The methods:

* `reconstruction`: the autoencoder's score (`seqpipe.commands.score`: the
  error over the typical error at the record's length);
* `reconstruction_error`: the error alone, uncalibrated for length (shown
  when the scores are calibrated, so the correction is seen at work);
* `isolation_forest`: `sklearn.ensemble.IsolationForest` (`random_state=0`)
  fitted on the pooled per-feature statistics (`evaluate.pooled_statistics`,
  raw values) of the TRAIN split of the reference dataset (`--data`, the
  model's training data), scoring the records' pooled statistics
  (`-score_samples`);
* `knn_embedding`: the mean euclidean distance from a record's embedding to
  its `score.knn` nearest train-split embeddings (`NearestNeighbors`; a
  train-split record does not count itself).

Without a reference dataset (raw `--input` and no `--data`) both baselines
are skipped with a note. Unsupervised all three: the labels are only used to
score them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import numpy as np

from seqpipe.commands import embed, evaluate
from seqpipe.commands.score import Request, ScoreError, Scores
from seqpipe.config import ScoreConfig
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset import records

METHOD_TITLES = {
    "reconstruction": "reconstruction score",
    "reconstruction_error": "reconstruction error, not length-calibrated",
    "isolation_forest": "isolation forest, pooled stats (baseline)",
    "knn_embedding": "k-NN distance, embeddings (baseline)",
}
COLUMNS = (("roc_auc", "roc_auc"), ("pr_auc", "pr_auc"), ("prevalence", "pr_chance"),
           ("length_spearman", "rho_len"))
ISOLATION_FOREST_SEED = 0


def anomalous(labels: Sequence[str], normal_labels: Sequence[str]) -> np.ndarray:
    """bool `[N]`: True for the records whose label matches none of `normal_labels`.

    Raises:
        ScoreError: unlabeled records, or no label / every label matches
            (nothing to tell apart).
    """
    labels = [str(label) for label in labels]
    unlabeled = sum(1 for label in labels if not label)
    if unlabeled:
        raise ScoreError(f"--normal-label needs labels: {unlabeled} of {len(labels)} scored "
                         "records are unlabeled")
    normal = np.asarray([any(fnmatch.fnmatchcase(label, pattern) for pattern in normal_labels)
                         for label in labels], bool)
    seen = sorted(set(labels))
    if not normal.any():
        raise ScoreError(f"no label matches --normal-label {list(normal_labels)} (labels: "
                         f"{seen}): nothing would be normal")
    if normal.all():
        raise ScoreError(f"every label matches --normal-label {list(normal_labels)} (labels: "
                         f"{seen}): nothing would be anomalous")
    return ~normal


def detection_scores(is_anomalous: np.ndarray, scores: np.ndarray,
                     lengths: np.ndarray) -> dict[str, Any]:
    """`roc_auc`, `pr_auc`, `length_spearman` and `num_records` of one method's scores."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores = np.asarray(scores, np.float64)
    return {"roc_auc": float(roc_auc_score(is_anomalous, scores)),
            "pr_auc": float(average_precision_score(is_anomalous, scores)),
            "length_spearman": spearman(scores, lengths),
            "num_records": int(len(scores))}


def spearman(values: np.ndarray, lengths: np.ndarray) -> float | None:
    """The Spearman rank correlation of `values` with `lengths`; None if either is constant."""
    from scipy.stats import spearmanr

    values, lengths = np.asarray(values, np.float64), np.asarray(lengths, np.float64)
    if np.ptp(values) == 0 or np.ptp(lengths) == 0:
        return None
    return float(spearmanr(values, lengths).statistic)


def isolation_forest_scores(train_sequences: Sequence[np.ndarray],
                            sequences: Sequence[np.ndarray]) -> np.ndarray:
    """Isolation Forest anomaly scores (higher: more anomalous) on pooled statistics,
    fitted on `train_sequences`."""
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(random_state=ISOLATION_FOREST_SEED)
    forest.fit(evaluate.pooled_statistics(train_sequences))
    return -forest.score_samples(evaluate.pooled_statistics(sequences))


def knn_distances(train_vectors: np.ndarray, vectors: np.ndarray, k: int, *,
                  exclude_self: bool = False) -> np.ndarray:
    """The mean euclidean distance of each row of `vectors` to its `k` nearest
    `train_vectors` (fewer if train is smaller); `exclude_self` drops the
    nearest one, for `vectors` that are the train rows themselves."""
    from sklearn.neighbors import NearestNeighbors

    neighbours = min(k + int(exclude_self), len(train_vectors))
    distances, _ = NearestNeighbors(n_neighbors=neighbours).fit(train_vectors).kneighbors(vectors)
    return distances[:, int(exclude_self):].mean(axis=1)


def evaluate_scores(scores: Scores, normal_labels: Sequence[str],
                    baselines: dict[str, np.ndarray | str]) -> dict[str, Any]:
    """Every method's `detection_scores`, the table rows and the counts.

    Args:
        scores: the reconstruction scores, with labels and lengths.
        normal_labels: the fnmatch patterns of the normal labels.
        baselines: `{method: scores row-aligned with `scores`}`, or
            `{method: reason}` for a baseline that was skipped.

    Returns:
        JSON-friendly: `methods` (`{method: detection_scores or {"skipped"}}`),
        `table` (rows for `evaluate.format_table`), `normal_labels`,
        `num_records`, `num_anomalous`, `prevalence`, `label_length_spearman`,
        `split`.
    """
    is_anomalous = anomalous(scores.labels, normal_labels)
    prevalence = float(is_anomalous.mean())
    methods: dict[str, dict[str, Any]] = {
        "reconstruction": detection_scores(is_anomalous, scores.scores, scores.lengths)}
    if not np.array_equal(scores.scores, scores.errors):
        methods["reconstruction_error"] = detection_scores(is_anomalous, scores.errors,
                                                           scores.lengths)
    for method, values in baselines.items():
        methods[method] = ({"skipped": values} if isinstance(values, str)
                           else detection_scores(is_anomalous, values, scores.lengths))
    return {
        "methods": methods,
        "table": [{"method": METHOD_TITLES[method], **result,
                   **({} if "skipped" in result else {"prevalence": prevalence})}
                  for method, result in methods.items()],
        "normal_labels": list(normal_labels),
        "anomalous_labels": sorted(set(scores.labels[is_anomalous].tolist())),
        "num_records": int(len(scores)),
        "num_anomalous": int(is_anomalous.sum()),
        "prevalence": prevalence,
        "label_length_spearman": spearman(is_anomalous, scores.lengths),
        "split": scores.split,
    }


def evaluate_request(scores: Scores, request: Request, cfg: ScoreConfig,
                     raw: embed.RawInput | None) -> dict[str, Any]:
    """`evaluate_scores` with the baselines of the module docstring, for `seqpipe score`.

    Args:
        scores: the scores of `request.split` of `request.data_dir`, or of
            the raw input `raw`.
        request: the run (model dir, reference data dir, normal labels).
        cfg: `knn`.
        raw: the validated raw input the scores come from, or None.
    """
    if request.data_dir is None:
        baselines: dict[str, np.ndarray | str] = {
            method: f"{METHOD_TITLES[method]} skipped: it needs the model's training data as "
                    "the reference (--data DATA)"
            for method in ("isolation_forest", "knn_embedding")}
    else:
        baselines = _baseline_scores(scores, request, cfg, raw)
    return {**evaluate_scores(scores, request.normal_labels, baselines),
            "model_dir": str(request.model_dir),
            "data_dir": None if request.data_dir is None else str(request.data_dir),
            "inputs": list(request.inputs)}


def _baseline_scores(scores: Scores, request: Request, cfg: ScoreConfig,
                     raw: embed.RawInput | None) -> dict[str, np.ndarray]:
    """Isolation Forest and k-NN scores of the scored records, row-aligned with `scores`,
    against the train split of `request.data_dir`."""
    reference = metadata_lib.read(request.data_dir)
    train = list(records.read_split(request.data_dir, "train", reference))
    in_train = raw is None and scores.split == "train"
    if raw is not None:
        steps_of = {sequence.id: sequence.steps for sequence in raw.sequences}
    else:
        split_records = train if in_train else records.read_split(
            request.data_dir, scores.split, reference)
        steps_of = {record["id"]: record["steps"] for record in split_records}
    steps = [steps_of[record_id] for record_id in scores.ids.tolist()]

    encoder = embed.load_encoder(request.model_dir)
    train_embeddings = embed.compute_embeddings(request.data_dir, request.model_dir, "train",
                                                encoder)
    if raw is not None:
        embeddings = embed.embed_validated(raw, request.model_dir, encoder=encoder)
    elif in_train:
        embeddings = train_embeddings
    else:
        embeddings = embed.compute_embeddings(request.data_dir, request.model_dir, scores.split,
                                              encoder)
    vectors = embeddings.take(embed.rows_for(embeddings.ids, scores.ids.tolist())).vectors
    return {
        "isolation_forest": isolation_forest_scores([r["steps"] for r in train], steps),
        "knn_embedding": knn_distances(train_embeddings.vectors, vectors, cfg.knn,
                                       exclude_self=in_train),
    }


def format_evaluation(result: dict[str, Any]) -> str:
    """The human summary of `evaluate_scores`: who is normal, the table, the length check."""
    rho = result["label_length_spearman"]
    lines = [
        f"{result['split']}: {result['num_records']} records, {result['num_anomalous']} "
        f"anomalous (labels {result['anomalous_labels']}), normal: labels matching "
        f"{result['normal_labels']}",
        evaluate.format_table(result["table"], columns=COLUMNS),
        "pr_chance: the PR-AUC of a random score (the fraction of anomalies); rho_len: "
        "Spearman correlation of the score with the length (the labels': "
        f"{'-' if rho is None else f'{rho:.3f}'})",
    ]
    return "\n".join(lines)
