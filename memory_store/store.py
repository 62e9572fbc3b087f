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
4. `query` ranks by cosine similarity plus a lift from exact terms: a query word found in few memories lifts
   them by how rare it is in the store, most when the embedder cannot read the word (a name, a code, a script
   it does not know), so a rare name finds its memory even when its vector neighbours are generic, and a word
   dozens of memories share moves them little and pushes nothing out (bench/memory_quality.py measures it).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from memory_store.embedder import Embedder
from memory_store.lock import FolderLock, StoreReadOnly
from memory_store.terms import Entry, TermIndex
from memory_store.text import document, is_pair, normalize, phrases, query_units, words

logger = logging.getLogger("limner.memory")

COLLECTION = "limner_memory"
DOCUMENT_FORM = 2  # 1 (unmarked): normalize(text); 2: document(text), what a server's term search reads
# exact terms add to a memory's cosine similarity: LIFT for a query word found in one memory, falling to 0 for
# one found in more than TERM_CAP (log scale). Measured on bench/data/memory_quality (MiniLM, 2,701 memories):
# with 0.35 a memory holding the only other occurrence of an everyday word ("unusable") stays below the one
# the vectors rank first; the old reciprocal rank fusion let a word shared by dozens push it out of the top 5
LIFT = 0.35
KNOWN_SHARE = (
    0.4  # of the lift, for a word the embedder has whole in its vocabulary (its meaning is in the vectors)
)
PREFIX_SHARE = (
    0.5  # of the lift, for a memory whose word only starts with the query's ("advert": "advertising")
)
VECTOR_CANDIDATES = 50  # vector hits fused per query (at least k)
TERM_CAP = 50  # a term found in more memories than this is common: left to the vector ranking
TERM_PAGE = 500  # on a chroma server: substring matches read per request while looking for word starts
TERM_SCAN = 5000  # ... and at most this many per term; a term still unsettled then counts as common
SERVER_LOOKUPS = 8  # on a chroma server, lookups run this many at a time (each is one or more requests)
NEAR_HITS = 5  # nearest memories checked for near-duplicates of a new one
FIND_PAGE = 5000  # memories read per request when listing by a filter (forget, export)
FILTER_OVERSAMPLE = 8  # a filtered recall first looks this many times deeper without the filter
MAX_ID_SEARCH = 50_000  # then searches among the ids that pass, when no more pass than this
# chromadb re-reads every write since its last HNSW save on each add: at its default (1000) an add took 15-18 ms
# p50 at 100,000 memories, at 100 it took 10-11 ms; a save costs ~130 ms there, so 1.3 ms an add on average
HNSW_SYNC = 100


class Clock:
    """The time memories are stamped, filtered and expired by: the system clock (a test sets its own)."""

    def now(self) -> float:
        return time.time()


CLOCK = Clock()


class MemoryStoreError(RuntimeError):
    """A store-level problem the caller can act on (mismatched embedder, unreachable server)."""


@dataclass
class Memory:
    id: str
    text: str
    kind: str
    scope: str
    tags: list[str]
    created: float
    source: str | None = None
    image_id: str | None = None
    expires: float | None = None  # when it leaves recall (forget(expired=true) removes it); None: never
    replaces: list[str] = field(default_factory=list)  # the memories it superseded
    superseded_by: str | None = None  # the memory that replaced it: left out of recall unless asked
    score: float = 0.0  # cosine similarity plus the exact-term lift (the similarity alone when fusion is off)
    similarity: float = 0.0  # cosine similarity to the query
    matched_terms: list[str] = field(default_factory=list)


@dataclass
class Added:
    id: str
    created: bool  # False: identical content with the same kind and scope was already stored
    near_duplicates: list[tuple[Memory, float]] = field(default_factory=list)


def memory_id(text: str, kind: str, scope: str) -> str:
    digest = hashlib.sha256(f"{kind}\x00{scope}\x00{normalize(text)}".encode()).hexdigest()
    return "mem_" + digest[:16]


