"""The Beam preprocessing job: transforms on literal records, then end-to-end runs."""

import dataclasses
import gzip
import itertools
import json
import os
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs import preprocess as job
from beam_jobs import transforms
from seqpipe.config import PreprocessConfig
from seqpipe.dataset import records, sources
from seqpipe.dataset.sources import Rejection, Sequence

CFG = PreprocessConfig(min_length=2, max_length=6, num_buckets=3, train_fraction=0.6,
                       val_fraction=0.2)


def _steps(seed: int, length: int, width: int = 3) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(size=(length, width)), 3).tolist()


def _good_records() -> list[dict]:
    result = []
    for i in range(24):
        record = {"id": f"g{i:02d}", "steps": _steps(i, 2 + i % 5)}
        if i % 3:
            record["label"] = f"c{i % 3}"
        if i in (4, 5):
            record["split"] = "val"
        result.append(record)
    result[7]["steps"][1] = [0.0, 0.0, 0.0]  # a genuine all-zero timestep
    return result


# (line text, reason); line numbers are assigned when the files are written.
BAD_A = [
    ("{not json", "unparseable"),
    ('{"steps": [[1, 2, 3], [1, 2, 3]]}', "missing_id"),
    ('{"id": "bs", "split": "dev", "steps": [[1, 2, 3], [1, 2, 3]]}', "bad_split"),
    ('{"id": "bl", "label": {"a": 1}, "steps": [[1, 2, 3], [1, 2, 3]]}', "bad_label"),
    ('{"id": "em", "steps": []}', "empty"),
    ('{"id": "w1", "steps": [[1, 2, 3], [1, 2]]}', "wrong_feature_count"),
]
BAD_B = [
    ('{"id": "w2", "steps": [[1, 2], [3, 4]]}', "wrong_feature_count"),  # dataset width 3
    ('{"id": "nn", "steps": [[1, 2, 3], [1, "x", 3]]}', "non_numeric"),
    ('{"id": "nf", "steps": [[1, 2, 3], [1, Infinity, 3]]}', "non_finite"),
    ('{"id": "sh", "steps": [[1, 2, 3]]}', "too_short"),
    ('{"id": "lg", "steps": ' + json.dumps(_steps(99, 7)) + "}", "too_long"),
    ('{"id": "g03", "steps": [[9, 9, 9], [9, 9, 9]]}', "duplicate_id"),
]


def _write_inputs(directory: Path) -> dict:
    """a.jsonl: good 0..15 + BAD_A; b.jsonl.gz: good 16..23 + BAD_B + a blank line."""
    good = _good_records()
    a_lines = [json.dumps(r) for r in good[:16]] + [text for text, _ in BAD_A]
    b_lines = [json.dumps(r) for r in good[16:]] + [""] + [text for text, _ in BAD_B]
    a, b = directory / "a.jsonl", directory / "b.jsonl.gz"
    a.write_text("\n".join(a_lines) + "\n")
    with gzip.open(b, "wt") as f:
        f.write("\n".join(b_lines) + "\n")
    expected_rejects = {("a.jsonl", a_lines.index(text) + 1, reason) for text, reason in BAD_A}
    expected_rejects |= {("b.jsonl.gz", b_lines.index(text) + 1, reason)
                         for text, reason in BAD_B}
    return {"good": good, "files": [str(a), str(b)], "rejects": expected_rejects}


def _read_split(directory: Path, metadata: dict, split: str) -> dict[str, dict]:
    import tensorflow as tf

    compression = "GZIP" if metadata["compression"] == "gzip" else ""
    paths = [str(directory / name) for name in metadata["splits"][split]["files"]]
    out = {}
    for raw in tf.data.TFRecordDataset(paths, compression_type=compression):
        record = records.decode_sequence(raw.numpy(), metadata["num_features"])
        out[record["id"]] = record
    return out


def _expected_split(record: dict) -> str:
    return record.get("split") or sources.hash_split(record["id"], CFG.train_fraction,
                                                     CFG.val_fraction)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    inputs = _write_inputs(directory)
    output = directory / "out"
    metadata = job.preprocess([str(directory / "a.jsonl"), str(directory / "*.gz")],
                              str(output), CFG)
    return {"dir": directory, "out": output, "metadata": metadata, **inputs}


# ---------------------------------------------------------------- transforms


def _describe(result):
    if isinstance(result, Rejection):
        return os.path.basename(result.source), result.line, result.reason
    return os.path.basename(result.source), result.line, result.id


