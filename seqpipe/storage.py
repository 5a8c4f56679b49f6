"""The paths users give: local paths and URLs of any file system TensorFlow reads.

Every read and write of a user path in seqpipe (datasets, model directories,
outputs) goes through this module, so each works on a local path and on a
URL alike:

* a local path (no `scheme://`) goes through the standard library, so the
  command line checks paths before importing TensorFlow, and a lock file can
  be created exclusively;
* a URL (`gs://bucket/runs/x`, `ram://...`, `s3://` and `hdfs://` with
  tensorflow-io) goes through `tf.io.gfile`.

Paths are plain strings: `pathlib.Path` would turn `gs://b/x` into `gs:/b/x`.
Local-only things (temporary directories, the package's own files) keep
`pathlib`.

Object stores rename a file by copying it and have no directory rename
(TensorFlow's `ram://` file system does not move a directory's files either),
so `move_tree` moves a directory file by file, and `write_text_atomic`
replaces one file in one rename: a reader sees the old or the new content,
never a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

PathLike = str | os.PathLike


def is_url(path: PathLike) -> bool:
    """Whether `path` is a URL (`scheme://...`) rather than a local path."""
    return "://" in str(path)


def join(base: PathLike, *names: str) -> str:
    """`base` followed by `names` ("/"-separated relative names), as a string."""
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *(name.strip("/") for name in names)])
    return str(Path(base, *(part for name in names for part in name.split("/"))))


def as_path(path: PathLike) -> str | Path:
    """A `Path` for a local path (what a library caller gets back), the string for a URL."""
    return str(path) if is_url(path) else Path(path)


def parent(path: PathLike) -> str:
    """The directory holding `path`."""
    if is_url(path):
        return str(path).rstrip("/").rsplit("/", 1)[0]
    return str(Path(path).parent)


def name(path: PathLike) -> str:
    """The last component of `path`."""
    return str(path).rstrip("/").rsplit("/", 1)[-1] if is_url(path) else Path(path).name


def with_suffix(path: PathLike, suffix: str) -> PathLike:
    """`path` with its last suffix replaced by `suffix` (e.g. ".rejects.jsonl"); a `Path`
    for a `Path`, else a string."""
    if isinstance(path, os.PathLike):
        return Path(path).with_suffix(suffix)
    if is_url(path):
        head, _, last = str(path).rpartition("/")
        return f"{head}/{PurePosixPath(last).with_suffix(suffix)}"
    return str(Path(path).with_suffix(suffix))


def exists(path: PathLike) -> bool:
    """Whether a file or directory `path` exists."""
    return _gfile().exists(str(path)) if is_url(path) else Path(path).exists()


def isdir(path: PathLike) -> bool:
    """Whether `path` is a directory."""
    return _gfile().isdir(str(path)) if is_url(path) else Path(path).is_dir()


def isfile(path: PathLike) -> bool:
    """Whether `path` is a file."""
    if is_url(path):
        return _gfile().exists(str(path)) and not _gfile().isdir(str(path))
    return Path(path).is_file()


def size(path: PathLike) -> int:
    """The size of the file `path` in bytes.

    Raises:
        FileNotFoundError: there is no such file (for URLs too).
    """
    if not is_url(path):
        return Path(path).stat().st_size
    import tensorflow as tf

    try:
        return tf.io.gfile.stat(str(path)).length
    except tf.errors.NotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None


def listdir(path: PathLike) -> list[str]:
    """The names of the entries of the directory `path`, sorted."""
    if is_url(path):
        return sorted(entry.rstrip("/") for entry in _gfile().listdir(str(path)))
    return sorted(entry.name for entry in Path(path).iterdir())


def glob(pattern: PathLike) -> list[str]:
    """The paths matching `pattern`, sorted (`tf.io.gfile.glob`: local paths and URLs)."""
    return sorted(_gfile().glob(str(pattern)))


def makedirs(path: PathLike) -> None:
    """Creates the directory `path` and its parents (no error if it exists)."""
    if is_url(path):
        _gfile().makedirs(str(path))
    else:
        Path(path).mkdir(parents=True, exist_ok=True)


def remove(path: PathLike) -> None:
    """Deletes the file `path`, if there is one."""
    if is_url(path):
        if _gfile().exists(str(path)):
            _gfile().remove(str(path))
    else:
        Path(path).unlink(missing_ok=True)


def rmtree(path: PathLike) -> None:
    """Deletes the directory `path` and everything below it, if there is one."""
    if is_url(path):
        if _gfile().isdir(str(path)):
            _gfile().rmtree(str(path))
    else:
        shutil.rmtree(path, ignore_errors=True)


def read_bytes(path: PathLike) -> bytes:
    """The content of the file `path`."""
    if is_url(path):
        with _gfile().GFile(str(path), "rb") as stream:
            return stream.read()
    return Path(path).read_bytes()


def read_text(path: PathLike) -> str:
    """The content of the UTF-8 text file `path`."""
    return read_bytes(path).decode("utf-8")


def read_json(path: PathLike) -> Any:
    """The JSON value in the file `path`."""
    return json.loads(read_text(path))


def write_bytes_atomic(path: PathLike, content: bytes) -> str:
    """Writes `content` to `path`, replacing any earlier file in one rename.

    The bytes go to `.NAME.tmp` beside `path` first, so a kill never leaves a
    half-written `path`. The parent directory is created if missing.
    """
    path = str(path)
    temporary = join(parent(path), f".{name(path)}.tmp")
    makedirs(parent(path))
    if is_url(path):
        with _gfile().GFile(temporary, "wb") as stream:
            stream.write(content)
        _gfile().rename(temporary, path, overwrite=True)
    else:
        Path(temporary).write_bytes(content)
        os.replace(temporary, path)
    return path


def write_text_atomic(path: PathLike, text: str) -> str:
    """Writes the UTF-8 `text` to `path` atomically (`write_bytes_atomic`)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: PathLike, value: Any) -> str:
    """`value` as indented JSON at `path`, atomically (`write_bytes_atomic`)."""
    return write_text_atomic(path, json.dumps(value, indent=2))


