"""`objtest://`: a Beam file system that behaves like an object store, over local files.

`objtest:///ABSOLUTE/PATH` names an object whose bytes are the local file
`/ABSOLUTE/PATH`. It keeps the rules of gs:// and s3:// that a job writing
there must live with:

* no directories: `mkdirs` does nothing, `has_dirs` is False, listing is by
  name prefix, and a name that is only a prefix (a "directory") cannot be
  opened, copied, renamed or deleted as one;
* objects appear whole: `create` writes to a hidden upload that becomes the
  object when closed; no append, no update in place;
* `rename` is a copy then a delete, object by object (a kill between the two
  leaves both);
* `delete` of a missing object does nothing; a name ending in "/" deletes
  every object under it.

Beam finds a file system by its scheme among the imported `FileSystem`
subclasses (`FileSystems.get_filesystem`): the driver imports this module,
and DirectRunner's worker processes import it through the pipeline option
`--beam_plugins=objtest_filesystem` (with tests/ on their `PYTHONPATH`);
`beam_jobs.preprocess` adds that option for the output's file system itself.

Fault injection, by environment variable (read in every process):
`OBJTEST_KILL_AT=N` SIGKILLs the process just before its N-th change of a
visible object (one not under a `.staging-` prefix): the commit's moves, its
metadata.json, its deletions. `OBJTEST_LOG=FILE` appends one line per visible
change (`create|copy|delete NAME`), so a test can count the kill points.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import signal
import uuid

from apache_beam.io.filesystem import CompressedFile, CompressionTypes, FileMetadata, FileSystem

SCHEME = "objtest"
PREFIX = f"{SCHEME}://"
_UPLOAD = ".objtest-upload-"
_changes = itertools.count(1)


def local_path(url: str) -> str:
    """The local file of `objtest:///PATH` (`/PATH`)."""
    if not url.startswith(PREFIX + "/"):
        raise ValueError(f"not an objtest:///ABSOLUTE/PATH URL: {url!r}")
    return url[len(PREFIX):]


def url(path: str) -> str:
    """The `objtest://` URL of a local absolute path."""
    return PREFIX + os.path.abspath(str(path))


def _is_object(path: str) -> bool:
    return os.path.isfile(path) and _UPLOAD not in path


def _change(kind: str, path: str, action) -> None:
    """Runs `action` (a change of the object at `path`), counted and maybe killed first."""
    if "/.staging-" not in path and _UPLOAD not in path:
        number = next(_changes)
        if os.environ.get("OBJTEST_LOG"):
            with open(os.environ["OBJTEST_LOG"], "a") as log:
                log.write(f"{kind} {path}\n")
        if number == int(os.environ.get("OBJTEST_KILL_AT", "0")):
            os.kill(os.getpid(), signal.SIGKILL)
    action()


class _Upload(io.RawIOBase):
    """A write channel whose bytes become the object only when it is closed."""

    mode = "wb"

    def __init__(self, path: str):
        super().__init__()
        self._path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._upload = f"{path}{_UPLOAD}{uuid.uuid4().hex}"
        self._file = open(self._upload, "wb")  # noqa: SIM115 (closed in close())

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        if not self.closed:
            self._file.close()
            _change("create", self._path, lambda: os.replace(self._upload, self._path))
        super().close()


class ObjectTestFileSystem(FileSystem):
    """The `objtest://` file system (see the module docstring)."""

    @classmethod
    def scheme(cls) -> str:
        return SCHEME

    def join(self, basepath: str, *paths: str) -> str:
        for path in paths:
            basepath = basepath.rstrip("/") + "/" + path.lstrip("/")
        return basepath

    def split(self, path: str) -> tuple[str, str]:
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path: str) -> None:
        """No directories in an object store."""

    def has_dirs(self) -> bool:
        return False

    def _list(self, dir_or_prefix: str):
        prefix = local_path(dir_or_prefix)
        base = prefix if prefix.endswith("/") else os.path.dirname(prefix)
        for root, _, names in os.walk(base):
            for name in names:
                path = os.path.join(root, name)
                if path.startswith(prefix) and _UPLOAD not in path:
                    yield FileMetadata(url(path), os.path.getsize(path),
                                       os.path.getmtime(path))

    def create(self, path: str, mime_type: str = "application/octet-stream",
               compression_type: str = CompressionTypes.AUTO):
        channel = _Upload(local_path(path))
        compression_type = FileSystem._get_compression_type(path, compression_type)
        if compression_type == CompressionTypes.UNCOMPRESSED:
            return channel
        return CompressedFile(channel, compression_type=compression_type)

    def open(self, path: str, mime_type: str = "application/octet-stream",
             compression_type: str = CompressionTypes.AUTO):
        local = local_path(path)
        if not _is_object(local):
            raise OSError(f"no object {path}")
        channel = open(local, "rb")  # noqa: SIM115 (the caller closes it)
        compression_type = FileSystem._get_compression_type(path, compression_type)
        if compression_type == CompressionTypes.UNCOMPRESSED:
            return channel
        return CompressedFile(channel, compression_type=compression_type)

    def copy(self, source_file_names, destination_file_names) -> None:
        for source, destination in zip(source_file_names, destination_file_names,
                                       strict=True):
            self._copy(source, destination)

    def _copy(self, source: str, destination: str) -> None:
        src, dst = local_path(source), local_path(destination)
        if not _is_object(src):
            raise OSError(f"copy: no object {source} (an object store copies objects, "
                          "not directories)")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        upload = f"{dst}{_UPLOAD}{uuid.uuid4().hex}"
        shutil.copyfile(src, upload)
        _change("copy", dst, lambda: os.replace(upload, dst))

    def rename(self, source_file_names, destination_file_names) -> None:
        """Copy, then delete: object by object."""
        for source, destination in zip(source_file_names, destination_file_names,
                                       strict=True):
            self._copy(source, destination)
            self.delete([source])

    def exists(self, path: str) -> bool:
        return _is_object(local_path(path))

    def size(self, path: str) -> int:
        return os.path.getsize(self._object(path))

    def last_updated(self, path: str) -> float:
        return os.path.getmtime(self._object(path))

    def checksum(self, path: str) -> str:
        return str(self.size(path))

    def metadata(self, path: str) -> FileMetadata:
        local = self._object(path)
        return FileMetadata(path, os.path.getsize(local), os.path.getmtime(local))

    def delete(self, paths) -> None:
        for path in paths:
            if path.endswith("/"):
                targets = [m.path for m in self._list(path)]
            else:
                targets = [m.path for m in self.match([path])[0].metadata_list]
            for target in targets:
                local = local_path(target)
                _change("delete", local, lambda local=local: os.remove(local))

    def _object(self, path: str) -> str:
        local = local_path(path)
        if not _is_object(local):
            raise OSError(f"no object {path}")
        return local
