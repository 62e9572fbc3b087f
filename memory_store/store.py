"""MemoryStore: short texts with a kind, tags and a scope, in one chromadb collection, found by meaning and name.

1. Embedded (`open_local`): a `chromadb.PersistentClient` in a folder this process owns (see lock.py).
   chromadb commits every add to its SQLite log before returning, so an acknowledged memory survives SIGKILL.
   Shared (`open_remote`): a chroma server URL, for several processes or machines.
2. Vectors come from our `Embedder`; the collection records the embedder's name and dimension and refuses
   to open under another one.
3. The document chromadb indexes is the text's term form (NFKC, case-folded, single spaces, dashes and
   underscores as "-"); the original text sits in the metadata. Exact terms are looked up in a TermIndex
   (terms.py) beside an embedded store, or with chromadb's full-text `$contains` on a shared server, whose
   matches are then split into words as the TermIndex's are, so both find the same memories.
4. `query` ranks by cosine similarity plus a lift from exact terms (rank.py); `page` lists by filter and time,
   newest first. What a memory is, and the filter both apply, is records.py.
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from memory_store.embedder import Embedder
from memory_store.lock import FolderLock, StoreReadOnly
from memory_store.rank import Ranker
from memory_store.records import (
    CLOCK,
    Added,
    Filter,
    Memory,
    from_item,
    from_metadata,
    memory_id,
    to_entry,
    to_metadata,
)
from memory_store.terms import TermIndex
from memory_store.text import document

logger = logging.getLogger("limner.memory")

COLLECTION = "limner_memory"
DOCUMENT_FORM = 2  # 1 (unmarked): normalize(text); 2: document(text), what a server's term search reads
NEAR_HITS = 5  # nearest memories checked for near-duplicates of a new one
FIND_PAGE = 5000  # memories read per request when listing by a filter (forget, export)
# chromadb re-reads every write since its last HNSW save on each add: at its default (1000) an add took 15-18 ms
# p50 at 100,000 memories, at 100 it took 10-11 ms; a save costs ~130 ms there, so 1.3 ms an add on average
HNSW_SYNC = 100

__all__ = ["CLOCK", "COLLECTION", "HNSW_SYNC", "Added", "Filter", "Memory", "MemoryStore", "memory_id"]


class MemoryStoreError(RuntimeError):
    """A store-level problem the caller can act on (mismatched embedder, unreachable server)."""


class MemoryStore:
    def __init__(
        self,
        client: Any,
        embedder: Embedder,
        lock: FolderLock | None,
        where: str,
        terms: TermIndex | None = None,
    ) -> None:
        self.client = client
        self.embedder = embedder
        self.where = where  # the folder or URL, for messages
        self._lock = lock
        self._write = threading.Lock()
        self.collection = self._open_collection()
        self.terms = terms
        self.ranker = Ranker(self.collection, terms, embedder)
        # chromadb's count() took ~9 ms at 100,000 memories; an embedded store has one owner (this
        # process), so the count is kept here. A shared server's count changes under us: asked every time.
        self._count: int | None = None
        self._stale: set[str] = set()  # forgotten in chromadb, not yet in the term index (see _drop_terms)
        if terms is not None and terms.count() != self.count():
            self._rebuild_terms()
        if terms is None and (self.collection.metadata or {}).get("limner:documents") != DOCUMENT_FORM:
            self._upgrade_documents()

    def _upgrade_documents(self) -> None:
        """Rewrite documents an older limner wrote on a chroma server (normalize(text) only: its term search
        missed SKU_7731_B and İNCİ) in the term form, once, then mark the collection. chromadb's update takes
        the embeddings with the documents. An embedded store reads its documents only to rebuild the
        TermIndex, which cuts terms from either form alike."""
        logger.info("rewriting the memory documents at %s in the term form", self.where)
        for offset in range(0, self.collection.count(), 1000):
            found = self.collection.get(
                limit=1000, offset=offset, include=["documents", "metadatas", "embeddings"]
            )
            rows = zip(found["ids"], found["documents"], found["metadatas"], found["embeddings"], strict=True)
            stale = [
                (i, document(m.get("text", "")), e) for i, d, m, e in rows if d != document(m.get("text", ""))
            ]
            if stale:
                ids, documents, embeddings = zip(*stale, strict=True)
                self.collection.update(ids=list(ids), documents=list(documents), embeddings=list(embeddings))
        # without the hnsw:* keys an older limner set at creation: chromadb refuses to be sent them again
        # ("changing the distance function ... is not supported"), even unchanged
        meta = {k: v for k, v in (self.collection.metadata or {}).items() if not k.startswith("hnsw:")}
        self.collection.modify(metadata={**meta, "limner:documents": DOCUMENT_FORM})

    def _rebuild_terms(self) -> None:
        """Re-derive the term index from the collection (first open after an upgrade, or after a crash)."""
        assert self.terms is not None
        logger.info("rebuilding the memory term index from %s", self.where)
        self.terms.clear()
        total, batch = self.count(), 5000
        for offset in range(0, total, batch):
            found = self.collection.get(limit=batch, offset=offset, include=["documents", "metadatas"])
            rows = zip(found["ids"], found["documents"], found["metadatas"], strict=True)
            self.terms.add(to_entry(i, d or "", from_metadata(i, m)) for i, d, m in rows)

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open_local(cls, folder: Path, embedder: Embedder) -> MemoryStore:
        """Open (creating) the embedded store in `folder`; raises StoreLocked / StoreReadOnly."""
        import chromadb
        from chromadb.config import Settings

        lock = FolderLock(folder)
        lock.acquire()
        try:
            database = folder / "chroma.sqlite3"
            if database.exists() and not _writable(database):
                raise StoreReadOnly(folder, f"{database.name} is not writable")
            client = chromadb.PersistentClient(
                path=str(folder), settings=Settings(anonymized_telemetry=False)
            )
            return cls(client, embedder, lock, str(folder), TermIndex(folder / "terms.sqlite3"))
        except BaseException:
            lock.release()
            raise

    @classmethod
    def open_remote(cls, url: str, embedder: Embedder) -> MemoryStore:
        """Connect to a chroma server (`chroma run`), shared by any number of processes."""
        import chromadb
        from chromadb.config import Settings

        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise MemoryStoreError(f"chroma URL {url!r} must look like http://host:port")
        port = parsed.port or (443 if parsed.scheme == "https" else 8000)
        try:
            client = chromadb.HttpClient(
                host=parsed.hostname,
                port=port,
                ssl=parsed.scheme == "https",
                settings=Settings(anonymized_telemetry=False),
            )
            return cls(client, embedder, None, url)
        except (ValueError, ConnectionError, OSError) as exc:
            raise MemoryStoreError(f"cannot reach the chroma server at {url}: {exc}") from exc

    def _open_collection(self) -> Any:
        expected: dict[str, str | int] = {"limner:embedder": self.embedder.name}
        existing = {c.name: c for c in self.client.list_collections()}
        if COLLECTION in existing:
            collection = self.client.get_collection(COLLECTION, embedding_function=None)
            meta = collection.metadata or {}
            if (
                meta.get("limner:embedder") != self.embedder.name
                or meta.get("limner:dim") != self.embedder.dim
            ):
                raise MemoryStoreError(
                    f"the memory at {self.where} was built with the embedder {meta.get('limner:embedder')!r} "
                    f"({meta.get('limner:dim')} dims), but this server uses {self.embedder.name!r} "
                    f"({self.embedder.dim} dims); vectors from different models cannot be compared. Configure "
                    "the embedder it was built with, or use another memory folder to start afresh."
                )
            _tune(collection)
            return collection
        expected["limner:dim"] = self.embedder.dim
        expected["limner:documents"] = DOCUMENT_FORM
        return self.client.create_collection(
            COLLECTION,
            metadata=expected,
            configuration={"hnsw": {"space": "cosine", "sync_threshold": HNSW_SYNC, "batch_size": HNSW_SYNC}},
            embedding_function=None,
            get_or_create=True,
        )

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()
        if self.terms is not None:
            self.terms.close()
            self.terms = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- writing ---------------------------------------------------------------------------------
    def add(
        self,
        text: str,
        *,
        kind: str,
        scope: str,
        tags: Sequence[str] = (),
        source: str | None = None,
        image_id: str | None = None,
        near_threshold: float = 0.92,
        expires: float | None = None,
        replaces: Sequence[str] = (),
    ) -> Added:
        """Store one memory (idempotent on content+kind+scope); report near-duplicates above the threshold.
        `replaces`: memories it supersedes (the caller checks they exist, in this scope, not yet superseded);
        they are marked after the new memory is written, and again when the same memory is remembered again
        with them, which completes a replacement a crash cut short."""
        mem_id = memory_id(text, kind, scope)
        with self._write:
            if self._existing([mem_id]):
                if replaces:
                    self._supersede(list(replaces), mem_id)
                return Added(mem_id, created=False)
            vector = self.embedder.embed([text])[0]
            near = self._near(vector, near_threshold, scope)
            memory = Memory(mem_id, text, kind, scope, list(tags), CLOCK.now(), source, image_id, expires)
            memory.replaces = list(dict.fromkeys(replaces))
            self._write_rows([mem_id], vector[None], [text], [to_metadata(memory)])
            if replaces:
                self._supersede(list(replaces), mem_id)
        return Added(mem_id, created=True, near_duplicates=near)

    def _supersede(self, old: list[str], new: str) -> None:
        """Link the new memory to the ones it replaces and mark those superseded by it (under the write
        lock). chromadb merges an update into the stored metadata."""
        (current,) = self.get([new])
        replaces = list(dict.fromkeys([*current.replaces, *old]))
        self.collection.update(
            ids=[new, *old], metadatas=[{"replaces": replaces}, *[{"superseded_by": new}] * len(old)]
        )
        if self.terms is not None:
            self.terms.supersede(old, new)

    def _existing(self, ids: list[str]) -> set[str]:
        """The ids among `ids` already stored. The term index holds exactly what chromadb holds (written
        first, taken back on a failed write, rebuilt after a crash): a look-up there took 0.05 ms against
        chromadb's 0.8. A chroma server is asked in chunks (its SQLite takes ~32k variables a query)."""
        if self.terms is not None:
            return self.terms.keep(ids) - self._stale
        have: set[str] = set()
        for start in range(0, len(ids), 1000):
            have.update(self.collection.get(ids=ids[start : start + 1000], include=[])["ids"])
        return have

    def add_many(self, items: Sequence[dict[str, Any]]) -> list[str]:
        """Bulk import of {text, kind, scope, tags?, source?, image_id?, and from an export: created?,
        expires?, replaces?, superseded_by?}; existing ids are skipped. Returns every item's id."""
        ids = [memory_id(it["text"], it["kind"], it["scope"]) for it in items]
        unique = dict(zip(ids, items, strict=True))
        with self._write:
            have = self._existing(list(unique))
            todo = [(i, it) for i, it in unique.items() if i not in have]
            if todo:
                vectors = self.embedder.embed([it["text"] for _, it in todo])
                now = CLOCK.now()
                for start in range(0, len(todo), 1000):
                    chunk = todo[start : start + 1000]
                    metas = [to_metadata(from_item(i, it, now)) for i, it in chunk]
                    texts = [it["text"] for _, it in chunk]
                    self._write_rows([i for i, _ in chunk], vectors[start : start + len(chunk)], texts, metas)
        return ids

    def _write_rows(
        self, ids: list[str], vectors: np.ndarray, texts: list[str], metas: list[dict[str, Any]]
    ) -> None:
        """The index first, then chromadb (under the write lock). A crash between leaves index rows that
        point at nothing, and the next open rebuilds the index (the counts differ); a failed chromadb write
        takes its index rows back at once, since a recall that searches among ids falls back to chromadb's
        slower filtered search when it meets a missing one."""
        if self.terms is not None:
            if self._stale:  # a forgotten memory's old rows go before it can be remembered again
                self._drop_terms(())
                if self._stale & set(ids):
                    raise sqlite3.OperationalError("the term index is locked by another process; retry")
            self.terms.add(
                to_entry(i, text, from_metadata(i, m)) for i, text, m in zip(ids, texts, metas, strict=True)
            )
        try:
            self.collection.add(
                ids=ids, embeddings=vectors, documents=[document(text) for text in texts], metadatas=metas
            )
        except BaseException:
            if self.terms is not None:
                self.terms.delete(ids)
            raise
        self._count = None if self._count is None else self._count + len(ids)

    def _near(self, vector: np.ndarray, threshold: float, scope: str) -> list[tuple[Memory, float]]:
        """Memories of the same scope at least `threshold` similar. Never another scope's: a scope is a user's
        or a project's namespace, and a near-duplicate is reported with its text."""
        if self.count() == 0:
            return []
        # distances only: at 100,000 memories fetching the 5 hits' metadata took 2.4-3 ms of a 4 ms query,
        # and a near-duplicate is the exception; its metadata is fetched when there is one. chromadb's
        # filtered search is slower still (100-400 ms when most memories pass), so the scope is checked after
        hits = self.collection.query(query_embeddings=[vector], n_results=NEAR_HITS, include=["distances"])
        close = _close(hits, threshold)
        if not close:
            return []
        now = CLOCK.now()

        def live(memory: Memory) -> bool:  # a superseded or expired memory is no duplicate to forget
            return memory.superseded_by is None and (memory.expires is None or memory.expires > now)

        near = [(m, close[m.id]) for m in self.get(list(close)) if m.scope == scope and live(m)]
        if len(close) == NEAR_HITS and len(near) < NEAR_HITS:
            # every hit was close and some were another scope's: more of this scope's may lie deeper
            hits = self.collection.query(
                query_embeddings=[vector], n_results=NEAR_HITS, where={"scope": scope}, include=["distances"]
            )
            close = _close(hits, threshold)
            near = [(m, close[m.id]) for m in self.get(list(close)) if live(m)] if close else []
        return near

    def delete(self, ids: Sequence[str]) -> list[str]:
        """Remove memories. Those they had replaced, and that no other memory replaced since, are current
        again (a replacement forgotten as wrong leaves what it replaced); their ids are returned."""
        with self._write:
            gone = set(ids)
            replaced: list[str] = []
            for start in range(0, len(ids), 1000):
                chunk = list(ids[start : start + 1000])
                replaced += [old for m in self.get(chunk) for old in m.replaces if old not in gone]
                self.collection.delete(ids=chunk)
                self._drop_terms(chunk)
            self._count = None  # some ids may not have existed: count again when next asked
            restored = [m.id for m in self.get(list(dict.fromkeys(replaced))) if m.superseded_by in gone]
            if restored:
                self.collection.update(ids=restored, metadatas=[{"superseded_by": None}] * len(restored))
                if self.terms is not None:
                    self.terms.supersede(restored, None)
            return restored

    def _drop_terms(self, ids: Sequence[str]) -> None:
        """Take forgotten ids out of the term index, with any an earlier try left behind. chromadb, the
        source of truth, has already dropped them, so a failure here (another process holding the index
        past SQLite's busy timeout) is logged and the ids are kept aside: never reported as existing, and
        taken out again before the next write."""
        if self.terms is None:
            return
        try:
            self.terms.delete([*self._stale, *ids])
        except sqlite3.Error:
            logger.exception(
                "could not take %d forgotten memories out of the term index; will retry", len(ids)
            )
            self._stale.update(ids)
            return
        self._stale.clear()

    # -- reading ---------------------------------------------------------------------------------
    def count(self) -> int:
        if self._count is None or self.terms is None:
            counted: int = self.collection.count()
            self._count = counted
            return counted
        return self._count

    def get(self, ids: Sequence[str]) -> list[Memory]:
        """The memories among `ids` that exist, in the order given."""
        if not ids:  # chromadb refuses an empty list of ids
            return []
        found = self.collection.get(ids=list(ids), include=["metadatas"])
        by_id = {i: from_metadata(i, m) for i, m in zip(found["ids"], found["metadatas"], strict=True)}
        return [by_id[i] for i in ids if i in by_id]

    def find(self, filt: Filter) -> list[Memory]:
        """Every memory matching the filter, oldest first. Read in pages: one get of 100,000 memories failed
        in chromadb ("too many SQL variables")."""
        memories: list[Memory] = []
        for offset in itertools.count(0, FIND_PAGE):
            found = self.collection.get(
                where=filt.where(), limit=FIND_PAGE, offset=offset, include=["metadatas"]
            )
            rows = zip(found["ids"], found["metadatas"], strict=True)
            memories += [from_metadata(i, m) for i, m in rows if not filt.life_cycle() or filt.matches(m)]
            if len(found["ids"]) < FIND_PAGE:
                break
        return sorted(memories, key=lambda m: m.created)

    def page(
        self, filt: Filter, limit: int, after: tuple[float, str] | None = None
    ) -> tuple[list[Memory], int, tuple[float, str] | None]:
        """Up to `limit` memories matching the filter, newest first (ties: the larger id first), after the
        position (created, id) `after` (None: from the newest); how many match in all; and the position the
        next page starts after (None: this is the last). A memory made meanwhile is newer than any position,
        so paging on never repeats nor skips one.

        The term index holds the filter fields and the creation time: an embedded store reads a page with one
        indexed SQLite query (an index row chromadb no longer has, from a forget the index could not follow,
        is left out). A chroma server keeps no order: every match's metadata is read (`find`) and sorted."""
        if self.terms is not None:
            positions, total = self.terms.page(limit + 1, after, **filt.fields())
            shown = positions[:limit]
            memories = self.get([i for _, i in shown])
            return memories, total, shown[-1] if len(positions) > limit else None
        matched = sorted(self.find(filt), key=lambda m: (m.created, m.id), reverse=True)
        start = 0
        if after is not None:
            start = next((n for n, m in enumerate(matched) if (m.created, m.id) < after), len(matched))
        shown_memories = matched[start : start + limit]
        more = start + limit < len(matched)
        last = shown_memories[-1] if shown_memories else None
        return shown_memories, len(matched), (last.created, last.id) if more and last else None

    def query(
        self, text: str, k: int, filt: Filter | None = None, fuse: bool = True, ranking: str = "fused"
    ) -> list[Memory]:
        """The k best memories for `text`: cosine similarity plus the exact-term lift. ranking="vector" (or
        fuse=False) ranks by similarity alone, ranking="terms" by the lift alone (bench/memory_quality.py)."""
        return self.ranker.query(text, k, filt, ranking if fuse else "vector", self.count())


def _close(hits: dict[str, Any], threshold: float) -> dict[str, float]:
    """The ids of one query's hits at least `threshold` similar (cosine), with their similarity."""
    similarity = {i: 1.0 - float(d) for i, d in zip(hits["ids"][0], hits["distances"][0], strict=True)}
    return {i: s for i, s in similarity.items() if s >= threshold}


def _tune(collection: Any) -> None:
    """Bring a collection made by an older limner (chromadb's defaults) to HNSW_SYNC; a no-op after that."""
    hnsw = (getattr(collection, "configuration_json", None) or {}).get("hnsw") or {}
    if hnsw and hnsw.get("sync_threshold") != HNSW_SYNC:
        collection.modify(configuration={"hnsw": {"sync_threshold": HNSW_SYNC, "batch_size": HNSW_SYNC}})


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)
