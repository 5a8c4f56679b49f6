"""beam_jobs.read: each reader on literal files, then each format through the whole job."""

import gzip
import os

import apache_beam as beam
import numpy as np
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from beam_helpers import read_rejects, read_split

from beam_jobs import preprocess as job
from beam_jobs import read
from seqpipe.config import PreprocessConfig
from seqpipe.dataset.sources import Rejection


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
                   | read.ReadJsonLines(max_length=2) | beam.Map(_describe))
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
                       | read.ReadJsonLines(split_bytes=split_bytes)
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
    counts = metadata.counts
    by_input = {os.path.basename(k): v for k, v in counts.by_input.items()}
    assert by_input["bom.jsonl"] == {"read": 1, "written": 1, "rejected": 0}
    assert by_input["bom.csv"] == {"read": 2, "written": 1, "rejected": 1}  # big: non_finite
    cut = by_input["cut.jsonl.gz"]
    assert cut["rejected"] == 1 and 0 < cut["written"] < 2000  # the readable lines, then one
    assert counts.read == counts.written + counts.rejected


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
    counts = metadata.counts
    # records: s1 (3 rows over 2 files), s2, s3, s4, s5 and the id-less row
    assert (counts.read, counts.written, counts.rejected) == (6, 3, 3)
    assert {k: v for k, v in counts.rejected_by_reason.items() if v} == {
        "missing_id": 1, "non_numeric": 1, "duplicate_time": 1}
    assert metadata.feature_names == ("speed", "temp")
    assert metadata.labels == ("down", "up")
    decoded = read_split(tmp_path / "out", metadata, "train")
    np.testing.assert_array_equal(decoded["s1"]["steps"],
                                  np.array([[1, 2], [3, 4], [5, 6]], np.float32))
    assert decoded["s1"]["label"] == "up"
    np.testing.assert_array_equal(decoded["s4"]["steps"], [[7, 8], [9, 10]])
    np.testing.assert_array_equal(decoded["s5"]["steps"], [[0.5, 1.5], [2.5, 3.5]])


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
    cfg = PreprocessConfig(min_length=2, train_fraction=1.0, val_fraction=0.0,
                           missing="reject")  # s2's null is a reject (tests/test_missing_values.py)
    metadata = job.preprocess([str(tmp_path / "q*.parquet")], str(tmp_path / "out"), cfg)
    counts = metadata.counts
    # records: s1 (3 rows over 2 files), s2, s3, s4, s6, the id-less row, the broken file
    assert (counts.read, counts.written, counts.rejected) == (7, 2, 5)
    rejects = sorted((os.path.basename(r["source"]), r["line"], r["reason"])
                     for r in read_rejects(tmp_path / "out"))
    assert rejects == [("q1.parquet", 3, "missing_id"), ("q1.parquet", 4, "non_numeric"),
                       ("q1.parquet", 6, "duplicate_time"), ("q1.parquet", 8, "non_finite"),
                       ("q3.parquet", 0, "unparseable")]
    assert metadata.feature_names == ("speed", "temp")
    decoded = read_split(tmp_path / "out", metadata, "train")
    np.testing.assert_array_equal(decoded["s1"]["steps"],
                                  np.array([[1, 2], [3, 4], [5.5, 6]], np.float32))
    assert (decoded["s1"]["label"], decoded["s4"]["label"]) == ("up", "down")
    np.testing.assert_array_equal(decoded["s4"]["steps"], [[7, 8], [9, 10]])
