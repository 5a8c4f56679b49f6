"""Tests of seqpipe.synthetic: determinism, shapes, lengths, dropouts, class design,
injected anomalies."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import Counter

import numpy as np
import pytest

from seqpipe.commands import cli
from seqpipe.commands.evaluate import evaluate_svm, pooled_statistics
from seqpipe.config import ConfigError, EvalConfig, SynthConfig
from seqpipe.synthetic import ANOMALY_KINDS, generate, generate_annotated, write_jsonl

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


# --- anomalies -------------------------------------------------------------------------

# write_jsonl(SynthConfig(num_sequences=300)) before anomalies existed (commit fdfb36a).
DIGEST_BEFORE_ANOMALIES = "9a2b4491ca1a3fdb87f38ddf84e892f77829c80d6e2405752487f275163f7a87"
MANY = SynthConfig(num_sequences=3000, anomaly_fraction=0.3)
# Noise-free and without dropouts, feature `j < 4` is above its rest value exactly
# while event `j` lasts, so event orders and lengths can be read off the steps.
NOISE_FREE = SynthConfig(num_sequences=400, min_length=30, max_length=120, noise=0.0,
                         zero_step_fraction=0.0, anomaly_fraction=1.0)


def _within_binomial(count, n, p, stds=4.0):
    return abs(count - n * p) <= stds * np.sqrt(n * p * (1 - p))


@pytest.fixture(scope="module")
def many_annotated():
    return list(generate_annotated(MANY))


def _event_times(steps: np.ndarray, num_events: int = 4) -> list[np.ndarray]:
    """The steps during which each event lasts (noise-free sequences only)."""
    rises = steps[:, :num_events] - steps[0, :num_events]
    return [np.flatnonzero(rises[:, event] > 0) for event in range(num_events)]


def _beside_clean(cfg, kind=None):
    """`(steps, anomaly, clean steps)` of every anomalous sequence (of `kind`, if
    given) next to the same sequence generated without anomalies."""
    clean = _records(dataclasses.replace(cfg, anomaly_fraction=0.0))
    return [(np.asarray(record["steps"]), anomaly, np.asarray(original["steps"]))
            for (record, anomaly), original in zip(generate_annotated(cfg), clean, strict=True)
            if anomaly and kind in (None, anomaly.kind)]


def test_fraction_zero_writes_the_bytes_it_wrote_before_anomalies(tmp_path):
    cfg = SynthConfig(num_sequences=300)
    assert cfg.anomaly_fraction == 0.0
    summary = write_jsonl(cfg, tmp_path / "synthetic.jsonl")
    digest = hashlib.sha256((tmp_path / "synthetic.jsonl").read_bytes()).hexdigest()
    assert digest == DIGEST_BEFORE_ANOMALIES
    assert "anomaly_counts" not in summary
    assert all(anomaly is None for _, anomaly in generate_annotated(cfg))


def test_fraction_is_realized_and_every_kind_drawn_uniformly(many_annotated):
    kinds = Counter(anomaly.kind for _, anomaly in many_annotated if anomaly)
    assert _within_binomial(sum(kinds.values()), 3000, 0.3)
    assert set(kinds) == set(ANOMALY_KINDS)
    for kind in ANOMALY_KINDS:
        assert _within_binomial(kinds[kind], sum(kinds.values()), 0.25), kinds


def test_anomalies_hit_every_length_tercile_at_the_same_rate(many_annotated):
    lengths = np.array([len(record["steps"]) for record, _ in many_annotated])
    anomalous = np.array([anomaly is not None for _, anomaly in many_annotated])
    by_length = np.argsort(lengths, kind="stable")
    terciles = np.array_split(by_length, 3)
    assert lengths[terciles[0]].max() < 50 and lengths[terciles[2]].min() > 60
    for tercile in terciles:
        assert _within_binomial(anomalous[tercile].sum(), len(tercile), 0.3)


def test_labels_name_the_kind_and_ids_stay(many_annotated):
    for index, (record, anomaly) in enumerate(many_annotated[:400]):
        assert record["id"] == f"seq-{index:06d}"
        expected = f"anomaly_{anomaly.kind}" if anomaly else f"class_{index % 4}"
        assert record["label"] == expected


ALL_ANOMALOUS = dataclasses.replace(SMALL, num_sequences=200, anomaly_fraction=1.0)


def test_an_anomalous_sequence_equals_its_clean_self_outside_the_anomaly():
    compared = _beside_clean(ALL_ANOMALOUS)
    assert len(compared) == 200
    for steps, anomaly, before in compared:
        assert steps.shape == before.shape
        outside = np.ones(steps.shape, bool)
        outside[anomaly.start:anomaly.stop, list(anomaly.features)] = False
        np.testing.assert_array_equal(steps[outside], before[outside])
        assert np.any(steps != before), anomaly


def test_a_spike_changes_exactly_its_step_and_features():
    spikes = _beside_clean(ALL_ANOMALOUS, "spike")
    assert len(spikes) > 20
    for steps, anomaly, before in spikes:
        difference = steps - before
        changed_steps, changed_features = np.nonzero(difference)
        assert set(changed_steps) == {anomaly.start}
        assert tuple(changed_features) == anomaly.features and 2 <= len(anomaly.features) <= 3
        # 0.5 to 0.8 up on the features event 0..3 raise, down on those 4..7 lower.
        moves = difference[anomaly.start, list(anomaly.features)]
        signs = np.where(np.asarray(anomaly.features) < 4, 1.0, -1.0)
        assert np.all(moves * signs >= 0.5 - 1e-5) and np.all(moves * signs <= 0.8 + 1e-5)


def test_a_flatline_holds_every_feature_from_the_middle_of_an_event():
    flatlines = _beside_clean(ALL_ANOMALOUS, "flatline")
    assert len(flatlines) > 20
    for steps, anomaly, before in flatlines:
        held = steps[anomaly.start:anomaly.stop]
        assert len(held) >= 2 and anomaly.features == tuple(range(8))
        np.testing.assert_array_equal(held, np.broadcast_to(before[anomaly.start], held.shape))
        assert np.all(steps[anomaly.start + 1] != before[anomaly.start + 1])
        if anomaly.stop < len(steps):  # not cut at the end: 15% to 30%, rounded
            share, rounding = (anomaly.stop - anomaly.start) / len(steps), 0.5 / len(steps)
            assert 0.15 - rounding <= share <= 0.3 + rounding or anomaly.stop - anomaly.start == 2


def test_a_swap_exchanges_two_events_into_no_class_order():
    class_orders = [[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 0, 1], [3, 2, 1, 0]]
    swaps = 0
    for index, (record, anomaly) in enumerate(generate_annotated(NOISE_FREE)):
        if anomaly.kind != "swap":
            continue
        swaps += 1
        starts = [times[0] for times in _event_times(np.asarray(record["steps"]))]
        order = list(np.argsort(starts))
        assert order not in class_orders
        exchanged = np.flatnonzero(np.asarray(order) != class_orders[index % 4])
        assert len(exchanged) == 2
        assert anomaly.start == min(starts[e] for e in np.asarray(order)[exchanged])
    assert swaps > 50


def test_a_warp_stretches_one_event_and_compresses_its_neighbour():
    warps = _beside_clean(NOISE_FREE, "warp")
    assert len(warps) > 50
    for steps, anomaly, before in warps:
        after_lengths = np.array([len(t) for t in _event_times(steps)])
        before_lengths = np.array([len(t) for t in _event_times(before)])
        changed = np.flatnonzero(after_lengths != before_lengths)
        total = before_lengths[changed].sum()
        assert len(changed) == 2 and after_lengths[changed].sum() == total
        stretched = changed[np.argmax(after_lengths[changed])]
        assert before_lengths[stretched] == before_lengths[changed].min()
        assert after_lengths[stretched] == min(total - 1, round(0.9 * total))
        assert anomaly.stop - anomaly.start == total


def test_short_sequences_get_the_kinds_they_can_hold_at_the_same_rate():
    one_step = SynthConfig(num_sequences=1000, min_length=1, max_length=1, anomaly_fraction=0.5)
    kinds = Counter(a.kind for _, a in generate_annotated(one_step) if a)
    assert set(kinds) == {"spike"} and _within_binomial(kinds["spike"], 1000, 0.5)
    three_steps = dataclasses.replace(one_step, min_length=3, max_length=3)
    kinds = Counter(a.kind for _, a in generate_annotated(three_steps) if a)
    assert set(kinds) == {"spike", "flatline"}  # one event: no swap, no warp
    assert _within_binomial(sum(kinds.values()), 1000, 0.5)


def test_anomalies_keep_the_first_sequences_whatever_the_count():
    cfg = dataclasses.replace(SMALL, anomaly_fraction=0.5)
    assert _records(dataclasses.replace(cfg, num_sequences=7)) == _records(cfg)[:7]


def test_write_jsonl_counts_anomalies_per_kind_and_classes_apart(tmp_path):
    cfg = dataclasses.replace(SMALL, num_sequences=300, anomaly_fraction=0.4)
    summary = write_jsonl(cfg, tmp_path / "synthetic.jsonl")
    labels = Counter(json.loads(line)["label"]
                     for line in (tmp_path / "synthetic.jsonl").read_text().splitlines())
    assert summary["anomaly_counts"] == {kind: labels[f"anomaly_{kind}"]
                                         for kind in ANOMALY_KINDS}
    assert summary["class_counts"] == {label: count for label, count in labels.items()
                                       if label.startswith("class_")}
    assert sum(summary["anomaly_counts"].values()) + sum(summary["class_counts"].values()) == 300


def test_synth_command_takes_the_fraction(tmp_path, capsys):
    assert cli.main(["synth", "--output", str(tmp_path), "--n", "40", "--anomalies", "0.5"]) == 0
    expected = write_jsonl(dataclasses.replace(SynthConfig(), num_sequences=40,
                                               anomaly_fraction=0.5), tmp_path / "expected.jsonl")
    assert (tmp_path / "synthetic.jsonl").read_bytes() == (tmp_path / "expected.jsonl").read_bytes()
    anomalies = sum(expected["anomaly_counts"].values())
    assert f"wrote 40 sequences to {tmp_path / 'synthetic.jsonl'} ({anomalies} with an anomaly)" \
        in capsys.readouterr().out


@pytest.mark.parametrize("changes, message", [
    ({"anomaly_fraction": 1.5}, "synth.anomaly_fraction: must be in [0, 1]"),
    ({"anomaly_fraction": -0.1}, "synth.anomaly_fraction: must be in [0, 1]"),
    ({"anomaly_fraction": 0.1, "num_classes": 2},
     "synth.anomaly_fraction: needs num_classes >= 3"),
])
def test_bad_anomaly_fraction_is_refused(changes, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        SynthConfig(**changes)
