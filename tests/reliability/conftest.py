"""Fixtures of the reliability suite: small datasets and a model, made for real."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqpipe import synthetic
from seqpipe.config import load_config

# The smallest config that still exercises every stage (seconds per run).
SMALL = ["synth.num_sequences=60", "synth.max_length=30", "synth.num_features=3",
         "model.units=8", "model.embedding_dim=4", "data.batch_size=8",
         "train.epochs=1", "train.checkpoint_every_steps=2",
         "train.early_stopping_patience=0"]


@pytest.fixture(scope="session")
def small_overrides() -> list[str]:
    return list(SMALL)


def _make_dataset(root: Path, overrides: list[str]) -> Path:
    from beam_jobs.preprocess import preprocess

    cfg = load_config("tiny", overrides)
    raw = root / "raw" / "synthetic.jsonl"
    synthetic.write_jsonl(cfg.synth, raw)
    preprocess([str(raw)], str(root / "data"), cfg.preprocess)
    return root / "data"


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """60 labeled sequences, 3 features, written by the real Beam job."""
    return _make_dataset(tmp_path_factory.mktemp("small"), SMALL)


@pytest.fixture(scope="session")
def other_dataset(tmp_path_factory) -> Path:
    """A dataset with 2 features: incompatible with `small_model`."""
    return _make_dataset(tmp_path_factory.mktemp("other"),
                         [*SMALL, "synth.num_features=2", "synth.num_sequences=30"])


@pytest.fixture(scope="session")
def small_model(tmp_path_factory, small_dataset) -> Path:
    """A model trained in-process on `small_dataset` (1 epoch)."""
    from seqpipe.training.trainer import train

    model_dir = tmp_path_factory.mktemp("small-model") / "model"
    train(small_dataset, model_dir, load_config("tiny", SMALL), verbose=False)
    return model_dir
