"""beam_jobs.write: part files and shards (the commit: tests/test_object_store.py)."""


import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from beam_helpers import part_records, seq, written_part

from beam_jobs import validate, write


def test_write_candidates_rolls_parts_over_at_the_target_size(tmp_path, monkeypatch):
    monkeypatch.setattr(write, "TARGET_SHARD_BYTES", 200)
    sequences = [seq(f"t{i}", length=4) for i in range(20)]
    with BeamTestPipeline() as p:
        parts, _, _ = (p | beam.Create(sequences)
                       | write.WriteCandidates(str(tmp_path), 1.0, 0.0))
        sizes = parts | beam.Map(lambda part: (part.num_records, part.num_bytes))
        assert_that(sizes, lambda rows: (sum(n for n, _ in rows) == 20 and len(rows) > 2
                                         and all(size < 200 + 120 for _, size in rows)))
    assert len(list(tmp_path.iterdir())) > 2


def test_reshard_writes_exactly_num_shards_in_hashed_id_order(tmp_path):
    parts = [written_part(tmp_path / "in", "train", [seq(f"t{i}") for i in range(i0, i0 + 5)])
             for i0 in (0, 5)] + [written_part(tmp_path / "in", "val", [seq("v0")])]
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        with BeamTestPipeline() as p:
            shards = (p | beam.Create(parts[::-1] if run == "b" else parts)
                      | write.Reshard(str(tmp_path / run), num_shards=3))
            assert_that(shards | beam.Map(lambda part: (part.split, part.order)),
                        equal_to([("train", (0,)), ("train", (1,)), ("train", (2,)),
                                  ("val", (0,))]))
    for path in (tmp_path / "a").iterdir():
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes()
        ids = [r[0] for r in part_records(write.ShardPart("train", str(path), 0, 0))]
        assert ids == sorted(ids, key=lambda i: (validate.id_hash(i), i))


def test_num_shards_for():
    assert write.num_shards_for(0, 0) == 0
    assert write.num_shards_for(1, 10) == 1
    assert write.num_shards_for(1000, 10) == write.MIN_SHARDS
    assert write.num_shards_for(10**6, 10 * write.TARGET_SHARD_BYTES + 1) == 11
    assert write.num_shards_for(1000, 10, configured=8) == 8
    assert write.num_shards_for(3, 10, configured=8) == 3


def test_part_writer_keeps_no_statistics_for_mixed_widths(tmp_path):
    one_width = written_part(tmp_path, "train", [seq("a"), seq("b")])
    mixed = written_part(tmp_path, "train", [seq("a"), seq("n", width=1), seq("b")])
    assert one_width.stats is not None and mixed.stats is None
    assert (mixed.num_records, len(list(write.read_tfrecords(mixed.path)))) == (3, 3)
