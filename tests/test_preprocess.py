"""The Beam preprocessing job end to end (`beam_jobs.preprocess`), and its flags."""

import argparse
import dataclasses
import gzip
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from beam_helpers import read_rejects, read_split

from beam_jobs import commit, flags, read, statistics
from beam_jobs import metadata as job_metadata
from beam_jobs import preprocess as job
from seqpipe.commands import cli
from seqpipe.config import PreprocessConfig
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset import records, sources
from seqpipe.dataset.metadata import DatasetMetadata, SplitInfo

CFG = PreprocessConfig(min_length=2, max_length=6, train_fraction=0.6, val_fraction=0.2)
NUM_BUCKETS = 3  # bucket boundaries suggested in the metadata (`data.num_buckets`)


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


def _expected_split(record: dict) -> str:
    return record.get("split") or sources.hash_split(record["id"], CFG.train_fraction,
                                                     CFG.val_fraction)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    inputs = _write_inputs(directory)
    output = directory / "out"
    metadata = job.preprocess([str(directory / "a.jsonl"), str(directory / "*.gz")],
                              str(output), CFG, num_buckets=NUM_BUCKETS)
    return {"dir": directory, "out": output, "metadata": metadata, **inputs}


# ---------------------------------------------------------------- end to end


def test_counts_nothing_lost(dataset):
    counts = dataset["metadata"].counts
    num_bad = len(BAD_A) + len(BAD_B)
    assert (counts.read, counts.written, counts.rejected) == (24 + num_bad, 24, num_bad)
    expected_by_reason = dict.fromkeys(sources.REASONS, 0)
    for _, reason in BAD_A + BAD_B:
        expected_by_reason[reason] += 1
    assert counts.rejected_by_reason == expected_by_reason
    a, b = dataset["files"]
    assert counts.by_input == {
        a: {"read": 16 + len(BAD_A), "written": 16, "rejected": len(BAD_A)},
        b: {"read": 8 + len(BAD_B), "written": 8, "rejected": len(BAD_B)}}


def test_rejects_file_names_each_record_with_its_reason(dataset):
    lines = read_rejects(dataset["out"])
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
        info = metadata.splits[split]
        assert tuple(sorted(p.name for p in out.glob(f"{records.shard_prefix(split)}-*"))) == (
            info.files)
        assert info.num_shards == len(info.files)
        decoded = read_split(out, metadata, split)
        assert info.num_records == len(decoded)
        assert info.num_timesteps == sum(len(r["steps"]) for r in decoded.values())
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
    assert metadata == metadata_lib.read(dataset["out"])
    good = dataset["good"]
    assert (metadata.schema_version, metadata.num_features) == (records.SCHEMA_VERSION, 3)
    assert metadata.feature_names == ("f0", "f1", "f2")
    assert metadata.labels == ("c1", "c2")
    train = [np.array(r["steps"], np.float32) for r in good if _expected_split(r) == "train"]
    values = np.concatenate(train).astype(np.float64)
    stats = metadata.feature_stats
    assert stats.num_timesteps == len(values)
    np.testing.assert_allclose(stats.mean, values.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, values.std(0), rtol=1e-12)
    assert stats.min == tuple(values.min(0).tolist())
    assert stats.max == tuple(values.max(0).tolist())
    lengths = np.array([len(r["steps"]) for r in good])
    length_stats = metadata.length_stats
    assert (length_stats.min, length_stats.max) == (2, 6)
    assert length_stats.mean == pytest.approx(lengths.mean())
    assert length_stats.quantiles == {str(q): pytest.approx(np.quantile(lengths, q))
                                      for q in statistics.LENGTH_QUANTILES}
    assert sum(length_stats.histogram.counts) == 24
    # The suggested boundaries (3 buckets) pad the least of all choices ending at the max.
    def padded(boundaries):
        return sum(min(b for b in boundaries if b >= n) for n in lengths)

    choices = [[*c, 6] for k in range(3) for c in itertools.combinations(range(2, 6), k)]
    assert padded(metadata.bucket_boundaries) == min(padded(c) for c in choices)
    assert len(metadata.bucket_boundaries) <= 3
    assert metadata.bucket_boundaries[-1] == 6
    assert metadata.config["max_length"] == 6
    assert metadata.inputs[1].endswith("*.gz")
    assert metadata.tfds_readable is True
    assert not list(dataset["dir"].glob(".out.tmp-*"))  # staging directory gone


def test_tfds_builder_loads_the_splits(dataset):
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(dataset["out"]))
    good = {r["id"]: r for r in dataset["good"]}
    for split in records.SPLITS:
        examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
        assert len(examples) == dataset["metadata"].num_records(split)
        for example in examples:
            expected = good[example["id"].decode()]
            assert example["length"] == len(expected["steps"])
            np.testing.assert_array_equal(example["steps"],
                                          np.array(expected["steps"], np.float32))


