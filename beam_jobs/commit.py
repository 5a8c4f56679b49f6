"""The output directory: refused if taken, staged beside it, committed with one rename.

    check_output_dir ─▶ remove_stale_staging ─▶ create_staging
      (the pipeline writes into STAGING/_work/)
    ─▶ finalize_shards (parts renamed to their TFDS shard names) ─▶ metadata
    ─▶ commit (STAGING renamed to the output)

Atomic: the pipeline writes into a temporary directory beside the output
(shard files first as parts under `_work/`), the driver renames the parts to
their shard names, adds the metadata, and the directory is renamed into place
only when everything succeeded; a failed run leaves nothing at the output (at
most a hidden `.NAME.tmp-PID@HOST-*` directory if the process is killed,
which the next run for the same output on this host deletes). An existing
non-empty output is refused. The output must be a local (or mounted) path:
the final rename is a local filesystem operation.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from beam_jobs.read import InputError
from seqpipe import processes
from seqpipe.dataset import records
from seqpipe.errors import SeqpipeError

WORK_DIR = "_work"          # the pipeline's scratch space, deleted before the commit
PARTS_DIR = "parts"         # _work/parts: the part files the workers write
RESHARD_DIR = "reshard"     # _work/reshard: the shards of `num_shards` N > 0
SUMMARY_FILE = "summary.json"  # _work/summary.json: counts and statistics for the driver
REJECTS_DIR = "rejects"


class OutputExistsError(SeqpipeError, FileExistsError):
    """The output directory exists and is not empty: the job never overwrites."""


def check_output_dir(output_dir: str) -> Path:
    """The absolute output path, if the job may create it.

    Raises:
        InputError: a URL (`gs://...`): the commit is a local rename.
        OutputExistsError: it exists and is not an empty directory.
    """
    if "://" in str(output_dir):
        raise InputError(f"output {output_dir!r}: only local or mounted paths are "
                         "supported (the final commit is a directory rename)")
    output = Path(output_dir).absolute()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise OutputExistsError(f"output {output_dir!r} exists and is not empty; "
                                "choose a new directory or delete it")
    return output


def remove_stale_staging(output: Path) -> list[Path]:
    """Deletes the staging directories of killed runs for `output`; returns them.

    A staging directory is named `.NAME.tmp-PID@HOST-XXXXXXXX` after the run
    that writes it: it is stale when that run was on this host and its pid is
    gone (`seqpipe.processes.owner_alive`). Others, including directories
    of live runs and of other hosts, are left alone.
    """
    pattern = re.compile(rf"\.{re.escape(output.name)}\.tmp-(.+)-[a-z0-9_]+")
    removed = []
    for candidate in sorted(output.parent.glob(f".{glob.escape(output.name)}.tmp-*")):
        match = pattern.fullmatch(candidate.name)
        if match and candidate.is_dir() and not processes.owner_alive(match[1]):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def create_staging(output: Path) -> Path:
    """A new staging directory beside `output`, named after this run, with `_work/` in it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-{processes.owner_tag()}-",
                                    dir=output.parent))
    _make_readable(staging)
    work = staging / WORK_DIR
    (work / PARTS_DIR).mkdir(parents=True)
    (work / RESHARD_DIR).mkdir()
    return staging


def _make_readable(directory: Path) -> None:
    """mkdtemp creates 0700 directories; give the dataset the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)


def finalize_shards(staging: Path, parts: Sequence[Mapping[str, Any]]
                    ) -> dict[str, dict[str, Any]]:
    """Renames the written parts to their TFDS shard names, per split.

    Shards that received no record were never written, so each split's files
    are numbered 0..k-1 of k non-empty shards.

    Returns:
        {split: {num_shards, files, shard_lengths, num_bytes}} for every split.
    """
    shards = {}
    for split in records.SPLITS:
        own = sorted((p for p in parts if p["split"] == split), key=lambda p: p["order"])
        files = []
        for index, part in enumerate(own):
            name = records.shard_name(split, index, len(own))
            os.replace(part["path"], staging / name)
            files.append(name)
        shards[split] = {"num_shards": len(own), "files": files,
                         "shard_lengths": [p["num_records"] for p in own],
                         "num_bytes": sum(p["num_bytes"] for p in own)}
    return shards


def commit(staging: Path, output: Path) -> None:
    """Moves the finished staging directory to `output` (which is absent or empty)."""
    shutil.rmtree(staging / WORK_DIR)
    if output.exists():
        output.rmdir()  # fails if something appeared there meanwhile: never overwrite
    os.rename(staging, output)
