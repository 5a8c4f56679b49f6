"""beam_jobs.statistics: exact counts, length statistics and stable feature moments."""

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from beam_helpers import seq, written_part

from beam_jobs import statistics, validate, write
from seqpipe.dataset.sources import Rejection


def _moments_close_to(values):
    def check(actual):
        [moments] = actual
        assert moments["num_timesteps"] == len(values)
        np.testing.assert_allclose(moments["mean"], values.mean(0), rtol=1e-14)
        np.testing.assert_allclose(moments["std"], values.std(0), rtol=1e-14)
        assert moments["min"] == values.min(0).tolist()
        assert moments["max"] == values.max(0).tolist()
    return check


def test_compute_stats_and_count_records_are_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(write.PartWriter, "STATS_BATCH", 2)  # several flushes
    train = [seq("t1", length=2, source="f"), seq("t2", length=4, source="f", label="x"),
             seq("t3", length=1, source="f")]
    test = [seq("e1", length=3, label="y")]
    parts = [written_part(tmp_path, "train", train[:2]), written_part(tmp_path, "train",
                                                                         train[2:]),
             written_part(tmp_path, "test", test)]
    train_steps = np.concatenate([s.steps for s in train]).astype(np.float64)
    rejection = Rejection("empty", "no steps", "f", 9, "{}")
    written = [validate.Candidate(s.id, s.source, s.line, s.label, None, 2,
                                    s.id == "t3", "p", 0) for s in train + test]
    with BeamTestPipeline() as p:
        stats = p | "parts" >> beam.Create(parts) | statistics.ComputeStats()
        assert_that(stats["split_sizes"], equal_to([[("test", (1, 3)), ("train", (3, 7))]]),
                    label="split_sizes")
        assert_that(stats["length_counts"], equal_to([[[1, 1], [2, 1], [3, 1], [4, 1]]]),
                    label="length_counts")
        assert_that(stats["label_counts"], equal_to([[["x", 1], ["y", 1]]]),
                    label="label_counts")
        assert_that(stats["feature_moments"], _moments_close_to(train_steps),
                    label="feature_moments")
        read_results = p | "read" >> beam.Create([*train, *test, rejection])
        rejects = p | "rejects" >> beam.Create([rejection])
        written_pc = p | "written" >> beam.Create(written)
        no_drops = p | "no_drops" >> beam.Create([])
        counts = (read_results, written_pc, no_drops, rejects) | statistics.CountRecords()
        assert_that(counts, equal_to([[["read", "f", "", 4], ["read", "s", "", 1],
                                       ["rejected", "f", "empty", 1],
                                       ["truncated", "f", "", 1],
                                       ["written", "f", "", 3], ["written", "s", "", 1]]]),
                    label="counts")


def test_length_statistics_match_numpy():
    lengths = np.random.default_rng(0).integers(1, 300, size=997)
    counts = dict(zip(*np.unique(lengths, return_counts=True), strict=True))
    for q in statistics.LENGTH_QUANTILES:
        assert statistics.exact_quantile(counts, q) == pytest.approx(np.quantile(lengths, q))
    histogram = statistics.length_histogram(counts)
    expected, _ = np.histogram(lengths, bins=histogram["edges"])
    assert histogram["counts"] == expected.tolist()
    assert sum(histogram["counts"]) == 997 and histogram["edges"][-1] == lengths.max() + 1


def test_merge_moments_is_numpy_on_the_concatenation():
    rng = np.random.default_rng(1)
    chunks = [rng.normal(1e6, 1.0, size=(n, 3)) for n in (1, 7, 50)]
    merged = None
    for chunk in chunks:
        merged = statistics.merge_moments(merged, statistics.moments_of(chunk))
    values = np.concatenate(chunks)
    n, mean, m2, low, high = merged
    assert n == 58
    np.testing.assert_allclose(mean, values.mean(0), rtol=1e-14)
    np.testing.assert_allclose(np.sqrt(m2 / n), values.std(0), rtol=1e-9)
    np.testing.assert_array_equal(low, values.min(0))
    np.testing.assert_array_equal(high, values.max(0))


def test_suggested_boundaries_pad_least_for_the_bucket_count():
    lengths = {2: 4, 3: 1, 4: 3}
    # 2 buckets: [2, 4] pads the one 3 to 4 (1 step); [3, 4] would pad four 2s (4 steps).
    assert statistics.suggested_boundaries(lengths, 2) == [2, 4]
    assert statistics.suggested_boundaries(lengths, 1) == [4]
    ten = {length: 1 for length in range(1, 11)}
    assert len(statistics.suggested_boundaries(ten)) == statistics.SUGGESTED_NUM_BUCKETS == 8
    assert statistics.suggested_boundaries({}) == []


def test_count_records_subtracts_the_dropped_candidates():
    def candidate(sequence_id, source, truncated=False):
        return validate.Candidate(sequence_id, source, 1, "", None, 2, truncated, "p", 0)

    written = [candidate("a", "f"), candidate("b", "f", truncated=True),
               candidate("b", "g", truncated=True), candidate("c", "g")]
    drops = [("p", validate.Drop(written[2], "duplicate_id", "b again"))]
    rejected = [Rejection("duplicate_id", "b again", "g", 1, "{}")]
    read = [seq("a", source="f"), seq("b", source="f"), seq("b", source="g"),
            seq("c", source="g")]
    with BeamTestPipeline() as p:
        counts = ((p | "read" >> beam.Create(read), p | "written" >> beam.Create(written),
                   p | "drops" >> beam.Create(drops), p | "rejects" >> beam.Create(rejected))
                  | statistics.CountRecords())
        assert_that(counts, equal_to([[["read", "f", "", 2], ["read", "g", "", 2],
                                       ["rejected", "g", "duplicate_id", 1],
                                       ["truncated", "f", "", 1],
                                       ["written", "f", "", 2], ["written", "g", "", 1]]]))
