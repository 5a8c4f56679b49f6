"""The Beam job's output on an object store: `objtest://` (tests/objtest_filesystem.py),
a Beam file system with an object store's rules over a temp dir, and the commit
protocol (`beam_jobs.commit`, stated in `seqpipe.dataset`) on it and on local paths.

Readers (TensorFlow) cannot read objtest://: each dataset is copied whole, strays
and staging included, to a local directory (`beam_helpers.mirror`) and read there
with the real readers (`beam_helpers.reader_view`, `inspect_dataset`, `make_dataset`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import objtest_filesystem as objtest
import pytest
from beam_helpers import committed_names, mirror, reader_view, write_inputs

from beam_jobs import commit
from beam_jobs import preprocess as job
from seqpipe.config import DataConfig, PreprocessConfig
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset import records

CFG = PreprocessConfig(min_length=2, max_length=6)


def without_time(metadata):
    return dataclasses.replace(metadata, created="")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same inputs preprocessed to a local directory and to objtest://."""
    root = tmp_path_factory.mktemp("objstore")
    raw = write_inputs(root / "raw" / "a.jsonl", range(40))
    local = job.preprocess([raw], str(root / "local"), CFG)
    url = objtest.url(root / "store" / "data")
    remote = job.preprocess([raw], url, CFG)
    return {"root": root, "raw": raw, "local": local, "url": url, "remote": remote}


def test_object_store_output_equals_the_local_one(runs, tmp_path):
    local, remote = runs["local"], runs["remote"]
    assert without_time(remote) == without_time(local)  # files: sizes and SHA-256 too
    assert (remote.counts.read, remote.counts.written, remote.counts.rejected) == (43, 40, 3)
    assert set(commit.list_files(runs["url"])) == committed_names(remote)  # no staging
    copy = mirror(runs["url"], tmp_path / "copy")
    for name in remote.files:
        assert (copy / name).read_bytes() == (runs["root"] / "local" / name).read_bytes()
    view = reader_view(copy)
    assert view == reader_view(runs["root"] / "local")
    assert sorted(i for split in records.SPLITS for i in view[split]) == [
        f"g{i:02d}" for i in range(40)]


def test_metadata_lists_every_data_file_with_size_and_checksum(runs):
    files = runs["local"].files
    data_dir = runs["root"] / "local"
    shards = [name for split in records.SPLITS for name in runs["local"].split(split).files]
    assert sorted(files) == sorted([*shards, "rejects/rejects-00000-of-00001.jsonl"])
    assert sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*")
                  if p.is_file()) == sorted([*files, *commit.TFDS_FILES, records.METADATA_FILE])
    assert all(info.sha256 is None for name, info in files.items() if "rejects" in name)
    assert all(len(info.sha256) == 64 for name, info in files.items() if "rejects" not in name)


def test_stray_files_are_never_read_and_listed_files_are_checked(runs, tmp_path):
    from seqpipe.commands.inspect import inspect_dataset
    from seqpipe.input_pipeline import data

    copy = mirror(runs["url"], tmp_path / "copy")
    expected = reader_view(copy)
    shard = runs["remote"].split("train").files[0]
    stray = copy / records.shard_name("train", 7, 9)  # an extra shard someone copied in
    stray.write_bytes((copy / shard).read_bytes())
    (copy / ".staging-1@elsewhere-abc" / "_work").mkdir(parents=True)
    (copy / ".staging-1@elsewhere-abc" / "_work" / "x").write_bytes(b"dead run")
    assert reader_view(copy) == expected
    cfg = DataConfig(batch_size=64, normalize=False, deterministic=True)
    ids = [i.decode() for inputs, _, _ in data.make_dataset(
        copy, "train", cfg, training=False, with_keys=True).as_numpy_iterator()
        for i in inputs["id"]]
    assert sorted(ids) == expected["train"]
    assert inspect_dataset(copy, cfg)["splits"]["train"]["records"] == len(expected["train"])

    (copy / shard).write_bytes((copy / shard).read_bytes()[:-3])
    for read in (lambda: list(records.read_split(copy, "train", metadata_lib.read(copy))),
                 lambda: inspect_dataset(copy, cfg),
                 lambda: data.make_dataset(copy, "train", cfg, training=False)):
        with pytest.raises(records.DatasetError,
                           match=f"^{copy / shard}: .* bytes, but metadata.json lists"):
            read()
    (copy / shard).unlink()
    with pytest.raises(records.DatasetError, match=f"^{copy / shard}: listed in metadata.json "
                                                   "but missing$"):
        data.make_dataset(copy, "train", cfg, training=False)


def test_finished_output_is_refused_without_overwrite(runs):
    before = commit.list_files(runs["url"])
    with pytest.raises(commit.OutputExistsError, match="holds a finished dataset; pass "
                                                       "--overwrite"):
        job.preprocess([runs["raw"]], runs["url"], CFG)
    assert commit.list_files(runs["url"]) == before


def test_overwrite_swaps_whole_datasets(runs, tmp_path):
    """Twice: under a new `dataset-ID/` prefix (the plain names are taken), then back."""
    import tensorflow_datasets as tfds

    url = objtest.url(tmp_path / "store" / "data")
    job.preprocess([runs["raw"]], url, CFG)
    grown = write_inputs(tmp_path / "raw" / "b.jsonl", range(40, 52), bad=False)
    second = job.preprocess([runs["raw"], grown], url, CFG, overwrite=True)
    [prefix] = {name.split("/")[0] for name in second.files if "/" in name}
    assert prefix.startswith(commit.GENERATION_PREFIX)
    assert set(commit.list_files(url)) == committed_names(second)
    view = reader_view(mirror(url, tmp_path / "second"))
    assert sorted(i for s in records.SPLITS for i in view[s]) == [f"g{i:02d}" for i in range(52)]
    builder = tfds.builder_from_directory(str(tmp_path / "second"))
    assert sum(builder.info.splits[s].num_examples for s in builder.info.splits) == 52
    assert len(list(builder.as_dataset(split="train"))) == second.num_records("train")

    third = job.preprocess([runs["raw"]], url, CFG, overwrite=True)
    assert without_time(third) == without_time(runs["remote"])  # the plain names again
    assert set(commit.list_files(url)) == committed_names(third)


