"""Shared fixtures: one tiny synthetic dataset, preprocessed for real, per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqpipe import synthetic
from seqpipe.config import Config, load_config


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
