"""Shared fixtures: one tiny synthetic dataset, preprocessed for real, per test session.

The suite runs in parallel processes (pytest-xdist, `--dist loadfile` in pyproject.toml:
a file's tests, and so its module fixtures, stay in one process); session fixtures are
built once per process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from seqpipe import synthetic
from seqpipe.config import Config, load_config


def pytest_collection_modifyitems(config, items):
    """Files with slow tests first (each file in its own order): with `--dist loadfile`
    the long files start at once and the short ones fill the gaps, instead of the longest
    starting last and running alone."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture(scope="session")
def tiny_config() -> Config:
    """The tiny config, smaller still so each training test takes seconds."""
    cfg = load_config("tiny", ["synth.num_sequences=160", "synth.max_length=60",
                               "train.epochs=2", "model.units=16",
                               "model.embedding_dim=8"])
    return cfg


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, tiny_config) -> Path:
    """A labeled dataset written by the real Beam job (DirectRunner)."""
    from beam_jobs.preprocess import preprocess

    root = tmp_path_factory.mktemp("tiny")
    raw = root / "raw" / "synthetic.jsonl"
    synthetic.write_jsonl(tiny_config.synth, raw)
    data_dir = root / "data"
    preprocess([str(raw)], str(data_dir), tiny_config.preprocess)
    return data_dir



@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_dataset, tiny_config) -> Path:
    """A model trained on `tiny_dataset` (2 epochs), shared by the tests that only read it."""
    from seqpipe.training.trainer import train

    model_dir = tmp_path_factory.mktemp("tiny-model") / "model"
    train(tiny_dataset, model_dir, tiny_config, verbose=False)
    return model_dir
