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

POOLED_STATISTICS = ("mean", "std", "min", "max", "last")

# libsvm iteration cap per fit. A linear kernel with a large C on data that is not
# separable (pooled statistics of the synthetic set) otherwise runs for minutes
# (C=100: ~17M iterations, 16 s per fit on 600 rows; capped: 0.4 s); stopping early
# there costs nothing measurable, and every fit that hits the cap is counted in `notes`.
SVC_MAX_ITER = 50_000


def pooled_statistics(sequences: Sequence[np.ndarray]) -> np.ndarray:
    """The classic baseline: per-feature mean, std, min, max and last value.

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
        rows.append(np.concatenate([steps.mean(0), steps.std(0), steps.min(0), steps.max(0),
                                    steps[-1]]))
    return np.stack(rows).astype(np.float32)


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
        raise ValueError(f"the train split has a single class ({classes[0]!r}): an SVM "
                         "needs at least two classes to separate")

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

    labels = sorted(set(classes) | set(test_y.tolist()))
    unseen = sorted(set(test_y.tolist()) - set(classes))
    if unseen:
        notes.append(f"test labels never seen in train (always misclassified): {unseen}")
    predicted = search.predict(test_x)
    result = {
        "test_accuracy": float(accuracy_score(test_y, predicted)),
        "test_macro_f1": float(f1_score(test_y, predicted, labels=labels, average="macro",
                                        zero_division=0)),
        "best_params": _plain_params(search.best_params_),
        "cv_accuracy": float(search.best_score_),
        "cv_folds": folds,
        "per_class": _per_class(test_y, predicted, labels),
        "confusion_matrix": confusion_matrix(test_y, predicted, labels=labels).tolist(),
        "labels": labels,
        "num_train": int(len(train_y)),
        "num_test": int(len(test_y)),
        "chance_accuracy": chance_accuracy(test_y),
        "notes": notes,
    }
    if val_x is not None or val_y is not None:
        result.update(_validation_scores(search, val_x, val_y, labels))
    return result


def format_table(rows: list[dict[str, Any]]) -> str:
    """A short human table: method, test accuracy, macro-F1 (and chance if given).

    Args:
        rows: dicts with `method` and the `evaluate_svm` keys `test_accuracy`,
            `test_macro_f1` and optionally `chance_accuracy`; missing values
            print as `-`.

    Example:

        method         test_acc  macro_f1  chance
        embeddings        0.912     0.911   0.250
        pooled stats      0.262     0.255   0.250
    """
    columns = [("test_accuracy", "test_acc"), ("test_macro_f1", "macro_f1"),
               ("chance_accuracy", "chance")]
    width = max([len("method")] + [len(str(row.get("method", "-"))) for row in rows])
    lines = ["  ".join([f"{'method':<{width}}"] + [f"{title:>8}" for _, title in columns])]
    for row in rows:
        cells = [f"{_cell(row.get(key)):>8}" for key, _ in columns]
        lines.append("  ".join([f"{str(row.get('method', '-')):<{width}}"] + cells))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _checked_labels(labels: Sequence[Any] | None, split: str) -> np.ndarray:
    """Labels as a string array; empty, `None` or `""` labels raise a clear error."""
    if labels is None or len(labels) == 0:
        raise ValueError(f"evaluation needs labels: the {split} split has none")
    missing = sum(1 for label in labels if label is None or str(label) == "")
    if missing:
        raise ValueError(f"evaluation needs labels: {missing} of {len(labels)} {split} "
                         "examples are unlabeled (label '' or None)")
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
    """The protocol above on a trained model's embeddings and on pooled statistics.

    Both representations are evaluated on the same dataset splits: fitted and
    selected on `train`, scored on `val` (if not empty) and `test`.

    Returns:
        `{"embedding": ..., "pooled_statistics": ...}` (each an `evaluate_svm`
        result), `chance_accuracy` on the test split, and `table` (rows for
        `format_table`).

    Raises:
        ValueError: the dataset is unlabeled.
        records.DatasetError: missing data or a model that does not fit it.
    """
    from seqpipe import embed, records

    metadata = records.read_metadata(data_dir)
    splits = [s for s in ("train", "val", "test")
              if metadata["splits"].get(s, {}).get("num_records", 0) > 0]
    for needed in ("train", "test"):
        if needed not in splits:
            raise records.DatasetError(f"{data_dir}: evaluation needs a non-empty "
                                       f"{needed!r} split")
    encoder = embed.load_encoder(model_dir)
    embedded = {split: embed.compute_embeddings(data_dir, model_dir, split, encoder=encoder)
                for split in splits}
    pooled = {split: _pooled_split(data_dir, split, metadata) for split in splits}
    results = {
        "embedding": _evaluate_splits({s: (e.vectors, e.labels) for s, e in embedded.items()},
                                      cfg),
        "pooled_statistics": _evaluate_splits(pooled, cfg),
    }
    chance = chance_accuracy(embedded["test"].labels)
    table = [{"method": "autoencoder embedding", **results["embedding"],
              "chance_accuracy": chance},
             {"method": "pooled statistics (baseline)", **results["pooled_statistics"],
              "chance_accuracy": chance}]
    return {**results, "chance_accuracy": chance, "table": table,
            "data_dir": str(data_dir), "model_dir": str(model_dir)}


def _pooled_split(data_dir: str | Path, split: str,
                  metadata: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    from seqpipe import records

    sequences, labels = [], []
    for record in records.read_split(data_dir, split, metadata):
        sequences.append(record["steps"])
        labels.append(record["label"])
    return pooled_statistics(sequences), np.asarray(labels)


def _evaluate_splits(splits: dict[str, tuple[np.ndarray, np.ndarray]],
                     cfg: EvalConfig) -> dict[str, Any]:
    val_x, val_y = splits.get("val", (None, None))
    return evaluate_svm(*splits["train"], *splits["test"], cfg, val_x=val_x, val_y=val_y)
