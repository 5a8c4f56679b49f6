"""Public labelled sequence sets from the aeon wheel, as seqpipe raw JSON lines.

The aeon wheel (`pip download 'aeon==1.6.*' --no-deps -d /tmp/aeon-wheel`) ships a
few classification sets under `aeon/datasets/data/NAME/NAME_TRAIN.ts` and
`NAME_TEST.ts` in the sktime/aeon `.ts` format. This module reads them offline,
from the wheel file itself (a zip: nothing is installed), from an extracted
`aeon/datasets/data` directory, or from an installed `aeon` package, and writes
one seqpipe raw file per set:

    {"id": "GunPoint-train-00000", "steps": [[-0.64], [-0.64], ...], "label": "1",
     "split": "train"}

(timesteps as rows, one column per `.ts` dimension; the `.ts` train/test split is
kept as the `split` field, so `seqpipe preprocess` keeps it too and writes no
validation split). Nothing here is committed data: the files go where `--output`
says.

Held out: JapaneseVowels and every spoken-digit set are reserved for judging
the package; `convert_set` refuses them by name (`HELD_OUT_MARKERS`) and `--list`
marks them without reading them.

    python benchmarks/aeon_sets.py --aeon /tmp/aeon-wheel/aeon-1.6.0-py3-none-any.whl --list
    python benchmarks/aeon_sets.py --aeon /tmp/aeon-wheel/aeon-1.6.0-py3-none-any.whl \\
        --output /tmp/aeon-raw GunPoint BasicMotions PickupGestureWiimoteZ
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib.util
import json
import math
import zipfile
from collections.abc import Iterator
from pathlib import Path

DATA_PREFIX = "aeon/datasets/data/"
SPLITS = ("train", "test")
MISSING_VALUES = frozenset({"?", "nan"})
# Lower-case substrings of a set name that mark it as held out for judging.
HELD_OUT_MARKERS = ("japanesevowels", "spoken", "digit")


class TsFormatError(ValueError):
    """A `.ts` file this reader cannot use (no @data, not classification...)."""


class HeldOutError(ValueError):
    """The set is reserved for judging and must not be converted."""


@dataclasses.dataclass
class TsFile:
    """A parsed `.ts` classification file.

    Attributes:
        header: the `@key value` lines before `@data`, keys lower-cased.
        records: `(steps, label)` pairs; `steps` is a list of timesteps, each a
            list of one float per dimension.
        skipped: records left out, per reason (`missing_values`,
            `ragged_dimensions`, `dimension_count`, `empty`).
    """

    header: dict[str, str]
    records: list[tuple[list[list[float]], str]]
    skipped: collections.Counter


def is_held_out(name: str) -> bool:
    """Whether `name` is a set reserved for judging (JapaneseVowels, spoken digits)."""
    lowered = name.lower()
    return any(marker in lowered for marker in HELD_OUT_MARKERS)


def parse_ts(text: str) -> TsFile:
    """Parses the text of a `.ts` classification file.

    Format: `#` comment lines, `@key value` header lines, `@data`, then one
    record a line: dimensions separated by `:`, values inside a dimension by
    `,`, the class label last. Dimensions may have any length (variable-length
    sets), but all dimensions of one record the same. A record with a missing
    value (`?` or `NaN`), dimensions of different lengths, a dimension count
    unlike the first record's, or no values is skipped and counted.

    Raises:
        TsFormatError: no `@data` line, time stamps, or no class labels
            (a regression set).
    """
    lines = iter(text.splitlines())
    header = _parse_header(lines)
    if header.get("timestamps", "false").lower() == "true":
        raise TsFormatError("time-stamped .ts files are not supported")
    if not header.get("classlabel", "false").lower().startswith("true"):
        raise TsFormatError("not a classification set (no '@classLabel true' line)")
    records, skipped = [], collections.Counter()
    num_dims = None
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        steps, label, reason = _parse_record(line, num_dims)
        if reason:
            skipped[reason] += 1
            continue
        num_dims = len(steps[0])
        records.append((steps, label))
    return TsFile(header=header, records=records, skipped=skipped)


def _parse_header(lines: Iterator[str]) -> dict[str, str]:
    """Consumes lines up to and including `@data`; the `@key value` pairs before it."""
    header = {}
    for line in lines:
        line = line.strip()
        if not line.startswith("@"):
            continue
        key, _, value = line[1:].partition(" ")
        if key.lower() == "data":
            return header
        header[key.lower()] = value.strip()
    raise TsFormatError("no @data line")


def _parse_record(line: str, num_dims: int | None
                  ) -> tuple[list[list[float]], str, str | None]:
    """One data line -> `(steps [T][D], label, None)` or `([], "", skip reason)`."""
    *dims, label = line.split(":")
    columns = [[value.strip() for value in dim.split(",")] for dim in dims]
    if not columns or any(not column or column == [""] for column in columns):
        return [], "", "empty"
    if any(value.lower() in MISSING_VALUES for column in columns for value in column):
        return [], "", "missing_values"
    if len({len(column) for column in columns}) > 1:
        return [], "", "ragged_dimensions"
    if num_dims is not None and len(columns) != num_dims:
        return [], "", "dimension_count"
    values = [[float(value) for value in column] for column in columns]
    if not all(math.isfinite(v) for column in values for v in column):
        return [], "", "missing_values"
    return [list(step) for step in zip(*values, strict=True)], label.strip(), None


class AeonData:
    """The `.ts` files of aeon's bundled datasets, from a wheel, a directory or aeon.

    Args:
        location: the aeon wheel (`.whl`), an `aeon/datasets/data` directory (or
            any directory holding `NAME/NAME_TRAIN.ts` folders), or `None` for
            the installed `aeon` package.

    Raises:
        FileNotFoundError: no such file or directory, or aeon is not installed.
    """

    def __init__(self, location: str | Path | None = None):
        self.location = Path(location) if location else _installed_data_dir()
        if not self.location.exists():
            raise FileNotFoundError(f"{self.location}: no such wheel or directory")
        self._zip = zipfile.ZipFile(self.location) if self.location.is_file() else None

    def set_names(self) -> list[str]:
        """Names of the sets with both a `_TRAIN.ts` and a `_TEST.ts` file, sorted."""
        files = self._ts_files()
        return sorted(name for name in {path.split("/")[-1].rsplit("_", 1)[0] for path in files}
                      if {f"{name}/{name}_TRAIN.ts", f"{name}/{name}_TEST.ts"} <= files)

    def read_text(self, name: str, split: str) -> str:
        """The text of `NAME/NAME_<SPLIT>.ts`."""
        relative = f"{name}/{name}_{split.upper()}.ts"
        if self._zip is not None:
            return self._zip.read(DATA_PREFIX + relative).decode("utf-8")
        return (self.location / relative).read_text(encoding="utf-8")

    def _ts_files(self) -> set[str]:
        """Every `.ts` file as `FOLDER/FILE.ts` relative to the data directory."""
        if self._zip is not None:
            return {name.removeprefix(DATA_PREFIX) for name in self._zip.namelist()
                    if name.startswith(DATA_PREFIX) and name.endswith(".ts")
                    and name.count("/") == DATA_PREFIX.count("/") + 1}
        return {f"{path.parent.name}/{path.name}" for path in self.location.glob("*/*.ts")}


def _installed_data_dir() -> Path:
    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("aeon is not installed: pass --aeon WHEEL_OR_DIR (get the "
                                "wheel with pip download 'aeon==1.6.*' --no-deps -d DIR)")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def describe_set(data: AeonData, name: str) -> dict[str, object]:
    """Header facts of a set (no values parsed): dimensions, lengths, classes.

    Held-out sets are only named, never read.
    """
    if is_held_out(name):
        return {"name": name, "held_out": True}
    header = _parse_header(iter(data.read_text(name, "train").splitlines()))
    labels = header.get("classlabel", "false").split()
    return {"name": name, "held_out": False,
            "classification": bool(labels) and labels[0].lower() == "true",
            "dimensions": int(header.get("dimensions", 1)),
            "equal_length": header.get("equallength", "?").lower(),
            "series_length": header.get("serieslength", "?"),
            "classes": len(labels) - 1 if labels else 0}


def convert_set(data: AeonData, name: str, output: Path) -> dict[str, object]:
    """Writes `output/NAME.jsonl` (both splits) and returns what it holds.

    Returns:
        `path`, `name`, `num_records` and `skipped` per split, `num_features`,
        `min_length`, `max_length`, `classes`.

    Raises:
        HeldOutError: the set is held out for judging.
        TsFormatError: not a usable classification `.ts` set.
    """
    if is_held_out(name):
        raise HeldOutError(f"{name} is held out for judging: not converted")
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{name}.jsonl"
    summary: dict[str, object] = {"name": name, "path": str(path)}
    lengths, labels, widths = [], set(), set()
    with path.open("w") as out:
        for split in SPLITS:
            parsed = parse_ts(data.read_text(name, split))
            for index, (steps, label) in enumerate(parsed.records):
                out.write(json.dumps({"id": f"{name}-{split}-{index:05d}", "steps": steps,
                                      "label": label, "split": split}) + "\n")
                lengths.append(len(steps))
                widths.add(len(steps[0]))
                labels.add(label)
            summary[f"num_{split}"] = len(parsed.records)
            summary[f"skipped_{split}"] = dict(parsed.skipped)
    if len(widths) != 1:
        raise TsFormatError(f"{name}: train and test have different dimension counts {widths}")
    summary.update(num_features=widths.pop(), min_length=min(lengths),
                   max_length=max(lengths), classes=len(labels))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aeon", help="the aeon wheel (.whl) or its aeon/datasets/data "
                                       "directory (default: the installed aeon)")
    parser.add_argument("--output", help="directory for NAME.jsonl files")
    parser.add_argument("--list", action="store_true", help="list the sets and exit")
    parser.add_argument("names", nargs="*", help="sets to convert")
    args = parser.parse_args(argv)
    data = AeonData(args.aeon)
    if args.list or not args.names:
        for name in data.set_names():
            print(json.dumps(describe_set(data, name)))
        return
    if not args.output:
        parser.error("--output is required to convert")
    for name in args.names:
        print(json.dumps(convert_set(data, name, Path(args.output))))


if __name__ == "__main__":
    main()
