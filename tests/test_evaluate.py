"""Tests of seqpipe.commands.evaluate: pooled statistics, the SVM protocol, the table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seqpipe.commands import evaluate
from seqpipe.commands.evaluate import (
    EvaluationError,
    chance_accuracy,
    dtw_distances,
    evaluate_1nn_dtw,
    evaluate_features,
    evaluate_svm,
    format_table,
    pooled_statistics,
)
from seqpipe.config import EvalConfig

CFG = EvalConfig(kernels=("rbf", "linear"), c_grid=(1.0, 10.0), cv_folds=3)

# Three well separated 1-D clusters, 3 train examples each (one per fold).
TRAIN_X = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2], [10.0], [10.1], [10.2]])
TRAIN_Y = ["a", "a", "a", "b", "b", "b", "c", "c", "c"]
TEST_X = np.array([[0.05], [0.15], [5.05], [10.05]])
TEST_Y = ["a", "a", "b", "c"]


def test_pooled_statistics_exact_numbers():
    sequences = [np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 1.0]]), np.array([[0.0, -1.0]])]
    expected = np.array([
        # mean      std                           min       max       last
        [3.0, 3.0, np.sqrt(8 / 3), np.sqrt(14 / 3), 1.0, 1.0, 5.0, 6.0, 5.0, 1.0],
        [0.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0, -1.0, 0.0, -1.0],
    ], dtype=np.float32)
    stats = pooled_statistics(sequences)
    assert stats.dtype == np.float32 and stats.shape == (2, 10)
    np.testing.assert_allclose(stats, expected, rtol=1e-6)


@pytest.mark.parametrize("sequences, message", [
    ([], "at least one sequence"),
    ([np.zeros((0, 2))], "length >= 1"),
    ([np.zeros((2, 2)), np.zeros((2, 3))], "has 3 features"),
])
def test_pooled_statistics_errors(sequences, message):
    with pytest.raises(ValueError, match=message):
        pooled_statistics(sequences)


def test_separable_data_scores_perfectly():
    result = evaluate_svm(TRAIN_X, TRAIN_Y, TEST_X, TEST_Y, CFG)
    assert result["test_accuracy"] == 1.0
    assert result["test_macro_f1"] == 1.0
    assert result["cv_accuracy"] == 1.0
    assert result["labels"] == ["a", "b", "c"]
    assert result["confusion_matrix"] == [[2, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert result["per_class"]["a"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0,
                                        "support": 2}
    assert result["num_train"] == 9 and result["num_test"] == 4
    assert result["chance_accuracy"] == 0.5
    assert result["cv_folds"] == 3 and result["notes"] == []
    # First grid point among equals: rbf, C=1, gamma "scale" (a string, not a number).
    assert result["best_params"] == {"C": 1.0, "gamma": "scale", "kernel": "rbf"}
    assert json.loads(json.dumps(result)) == result


def test_test_split_is_never_used_for_fitting():
    flipped = [{"a": "b", "b": "c", "c": "a"}[label] for label in TEST_Y]
    honest = evaluate_svm(TRAIN_X, TRAIN_Y, TEST_X, TEST_Y, CFG)
    result = evaluate_svm(TRAIN_X, TRAIN_Y, TEST_X, flipped, CFG)
    assert result["test_accuracy"] == 0.0
    assert result["confusion_matrix"] == [[0, 0, 1], [2, 0, 0], [0, 1, 0]]
    assert result["best_params"] == honest["best_params"]
    assert result["cv_accuracy"] == honest["cv_accuracy"]


def test_validation_split_is_reported_but_not_used_for_selection():
    val_x, val_y = np.array([[0.3], [4.9], [9.9]]), ["a", "c", "c"]
    result = evaluate_svm(TRAIN_X, TRAIN_Y, TEST_X, TEST_Y, CFG, val_x=val_x, val_y=val_y)
    honest = evaluate_svm(TRAIN_X, TRAIN_Y, TEST_X, TEST_Y, CFG)
    assert result["val_accuracy"] == pytest.approx(2 / 3)
    assert result["num_val"] == 3
    assert result["best_params"] == honest["best_params"]
    with pytest.raises(ValueError, match="together"):
        evaluate_svm(TRAIN_X, TRAIN_Y, TEST_X, TEST_Y, CFG, val_x=val_x)


def test_numeric_gamma_strings_become_floats():
    cfg = EvalConfig(kernels=("rbf",), c_grid=(1.0,), gamma_grid=("0.5",), cv_folds=3)
    result = evaluate_svm(TRAIN_X, TRAIN_Y, TEST_X, TEST_Y, cfg)
    assert result["best_params"] == {"C": 1.0, "gamma": 0.5, "kernel": "rbf"}
    with pytest.raises(ValueError, match="gamma_grid"):
        evaluate_svm(TRAIN_X, TRAIN_Y, TEST_X, TEST_Y,
                     EvalConfig(kernels=("rbf",), gamma_grid=("wide",)))


@pytest.mark.parametrize("train_y, test_y", [
    (TRAIN_Y, [""] * 4),
    ([""] * 9, TEST_Y),
    (TRAIN_Y[:-1] + [None], TEST_Y),
])
def test_unlabeled_data_is_a_clear_error(train_y, test_y):
    with pytest.raises(ValueError, match="evaluation needs labels"):
        evaluate_svm(TRAIN_X, train_y, TEST_X, test_y, CFG)


def test_empty_split_is_a_clear_error():
    with pytest.raises(ValueError, match="evaluation needs labels: the test split has none"):
        evaluate_svm(TRAIN_X, TRAIN_Y, np.zeros((0, 1)), [], CFG)


def test_single_class_train_is_a_clear_error():
    with pytest.raises(ValueError, match="single class"):
        evaluate_svm(TRAIN_X[:3], TRAIN_Y[:3], TEST_X, TEST_Y, CFG)


def test_folds_are_reduced_to_the_smallest_class_with_a_note():
    x, y = TRAIN_X[1:], TRAIN_Y[1:]  # class "a" has 2 examples
    with pytest.warns(UserWarning, match="cv_folds reduced from 3 to 2"):
        result = evaluate_svm(x, y, TEST_X, TEST_Y, CFG)
    assert result["cv_folds"] == 2
    assert result["notes"] == ["cv_folds reduced from 3 to 2: class 'a' has only 2 train "
                               "examples"]
    assert result["test_accuracy"] == 1.0


def test_a_class_with_one_train_example_cannot_be_stratified():
    with pytest.raises(ValueError, match="class 'a' has 1 train example"):
        evaluate_svm(TRAIN_X[2:], TRAIN_Y[2:], TEST_X, TEST_Y, CFG)


def test_mismatched_sizes_are_a_clear_error():
    with pytest.raises(ValueError, match=r"shape \[9, D\]"):
        evaluate_svm(TRAIN_X[:-1], TRAIN_Y, TEST_X, TEST_Y, CFG)


def test_chance_accuracy_is_the_majority_rate():
    assert chance_accuracy(["a", "a", "b", "c"]) == 0.5
    assert chance_accuracy(np.array(["x"] * 3)) == 1.0
    with pytest.raises(ValueError, match="evaluation needs labels"):
        chance_accuracy([])


def test_format_table():
    rows = [{"method": "embeddings", "test_accuracy": 0.9123, "test_macro_f1": 0.91,
             "chance_accuracy": 0.25},
            {"method": "pooled stats", "test_accuracy": 0.26}]
    assert format_table(rows) == (
        "method        test_acc  macro_f1    chance\n"
        "embeddings       0.912     0.910     0.250\n"
        "pooled stats     0.260         -         -"
    )


def test_format_table_notes_skipped_rows():
    rows = [{"method": "dtw", "skipped": "1-NN DTW skipped: too many pairs"}]
    assert format_table(rows).splitlines()[-2:] == [
        "dtw            -         -         -", "note: 1-NN DTW skipped: too many pairs"]


def test_unlabeled_errors_are_one_line_seqpipe_errors():
    from seqpipe.errors import SeqpipeError

    with pytest.raises(EvaluationError, match="evaluation needs labels") as caught:
        evaluate_svm(TRAIN_X, [""] * 9, TEST_X, TEST_Y, CFG)
    assert isinstance(caught.value, SeqpipeError) and "\n" not in str(caught.value)


def _reference_dtw(a, b):
    """Textbook DTW: sqrt of the smallest path sum of squared euclidean step costs."""
    cost = np.full((len(a) + 1, len(b) + 1), np.inf)
    cost[0, 0] = 0.0
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            step = np.sum((a[i - 1] - b[j - 1]) ** 2)
            cost[i, j] = step + min(cost[i - 1, j], cost[i, j - 1], cost[i - 1, j - 1])
    return np.sqrt(cost[-1, -1])


def test_dtw_distances_exact_numbers():
    a = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    b = np.array([[0.0, 0.0], [2.0, 0.0]])
    # Warping a onto b: (0,0)-(0,0) 0, (1,1)-(2,0) 2 or -(0,0) 2, (2,0)-(2,0) 0 -> sqrt(2).
    assert dtw_distances([a], [b], window=3)[0, 0] == pytest.approx(np.sqrt(2.0))
    rng = np.random.default_rng(0)
    queries = [rng.normal(size=(n, 3)) for n in (4, 9)]
    references = [rng.normal(size=(n, 3)) for n in (2, 7, 5)]
    distances = dtw_distances(queries, references, window=100)
    assert distances.shape == (2, 3)
    expected = [[_reference_dtw(q, r) for r in references] for q in queries]
    np.testing.assert_allclose(distances, expected, rtol=1e-9)


def _bump(length, position, sign=1.0):
    """A sequence of `length` steps with one feature-0 bump at `position` (0..1)."""
    steps = np.zeros((length, 2))
    steps[int(position * (length - 1)), 0] = 3.0 * sign
    return steps


def test_1nn_dtw_reads_order_and_skips_large_sets():
    train = [_bump(n, 0.1) for n in (8, 12, 20)] + [_bump(n, 0.9) for n in (9, 14, 18)]
    train_y = ["early"] * 3 + ["late"] * 3
    test = [_bump(10, 0.15), _bump(25, 0.85)]
    cfg = EvalConfig(dtw_window=0.2)
    result = evaluate_1nn_dtw(train, train_y, test, ["early", "late"], cfg)
    assert result["test_accuracy"] == 1.0 and result["num_train"] == 6
    assert result["window"] == 5  # ceil(0.2 * 25)
    skipped = evaluate_1nn_dtw(train, train_y, test, ["early", "late"],
                               EvalConfig(dtw_max_pairs=11))
    assert skipped == {"skipped": "1-NN DTW skipped: 6 train x 2 test = 12 pairs > "
                                  "eval.dtw_max_pairs=11",
                       "notes": [skipped["skipped"]]}


def test_shuffled_test_labels_change_nothing_before_scoring():
    """The test split is never used for fitting or selection, for every method."""
    rng = np.random.default_rng(3)
    labels = {"train": np.repeat(["a", "b", "c"], 6), "val": np.array(["a", "b", "c"]),
              "test": np.array(["a", "b", "c", "a", "b", "c"])}
    centres = {"a": 0.0, "b": 2.0, "c": 4.0}

    def features(split):
        return np.array([[centres[y] + rng.normal(0, 0.8), rng.normal()]
                         for y in labels[split]])

    by_method = {name: {split: features(split) for split in labels}
                 for name in ("embedding", "pooled_statistics")}
    shuffled = {**labels, "test": rng.permutation(labels["test"][::-1])}
    assert not np.array_equal(shuffled["test"], labels["test"])
    honest = evaluate_features(by_method, labels, CFG)
    blind = evaluate_features(by_method, shuffled, CFG)
    for method in by_method:
        for key in ("best_params", "cv_accuracy", "cv_folds", "val_accuracy"):
            assert blind[method][key] == honest[method][key], (method, key)
        # Same predictions: the predicted-label counts (confusion column sums) agree.
        np.testing.assert_array_equal(np.sum(blind[method]["confusion_matrix"], axis=0),
                                      np.sum(honest[method]["confusion_matrix"], axis=0))
    sequences = {split: [_bump(10, 0.1 + 0.4 * centres[y] / 4) for y in labels[split]]
                 for split in ("train", "test")}
    dtw = [evaluate_1nn_dtw(sequences["train"], labels["train"], sequences["test"], test_y,
                            EvalConfig()) for test_y in (labels["test"], shuffled["test"])]
    np.testing.assert_array_equal(np.sum(dtw[0]["confusion_matrix"], axis=0),
                                  np.sum(dtw[1]["confusion_matrix"], axis=0))


def test_evaluate_model_refuses_unlabeled_data_before_embedding(monkeypatch, tmp_path):
    from seqpipe.dataset import metadata as metadata_lib
    from seqpipe.dataset import records
    from seqpipe.dataset.metadata import DatasetMetadata, SplitInfo

    metadata = DatasetMetadata(num_features=2, splits={"train": SplitInfo(num_records=2),
                                                       "test": SplitInfo(num_records=1)})
    monkeypatch.setattr(metadata_lib, "read", lambda data_dir: metadata)
    monkeypatch.setattr(records, "read_split", lambda data_dir, split, meta: iter(
        [{"id": "x", "label": "", "steps": np.zeros((3, 2))}]))
    # The model directory does not exist: reaching the encoder would fail differently.
    with pytest.raises(EvaluationError, match="evaluation needs labels: 1 of 1 train "
                                              "records of .* have none"):
        evaluate.evaluate_model(tmp_path, tmp_path / "no-model", CFG)


def test_format_evaluation_shows_per_class_and_confusion():
    result = evaluate_svm(TRAIN_X, TRAIN_Y, TEST_X, TEST_Y, CFG)
    text = evaluate.format_evaluation({
        "embedding": result, "table": [{"method": "autoencoder embedding", **result}],
        "verdict": evaluate.quality_verdict({"embedding": result, "pooled_statistics": result})})
    assert "a          1.000   1.000   1.000        2" in text
    assert "verdict: the embedding does NOT beat the pooled-statistics baseline" in text
    assert text.splitlines()[-3:] == ["a          2      0      0",
                                      "b          0      1      0",
                                      "c          0      0      1"]


@pytest.mark.parametrize("embedding, pooled, beats, start", [
    (0.95, 0.90, True, "the embedding beats the pooled-statistics baseline on test "
                       "(0.950 vs 0.900)"),
    (0.90, 0.90, False, "the embedding does NOT beat the pooled-statistics baseline on test "
                        "(0.900 vs 0.900): "),
    (0.875, 1.0, False, "the embedding does NOT beat the pooled-statistics baseline on test "
                        "(0.875 vs 1.000): "),
])
def test_quality_verdict_says_plainly_whether_the_embedding_wins(embedding, pooled, beats,
                                                                  start):
    verdict = evaluate.quality_verdict({"embedding": {"test_accuracy": embedding},
                                        "pooled_statistics": {"test_accuracy": pooled}})
    assert verdict["embedding_beats_pooled"] is beats
    assert verdict["message"].startswith(start)