def test_read_jsonl_plain_and_gzip_with_line_numbers(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"id": "a", "steps": [[1]]}\n\n{"id": "b", "steps": [[2]]}'
                                      '\n{"id": "l", "steps": [[1], [2], [3]]}')
    with gzip.open(tmp_path / "y.jsonl.gz", "wt") as f:
        f.write('oops\n{"id": "c", "steps": [[3]]}\r\n')
    with BeamTestPipeline() as p:
        results = (p | beam.Create([str(tmp_path / "x.jsonl"), str(tmp_path / "y.jsonl.gz")])
                   | transforms.ReadJsonLines(max_length=2) | beam.Map(_describe))
        assert_that(results, equal_to([("x.jsonl", 1, "a"), ("x.jsonl", 3, "b"),
                                       ("x.jsonl", 4, "too_long"),
                                       ("y.jsonl.gz", 1, "unparseable"),
                                       ("y.jsonl.gz", 2, "c")]))


def test_read_jsonl_in_byte_ranges_reads_every_line_once_at_its_offset(tmp_path):
    lines = [b'{"id": "r%d", "steps": [[%d]]}' % (i, i) for i in range(40)]
    lines[7], lines[20] = b"", b"not json"  # a blank line and a rejection
    data = b"".join(line + (b"\r\n" if i % 3 else b"\n") for i, line in enumerate(lines))
    path = tmp_path / "big.jsonl"
    path.write_bytes(data[:-1])  # no final newline
    offsets = [i for i in range(len(data)) if i == 0 or data[i - 1:i] == b"\n"]
    expected = {(offset, line.split(b'"')[3].decode() if b"id" in line else "unparseable")
                for offset, line in zip(offsets, lines, strict=True) if line}
    for split_bytes in (1, 7, 29, 64, 1000):  # ranges inside, at and across line ends
        with BeamTestPipeline() as p:
            results = (p | beam.Create([str(path)])
                       | transforms.ReadJsonLines(split_bytes=split_bytes)
                       | beam.Map(lambda r: (r.line, r.offset,
                                             getattr(r, "id", None) or r.reason)))
            assert_that(results, equal_to(sorted((0, o, what) for o, what in expected)))


