"""Path checks shared by the command line and the library: outputs never overwrite inputs.

Light on purpose (no TensorFlow, no Beam): the command line runs these before
any heavy import, and `beam_jobs.preprocess.preprocess` runs them again for
callers that do not go through the command line.
"""

from __future__ import annotations

import fnmatch
import glob
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from seqpipe.errors import SeqpipeError


class PathError(SeqpipeError, ValueError):
    """A path argument the command refuses (it would overwrite an input, or is not
    what the command needs)."""


def same_or_inside(path: Path, directory: Path) -> bool:
    """Whether `path` is `directory` or lies below it (symlinks resolved)."""
    path, directory = path.resolve(), directory.resolve()
    return path == directory or directory in path.parents


def check_output_outside_inputs(inputs: Sequence[str], output: str) -> None:
    """Refuses a dataset output that is an input, holds one, or that the input
    patterns would read on a re-run (the dataset taken for raw input).

    An output URL (`gs://...`, any Beam file system) is compared with the
    input patterns of URLs by name only (object stores have no directories).

    Raises:
        PathError: naming the output and the input it overlaps.
    """
    if "://" in output:
        for pattern in inputs:
            if "://" in pattern and url_pattern_reaches(pattern, output):
                raise PathError(f"preprocess --output {output!r} lies where the input "
                                f"{pattern!r} reads; choose an output outside the inputs")
        return
    out = Path(output).absolute()
    for pattern in inputs:
        if "://" in pattern:
            continue
        for path in glob.glob(pattern):
            if same_or_inside(Path(path), out) or same_or_inside(out, Path(path)):
                raise PathError(f"preprocess --output {output!r} overlaps the input "
                                f"{path!r}; choose an output outside the inputs")
        if pattern_reaches(Path(pattern).absolute(), out):
            raise PathError(f"preprocess --output {output!r} lies where the input "
                            f"{pattern!r} reads; choose an output outside the inputs")


def pattern_reaches(pattern: Path, directory: Path) -> bool:
    """Whether `pattern` (a path or glob) can match `directory` or a path inside it.

    A non-recursive glob matches paths of its own depth only: it reaches a
    directory when its leading components match the directory's. A literal
    directory, or a `**` glob, reaches everything below it.
    """
    parts = pattern.parts
    if "**" in parts:
        return same_or_inside(directory, Path(*parts[:parts.index("**")]))
    if not glob.has_magic(str(pattern)):
        return pattern.is_dir() and same_or_inside(directory, pattern)
    depth = len(directory.parts)
    return depth <= len(parts) and fnmatch.fnmatchcase(str(directory), str(Path(*parts[:depth])))


def url_pattern_reaches(pattern: str, output: str) -> bool:
    """Whether the URL `pattern` (a path or glob) can match `output` or a name below it.

    A literal URL names one object: it reaches the output if it is the output
    or lies below it. A glob reaches it as `pattern_reaches` says for paths.
    """
    out, parts = PurePosixPath(output.rstrip("/")), PurePosixPath(pattern).parts
    if not glob.has_magic(pattern):
        return PurePosixPath(pattern) == out or out in PurePosixPath(pattern).parents
    recursive = [i for i, part in enumerate(parts) if "**" in part]
    if recursive:
        head = parts[:recursive[0]]
        return out.parts[:len(head)] == head or head[:len(out.parts)] == out.parts
    depth = len(out.parts)
    return depth <= len(parts) and fnmatch.fnmatchcase(str(out),
                                                        str(PurePosixPath(*parts[:depth])))