@dataclass(frozen=True)
class Filter:
    """Conditions a memory must all meet: kind, scope, every one of the tags, created in [since, before), and
    its life cycle: superseded (True: only superseded ones, False: none, None: either) and expired at `now`
    (likewise)."""

    kind: str | None = None
    scope: str | None = None
    tags: tuple[str, ...] = ()
    since: float | None = None
    before: float | None = None
    superseded: bool | None = None
    expired: bool | None = None
    now: float = 0.0

    def empty(self) -> bool:
        return self == Filter(now=self.now)

    def fields(self) -> dict[str, Any]:
        return asdict(self)

    def where(self) -> dict[str, Any] | None:
        """The conditions on kind, scope, tags and creation time as a chromadb `where` filter. chromadb cannot
        say "no expiry, or one after now" (a missing key fails every comparison), so the life cycle is
        checked afterwards, with `matches`."""
        parts: list[dict[str, Any]] = []
        if self.kind:
            parts.append({"kind": self.kind})
        if self.scope:
            parts.append({"scope": self.scope})
        parts.extend({"tags": {"$contains": tag}} for tag in self.tags)
        if self.since is not None:
            parts.append({"created": {"$gte": self.since}})
        if self.before is not None:
            parts.append({"created": {"$lt": self.before}})
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else {"$and": parts}

    def life_cycle(self) -> bool:
        """Whether `where` leaves conditions out (to be checked with `matches`)."""
        return self.superseded is not None or self.expired is not None

    def matches(self, meta: dict[str, Any]) -> bool:
        """The same conditions checked on one memory's chromadb metadata."""
        created = float(meta.get("created", 0.0))
        expires = meta.get("expires")
        expired = expires is not None and float(expires) <= self.now
        return (
            (not self.kind or meta.get("kind") == self.kind)
            and (not self.scope or meta.get("scope") == self.scope)
            and set(self.tags) <= set(meta.get("tags") or ())
            and (self.since is None or created >= self.since)
            and (self.before is None or created < self.before)
            and (self.superseded is None or self.superseded == bool(meta.get("superseded_by")))
            and (self.expired is None or self.expired == expired)
        )


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
            self.terms.add(_entry(i, d or "", _memory(i, m)) for i, d, m in rows)

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
            self._write_rows([mem_id], vector[None], [text], [_metadata(memory)])
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
                    metas = [_metadata(_item_memory(i, it, now)) for i, it in chunk]
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
                _entry(i, text, _memory(i, m)) for i, text, m in zip(ids, texts, metas, strict=True)
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
        by_id = {i: _memory(i, m) for i, m in zip(found["ids"], found["metadatas"], strict=True)}
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
            memories += [_memory(i, m) for i, m in rows if not filt.life_cycle() or filt.matches(m)]
            if len(found["ids"]) < FIND_PAGE:
                break
        return sorted(memories, key=lambda m: m.created)

    def query(
        self, text: str, k: int, filt: Filter | None = None, fuse: bool = True, ranking: str = "fused"
    ) -> list[Memory]:
        """The k best memories for `text`: cosine similarity plus the exact-term lift. ranking="vector" (or
        fuse=False) ranks by similarity alone, ranking="terms" by the lift alone (bench/memory_quality.py)."""
        ranking = ranking if fuse else "vector"
        total = self.count()
        if total == 0:
            return []
        vector = self.embedder.embed([text])[0]
        filt = None if filt is None or filt.empty() else filt

        # 1. the nearest memories, with their similarity, and the similarity no memory beyond them exceeds
        nearest, ceiling = self._vector_ranking(vector, min(max(VECTOR_CANDIDATES, k), total), total, filt, k)
        if ranking == "vector":
            return self._fetch([i for i, _ in nearest[:k]], vector, {}, {})

        # 2. what the query's rare words add to the memories that have them
        lift, matched = self._term_lift(text, filt)
        if ranking == "terms":
            top = sorted(lift, key=lambda i: -lift[i])[:k]
            return self._fetch(top, vector, lift, matched, document(text))

        # 3. similarity + lift; the similarity counts for the share of the query the embedder can read (a
        # Japanese or Thai name is one unknown token to MiniLM: every such text has nearly the same vector). A
        # memory the terms found beyond the nearest has a similarity of at most `ceiling`: its own is read only
        # when that could bring it into the top k (a rare name's memory)
        read = 1.0 - self.embedder.unread_share(text)
        fused = {mem_id: read * similarity + lift.get(mem_id, 0.0) for mem_id, similarity in nearest}
        kth = sorted(fused.values(), reverse=True)[k - 1] if len(fused) >= k else -math.inf
        hopeful = [i for i in lift if i not in fused and read * ceiling + lift[i] > kth]
        for mem_id, similarity in self._similarities(hopeful, vector).items():
            fused[mem_id] = read * similarity + lift[mem_id]
        top = sorted(fused, key=lambda i: -fused[i])[:k]
        return self._fetch(top, vector, fused, matched, document(text))

    def _term_lift(self, text: str, filt: Filter | None) -> tuple[dict[str, float], dict[str, list[str]]]:
        """What the query's exact terms add to each memory's similarity, and the query terms each memory has.

        A term found in `df` memories (before the filter, on an embedded store) weighs log(C / df) / log(C)
        of LIFT, C = TERM_CAP + 1: 1 for a word only one memory has, 0 for a common one (None: left to the
        vectors). A word the embedder knows whole weighs KNOWN_SHARE of that, and a memory whose word only
        starts with the term gets PREFIX_SHARE of it. A run of an unspaced script is one unit, each of its
        pairs weighing its share, so a sentence's many pairs do not outweigh a name beside it."""
        units = query_units(text)
        terms = list(dict.fromkeys(term for unit in units for term in unit))
        hits = dict(self._term_hits(terms, filt))
        known = self.embedder.known_words(terms)
        lift: dict[str, float] = {}
        for unit in units:
            for term in unit:
                found = hits.get(term)
                if not found or not found[1]:
                    continue
                df, ids = found
                weight = LIFT * math.log((TERM_CAP + 1) / df) / math.log(TERM_CAP + 1) / len(unit)
                weight *= KNOWN_SHARE if term in known else 1.0
                for mem_id, whole in ids.items():
                    lift[mem_id] = lift.get(mem_id, 0.0) + (weight if whole else weight * PREFIX_SHARE)
        matched: dict[str, list[str]] = {}
        for term in terms:  # in the query's order; every term found is reported
            found = hits.get(term)
            for mem_id in found[1] if found else ():
                matched.setdefault(mem_id, []).append(term)
        return lift, matched

    def _similarities(self, ids: list[str], vector: np.ndarray) -> dict[str, float]:
        """Cosine similarity of each stored memory among `ids` to `vector`."""
        if not ids:
            return {}
        found = self.collection.get(ids=ids, include=["embeddings"])
        return {
            i: float(np.dot(vector, np.asarray(e, dtype=np.float32)))
            for i, e in zip(found["ids"], found["embeddings"], strict=True)
        }

    def _vector_ranking(
        self, vector: np.ndarray, n: int, total: int, filt: Filter | None, at_least: int
    ) -> tuple[list[tuple[str, float]], float]:
        """Up to n nearest memories passing the filter, nearest first, with their cosine similarity (at least
        `at_least` when that many pass), and the similarity that no passing memory left out exceeds.

        chromadb's filtered nearest-neighbour search took 100-400 ms at 100,000 memories when many memories
        pass the filter. An unfiltered search FILTER_OVERSAMPLE times deeper, filtered afterwards by id,
        takes about 7 ms and finds enough whenever the filter agrees with the query's topic. Otherwise
        (looking deeper does not help: the neighbours of a query about bikes are all bikes, however deep)
        the term index lists the ids that pass and chromadb searches among those ids only (~60 ms for
        14,000 of 100,000); on a chroma server, or past MAX_ID_SEARCH ids, chromadb's filtered search runs.
        """

        def search(**options: Any) -> tuple[list[tuple[str, float]], float]:
            found = self.collection.query(query_embeddings=[vector], include=["distances"], **options)
            ranked = [
                (i, 1.0 - float(d)) for i, d in zip(found["ids"][0], found["distances"][0], strict=True)
            ]
            return ranked, ranked[-1][1] if ranked else -1.0

        if filt is None:
            return search(n_results=n)
        # a filter on the life cycle alone (every recall's: superseded and expired memories are few) first
        # looks no deeper than an unfiltered search
        depths = [n, n * FILTER_OVERSAMPLE] if filt.where() is None else [n * FILTER_OVERSAMPLE]
        for depth in depths:
            wide, ceiling = search(n_results=min(total, depth))
            kept = self._keep([i for i, _ in wide], filt)
            ranked = [(i, s) for i, s in wide if i in kept]
            if len(ranked) >= min(at_least, n) or len(wide) == total:
                return ranked[:n], ranked[n - 1][1] if len(ranked) >= n else ceiling
        if self.terms is not None:  # the index lists who passes; chromadb searches among those ids only
            passing = self.terms.matching(MAX_ID_SEARCH, **filt.fields())
            if len(passing) <= MAX_ID_SEARCH:
                if not passing:
                    return [], -1.0
                from chromadb.errors import InternalError

                try:
                    return search(n_results=min(n, len(passing)), ids=passing)
                except InternalError as exc:
                    # chromadb fails the whole search ("Error finding id") when one id is missing, and the
                    # index runs a moment ahead of chromadb while a remember or forget is under way
                    logger.info(
                        "id search among %d ids failed (%s); searching with the filter", len(passing), exc
                    )
        ranked, ceiling = search(n_results=n, where=filt.where())
        if filt.life_cycle():  # chromadb's filter leaves it out (see Filter.where)
            kept = self._keep([i for i, _ in ranked], filt)
            ranked = [(i, s) for i, s in ranked if i in kept]
        return ranked, ceiling

    def _keep(self, ids: list[str], filt: Filter) -> set[str]:
        """The ids among `ids` that pass the filter. Never chromadb's get(ids=..., where=...): it applies the
        filter to the whole collection first (20 s for 400 ids at 100,000 memories)."""
        if not ids:
            return set()
        if self.terms is not None:
            return self.terms.keep(ids, **filt.fields())
        found = self.collection.get(ids=ids, include=["metadatas"])
        return {i for i, m in zip(found["ids"], found["metadatas"], strict=True) if filt.matches(m)}

    def _term_hits(
        self, terms: list[str], filt: Filter | None
    ) -> list[tuple[str, tuple[int, dict[str, bool]] | None]]:
        """For each term: how many memories have a word starting with it, and those passing the filter, each
        with whether its word is the term itself; None when more than TERM_CAP have one (a common term, left
        to the vector ranking)."""
        hits: list[tuple[str, tuple[int, dict[str, bool]] | None]] = []
        if self.terms is None:  # a shared chroma server: its full-text index, checked against the words
            with ThreadPoolExecutor(SERVER_LOOKUPS) as pool:
                found = pool.map(lambda term: self._server_term_hits(term, filt), terms)
                hits = list(zip(terms, found, strict=True))
            if filt is None or not filt.life_cycle():
                return hits
        else:
            for term in terms:
                whole = is_pair(term)  # a pair is looked up whole, never as a prefix
                ids = self.terms.lookup(term, TERM_CAP + 1, prefix=not whole)
                if len(ids) > TERM_CAP:
                    hits.append((term, None))
                    continue
                exact = set(ids) if whole else set(self.terms.lookup(term, TERM_CAP + 1, prefix=False))
                hits.append((term, (len(ids), {i: i in exact for i in ids})))
        if filt is not None:  # the filter applies to the few ids the words found
            kept = self._keep(list({i for _, found in hits if found for i in found[1]}), filt)
            hits = [
                (t, None if found is None else (found[0], {i: e for i, e in found[1].items() if i in kept}))
                for t, found in hits
            ]
        return hits

    def _server_term_hits(self, term: str, filt: Filter | None) -> tuple[int, dict[str, bool]] | None:
        """Memories with a word starting with `term` (a pair of characters: that pair), each with whether the
        word is the term itself, from a chroma server's substring search (None: common). A substring match is
        kept when the words cut from its document, as the TermIndex cuts them, have the term; matches inside
        words ("ann" in "planning") can outnumber those, so the substring matches are read in pages until
        more than TERM_CAP are kept or none are left; a term still unsettled after TERM_SCAN substring
        matches counts as common. The filter goes with the search, so the count is of memories passing it."""
        whole = is_pair(term)
        ids: dict[str, bool] = {}
        for offset in range(0, TERM_SCAN, TERM_PAGE):
            found = self.collection.get(
                where=None if filt is None else filt.where(),
                where_document={"$contains": term},
                limit=TERM_PAGE,
                offset=offset,
                include=["documents"],
            )
            for mem_id, doc in zip(found["ids"], found["documents"], strict=True):
                doc_terms = words(doc or "", parts=True)
                if term in doc_terms:
                    ids[mem_id] = True
                elif not whole and any(t.startswith(term) for t in doc_terms):
                    ids[mem_id] = False
            if len(ids) > TERM_CAP:
                return None
            if len(found["ids"]) < TERM_PAGE:
                return (len(ids), ids) if ids else None
        return None

    def _fetch(
        self,
        ids: list[str],
        vector: np.ndarray,
        fused: dict[str, float],
        matched: dict[str, list[str]],
        query: str = "",
    ) -> list[Memory]:
        if not ids:
            return []
        found = self.collection.get(ids=ids, include=["metadatas", "embeddings"])
        rows = {
            i: (m, e) for i, m, e in zip(found["ids"], found["metadatas"], found["embeddings"], strict=True)
        }
        out = []
        for mem_id in ids:
            if mem_id not in rows:  # deleted between the two calls
                continue
            meta, embedding = rows[mem_id]
            memory = _memory(mem_id, meta)
            memory.similarity = float(np.dot(vector, np.asarray(embedding, dtype=np.float32)))
            memory.score = fused.get(mem_id, memory.similarity)
            memory.matched_terms = phrases(matched.get(mem_id, []), query, document(memory.text))
            out.append(memory)
        return out


