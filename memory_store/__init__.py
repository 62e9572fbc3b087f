"""Memory: a chromadb collection of short texts with kinds, tags and scopes; embeddings computed here."""

from memory_store.embedder import DEFAULT_EMBEDDER, Embedder, EmbedderError
from memory_store.lock import StoreLocked, StoreReadOnly
from memory_store.records import CLOCK, Added, Filter, Memory, memory_id
from memory_store.store import MemoryStore, MemoryStoreError
from memory_store.text import normalize

__all__ = [
    "CLOCK",
    "DEFAULT_EMBEDDER",
    "Added",
    "Embedder",
    "EmbedderError",
    "Filter",
    "Memory",
    "MemoryStore",
    "MemoryStoreError",
    "StoreLocked",
    "StoreReadOnly",
    "memory_id",
    "normalize",
]