@contextlib.contextmanager
def local_file(path: PathLike) -> Iterator[str]:
    """A local file name to write; on success its content is put at `path` atomically.

    For writers that want a local file name (pyarrow, matplotlib): a local
    `path` gets the file through a rename of `.NAME.tmp` beside it, a URL
    through a local temporary file copied to `.NAME.tmp` there and renamed.
    On an error nothing is put at `path`.
    """
    path = str(path)
    makedirs(parent(path))
    if not is_url(path):
        temporary = join(parent(path), f".{name(path)}.tmp")
        try:
            yield temporary
            os.replace(temporary, path)
        finally:
            Path(temporary).unlink(missing_ok=True)
        return
    with tempfile.TemporaryDirectory(prefix="seqpipe-") as local:
        temporary = str(Path(local, name(path)))
        yield temporary
        staged = join(parent(path), f".{name(path)}.tmp")
        _gfile().copy(temporary, staged, overwrite=True)
        _gfile().rename(staged, path, overwrite=True)


def move_tree(source: PathLike, target: PathLike, last: Sequence[str] = ()) -> None:
    """Replaces the directory `target` by `source` (which is gone afterwards).

    A local directory is renamed. On a URL, where there is no directory
    rename, the files move one by one, those named in `last` (e.g. a
    SavedModel's `saved_model.pb`) after all others, so a reader that
    looks for them finds the rest already there; the old `target` is deleted
    first, so a kill in between leaves `target` incomplete (its `last` files
    missing) until the next run replaces it.
    """
    rmtree(target)
    if not is_url(source):
        os.replace(source, target)
        return
    files = _files_below(str(source))
    for relative in sorted(files, key=lambda f: (name(f) in last, f)):
        makedirs(parent(join(target, relative)))
        _gfile().rename(join(source, relative), join(target, relative), overwrite=True)
    rmtree(source)


def _files_below(directory: str) -> list[str]:
    """The files below the URL `directory`, as "/"-separated relative names."""
    files = []
    for entry in listdir(directory):
        path = join(directory, entry)
        if isdir(path):
            files += [f"{entry}/{relative}" for relative in _files_below(path)]
        else:
            files.append(entry)
    return files


def _gfile():
    """`tf.io.gfile`, imported on first use of a URL (TensorFlow loads slowly)."""
    import tensorflow as tf

    return tf.io.gfile
