"""TermIndex: an inverted index of the words of each memory, in SQLite beside the embedded chromadb store.

chromadb's full-text `$contains` scans: at 100,000 memories one lookup took 40-120 ms, and a recall makes
one per query word (p95 357 ms). Postings in a `WITHOUT ROWID` table keyed by (term, id) answer a word, or
a word prefix, with one B-tree range scan in well under a millisecond. The index is derived data: rows are
written before the memory reaches chromadb and removed after it leaves, so a crash can only leave a row
pointing at nothing (skipped when fetched), and it is rebuilt from the collection whenever the two disagree.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

PREFIX_END = "\U0010ffff"


class TermIndex:
    def __init__(self, path: Path) -> None:
        # one connection shared by the store's threads, serialised by a lock
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            # WAL + NORMAL: a commit survives the process being killed (not a power cut, like chromadb's log)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS postings (term TEXT NOT NULL, id TEXT NOT NULL, "
                "PRIMARY KEY (term, id)) WITHOUT ROWID"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS postings_id ON postings (id)")  # for forget
            self._db.execute("CREATE TABLE IF NOT EXISTS docs (id TEXT PRIMARY KEY) WITHOUT ROWID")

    def add(self, entries: Iterable[tuple[str, Sequence[str]]]) -> None:
        """Index (id, terms) pairs in one transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            for mem_id, terms in entries:
                self._db.execute("INSERT OR IGNORE INTO docs VALUES (?)", (mem_id,))
                self._db.executemany(
                    "INSERT OR IGNORE INTO postings VALUES (?, ?)", ((t, mem_id) for t in set(terms))
                )
            self._db.execute("COMMIT")

    def delete(self, ids: Sequence[str]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM docs WHERE id = ?", ((i,) for i in ids))
            self._db.executemany("DELETE FROM postings WHERE id = ?", ((i,) for i in ids))
            self._db.execute("COMMIT")

    def lookup(self, term: str, limit: int) -> list[str]:
        """Ids of memories with a word starting with `term` (at most `limit`)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT id FROM postings WHERE term >= ? AND term < ? LIMIT ?",
                (term, term + PREFIX_END, limit),
            ).fetchall()
        return [r[0] for r in rows]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM docs").fetchone()[0]

    def clear(self) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM postings")
            self._db.execute("DELETE FROM docs")
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
