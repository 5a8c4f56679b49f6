"""Tests of seqpipe.dataset.metadata: exact JSON round trips and named failures."""

import json

import pytest

from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset.metadata import DatasetMetadata, SplitInfo
from seqpipe.dataset.records import SCHEMA_VERSION, DatasetError

LITERAL = {
    "schema_version": SCHEMA_VERSION,
    "num_features": 2,
    "feature_names": ["a", "b"],
    "compression": "none",
    "splits": {
        "train": {"num_records": 2, "num_timesteps": 5, "num_shards": 1,
                  "files": ["seqpipe-train.tfrecord-00000-of-00001"]},
        "val": {"num_records": 0, "num_timesteps": 0, "num_shards": 0, "files": []},
        "test": {"num_records": 1, "num_timesteps": 3, "num_shards": 1,
                 "files": ["seqpipe-test.tfrecord-00000-of-00001"]},
    },
    "length_stats": {"min": 2, "max": 3, "mean": 2.6666666666666665,
                     "quantiles": {"0.5": 3.0},
                     "histogram": {"edges": [2, 3, 4], "counts": [1, 2]}},
    "feature_stats": {"num_timesteps": 5, "mean": [0.5, -1.0], "std": [1.0, 0.0],
                      "min": [0.0, -1.0], "max": [1.0, -1.0]},
    "bucket_boundaries": [2, 3],
    "labels": ["x", "y"],
    "label_counts": {"x": 2, "y": 1},
    "counts": {"read": 4, "written": 3, "rejected": 1, "truncated": 0,
               "rejected_by_reason": {"empty": 1},
               "by_input": {"in.jsonl": {"read": 4, "written": 3, "rejected": 1}}},
    "config": {"min_length": 1},
    "inputs": ["in.jsonl"],
    "tfds_readable": True,
    "created": "2026-12-03T00:00:00+00:00",
}


def test_json_round_trip_is_exact(tmp_path):
    typed = DatasetMetadata.from_json(LITERAL)
    assert typed.to_json() == LITERAL
    metadata_lib.write(typed, tmp_path)
    assert json.loads((tmp_path / "metadata.json").read_text()) == LITERAL
    assert metadata_lib.read(tmp_path) == typed


def test_fields_are_typed():
    typed = DatasetMetadata.from_json(LITERAL)
    assert typed.split("train") == SplitInfo(2, 5, 1, ("seqpipe-train.tfrecord-00000-of-00001",))
    assert typed.num_records("test") == 1
    assert typed.num_records("nonexistent") == 0
    assert typed.length_stats.histogram.counts == (1, 2)
    assert typed.feature_stats.std == (1.0, 0.0)
    assert typed.counts.rejected_by_reason == {"empty": 1}
    assert typed.tf_compression_type == ""
    assert metadata_lib.splits_with_records(typed) == ["train", "test"]
    with pytest.raises(AttributeError):
        typed.num_features = 3  # frozen


def test_a_note_is_kept_only_when_present():
    noted = {**LITERAL, "tfds_readable": False, "compression": "gzip",
             "tfds_note": "no TFDS metadata: TFDS reads only uncompressed TFRecords"}
    typed = DatasetMetadata.from_json(noted)
    assert typed.to_json() == noted
    assert typed.tf_compression_type == "GZIP"
    assert "tfds_note" not in DatasetMetadata.from_json(LITERAL).to_json()


def test_an_empty_dataset_round_trips():
    empty = {**LITERAL,
             "splits": {s: {"num_records": 0, "num_timesteps": 0, "num_shards": 0, "files": []}
                        for s in ("train", "val", "test")},
             "length_stats": {"min": None, "max": None, "mean": None,
                              "quantiles": {"0.5": None},
                              "histogram": {"edges": [], "counts": []}},
             "feature_stats": {"num_timesteps": 0, "mean": None, "std": None, "min": None,
                               "max": None}}
    typed = DatasetMetadata.from_json(empty)
    assert typed.to_json() == empty
    assert typed.feature_stats.mean is None and typed.length_stats.max is None


@pytest.mark.parametrize("change, message", [
    ({"schema_version": 99}, f"schema_version 99, this seqpipe reads version {SCHEMA_VERSION}"),
    ({"colour": "red"}, "unknown field\\(s\\) colour in DatasetMetadata"),
    ({"num_features": None, "_drop": "num_features"}, "missing field\\(s\\) num_features"),
    ({"counts": {**LITERAL["counts"], "lost": 1}}, "unknown field\\(s\\) lost in Counts"),
    ({"splits": {"train": [1, 2]}}, "SplitInfo must be a JSON object"),
])
def test_bad_content_is_refused_naming_the_file(change, message):
    tree = {**LITERAL, **change}
    tree.pop(tree.pop("_drop", None) or "_none", None)
    with pytest.raises(DatasetError, match=f"^data/metadata.json: {message}"):
        DatasetMetadata.from_json(tree, "data/metadata.json")


def test_read_names_what_is_missing(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset directory"):
        metadata_lib.read(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no metadata.json; not a finished seqpipe dataset"):
        metadata_lib.read(tmp_path)
    (tmp_path / "metadata.json").write_text("{not json")
    with pytest.raises(DatasetError, match="metadata.json: not valid JSON"):
        metadata_lib.read(tmp_path)


def test_check_compatible_names_the_differing_field():
    trained_on = DatasetMetadata.from_json(LITERAL)
    other = DatasetMetadata.from_json({**LITERAL, "num_features": 3})
    metadata_lib.check_compatible(trained_on, trained_on, "m", "d")
    with pytest.raises(DatasetError, match="d has num_features=3 but the model in m was "
                                           "trained on data with num_features=2"):
        metadata_lib.check_compatible(trained_on, other, "m", "d")


def test_read_metadata_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset directory"):
        metadata_lib.read(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no metadata.json"):
        metadata_lib.read(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(DatasetError, match="schema_version 99"):
        metadata_lib.read(tmp_path)


def test_check_compatible_names_the_mismatch():
    with pytest.raises(DatasetError, match="num_features=3 .* num_features=8"):
        metadata_lib.check_compatible(DatasetMetadata(num_features=8, splits={}),
                                      DatasetMetadata(num_features=3, splits={}), "m", "d")