def _close(hits: dict[str, Any], threshold: float) -> dict[str, float]:
    """The ids of one query's hits at least `threshold` similar (cosine), with their similarity."""
    similarity = {i: 1.0 - float(d) for i, d in zip(hits["ids"][0], hits["distances"][0], strict=True)}
    return {i: s for i, s in similarity.items() if s >= threshold}


def _metadata(memory: Memory) -> dict[str, Any]:
    """A memory as chromadb metadata: the fields it has, no empty ones (chromadb refuses empty lists)."""
    meta: dict[str, Any] = {
        "text": memory.text,
        "kind": memory.kind,
        "scope": memory.scope,
        "created": memory.created,
    }
    optional = {
        "tags": list(memory.tags),
        "source": memory.source,
        "image_id": memory.image_id,
        "expires": memory.expires,
        "replaces": list(memory.replaces),
        "superseded_by": memory.superseded_by,
    }
    meta.update({name: value for name, value in optional.items() if value})
    return meta


def _item_memory(mem_id: str, item: dict[str, Any], now: float) -> Memory:
    """An add_many item as a Memory; made now unless it says when."""
    return Memory(
        id=mem_id,
        text=item["text"],
        kind=item["kind"],
        scope=item["scope"],
        tags=list(item.get("tags") or ()),
        created=float(item.get("created") or now),
        source=item.get("source"),
        image_id=item.get("image_id"),
        expires=item.get("expires"),
        replaces=list(item.get("replaces") or ()),
        superseded_by=item.get("superseded_by"),
    )


