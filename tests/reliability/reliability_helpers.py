"""Helpers of the reliability suite: CLI subprocesses, a hostile raw corpus, datasets.

`make_hostile_corpus` writes raw files full of bad input of every kind next to
good records, and returns what the job must do with each of them: which
records are good (and their exact float32 steps), how many records each file
holds, and which JSONL lines are bad (with the reason when it is certain).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from seqpipe.dataset.metadata import DatasetMetadata

REPO = Path(__file__).resolve().parents[2]
F = 3  # the corpus' dominant feature count


def cli_env() -> dict[str, str]:
    """The environment of a `python -m seqpipe.commands.cli` subprocess on the source tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_cli(*args: str, cwd: str | Path | None = None, timeout: float = 300
            ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqpipe", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=cli_env())


def start_cli(*args: str, log: Path, cwd: str | Path | None = None) -> subprocess.Popen:
    handle = open(log, "ab")  # noqa: SIM115 - closed by the caller through the process
    return subprocess.Popen([sys.executable, "-m", "seqpipe", *map(str, args)],
                            stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, env=cli_env())


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Non-zero exit, and stderr is exactly one non-empty line naming `fragments`.

    Nothing else may be on stderr: no traceback, and no log line of TensorFlow,
    absl or Beam.
    """
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and proc.stderr.endswith("\n") and lines[0].strip(), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ---------------------------------------------------------------- the hostile corpus


@dataclasses.dataclass
class Corpus:
    root: Path
    files: list[str] = dataclasses.field(default_factory=list)
    good: dict[str, tuple[np.ndarray, str]] = dataclasses.field(default_factory=dict)
    records_per_file: collections.Counter = dataclasses.field(
        default_factory=collections.Counter)
    # JSONL lines that must be rejected: (file, line) -> reason or None (any reason)
    bad_lines: dict[tuple[str, int], str | None] = dataclasses.field(default_factory=dict)
    original: dict[tuple[str, int], bytes] = dataclasses.field(default_factory=dict)
    kinds: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def num_records(self) -> int:
        return sum(self.records_per_file.values())


def _steps(rng: random.Random, length: int, width: int = F) -> list[list[float]]:
    return [[rng.choice([rng.uniform(-5, 5), rng.gauss(0, 1e3), 0.0, -0.0,
                         float(rng.randint(-9, 9))]) for _ in range(width)]
            for _ in range(length)]


def _float32(steps: Any) -> np.ndarray:
    return np.asarray(steps, dtype=np.float64).astype(np.float32)


class _JsonlFile:
    """Writes one JSONL file line by line, recording what each line must become."""

    def __init__(self, corpus: Corpus, name: str, newline: bytes = b"\n",
                 prefix: bytes = b""):
        self.corpus, self.path = corpus, str(corpus.root / name)
        self.newline, self.chunks, self.line = newline, [prefix], 0

    def raw(self, data: bytes, kind: str, reason: str | None = "?") -> None:
        """One line; reason None: any rejection; "?": a blank (not a record)."""
        assert b"\n" not in data
        self.line += 1
        self.chunks.append(data + self.newline)
        if not data.strip():
            return
        self.corpus.records_per_file[self.path] += 1
        self.corpus.kinds[kind] += 1
        self.corpus.original[(self.path, self.line)] = (
            self.chunks[0] + data if self.line == 1 else data)
        self.corpus.bad_lines[(self.path, self.line)] = None if reason == "?" else reason

    def good(self, obj: dict[str, Any], kind: str = "good") -> None:
        self.line += 1
        data = json.dumps(obj, ensure_ascii=False).encode()
        self.chunks.append(data + self.newline)
        self.corpus.records_per_file[self.path] += 1
        self.corpus.kinds[kind] += 1
        key = str(obj["id"])
        assert key not in self.corpus.good
        label = obj.get("label")
        self.corpus.good[key] = (_float32(obj["steps"]), "" if label is None else str(label))

    def bad(self, obj: Any, reason: str | None, kind: str) -> None:
        text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
        self.raw(text.encode("utf-8"), kind, reason)

    def close(self, gzipped: bool = False) -> None:
        data = b"".join(self.chunks)
        if gzipped:
            data = gzip.compress(data, mtime=0)
        Path(self.path).write_bytes(data)
        self.corpus.files.append(self.path)


NAN_SPELLINGS_JSON = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1E400",
                      "3.5e38", "-3.41e38"]
NAN_SPELLINGS_TEXT = ["NaN", "nan", "-nan", "+nan", "inf", "-inf", "+inf", "Infinity",
                      "-Infinity", "INF", "1e999", "-1E400", "3.5e38"]
NOT_NUMBERS = ['"1.0"', '"nan"', '"NaN"', '"Infinity"', "null", "true", "false", "{}",
               '"\\u0000"']


def make_hostile_corpus(root: Path, seed: int = 0, max_length: int = 50) -> Corpus:
    """Writes the corpus under `root` (which must exist) and returns its expectations."""
    rng = random.Random(seed)
    corpus = Corpus(root=root)
    n = iter(range(10**6))

    def gid(prefix="g"):
        return f"{prefix}{next(n)}"

    # -- a_main.jsonl: good records interleaved with every kind of bad line
    f = _JsonlFile(corpus, "a_main.jsonl")
    for _ in range(25):
        f.good({"id": gid(), "steps": _steps(rng, rng.randint(1, 20)),
                "label": rng.choice(["walk", "run", 7, None, ""])})
        kind = rng.randrange(3)
        if kind == 0:
            f.raw(bytes(rng.randrange(256) for _ in range(rng.randint(1, 60))).replace(
                b"\n", b"") or b"\x00", "random_bytes")
        elif kind == 1:
            text = json.dumps({"id": gid("t"), "steps": _steps(rng, 3)})
            f.raw(text[:rng.randint(1, len(text) - 1)].encode(), "truncated_json",
                  "unparseable")
        else:
            f.raw(b"   \t ", "blank")
    f.good({"id": 424242, "steps": [[1, 2, 3]], "label": 5}, "integer_id_label")
    f.good({"id": gid(), "steps": [[-0.0, 1e-45, 3.4e38], [-3.4e38, 1e-400, 0]]},
           "float32_extremes")
    f.good({"id": gid(), "steps": [[0.1, 0.2, 0.3]] * max_length, "split": "val"},
           "max_length_exactly")
    f.good({"id": "x" * 200_000, "steps": [[1.0, 2.0, 3.0]]}, "huge_string_id")
    f.good({"id": "ünï-cødé ✓ 🙂", "steps": [[1.0, 2.0, 3.0]], "label": "日本"},
           "unicode_id_label")
    for spelling in NAN_SPELLINGS_JSON:
        f.bad(f'{{"id": "{gid("n")}", "steps": [[1.0, {spelling}, 2.0]]}}', "non_finite",
              "nan_inf_json")
    for spelling in NOT_NUMBERS:
        f.bad(f'{{"id": "{gid("s")}", "steps": [[1.0, {spelling}, 2.0]]}}', "non_numeric",
              "non_numeric")
    f.bad('{"id": "neg-nan", "steps": [[-NaN, 1, 2]]}', "unparseable", "nan_inf_json")
    f.bad({"id": gid("h"), "steps": [[1.0, "y" * 100_000, 2.0]]}, "non_numeric",
          "huge_string_value")
    f.bad('{"id": "hugefloat", "steps": [[1.0, ' + "9" * 300 + '.0, 2.0]]}',
          "non_finite", "huge_number")
    depth = 200
    f.bad('{"id": "deep", "steps": ' + "[" * depth + "1" + "]" * depth + "}",
          "non_numeric", "deeply_nested")
    f.bad('{"id": ' + '{"a": ' * depth + "1" + "}" * depth + ', "steps": [[1, 2, 3]]}',
          "missing_id", "deeply_nested")
    wrong_types = [
        ({"id": gid("w"), "steps": {}}, "unparseable"),
        ({"id": gid("w"), "steps": "1,2,3"}, "unparseable"),
        ({"id": gid("w"), "steps": 5}, "unparseable"),
        ({"id": gid("w"), "steps": None}, "unparseable"),
        ({"id": gid("w")}, "unparseable"),
        ({"id": gid("w"), "steps": [1, 2, 3]}, "wrong_feature_count"),
        ({"id": gid("w"), "steps": [[]]}, "wrong_feature_count"),
        ({"id": gid("w"), "steps": []}, "empty"),
        ({"id": 1.5, "steps": [[1, 2, 3]]}, "missing_id"),
        ({"id": True, "steps": [[1, 2, 3]]}, "missing_id"),
        ({"id": [], "steps": [[1, 2, 3]]}, "missing_id"),
        ({"id": "", "steps": [[1, 2, 3]]}, "missing_id"),
        ({"id": "   ", "steps": [[1, 2, 3]]}, "missing_id"),
        ({"steps": [[1, 2, 3]]}, "missing_id"),
        ({"id": gid("w"), "steps": [[1, 2, 3]], "label": [1]}, "bad_label"),
        ({"id": gid("w"), "steps": [[1, 2, 3]], "label": 1.5}, "bad_label"),
        ({"id": gid("w"), "steps": [[1, 2, 3]], "label": True}, "bad_label"),
        ({"id": gid("w"), "steps": [[1, 2, 3]], "split": "TRAIN"}, "bad_split"),
        ({"id": gid("w"), "steps": [[1, 2, 3]], "split": 1}, "bad_split"),
        ({"id": gid("w"), "steps": [[1, 2, 3]], "split": ["train"]}, "bad_split"),
        ([{"id": "x", "steps": [[1, 2, 3]]}], "unparseable"),
        ("just a string", "unparseable"),
        (12, "unparseable"),
        (None, "unparseable"),
    ]
    for obj, reason in wrong_types:
        f.bad(json.dumps(obj), reason, "wrong_type")
    mixed = [
        ({"id": gid("m"), "steps": [[1, 2, 3], [1, 2]]}, "wrong_feature_count"),
        ({"id": gid("m"), "steps": [[1, 2, 3], 4]}, "wrong_feature_count"),
        ({"id": gid("m"), "steps": [[1, 2]] * 3}, "wrong_feature_count"),  # dataset level
        ({"id": gid("m"), "steps": [[1, 2, 3, 4, 5]]}, "wrong_feature_count"),
        ({"id": gid("m"), "steps": [[1, 2, 3]] * (max_length + 1)}, "too_long"),
    ]
    for obj, reason in mixed:
        f.bad(obj, reason, "mixed_dimensionality" if reason != "too_long" else "too_long")
    f.raw(b"{}", "empty_object", "missing_id")
    f.good({"id": "dup-in-file", "steps": [[1, 2, 3]]}, "duplicate_id_same_file")
    f.raw(b'{"id": "dup-in-file", "steps": [[4, 5, 6]]}', "duplicate_id_same_file",
          "duplicate_id")
    f.raw(b'{"id": "dup-bad-first", "steps": [["bad", 2, 3]]}', "duplicate_id_bad_first",
          "non_numeric")
    f.good({"id": "dup-across", "steps": [[7.0, 8.0, 9.0]]}, "duplicate_id_across_files")
    f.close()

    # -- an empty file and a whitespace-only file
    for name, data in (("b_empty.jsonl", b""), ("b_blank.jsonl", b"\n \n\t\r\n\n")):
        (root / name).write_bytes(data)
        corpus.files.append(str(root / name))
        corpus.kinds["empty_file"] += 1

    # -- CRLF line endings, a UTF-8 BOM before a (bad) first line
    g = _JsonlFile(corpus, "c_crlf.jsonl", newline=b"\r\n", prefix=b"\xef\xbb\xbf")
    g.raw(b"not json at all", "bom_first_line", "unparseable")
    for _ in range(6):
        g.good({"id": gid(), "steps": _steps(rng, rng.randint(1, 8)), "split": "test"},
               "crlf")
    g.raw(b"", "blank")
    g.close()

    # -- gzip, and a later file repeating ids (duplicates across files)
    z = _JsonlFile(corpus, "d_gzip.jsonl.gz")
    for _ in range(5):
        z.good({"id": gid(), "steps": _steps(rng, rng.randint(1, 8))}, "gzip")
    z.raw(b"\x1f\x8b garbage in gzip", "random_bytes", "unparseable")
    z.close(gzipped=True)
    d = _JsonlFile(corpus, "z_dups.jsonl")
    d.bad({"id": "dup-across", "steps": [[1.0, 1.0, 1.0]]}, "duplicate_id",
          "duplicate_id_across_files")
    d.bad({"id": "424242", "steps": [[1.0, 1.0, 1.0]]}, "duplicate_id",
          "duplicate_id_across_files")
    d.good({"id": "dup-bad-first", "steps": [[1.0, 2.0, 3.0]]}, "duplicate_id_bad_first")
    d.close()

    _write_csv_files(corpus, rng)
    _write_parquet_files(corpus)
    return corpus


def _write_csv_files(corpus: Corpus, rng: random.Random) -> None:
    """Long-format CSV: good sequences (shuffled rows, CRLF, one across two files) and
    bad ones (NaN/Inf spellings, non-numbers, duplicate times, label disagreement,
    rows with a wrong field count or no id)."""
    header = ["id", "t", "x", "y", "z", "label"]
    rows1: list[list[str]] = []
    rows2: list[list[str]] = []
    path1, path2 = str(corpus.root / "e_long1.csv"), str(corpus.root / "e_long2.csv")

    def add_good(sid: str, length: int, label: str, split_across: bool = False):
        values = [[round(rng.uniform(-3, 3), 6) for _ in range(F)] for _ in range(length)]
        for t, row in enumerate(values):
            target = rows2 if split_across and t % 2 else rows1
            target.append([sid, str(t * 10), *map(repr, row), label])
        corpus.good[sid] = (_float32(values), label)
        corpus.records_per_file[path1] += 1
        corpus.kinds["csv_good"] += 1

    for i in range(6):
        add_good(f"c{i}", rng.randint(1, 9), rng.choice(["walk", "run"]))
    add_good("c-across", 6, "run", split_across=True)
    add_good("c-quoted", 2, 'he said "hi", ok')

    def add_bad(sid: str, cells: list[str], kind: str):
        rows1.append([sid, "0", "1.0", "2.0", "3.0", ""])
        rows1.append([sid, "1", *cells, ""])
        corpus.records_per_file[path1] += 1
        corpus.kinds[kind] += 1

    for i, spelling in enumerate(NAN_SPELLINGS_TEXT):
        add_bad(f"cn{i}", ["1.0", spelling, "2.0"], "nan_inf_csv")
    for i, cell in enumerate(["", "abc", "1,5", "0x10", "--1", "true", "None"]):
        add_bad(f"cs{i}", [cell, "1.0", "2.0"], "non_numeric_csv")
    rows1.append(["ct", "nan", "1", "2", "3", ""])
    corpus.records_per_file[path1] += 1
    corpus.kinds["nan_time_csv"] += 1
    rows1 += [["cd", "1", "1", "2", "3", ""], ["cd", "1", "4", "5", "6", ""]]
    corpus.records_per_file[path1] += 1
    corpus.kinds["duplicate_time_csv"] += 1
    rows1 += [["cl", "1", "1", "2", "3", "a"], ["cl", "2", "4", "5", "6", "b"]]
    corpus.records_per_file[path1] += 1
    corpus.kinds["label_disagreement_csv"] += 1
    rng.shuffle(rows1)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows1)
    text = buffer.getvalue()
    # rows rejected on their own: a wrong field count, an empty id; and blank lines
    text += "c0,99\r\n\r\n,5,1,2,3,\r\n  \r\n"
    corpus.records_per_file[path1] += 2
    corpus.kinds["csv_wrong_field_count"] += 1
    corpus.kinds["csv_missing_id"] += 1
    Path(path1).write_text(text, newline="")
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *rows2])
    Path(path2).write_text(buffer.getvalue())
    corpus.files += [path1, path2]
    # c0 got an extra row with the wrong field count: rejected alone, c0 is still good


def _write_parquet_files(corpus: Corpus) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(corpus.root / "f_long.parquet")
    table = pa.table({"id": ["p1", "p1", "p2", "p2", "p3"],
                      "t": [0.0, 1.0, 0.0, 1.0, 0.0],
                      "x": [1.0, 2.0, float("nan"), 1.0, 1.0],
                      "y": [3.0, 4.0, 1.0, 1.0, None],
                      "z": [5.0, 6.0, 1.0, float("inf"), 1.0]})
    pq.write_table(table, path)
    corpus.good["p1"] = (_float32([[1.0, 3.0, 5.0], [2.0, 4.0, 6.0]]), "")
    corpus.records_per_file[path] += 3
    corpus.kinds["parquet_good"] += 1
    corpus.kinds["parquet_nan_inf_null"] += 2
    junk = corpus.root / "g_junk.parquet"
    junk.write_bytes(b"PAR1 this is not parquet" + bytes(range(256)))
    corpus.records_per_file[str(junk)] += 1
    corpus.kinds["not_parquet"] += 1
    corpus.files += [path, str(junk)]


# ---------------------------------------------------------------- datasets


def read_written(data_dir: Path, metadata: DatasetMetadata) -> dict[str, dict[str, Any]]:
    """Every written record, by id, decoded with `records.decode_sequence`."""
    import tensorflow as tf

    from seqpipe.dataset import records

    out: dict[str, dict[str, Any]] = {}
    for split, info in metadata.splits.items():
        for name in info.files:
            for data in tf.data.TFRecordDataset(str(data_dir / name)).as_numpy_iterator():
                record = records.decode_sequence(data, metadata.num_features)
                assert record["id"] not in out, f"id {record['id']!r} written twice"
                out[record["id"]] = {**record, "split": split}
    return out


def read_rejects(data_dir: Path) -> list[dict[str, Any]]:
    lines = []
    for path in sorted((data_dir / "rejects").glob("*.jsonl")):
        lines += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                  if line.strip()]
    return lines


def write_dataset(data_dir: Path, sequences: list[tuple[str, np.ndarray, str]],
                  num_features: int, num_shards: int = 2) -> DatasetMetadata:
    """A train-only dataset directory written directly with `records.encode_sequence`
    (for round trips without Beam); returns its metadata."""
    import tensorflow as tf

    from beam_jobs import statistics
    from seqpipe.dataset import metadata as metadata_lib
    from seqpipe.dataset import records
    from seqpipe.dataset.metadata import DatasetMetadata
    from seqpipe.input_pipeline import batching

    data_dir.mkdir(parents=True, exist_ok=True)
    shards = [[] for _ in range(num_shards)]
    for i, (sid, steps, label) in enumerate(sequences):
        shards[i % num_shards].append(records.encode_sequence(sid, steps, label))
    shards = [s for s in shards if s]
    files = []
    for index, shard in enumerate(shards):
        name = records.shard_name("train", index, len(shards))
        with tf.io.TFRecordWriter(str(data_dir / name)) as writer:
            for data in shard:
                writer.write(data)
        files.append(name)
    lengths = collections.Counter(int(steps.shape[0]) for _, steps, _ in sequences)
    metadata = DatasetMetadata.from_json({
        "schema_version": records.SCHEMA_VERSION, "num_features": num_features,
        "feature_names": [f"f{i}" for i in range(num_features)], "compression": "none",
        "splits": {"train": {"num_records": len(sequences), "files": files,
                             "num_shards": len(files),
                             "num_timesteps": sum(k * v for k, v in lengths.items())}},
        "length_stats": statistics.length_stats(lengths),
        "bucket_boundaries": batching.optimal_boundaries(batching.exact_histogram(lengths), 4),
    })
    metadata_lib.write(metadata, data_dir)
    return metadata
