"""beam_jobs.validate: dataset-level checks route every written record (with beam_jobs.write)."""

import apache_beam as beam
import numpy as np
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from beam_helpers import part_records, seq

from beam_jobs import statistics, validate, write
from seqpipe.dataset import sources
from seqpipe.dataset.sources import Rejection, Sequence


def test_write_check_and_drop_route_every_record(tmp_path):
    # Two bundles' worth of records in one: a mixed-width part (narrow), duplicates in
    # the same part and across sources, and a record-level rejection.
    literal = [
        seq("ok1"), seq("ok2", length=3), seq("narrow", width=1, line=2),
        seq("dup", source="b", line=1), seq("dup", source="a", line=5),
        seq("dup", source="a", line=7), seq("cut", truncated_from=9),
        Rejection("unparseable", "bad", "s", 4, "{"),
    ]
    parts_dir = str(tmp_path)
    with BeamTestPipeline() as p:
        results = p | beam.Create(literal)
        parts, candidates, record_rejects = results | write.WriteCandidates(
            parts_dir, 1.0, 0.0)
        drops, num_features = (candidates, parts) | validate.CheckDataset()
        final, dataset_rejects = (parts, drops, num_features) | write.DropRejected(
            parts_dir)
        assert_that(drops | "describe_drops" >> beam.Map(
            lambda pd: (pd[1].candidate.id, pd[1].candidate.source, pd[1].candidate.line,
                        pd[1].reason, pd[0] == pd[1].candidate.part)),
                    equal_to([("narrow", "s", 2, "wrong_feature_count", True),
                              ("dup", "b", 1, "duplicate_id", True),
                              ("dup", "a", 7, "duplicate_id", True)]), label="drops")
        reasons = ((record_rejects, dataset_rejects) | beam.Flatten()
                   | beam.Map(lambda r: (r.reason, r.source, r.line)))
        assert_that(reasons, equal_to([("wrong_feature_count", "s", 2),
                                       ("duplicate_id", "b", 1), ("duplicate_id", "a", 7),
                                       ("unparseable", "s", 4)]), label="rejects")
        assert_that(num_features, equal_to([2]), label="num_features")
        written = final | "part_contents" >> beam.FlatMap(part_records) | beam.Map(
            lambda r: r[0])
        assert_that(written, equal_to(["ok1", "ok2", "dup", "cut"]), label="written")
        assert_that(final | "split_of_parts" >> beam.Map(lambda part: part.split),
                    lambda splits: set(splits) == {"train"}, label="splits")
        stats = final | statistics.ComputeStats()
        assert_that(stats["split_sizes"], equal_to([[("train", (4, 9))]]), label="sizes")


def test_rejected_duplicate_keeps_its_record_and_the_kept_copy_its_steps(tmp_path):
    kept_copy = seq("d", length=2, source="a", line=1)
    later = Sequence(id="d", steps=np.array([[0.5, 1.5], [2.5, 3.5]], np.float32),
                     label="x", split="test", source="b", line=3)
    with BeamTestPipeline() as p:
        parts, candidates, _ = (p | beam.Create([later, kept_copy])
                                | write.WriteCandidates(str(tmp_path), 1.0, 0.0))
        drops, num_features = (candidates, parts) | validate.CheckDataset()
        final, rejects = (parts, drops, num_features) | write.DropRejected(str(tmp_path))
        assert_that(rejects | beam.Map(lambda r: (r.reason, r.record)), equal_to([(
            "duplicate_id", sources.to_json_line(later))]), label="rejects")
        contents = final | beam.FlatMap(part_records)
        assert_that(contents, equal_to([("d", kept_copy.steps.tolist())]), label="kept")


def test_repeated_hashes_across_bundles_and_compactions(monkeypatch):
    monkeypatch.setattr(validate.RepeatedHashesFn, "PENDING", 3)  # compactions mid-bundle
    fn = validate.RepeatedHashesFn()
    first, second = fn.create_accumulator(), fn.create_accumulator()
    for value in (5, 1, 9, 1, 2**64 - 1):
        first = fn.add_input(first, value)
    for value in (9, 4, 2**64 - 1, 2**64 - 1, 7):
        second = fn.add_input(second, value)
    merged = fn.merge_accumulators([first, second, fn.create_accumulator()])
    assert fn.extract_output(merged) == (1, 9, 2**64 - 1)
    np.testing.assert_array_equal(fn.compact(merged)[0],
                                  np.array([1, 4, 5, 7, 9, 2**64 - 1], np.uint64))
    assert fn.extract_output(fn.create_accumulator()) == ()


def test_without_repeated_ids_no_candidate_log_is_read(tmp_path, monkeypatch):
    """Single-width parts and no repeated id hash: nothing is read back, nothing dropped."""
    opened = []
    original = write.read_candidate_log
    monkeypatch.setattr(write, "read_candidate_log",
                        lambda part: opened.append(part.name) or original(part))
    literal = [seq(f"r{i}", line=i) for i in range(20)]
    with BeamTestPipeline() as p:
        parts, candidates, _ = (p | beam.Create(literal)
                                | write.WriteCandidates(str(tmp_path), 1.0, 0.0))
        drops, num_features = (candidates, parts) | validate.CheckDataset()
        assert_that(drops, equal_to([]), label="no_drops")
        assert_that(parts | beam.Map(lambda part: (part.width, bool(part.candidate_log))),
                    lambda widths: set(widths) == {(2, True)}, label="widths")
    assert opened == []
