"""The output: checked, staged under itself, committed by writing metadata.json last.

    prepare_output (refuse, or clean what a dead run left) ─▶ Run.staging
      (the pipeline writes into OUTPUT/.staging-RUN/)
    ─▶ Commit.move_shards ─▶ Commit.move_rejects ─▶ Commit.put (TFDS metadata)
    ─▶ Commit.finish: metadata.json put in place (the commit), then the
       replaced dataset's files and the staging prefix deleted

Every file operation goes through `apache_beam.io.filesystems.FileSystems`,
so the output may be on any Beam file system: a local path, gs://, s3://,
hdfs://, or a file system of your own registered with Beam (pass its module
as `--beam_plugins`; `beam_jobs.preprocess` imports it in the driver and,
through that option, in the workers). Nothing needs a directory rename or an
append: files are created whole, and moved one by one (a rename, or a copy
then a delete on object stores). The protocol a reader relies on is stated
once, in `seqpipe.dataset`; this module implements it.

The names a run may create or delete under OUTPUT (the layout itself is in
`seqpipe.dataset`): metadata.json, dataset_info.json, features.json, shard
names, `rejects/rejects-*.jsonl` (both also under `dataset-ID/`), and
`.staging-PID@HOST-ID/...`. Any other file under OUTPUT makes the job refuse
the output, and so does a finished dataset without `overwrite`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from apache_beam.io.filesystems import FileSystems

from beam_jobs.write import HashedFile
from seqpipe import processes
from seqpipe.dataset import records
from seqpipe.dataset.metadata import DatasetMetadata, FileInfo
from seqpipe.errors import SeqpipeError

WORK_DIR = "_work"          # the pipeline's scratch space inside the staging prefix
PARTS_DIR = "parts"         # _work/parts: the part files the workers write
RESHARD_DIR = "reshard"     # _work/reshard: the shards of `num_shards` N > 0
SUMMARY_FILE = "summary.json"  # _work/summary.json: counts and statistics for the driver
REJECTS_DIR = "rejects"
STAGING_PREFIX = ".staging-"
GENERATION_PREFIX = "dataset-"
TFDS_FILES = ("dataset_info.json", "features.json")

_SHARD = re.compile(rf"{re.escape(records.DATASET_NAME)}-({'|'.join(records.SPLITS)})"
                    rf"\.{records.FILE_FORMAT}-\d+-of-\d+")
_REJECTS = re.compile(rf"{REJECTS_DIR}/rejects-\d+-of-\d+\.jsonl")
_GENERATION = re.compile(rf"{GENERATION_PREFIX}[0-9a-f]+/")


class OutputExistsError(SeqpipeError, FileExistsError):
    """The output holds a finished dataset (without `overwrite`) or files seqpipe did not
    write: the job never overwrites them."""


class OutputBusyError(SeqpipeError, RuntimeError):
    """Another run of this host is writing the same output."""


def is_local(path: str) -> bool:
    """Whether `path` is on the local file system (no `scheme://`)."""
    return FileSystems.get_scheme(path) is None


def _relative(output: str, path: str) -> str:
    relative = path[len(output):].lstrip("/\\")
    return relative.replace("\\", "/")


def list_files(output: str) -> dict[str, int]:
    """{relative name: size} of every file under `output` (none if it does not exist)."""
    [result] = FileSystems.match([FileSystems.join(output, "**")])
    return {_relative(output, m.path): m.size_in_bytes for m in result.metadata_list}


def output_path(output_dir: str) -> str:
    """`output_dir` without a trailing "/" (local paths made absolute).

    Raises:
        OutputExistsError: a local path that is a file.
    """
    if not is_local(output_dir):
        return output_dir.rstrip("/")
    path = Path(output_dir).absolute()
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output {output_dir!r} exists and is not a directory")
    return str(path)


def is_dataset_name(name: str) -> bool:
    """Whether `name` (relative to the output) is one the job writes (not staging)."""
    name = _GENERATION.sub("", name, count=1) if _GENERATION.match(name) else name
    return (name == records.METADATA_FILE or name in TFDS_FILES
            or bool(_SHARD.fullmatch(name) or _REJECTS.fullmatch(name)))


def staging_owner(name: str) -> str | None:
    """The run tag `PID@HOST-ID` of a name inside a staging prefix; else None."""
    if not name.startswith(STAGING_PREFIX) or "/" not in name:
        return None
    return name.split("/", 1)[0][len(STAGING_PREFIX):]


def _provably_alive(run_tag: str) -> bool:
    """Whether the run `PID@HOST-ID` is a live process of this host (other than this one).

    A run of another host cannot be checked: the job supports one run per
    output at a time, so its leftovers are taken over like a dead run's.
    """
    owner = run_tag.rsplit("-", 1)[0]
    pid, _, host = owner.partition("@")
    return (host == socket.gethostname() and pid.isdigit()
            and processes.owner_alive(owner) and owner != processes.owner_tag())


@dataclasses.dataclass(frozen=True)
class Previous:
    """What the output held when the run started.

    Attributes:
        metadata: the finished dataset there (None: none).
        files: the names that dataset consists of (kept until the new commit).
        removed: the leftovers of dead runs that were deleted.
        existed: whether a local output directory existed (else a failed run
            removes the directory it created).
    """

    metadata: DatasetMetadata | None = None
    files: frozenset[str] = frozenset()
    removed: tuple[str, ...] = ()
    existed: bool = True


def _read_metadata(output: str) -> DatasetMetadata:
    with FileSystems.open(FileSystems.join(output, records.METADATA_FILE)) as stream:
        data = stream.read()
    try:
        return DatasetMetadata.from_json(json.loads(data), f"{output}/{records.METADATA_FILE}")
    except (ValueError, SeqpipeError) as error:
        raise OutputExistsError(f"output {output!r} holds a {records.METADATA_FILE} this "
                                f"seqpipe cannot read ({error}); delete it or choose a "
                                "new directory") from None


def dataset_files(metadata: DatasetMetadata, present: Iterable[str]) -> frozenset[str]:
    """The names a finished dataset consists of: its listed `files`, metadata.json and
    the TFDS metadata present, or (datasets written before `files`) all the job's
    names present."""
    if metadata.files is not None:
        return (frozenset(metadata.files) | {records.METADATA_FILE}
                | {name for name in TFDS_FILES if name in present})
    return frozenset(name for name in present if is_dataset_name(name))


def prepare_output(output: str, overwrite: bool = False) -> Previous:
    """Checks that the run may write `output`, and deletes what dead runs left there.

    Args:
        output: `output_path` of the output.
        overwrite: replace a finished dataset (it stays readable until the new
            one is committed).

    Raises:
        OutputExistsError: a file the job did not write is there, or a
            finished dataset and not `overwrite`.
        OutputBusyError: a live process of this host is writing it.
    """
    present = list_files(output)
    foreign = sorted(name for name in present
                     if staging_owner(name) is None and not is_dataset_name(name))
    if foreign:
        raise OutputExistsError(f"output {output!r} exists and is not empty: it holds "
                                f"{foreign[0]!r}" + (f" and {len(foreign) - 1} more"
                                                     if len(foreign) > 1 else "")
                                + " that seqpipe did not write; choose a new directory "
                                "or delete it")
    live = sorted({owner for name in present if (owner := staging_owner(name))
                   and _provably_alive(owner)})
    if live:
        raise OutputBusyError(f"output {output!r} is being written by run {live[0]} (a "
                              "live process of this host); wait for it or stop it")
    metadata = None
    if records.METADATA_FILE in present:
        metadata = _read_metadata(output)
        if not overwrite:
            raise OutputExistsError(f"output {output!r} holds a finished dataset; pass "
                                    "--overwrite to replace it, or choose a new directory")
    keep = dataset_files(metadata, present) if metadata else frozenset()
    leftovers = sorted(set(present) - keep)
    delete_files(output, leftovers)
    existed = not is_local(output) or Path(output).exists()
    return Previous(metadata, keep, tuple(leftovers), existed)


def delete_files(output: str, names: Sequence[str]) -> None:
    """Deletes the files `names` under `output`, then (local) directories left empty."""
    if names:
        FileSystems.delete([FileSystems.join(output, *name.split("/")) for name in names])
    if is_local(output):
        _remove_empty_directories(Path(output), {name.split("/")[0] for name in names})


def _remove_empty_directories(output: Path, tops: set[str]) -> None:
    for top in tops:
        directory = output / top
        if directory.is_dir():
            for sub in sorted(directory.rglob("*"), key=lambda p: -len(p.parts)):
                if sub.is_dir() and not any(sub.iterdir()):
                    sub.rmdir()
            if not any(directory.iterdir()):
                directory.rmdir()


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of the job on one output: its tag, staging prefix and file names.

    Attributes:
        output: the output (`output_path`).
        tag: `PID@HOST-ID`, unique to the run (the ID also names the new
            generation, when one is needed).
        prefix: "" or `dataset-ID/`: where the dataset's shards and rejects go
            (a prefix when the replaced dataset uses the plain names).
    """

    output: str
    tag: str
    prefix: str = ""

    @classmethod
    def start(cls, output: str, previous: Previous) -> Run:
        """A new run; its files take the plain names unless `previous` uses them."""
        run_id = uuid.uuid4().hex[:12]
        tag = f"{processes.owner_tag()}-{run_id}"
        plain_taken = any(_SHARD.fullmatch(name) or name.startswith(f"{REJECTS_DIR}/")
                          for name in previous.files)
        return cls(output, tag, f"{GENERATION_PREFIX}{run_id}/" if plain_taken else "")

    @property
    def staging(self) -> str:
        """The staging prefix, `OUTPUT/.staging-TAG` (the pipeline's output)."""
        return FileSystems.join(self.output, f"{STAGING_PREFIX}{self.tag}")

    def staged(self, *parts: str) -> str:
        return FileSystems.join(self.staging, *parts)

    def final(self, name: str) -> str:
        return FileSystems.join(self.output, *name.split("/"))

    def delete_staging(self) -> None:
        """Deletes the staging prefix with everything in it."""
        delete_files(self.output, [f"{STAGING_PREFIX}{self.tag}/{name}"
                                   for name in list_files(self.staging)])
        if FileSystems.exists(self.staging):  # a directory left on a local file system
            FileSystems.delete([self.staging])


