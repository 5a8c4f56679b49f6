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


def read_split(directory: Path, metadata: DatasetMetadata, split: str) -> dict[str, dict]:
    import tensorflow as tf

    paths = [str(directory / name) for name in metadata.split(split).files]
    out = {}
    for raw in tf.data.TFRecordDataset(paths, compression_type=metadata.tf_compression_type):
        record = records.decode_sequence(raw.numpy(), metadata.num_features)
        out[record["id"]] = record
    return out
