"""Helpers of the Beam job's tests (tests/test_beam_*.py, tests/test_preprocess.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from beam_jobs import write
from seqpipe.dataset import records
from seqpipe.dataset.metadata import DatasetMetadata
from seqpipe.dataset.sources import Sequence


def seq(sequence_id, length=2, width=2, source="s", line=1, **kwargs):
    steps = np.full((length, width), float(length), dtype=np.float32)
    return Sequence(id=sequence_id, steps=steps, source=source, line=line, **kwargs)


def part_records(part) -> list[tuple[str, list]]:
    """(id, steps) of every record of a part file, in file order."""
    return [(r["id"], r["steps"].tolist()) for r in
            (records.decode_sequence(data, len(seq("x").steps[0]))
             for data in write.read_tfrecords(part.path))]


def written_part(directory, split, sequences):
    writer = write.PartWriter(str(directory), split, "none")
    for sequence in sequences:
        writer.write(records.encode_sequence(sequence.id, sequence.steps, sequence.label),
                     sequence)
    return writer.close()


def read_rejects(data_dir: Path) -> list[dict]:
    """Every rejection record of a local dataset's `rejects/` files, file by file."""
    import json

    return [json.loads(line) for path in sorted((data_dir / "rejects").glob("*.jsonl"))
            for line in path.read_text().splitlines()]


def read_split(directory: Path, metadata: DatasetMetadata, split: str) -> dict[str, dict]:
    import tensorflow as tf

    paths = [str(directory / name) for name in metadata.split(split).files]
    out = {}
    for raw in tf.data.TFRecordDataset(paths, compression_type=metadata.tf_compression_type):
        record = records.decode_sequence(raw.numpy(), metadata.num_features)
        out[record["id"]] = record
    return out


# Three rejects: unparseable, empty, duplicate id (of g01).
BAD_LINES = ["{not json", '{"id": "e", "steps": []}',
             '{"id": "g01", "steps": [[1, 2, 3], [4, 5, 6]]}']


def write_inputs(path: Path, ids: range, bad: bool = True) -> str:
    """JSON lines: records g{i} of 2..6 steps of 3 features, then `BAD_LINES`."""
    import json

    lines = [json.dumps({"id": f"g{i:02d}", "label": f"c{i % 2}",
                         "steps": [[i + 0.5, -t, t * 0.25] for t in range(2 + i % 5)]})
             for i in ids]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines + (BAD_LINES if bad else [])) + "\n")
    return str(path)


def mirror(source: str, local: Path) -> Path:
    """Copies every object under `source` (any Beam file system), strays and staging
    included, to the local directory `local`, through Beam's `FileSystems`."""
    from apache_beam.io.filesystems import FileSystems

    root = source.rstrip("/")
    [result] = FileSystems.match([FileSystems.join(root, "**")])
    for found in result.metadata_list:
        target = local / found.path[len(root):].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileSystems.open(found.path, compression_type="uncompressed") as stream:
            target.write_bytes(stream.read())
    local.mkdir(parents=True, exist_ok=True)
    return local


def reader_view(data_dir: Path) -> dict | None:
    """What the readers see in a local dataset directory: None when it holds no
    finished dataset (`metadata.read` refuses it); else {split: sorted ids} read
    through `records.read_split`, with "rejected" the number of rejects lines.

    Asserts that what they see is whole: every listed file there with its listed
    size and SHA-256, and read = written + rejected.
    """
    import hashlib

    from seqpipe.dataset import metadata as metadata_lib

    try:
        metadata = metadata_lib.read(data_dir)
    except records.DatasetError as error:
        assert "no metadata.json" in str(error), error
        return None
    for name, info in metadata.files.items():
        data = (data_dir / name).read_bytes()
        assert len(data) == info.size, name
        assert info.sha256 in (None, hashlib.sha256(data).hexdigest()), name
    view = {split: sorted(r["id"] for r in records.read_split(data_dir, split, metadata))
            for split in records.SPLITS}
    rejects = [name for name in metadata.files if name.endswith(".jsonl")]
    view["rejected"] = sum(len((data_dir / name).read_text().splitlines())
                           for name in rejects)
    counts = metadata.counts
    assert counts.read == counts.written + counts.rejected == (
        sum(len(ids) for split, ids in view.items() if split != "rejected")
        + view["rejected"])
    return view


def committed_names(metadata: DatasetMetadata) -> set[str]:
    """Every file a committed dataset holds: the listed ones, metadata.json, TFDS's."""
    from beam_jobs import commit

    tfds = commit.TFDS_FILES if metadata.tfds_readable else ()
    return {*metadata.files, records.METADATA_FILE, *tfds}