class Commit:
    """Moves a run's files into place and commits them with metadata.json, last.

    Records every file it put at its final name (`files`), so that a failure
    before the commit deletes exactly those (`abandon`).
    """

    def __init__(self, run: Run, previous: Previous):
        self.run = run
        self.previous = previous
        self.files: dict[str, FileInfo] = {}
        self.committed = False
        self._parents: set[str] = set()

    def move_shards(self, parts: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """Moves the written parts to their TFDS shard names, per split.

        Shards that received no record were never written, so each split's
        files are numbered 0..k-1 of k non-empty shards.

        Returns:
            {split: {num_shards, files, shard_lengths, num_bytes}} for every split.
        """
        shards, moves = {}, {}
        for split in records.SPLITS:
            own = sorted((p for p in parts if p["split"] == split), key=lambda p: p["order"])
            names = [self.run.prefix + records.shard_name(split, index, len(own))
                     for index in range(len(own))]
            for name, part in zip(names, own, strict=True):
                moves[name] = (part["path"], FileInfo(part["num_bytes"], part["sha256"]))
            shards[split] = {"num_shards": len(own), "files": names,
                             "shard_lengths": [p["num_records"] for p in own],
                             "num_bytes": sum(p["num_bytes"] for p in own)}
        self._move(moves)
        return shards

    def move_rejects(self) -> None:
        """Moves the rejects files the pipeline wrote to `[prefix]rejects/`."""
        [result] = FileSystems.match([self.run.staged(REJECTS_DIR, "rejects-*.jsonl")])
        moves = {}
        for match in result.metadata_list:
            basename = match.path.replace("\\", "/").rsplit("/", 1)[-1]
            moves[f"{self.run.prefix}{REJECTS_DIR}/{basename}"] = (
                match.path, FileInfo(match.size_in_bytes))
        self._move(moves)

    def put(self, name: str, data: bytes) -> None:
        """Writes `data` to the staging prefix, then moves it to `name` (a whole-file
        replace on every file system)."""
        staged = HashedFile(self.run.staged(*name.split("/")))
        staged.write(data)
        self._move({name: (staged.path, FileInfo(*staged.finish()))})

    def _move(self, moves: Mapping[str, tuple[str, FileInfo]]) -> None:
        """Moves staged files to their final names, one by one, and records them."""
        for name, (source, info) in moves.items():
            destination = self.run.final(name)
            parent = FileSystems.split(destination)[0]
            if parent not in self._parents and not FileSystems.exists(parent):
                FileSystems.mkdirs(parent)  # a directory where there are any; else a no-op
            self._parents.add(parent)
            FileSystems.rename([source], [destination])
            self.files[name] = info

    def check_sizes(self) -> None:
        """Checks every moved file against the size it was written with.

        Raises:
            RuntimeError: a file is missing or of another size (something
                else wrote to the output meanwhile).
        """
        present = list_files(self.run.output)
        for name, info in self.files.items():
            if present.get(name) != info.size:
                raise RuntimeError(f"{self.run.final(name)}: {present.get(name)} bytes after "
                                   f"the move, {info.size} written")

    def finish(self, metadata: DatasetMetadata) -> DatasetMetadata:
        """Commits: metadata.json (listing the moved shards and rejects as `files`) put
        in place; then the replaced dataset's other files and the staging prefix
        are deleted.

        Returns:
            `metadata` with its `files`, as written.
        """
        self.check_sizes()
        listed = {name: info for name, info in sorted(self.files.items())
                  if name not in TFDS_FILES}
        metadata = dataclasses.replace(metadata, files=listed)
        self.put(records.METADATA_FILE, json.dumps(metadata.to_json(), indent=2).encode())
        self.committed = True
        replaced = self.previous.files - set(self.files) - {records.METADATA_FILE}
        delete_files(self.run.output, sorted(replaced))
        self.run.delete_staging()
        return metadata

    def abandon(self) -> None:
        """After a failure: deletes the staging prefix and, unless committed, the files
        this run moved into place (the output is left as the run found it)."""
        if not self.committed:
            delete_files(self.run.output, sorted(set(self.files) - self.previous.files))
        self.run.delete_staging()
        output = Path(self.run.output)
        if not self.previous.existed and output.is_dir() and not any(output.iterdir()):
            output.rmdir()


def rejects_location(output_dir: str, metadata: DatasetMetadata) -> str:
    """Where a committed dataset's rejects files are: `OUTPUT/[dataset-ID/]rejects`."""
    listed = [name for name in metadata.files or {} if name.endswith(".jsonl")
              and is_dataset_name(name)]
    directory = listed[0].rsplit("/", 1)[0] if listed else REJECTS_DIR
    return f"{output_dir.rstrip('/')}/{directory}"


def write_tfds_metadata(commit: Commit, write: Any) -> None:
    """Puts the TFDS metadata files that `write(local_dir)` writes into the output.

    TFDS writes through its own file layer, which knows no Beam file system:
    so it writes to a local temporary directory and each file is put in place
    with `Commit.put`.
    """
    with tempfile.TemporaryDirectory(prefix="seqpipe-tfds-") as local:
        write(Path(local))
        for path in sorted(Path(local).rglob("*")):
            if path.is_file():
                commit.put(path.relative_to(local).as_posix(), path.read_bytes())
