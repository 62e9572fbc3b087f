"""How recall ranks: cosine similarity plus a lift from exact terms, over the memories a filter lets through.

A query word found in few memories lifts them by how rare it is in the store, most when the embedder cannot read
the word (a name, a code, a script it does not know), so a rare name finds its memory even when its vector
neighbours are generic, and a word dozens of memories share moves them little and pushes nothing out.
bench/memory_quality.py measures it: its constants are checked on the labelled set's tuning half alone
(`--tune`), and the table and the rule (never below vectors alone) are read on the held-out half.

Exact terms are looked up in the TermIndex (terms.py) beside an embedded store, or with chromadb's full-text
`$contains` on a shared server, whose matches are then split into words as the TermIndex's are, so both find
the same memories.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from memory_store.embedder import Embedder
from memory_store.records import Filter, Memory, from_metadata
from memory_store.terms import TermIndex
from memory_store.text import document, is_pair, phrases, query_units, words

logger = logging.getLogger("limner.memory")


# exact terms add to a memory's cosine similarity: LIFT for a query word found in one memory, falling to 0 for
# one found in more than TERM_CAP (log scale). First set looking at all 300 labelled queries; then checked by
# `bench/memory_quality.py --tune` on the tuning half alone (LIFT 0.2-0.6, KNOWN_SHARE 0.2-0.6, PREFIX_SHARE
# 0.25-0.75): every combination that keeps the fusion at or above vectors alone on every slice is within one
# query's MRR of these (best 0.8171 at LIFT 0.25, KNOWN_SHARE 0.2; these 0.8123), so they stay. From LIFT 0.45,
# or KNOWN_SHARE 0.6 at LIFT 0.3, a paraphrase's everyday word pushed its memory out of the top 1 or 5.
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
FILTER_OVERSAMPLE = 8  # a filtered recall first looks this many times deeper without the filter
MAX_ID_SEARCH = 50_000  # then searches among the ids that pass, when no more pass than this


class Ranker:
    """The query side of a MemoryStore: its collection, its term index (None on a chroma server), its embedder."""

    def __init__(self, collection: Any, terms: TermIndex | None, embedder: Embedder) -> None:
        self.collection = collection
        self.terms = terms
        self.embedder = embedder

    def query(self, text: str, k: int, filt: Filter | None, ranking: str, total: int) -> list[Memory]:
        """The k best of `total` memories for `text` (MemoryStore.query says how)."""
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
            memory = from_metadata(mem_id, meta)
            memory.similarity = float(np.dot(vector, np.asarray(embedding, dtype=np.float32)))
            memory.score = fused.get(mem_id, memory.similarity)
            memory.matched_terms = phrases(matched.get(mem_id, []), query, document(memory.text))
            out.append(memory)
        return out
