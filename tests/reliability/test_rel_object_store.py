"""SIGKILL at every step of the commit on an object store, then a re-run.

`seqpipe preprocess` writes to `objtest://` (tests/objtest_filesystem.py: an
object store's rules over a temp dir) in a subprocess that the file system
kills (`OBJTEST_KILL_AT=N`) just before its N-th change of a visible object:
each move of a shard, of the rejects, of the TFDS metadata, the move of
metadata.json (the commit), and each deletion of a replaced dataset's files.
The first, middle and last N are tried; `SEQPIPE_EVERY_KILL_POINT=1` tries every N
(7 points for a new output, 11 for an overwrite: minutes). After each kill the
output, copied whole to a local directory, is read with the real readers: they
see no dataset, or a whole one (the old or the new; never a mix), and read =
written + rejected. The re-run then leaves exactly the new dataset: nothing
lost, nothing left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import objtest_filesystem as objtest
import pytest
from beam_helpers import committed_names, mirror, reader_view, write_inputs
from reliability_helpers import run_cli

from beam_jobs import commit
from beam_jobs import preprocess as job
from seqpipe.config import PreprocessConfig

CFG = PreprocessConfig(min_length=2, max_length=6, num_shards=1)
CLI_CFG = ["--set", f"min_length={CFG.min_length}", "--set", f"max_length={CFG.max_length}",
           "--set", "num_shards=1"]


def _kill_points(url: str, inputs: list[str], tmp_path: Path, monkeypatch,
                 overwrite: bool) -> int:
    """How many visible changes a run makes (counted in-process, without a kill)."""
    log = tmp_path / "changes.log"
    monkeypatch.setenv("OBJTEST_LOG", str(log))
    job.preprocess(inputs, url, CFG, overwrite=overwrite)
    monkeypatch.delenv("OBJTEST_LOG")
    changes = log.read_text().splitlines()
    print("\n".join(changes))
    return len(changes)


def _sampled(points: int) -> list[int]:
    """The kill points to try: all with SEQPIPE_EVERY_KILL_POINT=1, else the first, the
    middle and the last (the whole sweep takes minutes; the suite must stay short)."""
    if os.environ.get("SEQPIPE_EVERY_KILL_POINT") == "1":
        return list(range(1, points + 1))
    return sorted({1, (points + 1) // 2, points})


@pytest.mark.slow
@pytest.mark.parametrize("overwrite", [False, True], ids=["new_output", "overwrite"])
def test_sigkill_at_every_commit_step_then_rerun(tmp_path, monkeypatch, overwrite):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(Path(objtest.__file__).parent), os.environ.get("PYTHONPATH", "")]))
    old_raw = write_inputs(tmp_path / "raw" / "old.jsonl", range(30))
    new_raw = write_inputs(tmp_path / "raw" / "new.jsonl", range(30, 75))  # g01 not a dup
    store = tmp_path / "store"
    url = objtest.url(store / "data")
    pristine = tmp_path / "pristine"  # the output before each run: empty, or the old dataset
    pristine.mkdir()
    if overwrite:
        job.preprocess([old_raw], objtest.url(pristine / "data"), CFG)
    views = {"old": reader_view(mirror(objtest.url(pristine / "data"), tmp_path / "v-old"))}
    shutil.copytree(pristine, store)
    points = _kill_points(url, [new_raw], tmp_path, monkeypatch, overwrite)
    views["new"] = reader_view(mirror(url, tmp_path / "v-new"))
    assert views["new"]["rejected"] == 2 and views["new"] != views["old"]

    seen = []
    for kill_at in _sampled(points):
        shutil.rmtree(store)
        shutil.copytree(pristine, store)
        monkeypatch.setenv("OBJTEST_KILL_AT", str(kill_at))
        proc = run_cli("preprocess", "--input", new_raw, "--output", url,
                       "--beam_plugins=objtest_filesystem", *CLI_CFG,
                       *(["--overwrite"] if overwrite else []))
        monkeypatch.delenv("OBJTEST_KILL_AT")
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        view = reader_view(mirror(url, tmp_path / f"killed-{kill_at}"))
        seen.append("new" if view == views["new"] else "old" if view == views["old"] else view)
        assert seen[-1] in ("old", "new"), (kill_at, view)

        result = job.preprocess([new_raw], url, CFG, overwrite=overwrite or view is not None)
        assert set(commit.list_files(url)) == committed_names(result)
        assert reader_view(mirror(url, tmp_path / f"rerun-{kill_at}")) == views["new"]
    print(f"kills at {_sampled(points)} of 1..{points}: readers saw {seen}")
    # Before the commit the readers see what was there; after it, the new dataset.
    assert seen == sorted(seen, key=["old", "new"].index) and "old" in seen
    assert ("new" in seen) == overwrite  # only deletions of old files follow the commit