def test_readers_survive_bom_long_fields_and_truncated_gzip(tmp_path):
    good = b'{"id": "a", "steps": [[1, 2], [3, 4]]}\n'
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + good)
    (raw / "bom.csv").write_bytes(b"\xef\xbb\xbfid,t,x,y\nc,0,1,1\nc,1,2,2\n"
                                  b"big,0,1," + b"9" * 200_000 + b"\n")
    whole = gzip.compress(b"".join(b'{"id": "z%d", "steps": [[%d, 1]]}\n' % (i, i)
                                   for i in range(2000)))
    (raw / "cut.jsonl.gz").write_bytes(whole[:len(whole) // 2])
    metadata = job.preprocess([str(raw / "*")], str(tmp_path / "out"),
                              PreprocessConfig(train_fraction=1.0, val_fraction=0.0))
    counts = metadata["counts"]
    by_input = {os.path.basename(k): v for k, v in counts["by_input"].items()}
    assert by_input["bom.jsonl"] == {"read": 1, "written": 1, "rejected": 0}
    assert by_input["bom.csv"] == {"read": 2, "written": 1, "rejected": 1}  # big: non_finite
    cut = by_input["cut.jsonl.gz"]
    assert cut["rejected"] == 1 and 0 < cut["written"] < 2000  # the readable lines, then one
    assert counts["read"] == counts["written"] + counts["rejected"]


def _seq(sequence_id, length=2, width=2, source="s", line=1, **kwargs):
    steps = np.full((length, width), float(length), dtype=np.float32)
    return Sequence(id=sequence_id, steps=steps, source=source, line=line, **kwargs)


def _part_records(part) -> list[tuple[str, list]]:
    """(id, steps) of every record of a part file, in file order."""
    return [(r["id"], r["steps"].tolist()) for r in
            (records.decode_sequence(data, len(_seq("x").steps[0]))
             for data in transforms.read_tfrecords(part.path))]


def test_write_check_and_drop_route_every_record(tmp_path):
    # Two bundles' worth of records in one: a mixed-width part (narrow), duplicates in
    # the same part and across sources, and a record-level rejection.
    literal = [
        _seq("ok1"), _seq("ok2", length=3), _seq("narrow", width=1, line=2),
        _seq("dup", source="b", line=1), _seq("dup", source="a", line=5),
        _seq("dup", source="a", line=7), _seq("cut", truncated_from=9),
        Rejection("unparseable", "bad", "s", 4, "{"),
    ]
    parts_dir = str(tmp_path)
    with BeamTestPipeline() as p:
        results = p | beam.Create(literal)
        parts, candidates, record_rejects = results | transforms.WriteCandidates(
            parts_dir, 1.0, 0.0)
        kept, drops, num_features = candidates | transforms.CheckDataset()
        final, dataset_rejects = (parts, drops, num_features) | transforms.DropRejected(
            parts_dir)
        assert_that(kept | "describe_kept" >> beam.Map(lambda c: (c.id, c.source, c.line)),
                    equal_to([("ok1", "s", 1), ("ok2", "s", 1), ("dup", "a", 5),
                              ("cut", "s", 1)]), label="kept")
        reasons = ((record_rejects, dataset_rejects) | beam.Flatten()
                   | beam.Map(lambda r: (r.reason, r.source, r.line)))
        assert_that(reasons, equal_to([("wrong_feature_count", "s", 2),
                                       ("duplicate_id", "b", 1), ("duplicate_id", "a", 7),
                                       ("unparseable", "s", 4)]), label="rejects")
        assert_that(num_features, equal_to([2]), label="num_features")
        written = final | "part_contents" >> beam.FlatMap(_part_records) | beam.Map(
            lambda r: r[0])
        assert_that(written, equal_to(["ok1", "ok2", "dup", "cut"]), label="written")
        assert_that(final | "split_of_parts" >> beam.Map(lambda part: part.split),
                    lambda splits: set(splits) == {"train"}, label="splits")
        stats = final | transforms.ComputeStats()
        assert_that(stats["split_sizes"], equal_to([[("train", (4, 9))]]), label="sizes")


def test_rejected_duplicate_keeps_its_record_and_the_kept_copy_its_steps(tmp_path):
    kept_copy = _seq("d", length=2, source="a", line=1)
    later = Sequence(id="d", steps=np.array([[0.5, 1.5], [2.5, 3.5]], np.float32),
                     label="x", split="test", source="b", line=3)
    with BeamTestPipeline() as p:
        parts, candidates, _ = (p | beam.Create([later, kept_copy])
                                | transforms.WriteCandidates(str(tmp_path), 1.0, 0.0))
        _, drops, num_features = candidates | transforms.CheckDataset()
        final, rejects = (parts, drops, num_features) | transforms.DropRejected(str(tmp_path))
        assert_that(rejects | beam.Map(lambda r: (r.reason, r.record)), equal_to([(
            "duplicate_id", sources.to_json_line(later))]), label="rejects")
        contents = final | beam.FlatMap(_part_records)
        assert_that(contents, equal_to([("d", kept_copy.steps.tolist())]), label="kept")


def _moments_close_to(values):
    def check(actual):
        [moments] = actual
        assert moments["num_timesteps"] == len(values)
        np.testing.assert_allclose(moments["mean"], values.mean(0), rtol=1e-14)
        np.testing.assert_allclose(moments["std"], values.std(0), rtol=1e-14)
        assert moments["min"] == values.min(0).tolist()
        assert moments["max"] == values.max(0).tolist()
    return check


def _written_part(directory, split, sequences):
    writer = transforms.PartWriter(str(directory), split, "none")
    for sequence in sequences:
        writer.write(records.encode_sequence(sequence.id, sequence.steps, sequence.label),
                     sequence)
    return writer.close()


def test_compute_stats_and_count_records_are_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(transforms.PartWriter, "STATS_BATCH", 2)  # several flushes
    train = [_seq("t1", length=2, source="f"), _seq("t2", length=4, source="f", label="x"),
             _seq("t3", length=1, source="f")]
    test = [_seq("e1", length=3, label="y")]
    parts = [_written_part(tmp_path, "train", train[:2]), _written_part(tmp_path, "train",
                                                                         train[2:]),
             _written_part(tmp_path, "test", test)]
    train_steps = np.concatenate([s.steps for s in train]).astype(np.float64)
    rejection = Rejection("empty", "no steps", "f", 9, "{}")
    written = [transforms.Candidate(s.id, s.source, s.line, s.label, None, 2,
                                    s.id == "t3", "p", 0) for s in train + test]
    with BeamTestPipeline() as p:
        stats = p | "parts" >> beam.Create(parts) | transforms.ComputeStats()
        assert_that(stats["split_sizes"], equal_to([[("test", (1, 3)), ("train", (3, 7))]]),
                    label="split_sizes")
        assert_that(stats["length_counts"], equal_to([[[1, 1], [2, 1], [3, 1], [4, 1]]]),
                    label="length_counts")
        assert_that(stats["label_counts"], equal_to([[["x", 1], ["y", 1]]]),
                    label="label_counts")
        assert_that(stats["feature_moments"], _moments_close_to(train_steps),
                    label="feature_moments")
        read = p | "read" >> beam.Create([*train, *test, rejection])
        rejects = p | "rejects" >> beam.Create([rejection])
        written_pc = p | "written" >> beam.Create(written)
        counts = (read, written_pc, rejects) | transforms.CountRecords()
        assert_that(counts, equal_to([[["read", "f", "", 4], ["read", "s", "", 1],
                                       ["rejected", "f", "empty", 1],
                                       ["truncated", "f", "", 1],
                                       ["written", "f", "", 3], ["written", "s", "", 1]]]),
                    label="counts")


def test_write_candidates_rolls_parts_over_at_the_target_size(tmp_path, monkeypatch):
    monkeypatch.setattr(transforms, "TARGET_SHARD_BYTES", 200)
    sequences = [_seq(f"t{i}", length=4) for i in range(20)]
    with BeamTestPipeline() as p:
        parts, _, _ = (p | beam.Create(sequences)
                       | transforms.WriteCandidates(str(tmp_path), 1.0, 0.0))
        sizes = parts | beam.Map(lambda part: (part.num_records, part.num_bytes))
        assert_that(sizes, lambda rows: (sum(n for n, _ in rows) == 20 and len(rows) > 2
                                         and all(size < 200 + 120 for _, size in rows)))
    assert len(list(tmp_path.iterdir())) > 2


def test_reshard_writes_exactly_num_shards_in_hashed_id_order(tmp_path):
    parts = [_written_part(tmp_path / "in", "train", [_seq(f"t{i}") for i in range(i0, i0 + 5)])
             for i0 in (0, 5)] + [_written_part(tmp_path / "in", "val", [_seq("v0")])]
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        with BeamTestPipeline() as p:
            shards = (p | beam.Create(parts[::-1] if run == "b" else parts)
                      | transforms.Reshard(str(tmp_path / run), num_shards=3))
            assert_that(shards | beam.Map(lambda part: (part.split, part.order)),
                        equal_to([("train", (0,)), ("train", (1,)), ("train", (2,)),
                                  ("val", (0,))]))
    for path in (tmp_path / "a").iterdir():
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes()
        ids = [r[0] for r in _part_records(transforms.ShardPart("train", str(path), 0, 0))]
        assert ids == sorted(ids, key=lambda i: (transforms.id_hash(i), i))


def test_num_shards_for():
    assert transforms.num_shards_for(0, 0) == 0
    assert transforms.num_shards_for(1, 10) == 1
    assert transforms.num_shards_for(1000, 10) == transforms.MIN_SHARDS
    assert transforms.num_shards_for(10**6, 10 * transforms.TARGET_SHARD_BYTES + 1) == 11
    assert transforms.num_shards_for(1000, 10, configured=8) == 8
    assert transforms.num_shards_for(3, 10, configured=8) == 3


def test_length_statistics_match_numpy():
    lengths = np.random.default_rng(0).integers(1, 300, size=997)
    counts = dict(zip(*np.unique(lengths, return_counts=True), strict=True))
    for q in transforms.LENGTH_QUANTILES:
        assert transforms.exact_quantile(counts, q) == pytest.approx(np.quantile(lengths, q))
    histogram = transforms.length_histogram(counts)
    expected, _ = np.histogram(lengths, bins=histogram["edges"])
    assert histogram["counts"] == expected.tolist()
    assert sum(histogram["counts"]) == 997 and histogram["edges"][-1] == lengths.max() + 1


def test_merge_moments_is_numpy_on_the_concatenation():
    rng = np.random.default_rng(1)
    chunks = [rng.normal(1e6, 1.0, size=(n, 3)) for n in (1, 7, 50)]
    merged = None
    for chunk in chunks:
        merged = transforms.merge_moments(merged, transforms.moments_of(chunk))
    values = np.concatenate(chunks)
    n, mean, m2, low, high = merged
    assert n == 58
    np.testing.assert_allclose(mean, values.mean(0), rtol=1e-14)
    np.testing.assert_allclose(np.sqrt(m2 / n), values.std(0), rtol=1e-9)
    np.testing.assert_array_equal(low, values.min(0))
    np.testing.assert_array_equal(high, values.max(0))


# ---------------------------------------------------------------- end to end


def test_counts_nothing_lost(dataset):
    counts = dataset["metadata"]["counts"]
    num_bad = len(BAD_A) + len(BAD_B)
    assert (counts["read"], counts["written"], counts["rejected"]) == (24 + num_bad, 24, num_bad)
    expected_by_reason = dict.fromkeys(sources.REASONS, 0)
    for _, reason in BAD_A + BAD_B:
        expected_by_reason[reason] += 1
    assert counts["rejected_by_reason"] == expected_by_reason
    a, b = dataset["files"]
    assert counts["by_input"] == {
        a: {"read": 16 + len(BAD_A), "written": 16, "rejected": len(BAD_A)},
        b: {"read": 8 + len(BAD_B), "written": 8, "rejected": len(BAD_B)}}


def test_rejects_file_names_each_record_with_its_reason(dataset):
    lines = [json.loads(line) for path in (dataset["out"] / "rejects").glob("*.jsonl")
             for line in path.read_text().splitlines()]
    assert {(os.path.basename(r["source"]), r["line"], r["reason"]) for r in lines} == (
        dataset["rejects"])
    assert len(lines) == len(dataset["rejects"])
    originals = {text for text, _ in BAD_A + BAD_B}
    dataset_level = {"wrong_feature_count", "duplicate_id"}
    assert all(r["record"] in originals for r in lines if r["reason"] not in dataset_level)


def test_shards_hold_exactly_the_valid_records(dataset):
    metadata, out = dataset["metadata"], dataset["out"]
    seen = {}
    for split in records.SPLITS:
        info = metadata["splits"][split]
        assert sorted(p.name for p in out.glob(f"{records.shard_prefix(split)}-*")) == (
            info["files"])
        assert info["num_shards"] == len(info["files"])
        decoded = _read_split(out, metadata, split)
        assert info["num_records"] == len(decoded)
        assert info["num_timesteps"] == sum(len(r["steps"]) for r in decoded.values())
        seen.update({i: (split, r) for i, r in decoded.items()})
    good = {r["id"]: r for r in dataset["good"]}
    assert set(seen) == set(good)
    for sequence_id, (split, record) in seen.items():
        expected = good[sequence_id]
        assert split == _expected_split(expected)
        assert record["label"] == expected.get("label", "")
        np.testing.assert_array_equal(record["steps"],
                                      np.array(expected["steps"], dtype=np.float32))


def test_metadata_statistics_exact(dataset):
    metadata = dataset["metadata"]
    assert metadata == records.read_metadata(dataset["out"])
    good = dataset["good"]
    assert (metadata["schema_version"], metadata["num_features"]) == (records.SCHEMA_VERSION, 3)
    assert metadata["feature_names"] == ["f0", "f1", "f2"]
    assert metadata["labels"] == ["c1", "c2"]
    train = [np.array(r["steps"], np.float32) for r in good if _expected_split(r) == "train"]
    values = np.concatenate(train).astype(np.float64)
    stats = metadata["feature_stats"]
    assert stats["num_timesteps"] == len(values)
    np.testing.assert_allclose(stats["mean"], values.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["std"], values.std(0), rtol=1e-12)
    assert stats["min"] == values.min(0).tolist() and stats["max"] == values.max(0).tolist()
    lengths = np.array([len(r["steps"]) for r in good])
    length_stats = metadata["length_stats"]
    assert (length_stats["min"], length_stats["max"]) == (2, 6)
    assert length_stats["mean"] == pytest.approx(lengths.mean())
    assert length_stats["quantiles"] == {str(q): pytest.approx(np.quantile(lengths, q))
                                         for q in transforms.LENGTH_QUANTILES}
    assert sum(length_stats["histogram"]["counts"]) == 24
    # The suggested boundaries (3 buckets) pad the least of all choices ending at the max.
    def padded(boundaries):
        return sum(min(b for b in boundaries if b >= n) for n in lengths)

    choices = [[*c, 6] for k in range(3) for c in itertools.combinations(range(2, 6), k)]
    assert padded(metadata["bucket_boundaries"]) == min(padded(c) for c in choices)
    assert len(metadata["bucket_boundaries"]) <= 3
    assert metadata["bucket_boundaries"][-1] == 6
    assert metadata["config"]["max_length"] == 6
    assert metadata["inputs"][1].endswith("*.gz")
    assert metadata["tfds_readable"] is True
    assert not list(dataset["dir"].glob(".out.tmp-*"))  # staging directory gone


def test_tfds_builder_loads_the_splits(dataset):
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(dataset["out"]))
    good = {r["id"]: r for r in dataset["good"]}
    for split in records.SPLITS:
        examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
        assert len(examples) == dataset["metadata"]["splits"][split]["num_records"]
        for example in examples:
            expected = good[example["id"].decode()]
            assert example["length"] == len(expected["steps"])
            np.testing.assert_array_equal(example["steps"],
                                          np.array(expected["steps"], np.float32))


def test_grown_data_keeps_old_splits_via_cli(dataset, tmp_path, capsys):
    new = [{"id": f"n{i:02d}", "steps": _steps(100 + i, 3)} for i in range(12)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in new))
    config = tmp_path / "cfg.yaml"
    config.write_text("preprocess:\n  min_length: 2\n  max_length: 6\n  num_buckets: 3\n"
                      "  train_fraction: 0.6\n  val_fraction: 0.2\n")
    output = tmp_path / "grown"
    metadata = job.run([*(f"--input={f}" for f in dataset["files"]),
                        f"--input={tmp_path / 'c.jsonl'}", f"--output={output}",
                        f"--config={config}", "--set", "compression=gzip",
                        "--set", "preprocess.too_long=truncate"])
    assert "read 48 = written 37 + rejected 11" in capsys.readouterr().out
    assert metadata["counts"]["truncated"] == 1
    assert metadata["tfds_readable"] is False and "tfds_note" in metadata
    assert not (output / "dataset_info.json").exists()
    before = {i: split for split in records.SPLITS
              for i in _read_split(dataset["out"], dataset["metadata"], split)}
    after = {i: (split, r) for split in records.SPLITS
             for i, r in _read_split(output, metadata, split).items()}
    assert set(after) == set(before) | {r["id"] for r in new} | {"lg"}
    assert all(after[i][0] == split for i, split in before.items())
    assert after["lg"][1]["steps"].shape == (6, 3)


