"""Tests of seqpipe.synthetic: determinism, shapes, lengths, dropouts, class design."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest

from seqpipe.commands.evaluate import evaluate_svm, pooled_statistics
from seqpipe.config import EvalConfig, SynthConfig
from seqpipe.synthetic import generate, write_jsonl

SMALL = SynthConfig(num_sequences=40, max_length=60)
FAST_EVAL = EvalConfig(kernels=("rbf", "linear"), c_grid=(1.0, 10.0), cv_folds=3)


def _records(cfg):
    return list(generate(cfg))


def _arrays(records):
    return [np.asarray(record["steps"]) for record in records]


def _peak_times(steps: np.ndarray) -> np.ndarray:
    """Hand-made temporal feature: when each feature deviates most from the first
    (rest) step, as a fraction of the sequence. Blind to pooled statistics."""
    deviation = np.abs(steps - steps[0])
    return np.argmax(deviation, axis=0) / max(len(steps) - 1, 1)


def _zero_steps(steps: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.all(steps == 0.0, axis=1))


def test_generate_is_deterministic():
    assert _records(SMALL) == _records(SMALL)


def test_different_seed_differs():
    first = _records(SMALL)
    other = _records(dataclasses.replace(SMALL, seed=1))
    assert [r["id"] for r in first] == [r["id"] for r in other]
    assert all(a["steps"] != b["steps"] for a, b in zip(first, other, strict=True))


def test_sequence_does_not_depend_on_how_many_are_generated():
    few = _records(dataclasses.replace(SMALL, num_sequences=5))
    assert few == _records(SMALL)[:5]


def test_ids_labels_and_shapes():
    cfg = dataclasses.replace(SMALL, num_sequences=10, num_features=3, num_classes=3,
                              min_length=5, max_length=9)
    records = _records(cfg)
    assert [r["id"] for r in records][:3] == ["seq-000000", "seq-000001", "seq-000002"]
    assert len({r["id"] for r in records}) == 10
    assert [r["label"] for r in records] == [f"class_{i % 3}" for i in range(10)]
    for record in records:
        assert set(record) == {"id", "label", "steps"}
        assert 5 <= len(record["steps"]) <= 9
        assert all(len(step) == 3 for step in record["steps"])
        assert all(type(value) is float for step in record["steps"] for value in step)


def test_values_are_rounded_to_six_significant_digits():
    for record in _records(SMALL):
        for value in np.ravel(record["steps"]):
            assert float(f"{value:.6g}") == value


def test_class_balance():
    counts = Counter(r["label"] for r in _records(dataclasses.replace(SMALL, num_sequences=10)))
    assert counts == {"class_0": 3, "class_1": 3, "class_2": 2, "class_3": 2}


def test_default_lengths_are_long_tailed_and_span_the_range():
    lengths = np.array([len(s) for s in _arrays(_records(SynthConfig()))])
    assert len(lengths) == 1326
    assert lengths.min() == 7 and lengths.max() == 356  # ~0.7% clipped at each end
    assert np.median(lengths) < lengths.mean()
    assert 40 <= np.median(lengths) <= 60  # log-normal median: sqrt(7 * 356) = 50
    assert 0.75 < np.mean(lengths <= 100) < 0.87  # most short (log-normal: 0.81)
    assert 0.02 < np.mean(lengths >= 200) < 0.08  # a few long (log-normal: 0.05)


def test_fixed_length():
    cfg = dataclasses.replace(SMALL, min_length=7, max_length=7)
    assert {len(s) for s in _arrays(_records(cfg))} == {7}


def test_zero_steps_are_exact_interior_and_at_the_configured_rate():
    cfg = dataclasses.replace(SMALL, num_sequences=1000, zero_step_fraction=0.2)
    sequences = _arrays(_records(cfg))
    with_zeros = 0
    for steps in sequences:
        zeros = _zero_steps(steps)
        if len(zeros):
            with_zeros += 1
            assert zeros.min() >= 1 and zeros.max() <= len(steps) - 2
            # Exactly 0.0 in every feature (positive zero, not a rounding artefact).
            assert all(value == 0.0 for value in np.ravel(steps[zeros]))
        # Outside dropouts no feature is ever exactly zero.
        assert np.all(np.delete(steps, zeros, axis=0) != 0.0)
    # Binomial(1000, 0.2): std 12.6; 4 std either side.
    assert 150 <= with_zeros <= 250


@pytest.mark.parametrize("fraction, expected", [(0.0, 0), (1.0, 40)])
def test_zero_step_fraction_extremes(fraction, expected):
    cfg = dataclasses.replace(SMALL, zero_step_fraction=fraction)
    assert sum(len(_zero_steps(s)) > 0 for s in _arrays(_records(cfg))) == expected


def test_classes_are_event_orders():
    # Noise-free: features 0..3 each peak once, in the class's order (A B C D, B A D C,
    # C D A B, D C B A), and features 4..7 dip at the same times.
    cfg = SynthConfig(num_sequences=4, min_length=60, max_length=60, noise=0.0,
                      zero_step_fraction=0.0)
    for record, order in zip(_records(cfg), [[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 0, 1],
                                             [3, 2, 1, 0]], strict=True):
        steps = np.asarray(record["steps"])
        rises = steps - steps[0]
        assert list(np.argsort(np.argmax(rises[:, :4], axis=0))) == order
        np.testing.assert_array_equal(np.argmin(rises[:, 4:], axis=0),
                                      np.argmax(rises[:, :4], axis=0))
        np.testing.assert_allclose(steps[-1], steps[0])  # rest at both ends


def test_pooled_statistics_are_at_chance_but_event_times_separate():
    records = _records(SynthConfig(num_sequences=600))
    sequences = _arrays(records)
    labels = np.array([r["label"] for r in records])
    train, test = slice(0, 400), slice(400, None)

    pooled = pooled_statistics(sequences)
    baseline = evaluate_svm(pooled[train], labels[train], pooled[test], labels[test],
                            FAST_EVAL)
    oracle = np.stack([_peak_times(s) for s in sequences])
    temporal = evaluate_svm(oracle[train], labels[train], oracle[test], labels[test],
                            FAST_EVAL)

    assert baseline["test_accuracy"] < 0.25 + 0.15
    assert temporal["test_accuracy"] > 0.9


def test_short_sequences_still_carry_the_order():
    records = _records(SynthConfig(num_sequences=200, min_length=7, max_length=7))
    times = np.stack([_peak_times(s) for s in _arrays(records)])
    labels = np.array([r["label"] for r in records])
    result = evaluate_svm(times[:120], labels[:120], times[120:], labels[120:], FAST_EVAL)
    assert result["test_accuracy"] > 0.9


def test_write_jsonl_is_atomic_byte_identical_and_summarized(tmp_path):
    cfg = dataclasses.replace(SMALL, zero_step_fraction=0.5)
    first = tmp_path / "a" / "b" / "synthetic.jsonl"
    second = tmp_path / "again.jsonl"
    summary = write_jsonl(cfg, first)
    write_jsonl(cfg, second)

    assert first.read_bytes() == second.read_bytes()
    assert sorted(p.name for p in first.parent.iterdir()) == ["synthetic.jsonl"]
    lines = first.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records == _records(cfg)
    lengths = [len(r["steps"]) for r in records]
    assert summary == {
        "path": str(first),
        "num_sequences": 40,
        "class_counts": {f"class_{k}": 10 for k in range(4)},
        "length_min": min(lengths),
        "length_max": max(lengths),
        "length_mean": round(sum(lengths) / 40, 3),
        "num_with_zero_steps": sum(len(_zero_steps(np.asarray(r["steps"]))) > 0
                                   for r in records),
    }
    assert 10 <= summary["num_with_zero_steps"] <= 30


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "synthetic.jsonl"
    path.write_text("old\n")

    def broken(cfg):
        yield from _records(dataclasses.replace(cfg, num_sequences=1))
        raise RuntimeError("disk full")

    monkeypatch.setattr("seqpipe.synthetic.generate", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_jsonl(SMALL, path)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic.jsonl"]