def test_grown_data_keeps_old_splits_via_cli(dataset, tmp_path, capsys):
    new = [{"id": f"n{i:02d}", "steps": _steps(100 + i, 3)} for i in range(12)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in new))
    config = tmp_path / "cfg.yaml"
    config.write_text("preprocess:\n  min_length: 2\n  max_length: 6\n"
                      "  train_fraction: 0.6\n  val_fraction: 0.2\n"
                      f"data:\n  num_buckets: {NUM_BUCKETS}\n")
    output = tmp_path / "grown"
    metadata = job.run([*(f"--input={f}" for f in dataset["files"]),
                        f"--input={tmp_path / 'c.jsonl'}", f"--output={output}",
                        f"--config={config}", "--set", "compression=gzip",
                        "--set", "preprocess.too_long=truncate"])
    assert "read 48 = written 37 + rejected 11" in capsys.readouterr().out
    assert metadata.counts.truncated == 1
    assert len(metadata.bucket_boundaries) <= NUM_BUCKETS  # lengths 2..6: 5 without it
    assert metadata.tfds_readable is False and metadata.tfds_note is not None
    assert not (output / "dataset_info.json").exists()
    before = {i: split for split in records.SPLITS
              for i in read_split(dataset["out"], dataset["metadata"], split)}
    after = {i: (split, r) for split in records.SPLITS
             for i, r in read_split(output, metadata, split).items()}
    assert set(after) == set(before) | {r["id"] for r in new} | {"lg"}
    assert all(after[i][0] == split for i, split in before.items())
    assert after["lg"][1]["steps"].shape == (6, 3)


def test_refuses_non_empty_output_and_missing_inputs(dataset, tmp_path):
    output = tmp_path / "taken"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(commit.OutputExistsError, match="not empty"):
        job.preprocess(dataset["files"], str(output), CFG)
    assert [p.name for p in output.iterdir()] == ["keep.txt"]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        job.preprocess([str(tmp_path / "nothing-*.jsonl")], str(tmp_path / "new"), CFG)
    assert not (tmp_path / "new").exists()