def test_overwrite_of_a_local_dataset_leaves_no_old_directories(runs, tmp_path):
    out = tmp_path / "data"
    job.preprocess([runs["raw"]], str(out), CFG)
    job.preprocess([runs["raw"]], str(out), CFG, overwrite=True)
    gzip = job.preprocess([runs["raw"]], str(out), dataclasses.replace(CFG, compression="gzip"),
                          overwrite=True)
    names = {*gzip.files, records.METADATA_FILE}
    directories = {"/".join(name.split("/")[:depth]) for name in names
                   for depth in range(1, name.count("/") + 1)}
    assert directories == {"rejects"}  # the plain names again, no dataset-ID/ left
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == sorted(
        names | directories)
    assert "dataset_info.json" not in gzip.files and reader_view(out)["rejected"] == 3


def _dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    return int(finished.stdout)


def _leave(url: str, name: str, data: bytes = b"left") -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(f"{url}/{name}") as stream:
        stream.write(data)


def test_rerun_cleans_what_dead_runs_left(runs, tmp_path, capsys):
    url = objtest.url(tmp_path / "store" / "data")
    host = socket.gethostname()
    leftovers = [f".staging-{_dead_pid()}@{host}-ab12/_work/parts/train-1",
                 f".staging-{_dead_pid()}@not-{host}-cd34/rejects/rejects-00000-of-00001.jsonl",
                 records.shard_name("train", 0, 1), "rejects/rejects-00000-of-00001.jsonl",
                 "dataset-0a1b/seqpipe-val.tfrecord-00000-of-00001", "dataset_info.json"]
    for name in leftovers:
        _leave(url, name)
    result = job.preprocess([runs["raw"]], url, CFG)
    assert f"removed {len(leftovers)} file(s) that a killed run left" in capsys.readouterr().err
    assert set(commit.list_files(url)) == committed_names(result)
    assert without_time(result) == without_time(runs["remote"])


def test_a_live_run_or_foreign_files_stop_the_job_and_nothing_is_deleted(runs, tmp_path):
    url = objtest.url(tmp_path / "store" / "data")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = f".staging-{sleeper.pid}@{socket.gethostname()}-ef56/_work/summary.json"
        _leave(url, live)
        with pytest.raises(commit.OutputBusyError, match=f"run {sleeper.pid}@"):
            job.preprocess([runs["raw"]], url, CFG)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert list(commit.list_files(url)) == [live]
    _leave(url, "notes.txt")
    with pytest.raises(commit.OutputExistsError, match="is not empty: it holds 'notes.txt'"):
        job.preprocess([runs["raw"]], url, CFG)
    assert sorted(commit.list_files(url)) == sorted([live, "notes.txt"])


def test_object_store_has_no_directory_rename(tmp_path):
    from apache_beam.io.filesystems import FileSystems

    url = objtest.url(tmp_path / "d")
    _leave(url, "sub/a")
    with pytest.raises(Exception, match="not directories"):
        FileSystems.rename([f"{url}/sub"], [f"{url}/moved"])
    FileSystems.rename([f"{url}/sub/a"], [f"{url}/moved/a"])
    assert list(commit.list_files(url)) == ["moved/a"]
    assert not FileSystems.exists(f"{url}/moved")  # a prefix, not an object


def test_output_url_inside_an_input_pattern_is_refused(runs, tmp_path):
    from seqpipe.paths import PathError

    url = objtest.url(tmp_path / "store")
    _leave(url, "raw/a.jsonl", Path(runs["raw"]).read_bytes())
    with pytest.raises(PathError, match="choose an output outside the inputs"):
        job.preprocess([f"{url}/raw/**"], f"{url}/raw/data", CFG)
    assert list(commit.list_files(url)) == ["raw/a.jsonl"]


@pytest.mark.slow
def test_multi_process_workers_import_the_file_system(runs, tmp_path, monkeypatch):
    tests_dir = str(Path(objtest.__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [tests_dir, os.environ.get("PYTHONPATH", "")]))
    url = objtest.url(tmp_path / "store" / "data")
    result = job.preprocess([runs["raw"]], url, CFG, ["--direct_num_workers=2",
                                                      "--direct_running_mode=multi_processing"])
    assert result.counts == runs["remote"].counts
    assert reader_view(mirror(url, tmp_path / "copy")) == reader_view(runs["root"] / "local")
    assert set(commit.list_files(url)) == committed_names(result)


def test_metadata_written_before_files_reads_without_size_checks(runs, tmp_path):
    old = mirror(objtest.url(runs["root"] / "local"), tmp_path / "old")
    tree = json.loads((old / records.METADATA_FILE).read_text())
    del tree["files"]
    (old / records.METADATA_FILE).write_text(json.dumps(tree))
    metadata = metadata_lib.read(old)
    assert metadata.files is None and metadata.to_json() == tree
    shards = [name for split in records.SPLITS for name in metadata.split(split).files]
    assert metadata_lib.check_files(old, metadata) == {
        name: (old / name).stat().st_size for name in shards}
    (old / shards[0]).unlink()
    with pytest.raises(records.DatasetError, match=f"{shards[0]}: listed in metadata.json"):
        metadata_lib.check_files(old, metadata)
