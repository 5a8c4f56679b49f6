"""seqpipe.commands.inspect on a real tiny dataset written by the Beam job."""

import json

import pytest

from beam_jobs.preprocess import preprocess
from seqpipe.commands.inspect import format_inspection, inspect_dataset
from seqpipe.config import DataConfig, PreprocessConfig
from seqpipe.dataset import records

LENGTHS = (1, 2, 2, 3, 4)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    lines = [json.dumps({"id": f"s{i}", "split": "train", "label": "a",
                         "steps": [[float(t), 1.0] for t in range(length)]})
             for i, length in enumerate(LENGTHS)]
    lines += ["{broken", '{"id": "e", "steps": []}',
              json.dumps({"id": "v", "split": "val", "steps": [[0.0, 0.0]] * 3})]
    (root / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = root / "data"
    preprocess([str(root / "in.jsonl")], str(out), PreprocessConfig(), num_buckets=2)
    return out


def test_inspect_reports_metadata_and_exact_padding(data_dir):
    cfg = DataConfig(batching="buckets", batch_size=2, timestep_budget=0,
                     bucket_boundaries=(2, 4), pad_to_bucket_boundary=True, deterministic=True)
    result = inspect_dataset(data_dir, cfg)
    assert result["counts"] == {"read": 8, "written": 6, "rejected": 2, "truncated": 0,
                                "rejected_by_reason": {"unparseable": 1, "empty": 1}}
    # 2 shards asked for (MIN_SHARDS), but all 5 ids hash to one: empty shards are not written
    complete = [0.0, 0.0]  # missing entries per feature (None: a split without records)
    assert result["splits"] == {
        "train": {"records": 5, "timesteps": 12, "shards": 1, "missing_fraction": complete},
        "val": {"records": 1, "timesteps": 3, "shards": 1, "missing_fraction": complete},
        "test": {"records": 0, "timesteps": 0, "shards": 0, "missing_fraction": None}}
    assert (result["num_features"], result["compression"], result["tfds_readable"]) == (
        2, "none", True)
    assert (result["length_stats"]["min"], result["length_stats"]["max"]) == (1, 4)
    assert result["length_stats"]["mean"] == pytest.approx(15 / 6)
    assert result["bucket_boundaries"] == [2, 4]  # quantiles of lengths 1, 2, 2, 3, 3, 4
    assert result["data_config"]["bucket_boundaries"] == [2, 4]  # what batching used
    # bucket (..2]: lengths 1, 2, 2 -> batches of 2 and 1 padded to T=2 (6 slots);
    # bucket (2, 4]: lengths 3, 4 -> one batch padded to T=4 (8 slots).
    padding = result["padding"]
    assert (padding["real_timesteps"], padding["padded_timesteps"]) == (12, 14)
    assert padding["efficiency"] == pytest.approx(12 / 14)
    assert (padding["num_batches"], padding["distinct_shapes"]) == (3, 3)
    json.dumps(result)  # `seqpipe inspect --json` prints it as is

    text = format_inspection(result)
    assert "read 8 = written 6 + rejected 2" in text
    assert "rejected unparseable" in text and "padding efficiency 85.7%" in text
    assert "bucket_boundaries=[2, 4]" in text


def test_inspect_one_bucket_at_the_longest_length_and_missing_dataset(data_dir, tmp_path):
    result = inspect_dataset(data_dir, DataConfig(batching="buckets", batch_size=8,
                                                  timestep_budget=0, bucket_boundaries=(4,),
                                                  deterministic=True))
    # one batch of the 5 train records padded to the longest length (4): 20 slots
    padding = result["padding"]
    assert (padding["real_timesteps"], padding["padded_timesteps"]) == (12, 20)
    assert (padding["num_batches"], padding["num_records"]) == (1, 5)
    with pytest.raises(records.DatasetError, match="no such dataset"):
        inspect_dataset(tmp_path / "nothing", DataConfig())


def test_inspect_shows_missing_entries_and_times(tmp_path):
    """Train: 2 records x 2 steps x 2 features, one entry of feature `b` missing (1 of 4
    of its entries: 25%, 12.5% overall); times with gaps 2 and 4 (mean 3, std 1)."""
    lines = [json.dumps({"id": "a", "split": "train", "steps": [[1.0, None], [2.0, 3.0]],
                         "t": [0, 2]}),
             json.dumps({"id": "b", "split": "train", "steps": [[1.0, 1.0], [2.0, 2.0]],
                         "t": [10, 14]}),
             json.dumps({"id": "c", "split": "val", "steps": [[1.0, 1.0]], "t": [5]})]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "data"
    preprocess([str(tmp_path / "in.jsonl")], str(out), PreprocessConfig())
    result = inspect_dataset(out, DataConfig())
    assert result["splits"]["train"]["missing_fraction"] == [0.0, 0.25]
    assert result["splits"]["val"]["missing_fraction"] == [0.0, 0.0]
    assert result["splits"]["test"]["missing_fraction"] is None  # no records
    times = result["times"]
    assert (times["num_records"], times["num_intervals"]) == (3, 2)
    assert (times["mean"], times["std"], times["min"], times["max"]) == pytest.approx(
        (3.0, 1.0, 2.0, 4.0))
    json.dumps(result)

    text = format_inspection(result)
    assert "missing entries in train: 12.5% (f0 0.0%, f1 25.0%)" in text
    assert "missing entries in val" not in text  # no gap there
    assert "times on 3 records; train gaps: 2, mean 3, std 1, min 2, max 4" in text


def test_inspect_without_gaps_or_times_says_nothing_of_them(data_dir):
    result = inspect_dataset(data_dir, DataConfig())
    assert result["times"] is None
    text = format_inspection(result)
    assert "missing entries" not in text and "times on" not in text
