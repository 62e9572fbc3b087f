"""The embedder's onnxruntime path: same vectors as torch, exported once and reused, torch when it cannot."""

from __future__ import annotations

import logging
from pathlib import Path

import chromadb
import chromadb.config
import numpy as np
import pytest

from memory_store import Embedder, MemoryStore
from memory_store import embedder as embedder_module
from memory_store.embedder import EmbedderError
from memory_store.store import COLLECTION, HNSW_SYNC
from tests.conftest import connect, error_text, structured

pytestmark = pytest.mark.anyio

TEXTS = [
    "The 2026 Velotrix Aero bicycle has a matte titanium frame with internal cable routing.",
    "warm light",
    "Kweskin approved the invoice layout last Tuesday; the logo goes top-left, teal #0f766e, never stretched.",
    "ß ﬁ Ⅻ — unicode that NFKC and the tokenizer both see",
]


@pytest.fixture(scope="module")
def torch_vectors() -> np.ndarray:
    embedder = Embedder(runtime="torch")
    vectors = embedder.embed(TEXTS * 20)  # 80 texts: two batches of different padded lengths
    assert embedder.active_runtime == "torch"
    return vectors


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedders")


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


@pytest.mark.slow
def test_onnx_gives_torchs_vectors_and_its_export_is_reused(cache, torch_vectors):
    first = Embedder(cache_dir=cache)
    vectors = first.embed(TEXTS * 20)
    assert first.active_runtime == "onnx"
    assert vectors.shape == (80, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert agreement(vectors, torch_vectors) >= 0.9999
    [exported] = cache.glob("*.onnx")
    assert exported.name.startswith("all-MiniLM-L6-v2-")
    stamp = exported.stat().st_mtime_ns

    again = Embedder(cache_dir=cache)
    assert agreement(again.embed(TEXTS), torch_vectors[:4]) >= 0.9999
    assert again.active_runtime == "onnx"
    assert exported.stat().st_mtime_ns == stamp and list(cache.iterdir()) == [exported]


def test_a_corrupt_cached_export_is_exported_again(cache, torch_vectors, caplog):
    Embedder(cache_dir=cache).embed(["make sure the export exists"])
    [exported] = cache.glob("*.onnx")
    exported.write_bytes(exported.read_bytes()[:4096])  # a copy cut short
    with caplog.at_level(logging.WARNING, logger="limner.memory"):
        embedder = Embedder(cache_dir=cache)
        vectors = embedder.embed(TEXTS)
    assert "does not load" in caplog.text and embedder.active_runtime == "onnx"
    assert agreement(vectors, torch_vectors[:4]) >= 0.9999
    assert exported.stat().st_size > 1_000_000 and list(cache.iterdir()) == [exported]


def test_a_failed_export_leaves_the_embedder_on_torch(tmp_path, torch_vectors, monkeypatch, caplog):
    import torch

    def broken_export(*args, **kwargs):
        Path(args[2]).write_bytes(b"half a graph")
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with caplog.at_level(logging.WARNING, logger="limner.memory"):
        embedder = Embedder(cache_dir=tmp_path)
        vectors = embedder.embed(TEXTS)
    assert embedder.active_runtime == "torch" and "exporter exploded" in caplog.text
    assert agreement(vectors, torch_vectors[:4]) >= 0.9999
    assert list(tmp_path.iterdir()) == []  # no half-written graph left to load next time


def test_an_export_that_disagrees_with_torch_is_not_kept(tmp_path, torch_vectors, monkeypatch, caplog):
    monkeypatch.setattr(embedder_module, "MIN_AGREEMENT", 1.5)  # no export can reach it
    with caplog.at_level(logging.WARNING, logger="limner.memory"):
        embedder = Embedder(cache_dir=tmp_path)
        vectors = embedder.embed(TEXTS)
    assert embedder.active_runtime == "torch" and "disagrees" in caplog.text
    assert agreement(vectors, torch_vectors[:4]) >= 0.9999
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_runtime_is_refused():
    with pytest.raises(EmbedderError, match="runtime 'gpu'"):
        Embedder(runtime="gpu")


async def test_the_server_exports_into_the_models_folder_and_honours_the_torch_setting(
    make_settings, tmp_path
):
    onnx_models = tmp_path / "onnx-models"
    async with connect(make_settings(models_path=onnx_models)) as client:
        structured(await client.call_tool("remember", {"text": TEXTS[0], "kind": "fact"}))
        found = structured(await client.call_tool("recall", {"query": "Velotrix frame"}))
    assert found["memories"][0]["text"] == TEXTS[0]
    assert len(list((onnx_models / "embedders").glob("*.onnx"))) == 1

    torch_models = tmp_path / "torch-models"
    settings = make_settings(home=tmp_path / "other", models_path=torch_models, embedder_runtime="torch")
    async with connect(settings) as client:
        structured(await client.call_tool("remember", {"text": TEXTS[0], "kind": "fact"}))
    assert not (torch_models / "embedders").exists()


async def test_a_missing_embedder_folder_is_a_clear_tool_error(make_settings, tmp_path):
    async with connect(make_settings(embedder=str(tmp_path / "no-such-model"))) as client:
        message = error_text(await client.call_tool("recall", {"query": "anything"}))
        assert "no-such-model" in message and "sentence-transformers model folder" in message


def test_a_store_from_chromadbs_defaults_is_tuned_on_open_and_keeps_its_memories(tmp_path, cache):
    folder = tmp_path / "memory"
    store = MemoryStore.open_local(folder, Embedder(cache_dir=cache))
    kept = store.add(TEXTS[0], kind="fact", scope="default").id
    store.collection.modify(configuration={"hnsw": {"sync_threshold": 1000, "batch_size": 100}})
    store.close()
    client = chromadb.PersistentClient(
        str(folder), settings=chromadb.config.Settings(anonymized_telemetry=False)
    )
    assert client.get_collection(COLLECTION).configuration_json["hnsw"]["sync_threshold"] == 1000
    del client

    store = MemoryStore.open_local(folder, Embedder(cache_dir=cache))
    try:
        assert store.collection.configuration_json["hnsw"]["sync_threshold"] == HNSW_SYNC
        assert store.collection.configuration_json["hnsw"]["space"] == "cosine"
        assert [m.id for m in store.query("Velotrix titanium frame", 1)] == [kept]
    finally:
        store.close()


# -- any sentence-transformers model: the plain path where it computes the same vectors, the library elsewhere
def saved_model(folder: Path, pooling: str, dense: int | None = None) -> Path:
    """A sentence-transformers model saved by the installed library (its file layout), on MiniLM's weights."""
    from sentence_transformers import SentenceTransformer, models

    base = models.Transformer(embedder_module.resolve_source("all-MiniLM-L6-v2"))
    modules = [base, models.Pooling(384, pooling_mode=pooling)]  # MiniLM's 384 dimensions
    modules.append(models.Dense(384, dense) if dense else models.Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder


def library_vectors(folder: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    return model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)


@pytest.mark.parametrize(
    ("pooling", "dense", "runtime"),
    [
        ("cls", None, "torch"),  # CLS pooling: the old reader took every folder saved by v5+ as mean
        ("max", None, "torch"),
        ("mean", None, "torch"),
        ("weightedmean", None, "sentence-transformers"),  # not computed here: the library runs it
        ("mean", 32, "sentence-transformers"),  # a Dense layer after pooling
    ],
)
def test_every_sentence_transformers_recipe_gives_the_librarys_own_vectors(tmp_path, pooling, dense, runtime):
    folder = saved_model(tmp_path / "model", pooling, dense)
    embedder = Embedder(str(folder), runtime="torch")
    vectors = embedder.embed(TEXTS)
    assert embedder.active_runtime == runtime and embedder.dim == (dense or 384)
    assert np.allclose(vectors, library_vectors(folder), atol=1e-5)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_hub_id_in_the_local_cache_is_read_from_its_snapshot(tmp_path, monkeypatch):
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--acme--tiny-embed"
    saved_model(repo / "snapshots" / "0123abcd", "cls")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    embedder = Embedder("acme/tiny-embed", runtime="torch")
    assert np.allclose(embedder.embed(TEXTS), library_vectors(repo / "snapshots" / "0123abcd"), atol=1e-5)
    with pytest.raises(EmbedderError, match="acme/not-cached"):
        Embedder("acme/not-cached", runtime="torch").embed(["x"])
