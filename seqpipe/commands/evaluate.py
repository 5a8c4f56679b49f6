"""SVM evaluation of embeddings and baselines (scikit-learn).

The protocol, the same for every representation (autoencoder embeddings, pooled
statistics, anything `[N, D]`):

1. The estimator is `Pipeline(StandardScaler, SVC)`: scaling is fitted inside each
   cross-validation fold, never on held-out data.
2. Kernel, `C` and `gamma` (`EvalConfig.kernels`, `c_grid`, `gamma_grid`) are chosen by
   `GridSearchCV` with `StratifiedKFold(cv_folds, shuffle=True, random_state=seed)` on
   the TRAIN split only, and the best setting is refitted on the whole train split.
3. The validation split, if given, is NOT used for selection: it is scored with the
   refitted model and reported beside the cross-validation accuracy (a second
   held-out estimate, the simplest honest use of it).
4. The test split is used once, for the final scores.

Results are JSON-friendly dicts (`evaluate_svm`); `format_table` prints them for
humans, next to `chance_accuracy` (what always answering the majority class scores).

`evaluate_model` compares, on one dataset, with the same splits:

* `embedding`: the trained encoder's embeddings (the SVM protocol above);
* `hybrid` (`EvalConfig.hybrid_pooled`): the embeddings concatenated with the
  pooled statistics, a documented hybrid for data where order-free statistics
  carry signal the autoencoder misses (short real sequences often do);
* `pooled_statistics`: per-feature mean, std, min, max, last (SVM protocol);
* `dtw_1nn`: 1-nearest-neighbour under multivariate dynamic time warping
  (`dtaidistance`, Sakoe-Chiba band `dtw_window`) on the normalized
  sequences, train -> test, no hyperparameter search; skipped with a note when
  `num_train * num_test > dtw_max_pairs` (quadratic cost).

Labels are required: an unlabeled split raises `EvaluationError` ("evaluation
needs labels: ...") before anything is computed.

Example:

    train_x = pooled_statistics(train_sequences)            # [N, 5F] baseline
    result = evaluate_svm(train_x, train_y, test_x, test_y, EvalConfig())
    result["test_accuracy"], result["best_params"]           # 0.26, {"kernel": "rbf", ...}
    print(format_table([{"method": "pooled stats", **result}]))
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from seqpipe.config import EvalConfig
from seqpipe.dataset.metadata import DatasetMetadata
from seqpipe.errors import SeqpipeError

POOLED_STATISTICS = ("mean", "std", "min", "max", "last")

# libsvm iteration cap per fit. A linear kernel with a large C on data that is not
# separable (pooled statistics of the synthetic set) otherwise runs for minutes
# (C=100: ~17M iterations, 16 s per fit on 600 rows; capped: 0.4 s); stopping early
# there costs nothing measurable, and every fit that hits the cap is counted in `notes`.
SVC_MAX_ITER = 50_000


class EvaluationError(SeqpipeError, ValueError):
    """The data cannot be evaluated (no labels, a single class...): one-line message."""


def pooled_statistics(sequences: Sequence[np.ndarray]) -> np.ndarray:
    """The classic baseline: per-feature mean, std, min, max and last value.

    Missing entries (NaN) are left out: each statistic is over a feature's
    observed entries (`np.nanmean`, `np.nanstd`, `np.nanmin`, `np.nanmax`,
    the last observed value); a feature without an observed entry in a
    sequence gets 0.0 for all five.

    Args:
        sequences: `N` arrays of shape `[length, F]` (length >= 1, the same `F`),
            unpadded.

    Returns:
        float32 `[N, 5F]`: `[mean_0..mean_F-1, std_.., min_.., max_.., last_..]`,
        std being the population standard deviation (ddof 0).

    Raises:
        ValueError: no sequences, an empty sequence, or differing feature counts.
    """
    if len(sequences) == 0:
        raise ValueError("pooled_statistics needs at least one sequence. Received: 0")
    rows = []
    num_features = None
    for index, sequence in enumerate(sequences):
        steps = np.asarray(sequence, dtype=np.float64)
        if steps.ndim != 2 or steps.shape[0] == 0:
            raise ValueError(f"sequence {index} must have shape [length >= 1, F]. "
                             f"Received: shape={steps.shape}")
        if num_features is None:
            num_features = steps.shape[1]
        elif steps.shape[1] != num_features:
            raise ValueError(f"sequence {index} has {steps.shape[1]} features, the first "
                             f"one {num_features}")
        rows.append(_observed_statistics(steps))
    return np.stack(rows).astype(np.float32)


def _observed_statistics(steps: np.ndarray) -> np.ndarray:
    """`pooled_statistics` of one float64 `[length, F]` sequence, NaN entries missing."""
    observed = ~np.isnan(steps)
    if observed.all():
        return np.concatenate([steps.mean(0), steps.std(0), steps.min(0), steps.max(0),
                               steps[-1]])
    seen = observed.any(axis=0)
    last_row = steps.shape[0] - 1 - np.argmax(observed[::-1], axis=0)
    with warnings.catch_warnings():  # a feature never observed: NaN, replaced below
        warnings.simplefilter("ignore", RuntimeWarning)
        pooled = np.concatenate([np.nanmean(steps, 0), np.nanstd(steps, 0),
                                 np.nanmin(steps, 0), np.nanmax(steps, 0),
                                 steps[last_row, np.arange(steps.shape[1])]])
    return np.where(np.tile(seen, 5), pooled, 0.0)


def chance_accuracy(labels: Sequence[Any]) -> float:
    """The accuracy of always answering the most frequent label of `labels`."""
    labels = _checked_labels(labels, "labels")
    return max(collections.Counter(labels.tolist()).values()) / len(labels)


def evaluate_svm(train_x: np.ndarray, train_y: Sequence[Any], test_x: np.ndarray,
                 test_y: Sequence[Any], cfg: EvalConfig, val_x: np.ndarray | None = None,
                 val_y: Sequence[Any] | None = None) -> dict[str, Any]:
    """Selects an SVM by cross-validation on train, then scores it on test.

    Args:
        train_x, test_x: features `[N, D]` (and `val_x`, optional).
        train_y, test_y: labels, one per row (compared as strings; `""` or `None`
            means unlabeled and is an error). `val_y` goes with `val_x`.
        cfg: kernels, C and gamma grids, folds and seed.

    Returns:
        A JSON-friendly dict: `test_accuracy`, `test_macro_f1`, `best_params`
        (`kernel`, `C`, and `gamma` for rbf), `cv_accuracy` (mean over folds of
        the best setting), `cv_folds` (folds used), `per_class`
        (`{label: {precision, recall, f1, support}}` on test), `confusion_matrix`
        (rows: true label, columns: predicted, both in the order of `labels`),
        `labels`, `num_train`, `num_test`, `chance_accuracy` (test majority rate),
        `notes` (e.g. reduced folds), and `val_accuracy`, `val_macro_f1`,
        `num_val` when a validation split is given.

    Raises:
        ValueError: missing labels, mismatched sizes, a single-class train split,
            or a class with fewer than 2 train examples (cannot be stratified).
    """
    train_x, train_y = _checked_split(train_x, train_y, "train")
    test_x, test_y = _checked_split(test_x, test_y, "test")
    if test_x.shape[1] != train_x.shape[1]:
        raise ValueError(f"train and test features differ: {train_x.shape[1]} vs "
                         f"{test_x.shape[1]}")
    classes = sorted(set(train_y.tolist()))
    if len(classes) < 2:
        raise EvaluationError(f"the train split has a single class ({classes[0]!r}): an "
                              "SVM needs at least two classes to separate")

    notes: list[str] = []
    folds = _cv_folds(train_y, cfg.cv_folds, notes)
    search = GridSearchCV(
        Pipeline([("scale", StandardScaler()), ("svc", SVC(max_iter=SVC_MAX_ITER))]),
        _param_grid(cfg),
        scoring="accuracy",
        cv=StratifiedKFold(folds, shuffle=True, random_state=cfg.seed),
        refit=True,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        search.fit(train_x, train_y)
    unconverged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    for other in caught:
        if not issubclass(other.category, ConvergenceWarning):
            warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    if unconverged:
        notes.append(f"{unconverged} SVM fits stopped at max_iter={SVC_MAX_ITER} (usually "
                     "a linear kernel with a large C on data it cannot separate)")

    result = {
        "best_params": _plain_params(search.best_params_),
        "cv_accuracy": float(search.best_score_),
        "cv_folds": folds,
        **held_out_scores(classes, test_y, search.predict(test_x), notes),
        "num_train": int(len(train_y)),
    }
    if val_x is not None or val_y is not None:
        result.update(_validation_scores(search, val_x, val_y, result["labels"]))
    return result


def held_out_scores(classes: list[str], test_y: np.ndarray, predicted: np.ndarray,
                notes: list[str]) -> dict[str, Any]:
    """Everything a classifier is scored with on test, as plain JSON values.

    Args:
        classes: the labels seen in train (a test label outside them gets a note).
        test_y: the true test labels (strings).
        predicted: the predicted labels, row-aligned with `test_y`.
        notes: the caller's notes; returned (with any addition) under `notes`.

    Returns:
        `test_accuracy`, `test_macro_f1`, `per_class`, `confusion_matrix` (rows:
        true, columns: predicted, in the order of `labels`), `labels`,
        `num_test`, `chance_accuracy`, `notes`.
    """
    labels = sorted(set(classes) | set(test_y.tolist()))
    unseen = sorted(set(test_y.tolist()) - set(classes))
    if unseen:
        notes.append(f"test labels never seen in train (always misclassified): {unseen}")
    return {
        "test_accuracy": float(accuracy_score(test_y, predicted)),
        "test_macro_f1": float(f1_score(test_y, predicted, labels=labels, average="macro",
                                        zero_division=0)),
        "per_class": _per_class(test_y, predicted, labels),
        "confusion_matrix": confusion_matrix(test_y, predicted, labels=labels).tolist(),
        "labels": labels,
        "num_test": int(len(test_y)),
        "chance_accuracy": chance_accuracy(test_y),
        "notes": notes,
    }


def dtw_distances(queries: Sequence[np.ndarray], references: Sequence[np.ndarray],
                  window: int) -> np.ndarray:
    """Multivariate DTW distances between every query and every reference.

    `dtaidistance`'s C implementation (OpenMP-parallel): the square root of the
    smallest sum of squared euclidean step distances along a warping path
    within a Sakoe-Chiba band of `window` steps (widened by the library to the
    length difference, so any two sequences can be aligned).

    Args:
        queries: `Q` arrays `[length, F]`.
        references: `R` arrays `[length, F]`.
        window: the band half-width in steps (>= 1).

    Returns:
        float64 `[Q, R]`.
    """
    from dtaidistance import dtw_ndim

    series = [np.ascontiguousarray(s, dtype=np.float64) for s in (*queries, *references)]
    num_queries = len(queries)
    flat = dtw_ndim.distance_matrix_fast(
        series, window=int(window), block=((0, num_queries), (num_queries, len(series))),
        compact=True)
    return np.asarray(flat, dtype=np.float64).reshape(num_queries, len(references))


def evaluate_1nn_dtw(train_sequences: Sequence[np.ndarray], train_y: Sequence[Any],
                     test_sequences: Sequence[np.ndarray], test_y: Sequence[Any],
                     cfg: EvalConfig) -> dict[str, Any]:
    """The 1-nearest-neighbour DTW baseline: each test sequence gets the label of
    its DTW-nearest train sequence (ties: the first in train order).

    Nothing is fitted or selected: the band is `cfg.dtw_window` times the
    longest sequence's length. The cost is `num_train * num_test` DTW
    computations; above `cfg.dtw_max_pairs` (or with it 0) nothing is computed
    and the result is `{"skipped": reason, "notes": [reason]}`.

    Returns:
        The `held_out_scores` keys, plus `num_train`, `window` and `seconds`.
    """
    import time

    train_y = _checked_labels(train_y, "train")
    test_y = _checked_labels(test_y, "test")
    pairs = len(train_sequences) * len(test_sequences)
    if not cfg.dtw_max_pairs or pairs > cfg.dtw_max_pairs:
        reason = (f"1-NN DTW skipped: {len(train_sequences)} train x {len(test_sequences)} "
                  f"test = {pairs} pairs > eval.dtw_max_pairs={cfg.dtw_max_pairs}")
        return {"skipped": reason, "notes": [reason]}
    longest = max(len(s) for s in (*train_sequences, *test_sequences))
    window = max(1, int(np.ceil(cfg.dtw_window * longest)))
    started = time.monotonic()
    distances = dtw_distances(test_sequences, train_sequences, window)
    predicted = train_y[np.argmin(distances, axis=1)]
    return {**held_out_scores(sorted(set(train_y.tolist())), test_y, predicted, []),
            "num_train": int(len(train_y)), "window": window,
            "seconds": time.monotonic() - started}


ACCURACY_COLUMNS = (("test_accuracy", "test_acc"), ("test_macro_f1", "macro_f1"),
                    ("chance_accuracy", "chance"))


def format_table(rows: list[dict[str, Any]],
                 columns: Sequence[tuple[str, str]] = ACCURACY_COLUMNS) -> str:
    """A short human table: method, test accuracy, macro-F1 (and chance if given).

    Args:
        rows: dicts with `method` and the `evaluate_svm` keys `test_accuracy`,
            `test_macro_f1` and optionally `chance_accuracy`; missing values
            print as `-`. A row with `skipped` (a reason) gets a note line
            under the table.
        columns: `(key, title)` of each numeric column (default: the keys
            above); other commands tabulate other scores the same way.

    Example:

        method         test_acc  macro_f1  chance
        embeddings        0.912     0.911   0.250
        pooled stats      0.262     0.255   0.250
    """
    width = max([len("method")] + [len(str(row.get("method", "-"))) for row in rows])
    lines = ["  ".join([f"{'method':<{width}}"] + [f"{title:>8}" for _, title in columns])]
    for row in rows:
        cells = [f"{_cell(row.get(key)):>8}" for key, _ in columns]
        lines.append("  ".join([f"{str(row.get('method', '-')):<{width}}"] + cells))
    lines += [f"note: {row['skipped']}" for row in rows if row.get("skipped")]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _checked_labels(labels: Sequence[Any] | None, split: str) -> np.ndarray:
    """Labels as a string array; empty, `None` or `""` labels raise a clear error."""
    if labels is None or len(labels) == 0:
        raise EvaluationError(f"evaluation needs labels: the {split} split has none")
    missing = sum(1 for label in labels if label is None or str(label) == "")
    if missing:
        raise EvaluationError(f"evaluation needs labels: {missing} of {len(labels)} "
                              f"{split} examples are unlabeled (label '' or None)")
    return np.asarray([str(label) for label in labels])


def _checked_split(x: np.ndarray, y: Sequence[Any] | None,
                   split: str) -> tuple[np.ndarray, np.ndarray]:
    y = _checked_labels(y, split)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(y):
        raise ValueError(f"{split} features must have shape [{len(y)}, D] (one row per "
                         f"label). Received: shape={x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{split} features contain NaN or infinite values")
    return x, y


def _cv_folds(train_y: np.ndarray, requested: int, notes: list[str]) -> int:
    """The fold count: `requested`, reduced to the smallest class count if needed."""
    counts = collections.Counter(train_y.tolist())
    smallest_label, smallest = min(counts.items(), key=lambda item: (item[1], item[0]))
    if smallest < 2:
        raise ValueError(f"class {smallest_label!r} has {smallest} train example: "
                         "stratified cross-validation needs at least 2 per class")
    if smallest >= requested:
        return requested
    note = (f"cv_folds reduced from {requested} to {smallest}: class {smallest_label!r} "
            f"has only {smallest} train examples")
    warnings.warn(note, stacklevel=3)
    notes.append(note)
    return smallest


def _param_grid(cfg: EvalConfig) -> list[dict[str, list[Any]]]:
    """One grid per kernel; gamma only for rbf ("scale"/"auto" stay strings)."""
    grid = []
    for kernel in cfg.kernels:
        params: dict[str, list[Any]] = {"svc__kernel": [kernel],
                                        "svc__C": [float(c) for c in cfg.c_grid]}
        if kernel == "rbf":
            params["svc__gamma"] = [_gamma(value) for value in cfg.gamma_grid]
        grid.append(params)
    return grid


def _gamma(value: str | float) -> str | float:
    if isinstance(value, str) and value in ("scale", "auto"):
        return value
    try:
        gamma = float(value)
    except ValueError:
        raise ValueError(f"eval.gamma_grid: expected 'scale', 'auto' or a number. "
                         f"Received: {value!r}") from None
    if gamma <= 0:
        raise ValueError(f"eval.gamma_grid: gamma must be > 0. Received: {value!r}")
    return gamma


def _plain_params(params: dict[str, Any]) -> dict[str, Any]:
    """`{"svc__C": 1.0}` -> `{"C": 1.0}`, as plain Python values."""
    return {key.removeprefix("svc__"): (value.item() if isinstance(value, np.generic) else value)
            for key, value in sorted(params.items())}


def _per_class(true: np.ndarray, predicted: np.ndarray,
               labels: list[str]) -> dict[str, dict[str, float | int]]:
    report = classification_report(true, predicted, labels=labels, output_dict=True,
                                   zero_division=0)
    return {label: {"precision": float(report[label]["precision"]),
                    "recall": float(report[label]["recall"]),
                    "f1": float(report[label]["f1-score"]),
                    "support": int(report[label]["support"])}
            for label in labels}


def _validation_scores(search: GridSearchCV, val_x: np.ndarray | None,
                       val_y: Sequence[Any] | None, labels: list[str]) -> dict[str, Any]:
    if val_x is None or val_y is None:
        raise ValueError("val_x and val_y must be given together")
    val_x, val_y = _checked_split(val_x, val_y, "val")
    predicted = search.predict(val_x)
    val_labels = sorted(set(labels) | set(val_y.tolist()))
    return {"val_accuracy": float(accuracy_score(val_y, predicted)),
            "val_macro_f1": float(f1_score(val_y, predicted, labels=val_labels,
                                           average="macro", zero_division=0)),
            "num_val": int(len(val_y))}


def evaluate_model(data_dir: str | Path, model_dir: str | Path,
                   cfg: EvalConfig) -> dict[str, Any]:
    """The protocol above on a trained model's embeddings and on the baselines.

    Every representation is evaluated on the same dataset splits: fitted and
    selected on `train`, scored on `val` (if not empty) and `test`. The labels
    are checked first, so unlabeled data fails at once with one line.

    Returns:
        `embedding`, `pooled_statistics` and, if enabled, `hybrid` (each an
        `evaluate_svm` result), `dtw_1nn` (an `evaluate_1nn_dtw` result or
        `{"skipped": ...}`), `chance_accuracy` on the test split, `verdict`
        (`quality_verdict`), `table`
        (rows for `format_table`), `data_dir`, `model_dir`.

    Raises:
        EvaluationError: the dataset is unlabeled.
        records.DatasetError: missing data or a model that does not fit it.
    """
    from seqpipe.commands import embed
    from seqpipe.dataset import metadata as metadata_lib
    from seqpipe.dataset import records
    from seqpipe.input_pipeline import reading

    metadata = metadata_lib.read(data_dir)
    splits = metadata_lib.splits_with_records(metadata)
    for needed in ("train", "test"):
        if needed not in splits:
            raise records.DatasetError(f"{data_dir}: evaluation needs a non-empty "
                                       f"{needed!r} split")
    sequences = {split: _read_labeled_split(data_dir, split, metadata) for split in splits}
    encoder = embed.load_encoder(model_dir)
    vectors = {split: _aligned_embeddings(
        embed.compute_embeddings(data_dir, model_dir, split, encoder=encoder), ids)
        for split, (ids, _, _) in sequences.items()}
    labels = {split: split_labels for split, (_, _, split_labels) in sequences.items()}
    pooled = {split: pooled_statistics(steps) for split, (_, steps, _) in sequences.items()}
    features = {"embedding": vectors, "pooled_statistics": pooled}
    if cfg.hybrid_pooled:
        features["hybrid"] = {split: np.hstack([vectors[split], pooled[split]])
                              for split in splits}
    results = evaluate_features(features, labels, cfg)
    mean_std = reading.normalization_arrays(metadata.feature_stats, metadata.num_features)
    # Missing entries (NaN) are 0 after normalization (the train mean), as `data.fill: zero`.
    normalized = {split: [np.nan_to_num(reading.normalize(steps, mean_std), nan=0.0)
                          for steps in sequences[split][1]] for split in ("train", "test")}
    results["dtw_1nn"] = evaluate_1nn_dtw(normalized["train"], labels["train"],
                                          normalized["test"], labels["test"], cfg)
    chance = chance_accuracy(labels["test"])
    return {**results, "chance_accuracy": chance, "verdict": quality_verdict(results),
            "table": [{"method": title, **results[key], "chance_accuracy": chance}
                      for key, title in METHOD_TITLES.items() if key in results],
            "data_dir": str(data_dir), "model_dir": str(model_dir)}


def quality_verdict(results: dict[str, Any]) -> dict[str, Any]:
    """Whether the embedding beats the pooled-statistics baseline on test, said plainly.

    Returns:
        `{"embedding_beats_pooled": bool, "message": str}`; a tie counts as
        not beating it.
    """
    embedding = results["embedding"]["test_accuracy"]
    pooled = results["pooled_statistics"]["test_accuracy"]
    beats = embedding > pooled
    if beats:
        message = (f"the embedding beats the pooled-statistics baseline on test "
                   f"({embedding:.3f} vs {pooled:.3f})")
    else:
        message = (f"the embedding does NOT beat the pooled-statistics baseline on test "
                   f"({embedding:.3f} vs {pooled:.3f}): per-feature statistics separate "
                   "these classes at least as well; use the hybrid (embedding + pooled "
                   "statistics) or train longer (`train.min_steps`)")
    return {"embedding_beats_pooled": beats, "message": message}


METHOD_TITLES = {
    "embedding": "autoencoder embedding",
    "hybrid": "embedding + pooled statistics",
    "pooled_statistics": "pooled statistics (baseline)",
    "dtw_1nn": "1-NN DTW (baseline)",
}


def evaluate_features(features: dict[str, dict[str, np.ndarray]],
                      labels: dict[str, np.ndarray], cfg: EvalConfig) -> dict[str, Any]:
    """`evaluate_svm` on several representations of the same splits.

    Args:
        features: `{method: {split: [N_split, D]}}` with `train` and `test`
            (and optionally `val`) rows aligned with `labels`.
        labels: `{split: [N_split]}`.

    Returns:
        `{method: evaluate_svm result}`.
    """
    results = {}
    for method, by_split in features.items():
        val = (by_split["val"], labels["val"]) if "val" in by_split else (None, None)
        results[method] = evaluate_svm(by_split["train"], labels["train"], by_split["test"],
                                       labels["test"], cfg, val_x=val[0], val_y=val[1])
    return results


def format_evaluation(result: dict[str, Any]) -> str:
    """The human summary of `evaluate_model`: the table, notes, then the embedding's
    per-class scores and confusion matrix on test."""
    embedding = result["embedding"]
    labels = embedding["labels"]
    width = max(len("label"), *(len(label) for label in labels))
    lines = [format_table(result["table"]), "", f"verdict: {result['verdict']['message']}",
             "", "autoencoder embedding, test split, per class:",
             f"{'label':<{width}}  precision  recall      f1  support"]
    for label in labels:
        scores = embedding["per_class"][label]
        lines.append(f"{label:<{width}}  {scores['precision']:>9.3f}  {scores['recall']:>6.3f}"
                     f"  {scores['f1']:>6.3f}  {scores['support']:>7d}")
    lines += ["", "confusion matrix (rows: true, columns: predicted):",
              " " * width + "  " + "  ".join(f"{label:>{width}}" for label in labels)]
    for label, row in zip(labels, embedding["confusion_matrix"], strict=True):
        lines.append(f"{label:<{width}}  " + "  ".join(f"{n:>{width}d}" for n in row))
    return "\n".join(lines)


def _read_labeled_split(data_dir: str | Path, split: str, metadata: DatasetMetadata
                        ) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """`(ids, steps, labels)` of a split, raw (unnormalized), in shard order.

    Raises:
        EvaluationError: a record without a label (names the data directory).
    """
    from seqpipe.dataset import records

    ids, steps, labels = [], [], []
    for record in records.read_split(data_dir, split, metadata):
        ids.append(record["id"])
        steps.append(record["steps"])
        labels.append(record["label"])
    unlabeled = sum(1 for label in labels if not label)
    if unlabeled:
        raise EvaluationError(
            f"evaluation needs labels: {unlabeled} of {len(labels)} {split} records of "
            f"{data_dir} have none (give each raw record a 'label' and preprocess again; "
            "`seqpipe embed` works without labels)")
    return ids, steps, np.asarray(labels)


def _aligned_embeddings(embeddings, ids: list[str]) -> np.ndarray:
    """The embedding vectors reordered to `ids`, checking each id appears exactly once."""
    row_of = {record_id: row for row, record_id in enumerate(embeddings.ids.tolist())}
    if len(row_of) != len(embeddings) or set(row_of) != set(ids):
        raise ValueError(f"the embeddings of split {embeddings.split!r} do not match its "
                         f"records one to one ({len(embeddings)} vectors, {len(ids)} records)")
    return embeddings.vectors[[row_of[record_id] for record_id in ids]]