def test_refuses_non_empty_output_and_missing_inputs(dataset, tmp_path):
    output = tmp_path / "taken"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(job.OutputExistsError, match="not empty"):
        job.preprocess(dataset["files"], str(output), CFG)
    assert [p.name for p in output.iterdir()] == ["keep.txt"]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        job.preprocess([str(tmp_path / "nothing-*.jsonl")], str(tmp_path / "new"), CFG)
    assert not (tmp_path / "new").exists()


def test_failed_run_leaves_no_dataset(dataset, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(job, "write_tfds_metadata", fail)
    output = tmp_path / "out"
    output.mkdir()  # an existing empty directory is accepted, and left as it was
    with pytest.raises(RuntimeError, match="disk full"):
        job.preprocess(dataset["files"], str(output), CFG)
    assert list(tmp_path.iterdir()) == [output] and not any(output.iterdir())


def _all_records(directory: Path, metadata: dict) -> dict[str, list]:
    """{split: [(id, label, steps as a list)] sorted by id}."""
    return {split: sorted((i, r["label"], r["steps"].tolist())
                          for i, r in _read_split(directory, metadata, split).items())
            for split in records.SPLITS}


@pytest.mark.slow
def test_multi_process_direct_runner_writes_the_same_dataset(dataset, tmp_path):
    output = tmp_path / "mp"
    metadata = job.preprocess(
        dataset["files"], str(output), CFG,
        ["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    reference = dataset["metadata"]
    assert metadata["counts"] == reference["counts"]
    for key in ("length_stats", "bucket_boundaries", "label_counts", "num_features"):
        assert metadata[key] == reference[key]
    for key, values in metadata["feature_stats"].items():
        np.testing.assert_allclose(values, reference["feature_stats"][key], rtol=1e-12)
    assert [metadata["splits"][s]["num_records"] for s in records.SPLITS] == [
        reference["splits"][s]["num_records"] for s in records.SPLITS]
    assert _all_records(output, metadata) == _all_records(dataset["out"], reference)


@pytest.mark.slow
def test_num_shards_gives_byte_identical_shards_on_any_runner(dataset, tmp_path):
    cfg = dataclasses.replace(CFG, num_shards=3)
    single = job.preprocess(dataset["files"], str(tmp_path / "one"), cfg)
    multi = job.preprocess(dataset["files"], str(tmp_path / "mp"), cfg,
                           ["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert single["splits"] == multi["splits"]
    assert single["splits"]["train"]["num_shards"] == 3
    for split in records.SPLITS:
        for name in single["splits"][split]["files"]:
            assert (tmp_path / "one" / name).read_bytes() == (
                tmp_path / "mp" / name).read_bytes()
    assert _all_records(tmp_path / "one", single) == _all_records(dataset["out"],
                                                                  dataset["metadata"])


def test_big_file_read_in_byte_ranges_gives_the_same_dataset(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(transforms, "SPLIT_BYTES", 300)  # a.jsonl (plain) is split
    metadata = job.preprocess(dataset["files"], str(tmp_path / "out"), CFG,
                              ["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    reference = dataset["metadata"]
    assert metadata["counts"] == reference["counts"]
    assert _all_records(tmp_path / "out", metadata) == _all_records(dataset["out"], reference)
    a_text = Path(dataset["files"][0]).read_bytes()
    rejects = [json.loads(line) for path in (tmp_path / "out" / "rejects").glob("*.jsonl")
               for line in path.read_text().splitlines()]
    a_rejects = [r for r in rejects if r["source"].endswith("a.jsonl")]
    assert len(a_rejects) == len(BAD_A)
    for rejection in a_rejects:  # located by byte offset: the record starts there
        assert rejection["line"] == 0
        assert a_text[rejection["offset"]:].startswith(rejection["record"].encode())
    duplicate = next(r for r in rejects if r["reason"] == "duplicate_id")
    assert duplicate["message"].startswith("id 'g03' is already kept from ")
    assert "a.jsonl@" in duplicate["message"] and duplicate["offset"] is None


def test_failure_inside_the_pipeline_leaves_no_dataset(dataset, tmp_path, monkeypatch):
    encode = records.encode_sequence

    def fail_on_g05(sequence_id, *args):
        if sequence_id == "g05":
            raise OSError("disk full")
        return encode(sequence_id, *args)

    monkeypatch.setattr(records, "encode_sequence", fail_on_g05)
    with pytest.raises(Exception, match="disk full"):
        job.preprocess(dataset["files"], str(tmp_path / "out"), CFG)
    assert list(tmp_path.iterdir()) == []  # no output, no staging directory


def test_csv_long_format_end_to_end(tmp_path):
    header = "id,t,speed,temp,label\n"
    (tmp_path / "p1.csv").write_text(
        header + "s1,2,5,6,up\ns1,0,1,2,up\n,0,1,1,\ns2,0,1,x,\ns2,1,1,1,\n"
        "s3,0,1,1,\ns3,0,2,2,\n")
    with gzip.open(tmp_path / "p2.csv.gz", "wt") as f:
        f.write(header + "s1,1,3,4,up\n\ns4,0,7,8,down\ns4,1,9,10,down\n")
    (tmp_path / "j.jsonl").write_text('{"id": "s5", "steps": [[0.5, 1.5], [2.5, 3.5]]}\n')
    cfg = PreprocessConfig(min_length=2, train_fraction=1.0, val_fraction=0.0)
    metadata = job.preprocess([str(tmp_path / "p*"), str(tmp_path / "j.jsonl")],
                              str(tmp_path / "out"), cfg)
    counts = metadata["counts"]
    # records: s1 (3 rows over 2 files), s2, s3, s4, s5 and the id-less row
    assert (counts["read"], counts["written"], counts["rejected"]) == (6, 3, 3)
    assert {k: v for k, v in counts["rejected_by_reason"].items() if v} == {
        "missing_id": 1, "non_numeric": 1, "duplicate_time": 1}
    assert metadata["feature_names"] == ["speed", "temp"]
    assert metadata["labels"] == ["down", "up"]
    decoded = _read_split(tmp_path / "out", metadata, "train")
    np.testing.assert_array_equal(decoded["s1"]["steps"],
                                  np.array([[1, 2], [3, 4], [5, 6]], np.float32))
    assert decoded["s1"]["label"] == "up"
    np.testing.assert_array_equal(decoded["s4"]["steps"], [[7, 8], [9, 10]])
    np.testing.assert_array_equal(decoded["s5"]["steps"], [[0.5, 1.5], [2.5, 3.5]])


def test_all_rejected_gives_empty_splits_and_no_tfds(tmp_path):
    (tmp_path / "bad.jsonl").write_text('nope\n{"id": "x", "steps": []}\n')
    metadata = job.preprocess([str(tmp_path / "bad.jsonl")], str(tmp_path / "out"), CFG)
    assert (metadata["counts"]["read"], metadata["counts"]["rejected"]) == (2, 2)
    assert metadata["splits"] == {split: {"num_records": 0, "num_timesteps": 0,
                                          "num_shards": 0, "files": []}
                                  for split in records.SPLITS}
    assert metadata["feature_stats"]["num_timesteps"] == 0
    assert metadata["bucket_boundaries"] == [] and metadata["tfds_readable"] is False
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metadata.json", "rejects"]
    assert "WARNING: no record was written" in job.format_summary(metadata, "out", 1.0)


def _write_parquet(path, rows, row_group_size):
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {name: [row[i] for row in rows] for i, name in enumerate(
        ["id", "t", "speed", "temp", "label"])}
    table = pa.table({"id": pa.array(columns["id"], pa.string()),
                      "t": pa.array(columns["t"], pa.int64()),
                      "speed": pa.array(columns["speed"], pa.float32()),
                      "temp": pa.array(columns["temp"], pa.float64()),
                      "label": pa.array(columns["label"], pa.string())})
    pq.write_table(table, path, row_group_size=row_group_size)


def test_parquet_long_format_end_to_end_with_row_numbers(tmp_path):
    # q1 has 4 row groups of 2 rows: row numbers must continue across groups.
    _write_parquet(tmp_path / "q1.parquet", [
        ("s1", 2, 5.5, 6.0, "up"), ("s1", 0, 1.0, 2.0, "up"), (None, 0, 1.0, 1.0, None),
        ("s2", 0, 1.0, None, None), ("s2", 1, 1.0, 1.0, None), ("s3", 0, 1.0, 1.0, None),
        ("s3", 0, 2.0, 2.0, None), ("s6", 0, 1.0, float("inf"), None)], row_group_size=2)
    _write_parquet(tmp_path / "q2.parquet", [("s1", 1, 3.0, 4.0, "up"),
                                             ("s4", 0, 7.0, 8.0, "down"),
                                             ("s4", 1, 9.0, 10.0, "down")], row_group_size=10)
    (tmp_path / "q3.parquet").write_bytes(b"not parquet at all")
    cfg = PreprocessConfig(min_length=2, train_fraction=1.0, val_fraction=0.0)
    metadata = job.preprocess([str(tmp_path / "q*.parquet")], str(tmp_path / "out"), cfg)
    counts = metadata["counts"]
    # records: s1 (3 rows over 2 files), s2, s3, s4, s6, the id-less row, the broken file
    assert (counts["read"], counts["written"], counts["rejected"]) == (7, 2, 5)
    rejects = sorted((os.path.basename(r["source"]), r["line"], r["reason"])
                     for path in (tmp_path / "out" / "rejects").glob("*.jsonl")
                     for r in map(json.loads, path.read_text().splitlines()))
    assert rejects == [("q1.parquet", 3, "missing_id"), ("q1.parquet", 4, "non_numeric"),
                       ("q1.parquet", 6, "duplicate_time"), ("q1.parquet", 8, "non_finite"),
                       ("q3.parquet", 0, "unparseable")]
    assert metadata["feature_names"] == ["speed", "temp"]
    decoded = _read_split(tmp_path / "out", metadata, "train")
    np.testing.assert_array_equal(decoded["s1"]["steps"],
                                  np.array([[1, 2], [3, 4], [5.5, 6]], np.float32))
    assert (decoded["s1"]["label"], decoded["s4"]["label"]) == ("up", "down")
    np.testing.assert_array_equal(decoded["s4"]["steps"], [[7, 8], [9, 10]])


def test_part_writer_keeps_no_statistics_for_mixed_widths(tmp_path):
    one_width = _written_part(tmp_path, "train", [_seq("a"), _seq("b")])
    mixed = _written_part(tmp_path, "train", [_seq("a"), _seq("n", width=1), _seq("b")])
    assert one_width.stats is not None and mixed.stats is None
    assert (mixed.num_records, len(list(transforms.read_tfrecords(mixed.path)))) == (3, 3)


def test_staging_directories_of_killed_runs_are_removed(tmp_path):
    import socket
    import subprocess
    import sys

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead, host = int(finished.stdout), socket.gethostname()
    output = tmp_path / "out"
    leftovers = {
        "killed": tmp_path / f".out.tmp-{dead}@{host}-ab12cd34",
        "alive": tmp_path / f".out.tmp-{os.getpid()}@{host}-ef56gh78",
        "other host": tmp_path / f".out.tmp-{dead}@not-{host}-ij90kl12",
        "old format": tmp_path / ".out.tmp-mn34op56",
        "other output": tmp_path / f".output.tmp-{dead}@{host}-qr78st90",
    }
    for leftover in leftovers.values():
        (leftover / "_work").mkdir(parents=True)
    assert job.remove_stale_staging(output) == [leftovers["killed"]]
    assert not leftovers["killed"].exists()
    assert all(path.is_dir() for name, path in leftovers.items() if name != "killed")


def test_the_job_itself_refuses_an_output_among_its_inputs(tmp_path):
    from seqpipe.paths import PathError

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_text('{"id": "a", "steps": [[1.0]]}\n')
    before = sorted(p.name for p in raw.iterdir())
    for output in (raw / "a.jsonl", raw, raw / "sub" / "data"):
        with pytest.raises(PathError, match="choose an output outside the inputs"):
            job.preprocess([str(raw)], str(output), PreprocessConfig())
    assert sorted(p.name for p in raw.iterdir()) == before