def test_failed_run_leaves_no_dataset(dataset, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(job_metadata, "write_tfds_metadata", fail)
    output = tmp_path / "out"
    output.mkdir()  # an existing empty directory is accepted, and left as it was
    with pytest.raises(RuntimeError, match="disk full"):
        job.preprocess(dataset["files"], str(output), CFG)
    assert list(tmp_path.iterdir()) == [output] and not any(output.iterdir())


def _all_records(directory: Path, metadata: DatasetMetadata) -> dict[str, list]:
    """{split: [(id, label, steps as a list)] sorted by id}."""
    return {split: sorted((i, r["label"], r["steps"].tolist())
                          for i, r in read_split(directory, metadata, split).items())
            for split in records.SPLITS}


@pytest.mark.slow
def test_multi_process_direct_runner_writes_the_same_dataset(dataset, tmp_path):
    output = tmp_path / "mp"
    metadata = job.preprocess(
        dataset["files"], str(output), CFG,
        ["--direct_num_workers=2", "--direct_running_mode=multi_processing"], NUM_BUCKETS)
    reference = dataset["metadata"]
    assert metadata.counts == reference.counts
    for key in ("length_stats", "bucket_boundaries", "label_counts", "num_features"):
        assert getattr(metadata, key) == getattr(reference, key)
    for key, values in dataclasses.asdict(metadata.feature_stats).items():
        np.testing.assert_allclose(values, getattr(reference.feature_stats, key), rtol=1e-12)
    assert [metadata.num_records(s) for s in records.SPLITS] == [
        reference.num_records(s) for s in records.SPLITS]
    assert _all_records(output, metadata) == _all_records(dataset["out"], reference)


@pytest.mark.slow
def test_num_shards_gives_byte_identical_shards_on_any_runner(dataset, tmp_path):
    cfg = dataclasses.replace(CFG, num_shards=3)
    single = job.preprocess(dataset["files"], str(tmp_path / "one"), cfg)
    multi = job.preprocess(dataset["files"], str(tmp_path / "mp"), cfg,
                           ["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert single.splits == multi.splits
    assert single.splits["train"].num_shards == 3
    for split in records.SPLITS:
        for name in single.splits[split].files:
            assert (tmp_path / "one" / name).read_bytes() == (
                tmp_path / "mp" / name).read_bytes()
    assert _all_records(tmp_path / "one", single) == _all_records(dataset["out"],
                                                                  dataset["metadata"])


def test_big_file_read_in_byte_ranges_gives_the_same_dataset(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(read, "SPLIT_BYTES", 300)  # a.jsonl (plain) is split
    metadata = job.preprocess(dataset["files"], str(tmp_path / "out"), CFG,
                              ["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    reference = dataset["metadata"]
    assert metadata.counts == reference.counts
    assert _all_records(tmp_path / "out", metadata) == _all_records(dataset["out"], reference)
    a_text = Path(dataset["files"][0]).read_bytes()
    rejects = read_rejects(tmp_path / "out")
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


def test_all_rejected_gives_empty_splits_and_no_tfds(tmp_path):
    (tmp_path / "bad.jsonl").write_text('nope\n{"id": "x", "steps": []}\n')
    metadata = job.preprocess([str(tmp_path / "bad.jsonl")], str(tmp_path / "out"), CFG)
    assert (metadata.counts.read, metadata.counts.rejected) == (2, 2)
    assert metadata.splits == {split: SplitInfo(num_records=0, num_timesteps=0,
                                                num_shards=0, files=())
                               for split in records.SPLITS}
    assert metadata.feature_stats.num_timesteps == 0
    assert metadata.bucket_boundaries == () and metadata.tfds_readable is False
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metadata.json", "rejects"]
    assert "WARNING: no record was written" in job.format_summary(metadata, "out", 1.0)


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


# ---------------------------------------------------------------- one set of flags


def _cli_preprocess_parser() -> argparse.ArgumentParser:
    commands = next(action for action in cli._parser()._actions if action.dest == "command")
    return commands.choices["preprocess"]


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_both_entry_points_take_the_same_flags():
    job_parser = flags.add_arguments(argparse.ArgumentParser())
    assert _option_strings(job_parser) == {"-h", "--help", "--input", "--output", "--format",
                                           "--config", "--set", "--overwrite"}
    # `seqpipe` adds only what every command has: --json and --debug.
    assert _option_strings(_cli_preprocess_parser()) == _option_strings(job_parser) | {
        "--json", "--debug"}
    argv = ["--input", "a.jsonl", "--input=raw/*.csv.gz", "--output", "out", "--format", "csv",
            "--config", "tiny", "--set", "max_length=9", "--set", "data.num_buckets=4",
            "--runner=DirectRunner", "--direct_num_workers", "2"]
    args, beam_options = flags.parse_args(argv)
    cli_args, cli_beam_options = cli._parser().parse_known_args(["preprocess", *argv])
    assert beam_options == cli_beam_options == ["--runner=DirectRunner",
                                                "--direct_num_workers", "2"]
    for name in ("input", "output", "format", "config", "set", "overwrite"):
        assert getattr(args, name) == getattr(cli_args, name), name
    assert args.input == ["a.jsonl", "raw/*.csv.gz"]
    assert args.set == ["preprocess.max_length=9", "data.num_buckets=4"]


def test_flags_become_the_call():
    from seqpipe.config import load_config

    args, beam_options = flags.parse_args(["--input", "x.csv", "--output", "o", "--format",
                                           "csv", "--set", "data.num_buckets=5",
                                           "--set", "min_length=3", "--runner=DirectRunner"])
    cfg = load_config(args.config, args.set)
    call = flags.job_arguments(args, cfg, beam_options)
    assert call == {"inputs": ["x.csv"], "output_dir": "o",
                    "cfg": dataclasses.replace(PreprocessConfig(), input_format="csv",
                                               min_length=3),
                    "pipeline_args": ["--runner=DirectRunner"], "num_buckets": 5,
                    "overwrite": False}
    # Only `preprocess` keys may go without their section; the rest reach load_config as is.
    assert [flags.qualified_override(o) for o in ("too_long=truncate", "data.seed=1",
                                                  "bogus=1", "model=3", "=3")] == [
        "preprocess.too_long=truncate", "data.seed=1", "bogus=1", "model=3", "=3"]


def test_run_and_seqpipe_preprocess_write_the_same_dataset(tmp_path, capsys):
    lengths = (1, 1, 2, 2, 2, 2, 3, 4, 4, 4)
    lines = [json.dumps({"id": f"s{i}", "steps": [[float(i)]] * length})
             for i, length in enumerate(lengths)] + ["{bad"]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    argv = ["--input", str(tmp_path / "*.jsonl"), "--set", "min_length=2",
            "--set", "data.num_buckets=2", "--direct_num_workers=1"]
    by_run = job.run([*argv, "--output", str(tmp_path / "run")])
    printed = capsys.readouterr().out
    assert "read 11 = written 8 + rejected 3" in printed  # 2 too_short, 1 unparseable
    assert cli.main(["preprocess", *argv, "--output", str(tmp_path / "cli")]) == 0
    assert "read 11 = written 8 + rejected 3" in capsys.readouterr().out
    by_cli = metadata_lib.read(tmp_path / "cli")
    for key in ("counts", "splits", "length_stats", "bucket_boundaries", "config"):
        assert getattr(by_cli, key) == getattr(by_run, key), key
    assert by_run.bucket_boundaries == (2, 4)  # pads one step; [3, 4] would pad four
    assert by_run.counts.rejected_by_reason["too_short"] == 2
    for split in records.SPLITS:
        for name in by_run.splits[split].files:
            assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()
