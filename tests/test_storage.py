"""User paths on any file system: `seqpipe.storage`, a grep for local-only file access,
and the chain preprocess -> train -> embed/score with the dataset and model dir on
TensorFlow's in-process `ram://` file system.

`ram://` lives in this process, so the chain runs through library calls, not
subprocesses. The dataset is written by the real Beam job to `objtest://`
(tests/objtest_filesystem.py, an object store over local files) and copied
object by object to `ram://` with `tf.io.gfile`.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import numpy as np
import pytest

from seqpipe import storage

ROOT = Path(__file__).resolve().parent.parent

# Calls that touch the local file system only. A user path (dataset, model dir,
# output, input) must go through `seqpipe.storage` (or Beam's `FileSystems` in
# beam_jobs) so that it may be a URL.
_LOCAL_ACCESS = re.compile(
    r"(?<![\w.])open\(|(?<!storage)(?<!FileSystems)(?<!self\._)\.open\(|os\.path\b"
    r"|\.(read_text|write_text|read_bytes|write_bytes|mkdir|rmdir|touch|exists|is_file|is_dir"
    r"|iterdir|unlink|rglob|glob)\(|shutil\.|glob\.glob\("
    r"|os\.(open|replace|remove|rename|makedirs|listdir|unlink|stat|scandir|walk)\b")
_URL_SAFE = re.compile(r"\b(storage|FileSystems|gfile)\.\w+\(")

# (file, text of the line): why the local access is right there.
ALLOWED = {
    ("seqpipe/storage.py", None): "the one place that dispatches local paths to the "
                                  "standard library and URLs to tf.io.gfile",
    ("seqpipe/paths.py", "for path in glob.glob(pattern):"): "local input patterns only; "
        "URL patterns are compared by name (url_pattern_reaches)",
    ("seqpipe/paths.py", "return pattern.is_dir() and same_or_inside(directory, pattern)"):
        "idem, a local pattern",
    ("seqpipe/commands/cli.py", "for path in glob.glob(pattern) or [pattern]:"):
        "local input patterns only (URLs are skipped just above)",
    ("seqpipe/training/outputs.py", "shutil.rmtree(directory, ignore_errors=True)"):
        "a non-chief worker's own local temporary directories (tempfile.mkdtemp)",
    ("seqpipe/training/resume.py", None): "the local lock, created exclusively (O_EXCL); "
        "a URL model dir takes storage's branch (_url_lock)",
    ("seqpipe/synthetic.py", None): "`seqpipe synth` writes raw input to a local file",
    ("seqpipe/config.py", None): "--config YAML files and the bundled configs are local "
        "files; a model dir's config.yaml is read through storage (model_dir.read_config)",
    ("seqpipe/commands/quickstart.py", None): "quickstart's workdir is local: it runs the "
        "whole chain with DirectRunner there",
    ("beam_jobs/commit.py", None): "local outputs only (is_local, or existed=True for URLs); "
        "every object-store operation goes through FileSystems",
    ("beam_jobs/metadata.py", None): "TFDS metadata is written to a local temporary "
        "directory (empty shard stand-ins included), then put in place through FileSystems",
}


def _local_accesses() -> list[tuple[str, int, str]]:
    hits = []
    for top in ("seqpipe", "beam_jobs"):
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                code = line.split("#", 1)[0].strip()
                if _LOCAL_ACCESS.search(_URL_SAFE.sub("", code)):
                    hits.append((relative, number, code))
    return hits


def test_no_local_only_file_access_outside_the_listed_places():
    unexplained = [f"{file}:{number}: {code}" for file, number, code in _local_accesses()
                   if (file, None) not in ALLOWED and (file, code) not in ALLOWED]
    assert not unexplained, (
        "local-only file access on what may be a user path; use seqpipe.storage (or add "
        "the line to ALLOWED with the reason it is local):\n" + "\n".join(unexplained))


def test_the_grep_finds_what_it_must():
    assert _LOCAL_ACCESS.search('with open(path) as f:')
    assert _LOCAL_ACCESS.search('Path(model_dir).read_text()')
    assert _LOCAL_ACCESS.search('os.path.join(a, b)')
    assert not _LOCAL_ACCESS.search(_URL_SAFE.sub("", 'storage.read_text(path)'))
    assert not _LOCAL_ACCESS.search(_URL_SAFE.sub("", 'FileSystems.open(path)'))


@pytest.fixture
def ram():
    """A fresh `ram://` prefix, deleted afterwards."""
    import tensorflow as tf

    prefix = f"ram://seqpipe-test-{uuid.uuid4().hex}"
    tf.io.gfile.makedirs(prefix)
    yield prefix
    if tf.io.gfile.exists(prefix):
        tf.io.gfile.rmtree(prefix)


@pytest.mark.parametrize("where", ["local", "ram"])
def test_storage_round_trips(where, tmp_path, ram):
    base = str(tmp_path) if where == "local" else ram
    path = storage.join(base, "a/b/c.json")
    storage.write_json_atomic(path, {"x": [1, 2]})
    assert storage.read_json(path) == {"x": [1, 2]}
    assert storage.isfile(path) and not storage.isdir(path)
    assert storage.isdir(storage.join(base, "a/b"))
    assert storage.listdir(storage.join(base, "a/b")) == ["c.json"]  # no temp left
    assert storage.size(path) == len(b'{\n  "x": [\n    1,\n    2\n  ]\n}')
    storage.write_text_atomic(path, "replaced")
    assert storage.read_text(path) == "replaced"
    with pytest.raises(FileNotFoundError):
        storage.size(storage.join(base, "missing"))
    storage.remove(path)
    storage.remove(path)  # missing: no error
    assert not storage.exists(path)


@pytest.mark.parametrize("where", ["local", "ram"])
def test_local_file_puts_the_file_only_on_success(where, tmp_path, ram):
    base = str(tmp_path) if where == "local" else ram
    path = storage.join(base, "out", "t.bin")
    with storage.local_file(path) as local:
        Path(local).write_bytes(b"whole")
    assert storage.read_bytes(path) == b"whole"
    with pytest.raises(OSError), storage.local_file(path) as local:
        Path(local).write_bytes(b"ha")
        raise OSError(28, "No space left on device")
    assert storage.read_bytes(path) == b"whole"
    assert storage.listdir(storage.join(base, "out")) == ["t.bin"]


@pytest.mark.parametrize("where", ["local", "ram"])
def test_move_tree_replaces_the_target(where, tmp_path, ram):
    base = str(tmp_path) if where == "local" else ram
    source, target = storage.join(base, ".m.tmp"), storage.join(base, "m")
    for name, text in (("old.txt", "old"),):
        storage.write_text_atomic(storage.join(target, name), text)
    for name in ("saved_model.pb", "variables/v.index", "variables/v.data"):
        storage.write_text_atomic(storage.join(source, name), name)
    storage.move_tree(source, target, last=("saved_model.pb",))
    assert storage.listdir(target) == ["saved_model.pb", "variables"]
    assert storage.listdir(storage.join(target, "variables")) == ["v.data", "v.index"]
    assert storage.read_text(storage.join(target, "variables/v.data")) == "variables/v.data"
    assert not storage.isfile(storage.join(source, "saved_model.pb"))


def test_paths_are_strings_that_keep_the_scheme():
    assert storage.join("gs://b/x/", "encoder", "a/b") == "gs://b/x/encoder/a/b"
    assert storage.parent("gs://b/x/m.json") == "gs://b/x"
    assert storage.name("ram://b/x/m.json") == "m.json"
    assert storage.with_suffix("gs://b/o.parquet", ".rejects.jsonl") == "gs://b/o.rejects.jsonl"
    assert storage.with_suffix(Path("o.parquet"), ".r.jsonl") == Path("o.r.jsonl")
    assert storage.as_path("gs://b/x") == "gs://b/x" and storage.as_path("x") == Path("x")


def _copy_tree(local: Path, url: str) -> None:
    """Every file under the local directory `local` to the same names under `url`."""
    import tensorflow as tf

    for path in sorted(local.rglob("*")):
        if path.is_file():
            target = storage.join(url, path.relative_to(local).as_posix())
            tf.io.gfile.makedirs(storage.parent(target))
            tf.io.gfile.copy(str(path), target)


@pytest.mark.slow
def test_chain_on_ram_equals_the_local_chain(tiny_dataset, tiny_model, tiny_config,
                                             tmp_path, ram):
    """preprocess (to objtest://) -> train -> embed, score with data and model on ram://:
    the same losses, embeddings and scores as the local run of the same data."""
    import objtest_filesystem as objtest
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_jobs.preprocess import preprocess
    from seqpipe.commands import embed, report, score
    from seqpipe.config import ScoreConfig
    from seqpipe.dataset import metadata as metadata_lib
    from seqpipe.training.model_dir import ENTRIES, LOCK_FILE
    from seqpipe.training.trainer import train

    store = objtest.url(tmp_path / "store" / "data")
    preprocess([str(tiny_dataset.parent / "raw" / "synthetic.jsonl")], store,
               tiny_config.preprocess)
    data, model = storage.join(ram, "data"), storage.join(ram, "runs", "x")
    _copy_tree(Path(objtest.local_path(store)), data)
    local_metadata = metadata_lib.read(tiny_dataset)
    assert metadata_lib.read(data).files == local_metadata.files  # sizes and SHA-256

    summary = train(data, model, tiny_config, verbose=False)
    local_summary = storage.read_json(tiny_model / "summary.json")
    assert summary["epochs"] == local_summary["epochs"] == tiny_config.train.epochs
    np.testing.assert_allclose(summary["final_loss"], local_summary["final_loss"], rtol=1e-4)
    entries = set(storage.listdir(model))
    assert LOCK_FILE not in entries and entries <= set(ENTRIES)
    assert {"autoencoder.keras", "encoder", "scorer", "checkpoints"} <= entries
    again = train(data, model, tiny_config, verbose=False)  # resumes: nothing left to do
    assert again["weights_sha256"] == summary["weights_sha256"]

    vectors = embed.compute_embeddings(data, model, "test")
    expected = embed.compute_embeddings(tiny_dataset, tiny_model, "test")
    np.testing.assert_array_equal(vectors.ids, expected.ids)
    np.testing.assert_allclose(vectors.vectors, expected.vectors, rtol=1e-4, atol=1e-5)
    back = embed.read_parquet(embed.write_parquet(vectors, tmp_path / "e.parquet"))
    np.testing.assert_array_equal(back.vectors, vectors.vectors)

    result = score.run(score.Request(model_dir=model, data_dir=data, split="test",
                                     output=storage.join(ram, "out", "s.parquet"),
                                     threshold_from="val"), ScoreConfig(), echo=lambda _: None)
    assert result["threshold_file"] == storage.join(model, "score_threshold.json")
    table = report.read_scores(result["output"])
    errors = pq.read_table(pa.BufferReader(storage.read_bytes(result["output"]))).column(
        "error").to_numpy()
    local = score.score_split(tiny_dataset, tiny_model, "test")
    local = local.calibrated(score.read_threshold(model).profile)
    rows = embed.rows_for(local.ids, table.ids.tolist())
    np.testing.assert_allclose(errors, local.errors[rows], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(table.scores, local.scores[rows], rtol=1e-4, atol=1e-6)
    score.run(score.Request(model_dir=model, data_dir=data, split="test",
                            output=tmp_path / "s.parquet"), ScoreConfig(), echo=lambda _: None)
    flags = [pq.read_table(source).column("is_anomaly").to_pylist() for source in (
        tmp_path / "s.parquet", pa.BufferReader(storage.read_bytes(result["output"])))]
    assert flags[0] == flags[1] and len(flags[0]) == len(local)
