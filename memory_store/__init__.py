"""Memory: a chromadb collection of short texts with kinds, tags and scopes; embeddings computed here."""

from memory_store.embedder import DEFAULT_EMBEDDER, Embedder, EmbedderError
from memory_store.lock import StoreLocked, StoreReadOnly
from memory_store.store import Added, Memory, MemoryStore, MemoryStoreError, normalize, where_clause

__all__ = [
    "DEFAULT_EMBEDDER",
    "Added",
    "Embedder",
    "EmbedderError",
    "Memory",
    "MemoryStore",
    "MemoryStoreError",
    "StoreLocked",
    "StoreReadOnly",
    "normalize",
    "where_clause",
]
