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
    assert result["splits"] == {"train": {"records": 5, "timesteps": 12, "shards": 1},
                                "val": {"records": 1, "timesteps": 3, "shards": 1},
                                "test": {"records": 0, "timesteps": 0, "shards": 0}}
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