def _entry(mem_id: str, text: str, memory: Memory) -> Entry:
    return Entry(
        mem_id,
        words(text, parts=True),
        memory.kind,
        memory.scope,
        memory.tags,
        memory.created,
        memory.superseded_by,
        memory.expires,
    )


def _memory(mem_id: str, meta: dict[str, Any]) -> Memory:
    expires = meta.get("expires")
    return Memory(
        id=mem_id,
        text=meta.get("text", ""),
        kind=meta.get("kind", ""),
        scope=meta.get("scope", ""),
        tags=list(meta.get("tags") or []),
        created=float(meta.get("created", 0.0)),
        source=meta.get("source"),
        image_id=meta.get("image_id"),
        expires=float(expires) if expires is not None else None,
        replaces=list(meta.get("replaces") or []),
        superseded_by=meta.get("superseded_by"),
    )


def _tune(collection: Any) -> None:
    """Bring a collection made by an older limner (chromadb's defaults) to HNSW_SYNC; a no-op after that."""
    hnsw = (getattr(collection, "configuration_json", None) or {}).get("hnsw") or {}
    if hnsw and hnsw.get("sync_threshold") != HNSW_SYNC:
        collection.modify(configuration={"hnsw": {"sync_threshold": HNSW_SYNC, "batch_size": HNSW_SYNC}})


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)
