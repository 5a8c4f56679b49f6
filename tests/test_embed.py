"""Tests of seqpipe.commands.embed: determinism, batching independence, raw input, Parquet."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from seqpipe.commands import embed
from seqpipe.dataset import sources
from seqpipe.training.model_dir import CONFIG_FILE, ENCODER_DIR, METADATA_COPY


@pytest.fixture(scope="module")
def model_dir(tiny_model) -> Path:
    return tiny_model


@pytest.fixture(scope="module")
def raw_file(tiny_dataset) -> Path:
    """The raw JSON lines the tiny dataset was preprocessed from (see conftest)."""
    return tiny_dataset.parent / "raw" / "synthetic.jsonl"


def _by_id(embeddings: embed.Embeddings) -> dict[str, np.ndarray]:
    assert len(set(embeddings.ids.tolist())) == len(embeddings), "an id appears twice"
    return dict(zip(embeddings.ids.tolist(), embeddings.vectors, strict=True))


def _assert_same_vectors(a: embed.Embeddings, b: embed.Embeddings) -> None:
    first, second = _by_id(a), _by_id(b)
    assert sorted(first) == sorted(second)
    for record_id, vector in first.items():
        np.testing.assert_allclose(vector, second[record_id], atol=1e-5, err_msg=record_id)


def test_embeddings_do_not_depend_on_batching(tiny_dataset, model_dir):
    default = embed.compute_embeddings(tiny_dataset, model_dir, "train")
    one_by_one = embed.compute_embeddings(tiny_dataset, model_dir, "train", batch_size=1)
    batches_of_7 = embed.compute_embeddings(tiny_dataset, model_dir, "train", batch_size=7)
    assert len(default) > 50
    _assert_same_vectors(default, one_by_one)
    _assert_same_vectors(default, batches_of_7)
    # The vectors are not trivially equal (a model that ignored its input would pass).
    assert np.std(default.vectors, axis=0).min() > 1e-4


def test_embeddings_are_deterministic(tiny_dataset, model_dir):
    first = embed.compute_embeddings(tiny_dataset, model_dir, "test")
    second = embed.compute_embeddings(tiny_dataset, model_dir, "test")
    np.testing.assert_array_equal(first.ids, second.ids)
    np.testing.assert_array_equal(first.vectors, second.vectors)


def test_embed_raw_equals_the_preprocessed_split(tiny_dataset, model_dir, raw_file):
    raw, rejections = embed.embed_raw([str(raw_file)], model_dir)
    assert rejections == []
    lines = [json.loads(line) for line in raw_file.read_text().splitlines()]
    assert raw.ids.tolist() == [line["id"] for line in lines]  # input order, each once
    assert raw.labels.tolist() == [line["label"] for line in lines]
    assert raw.lengths.tolist() == [len(line["steps"]) for line in lines]
    assert raw.split == embed.RAW_SPLIT
    raw_vectors = _by_id(raw)
    for split in ("train", "test"):
        preprocessed = embed.compute_embeddings(tiny_dataset, model_dir, split)
        for record_id, vector in _by_id(preprocessed).items():
            np.testing.assert_allclose(raw_vectors[record_id], vector, atol=1e-5)


def test_embed_raw_rejects_bad_records_and_keeps_every_good_one_once(
        tmp_path, model_dir, raw_file):
    good = raw_file.read_text().splitlines()[:3]
    first = json.loads(good[0])
    bad = [
        "{not json",
        json.dumps({"id": "narrow", "steps": [[1.0, 2.0]]}),            # 2 features, not 8
        json.dumps({"id": "nan", "steps": [[float("nan")] * 8]}),
        json.dumps({**first, "label": "copy"}),                          # duplicate id
        "",                                                              # blank: not a record
    ]
    plain = tmp_path / "a.jsonl"
    plain.write_text("\n".join([good[0], *bad]) + "\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as handle:
        handle.write("\n".join(good[1:]) + "\n")

    embeddings, rejections = embed.embed_raw([str(tmp_path / "*.jsonl*")], model_dir,
                                             batch_size=2)
    assert embeddings.ids.tolist() == [json.loads(line)["id"] for line in good]
    assert embeddings.labels[0] == first["label"]  # the first copy is kept
    assert embed.count_rejections(rejections) == {
        sources.UNPARSEABLE: 1, sources.WRONG_FEATURE_COUNT: 1, sources.NON_FINITE: 1,
        sources.DUPLICATE_ID: 1}
    assert {(r.source.rsplit("/", 1)[-1], r.line) for r in rejections} == {
        ("a.jsonl", 2), ("a.jsonl", 3), ("a.jsonl", 4), ("a.jsonl", 5)}
    written = embed.write_rejections(rejections, tmp_path / "rejects.jsonl")
    assert [json.loads(line)["reason"] for line in written.read_text().splitlines()] == [
        r.reason for r in rejections]


def test_embed_raw_needs_only_the_exported_encoder(tmp_path, model_dir, raw_file):
    served = tmp_path / "served"
    shutil.copytree(model_dir / ENCODER_DIR, served / ENCODER_DIR)
    for name in (METADATA_COPY, CONFIG_FILE):
        shutil.copy(model_dir / name, served / name)
    from_export, _ = embed.embed_raw(str(raw_file), served)
    from_model, _ = embed.embed_raw(str(raw_file), model_dir)
    np.testing.assert_array_equal(from_export.vectors, from_model.vectors)


def test_embed_raw_errors(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        embed.embed_raw(str(tmp_path / "none-*.jsonl"), model_dir)
    (tmp_path / "x.jsonl").write_text("{}\n")
    with pytest.raises(Exception, match="not a trained model directory"):
        embed.embed_raw(str(tmp_path / "x.jsonl"), tmp_path)


def test_all_rejected_gives_empty_embeddings_of_the_right_width(tmp_path, model_dir):
    (tmp_path / "bad.jsonl").write_text("nope\n")
    embeddings, rejections = embed.embed_raw(str(tmp_path / "bad.jsonl"), model_dir)
    assert len(embeddings) == 0 and len(rejections) == 1
    assert embeddings.vectors.shape == (0, 8)  # conftest: model.embedding_dim=8


def test_parquet_has_every_record_exactly_once(tmp_path, tiny_dataset, model_dir):
    embeddings = embed.compute_embeddings(tiny_dataset, model_dir, "test")
    path = embed.write_parquet(embeddings, tmp_path / "out" / "test.parquet")
    back = embed.read_parquet(path)
    np.testing.assert_array_equal(back.ids, embeddings.ids)
    np.testing.assert_array_equal(back.vectors, embeddings.vectors)
    assert back.split == "test" and len(set(back.ids.tolist())) == len(back)
    assert not list(path.parent.glob(".*.tmp"))

