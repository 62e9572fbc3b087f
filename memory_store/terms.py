"""TermIndex: the words and the filter fields of each memory, in SQLite beside the embedded chromadb store.

chromadb's full-text `$contains` scans: at 100,000 memories one lookup took 40-120 ms, and a recall makes
one per query word (p95 357 ms). Postings in a `WITHOUT ROWID` table keyed by (term, id) answer a word, or
a word prefix, with one B-tree range scan in well under a millisecond.

chromadb's `get(ids=..., where=...)` is worse still: checking 400 ids against `kind = fact` took 20 s at
100,000 memories (the filter runs over the whole collection before the ids are applied). So the fields a
recall filters on (kind, scope, tags, created, and the life cycle: superseded_by, expires) are kept here too, and `keep` checks a few hundred ids
against a filter with primary-key look-ups.

The index is derived data: rows are written before the memory reaches chromadb and removed after it
leaves, so a crash can only leave a row pointing at nothing (skipped when fetched), and it is rebuilt from
the collection whenever the two disagree or the schema below changes.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX_END = "\U0010ffff"
# 0: terms only; 2: terms and filter fields; 3: words with marks, parts of joined words; 4: runs of Chinese,
# Japanese, Korean and Thai as pairs of characters; 5: superseded_by and expires
SCHEMA_VERSION = 5
MAX_PARAMS = 500  # ids per `IN (...)`: well under SQLite's oldest limit of 999 variables


@dataclass(frozen=True)
class Entry:
    id: str
    terms: Sequence[str]
    kind: str
    scope: str
    tags: Sequence[str]
    created: float
    superseded_by: str | None = None
    expires: float | None = None


class TermIndex:
    def __init__(self, path: Path) -> None:
        # one connection shared by the store's threads, serialised by a lock
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            # WAL + NORMAL: a commit survives the process being killed (not a power cut, like chromadb's log)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            if self._db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                # an older layout: start empty; the store sees the count differ and rebuilds
                for table in ("postings", "docs", "tags"):
                    self._db.execute(f"DROP TABLE IF EXISTS {table}")
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS postings (term TEXT NOT NULL, id TEXT NOT NULL, "
                "PRIMARY KEY (term, id)) WITHOUT ROWID"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS postings_id ON postings (id)")  # for forget
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS docs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, "
                "scope TEXT NOT NULL, created REAL NOT NULL, superseded_by TEXT, expires REAL) WITHOUT ROWID"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS tags (id TEXT NOT NULL, tag TEXT NOT NULL, "
                "PRIMARY KEY (id, tag)) WITHOUT ROWID"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS tags_tag ON tags (tag)")  # for `matching`
            # for `page`: newest first without sorting every memory (the id rides along: the primary key)
            self._db.execute("CREATE INDEX IF NOT EXISTS docs_created ON docs (created)")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN ... COMMIT under the lock. Any failure (disk full, a read-only folder) rolls back: left open,
        the transaction would make every later BEGIN fail and its half-written rows visible to `keep`."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.rollback()  # a no-op when SQLite already rolled back on its own
                raise

    def add(self, entries: Iterable[Entry]) -> None:
        """Index entries in one transaction."""
        with self._transaction() as db:
            for e in entries:
                db.execute(
                    "INSERT OR IGNORE INTO docs VALUES (?, ?, ?, ?, ?, ?)",
                    (e.id, e.kind, e.scope, e.created, e.superseded_by, e.expires),
                )
                db.executemany(
                    "INSERT OR IGNORE INTO postings VALUES (?, ?)", ((t, e.id) for t in set(e.terms))
                )
                db.executemany("INSERT OR IGNORE INTO tags VALUES (?, ?)", ((e.id, t) for t in e.tags))

    def supersede(self, ids: Sequence[str], by: str | None) -> None:
        """Mark memories as superseded by the memory `by` (None: current again)."""
        with self._transaction() as db:
            db.executemany("UPDATE docs SET superseded_by = ? WHERE id = ?", ((by, i) for i in ids))

    def delete(self, ids: Sequence[str]) -> None:
        with self._transaction() as db:
            for table in ("docs", "postings", "tags"):
                db.executemany(f"DELETE FROM {table} WHERE id = ?", ((i,) for i in ids))

    def lookup(self, term: str, limit: int, prefix: bool = True) -> list[str]:
        """Ids of memories with a word starting with `term` (prefix=False: the word `term`), at most `limit`."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT id FROM postings WHERE term >= ? AND term < ? LIMIT ?",
                (term, term + PREFIX_END if prefix else term + "\x00", limit),
            ).fetchall()
        return [r[0] for r in rows]

    def keep(self, ids: Sequence[str], **filters: Any) -> set[str]:
        """The ids among `ids` whose memory passes the filters (`_conditions`' arguments)."""
        conditions, params = _conditions(**filters)
        kept: set[str] = set()
        with self._lock:
            for start in range(0, len(ids), MAX_PARAMS):
                chunk = list(ids[start : start + MAX_PARAMS])
                sql = f"SELECT id FROM docs WHERE id IN ({','.join('?' * len(chunk))})"
                sql += "".join(f" AND {c}" for c in conditions)
                kept.update(r[0] for r in self._db.execute(sql, [*chunk, *params]))
        return kept

    def matching(self, limit: int, **filters: Any) -> list[str]:
        """Every id whose memory passes the filters, or more than `limit` of them (then: too many to list)."""
        tags = filters.get("tags") or ()
        with self._lock:
            if tags:  # start from the first tag's postings: usually far fewer rows than all memories
                rest = {**filters, "tags": tags[1:]}
                conditions, params = _conditions(**rest)
                sql = "SELECT id FROM docs WHERE id IN (SELECT id FROM tags WHERE tag = ?)"
                params = [tags[0], *params]
            else:
                conditions, params = _conditions(**filters)
                sql = "SELECT id FROM docs WHERE 1"
            sql += "".join(f" AND {c}" for c in conditions) + " LIMIT ?"
            return [r[0] for r in self._db.execute(sql, [*params, limit + 1])]

    def page(
        self, limit: int, after: tuple[float, str] | None, **filters: Any
    ) -> tuple[list[tuple[float, str]], int]:
        """Up to `limit` positions (created, id) of memories passing the filters (`_conditions`' arguments),
        newest first (ties: the larger id first), after the position `after`; and how many pass in all."""
        conditions, params = _conditions(**filters)
        where = "".join(f" AND {c}" for c in conditions)
        keyset, keys = "", []
        if after is not None:
            keyset = " AND (created < ? OR (created = ? AND id < ?))"
            keys = [after[0], after[0], after[1]]
        # the count scans the table (~9 ms at 100,000 memories): through the creation-time index SQLite
        # looked every row in a wide window up again (100 ms); with tags it starts from the first tag's rows
        # (10 ms, against 39 checking every memory for the tag)
        tags = filters.get("tags") or ()
        count_conditions, count_params = _conditions(**{**filters, "tags": tags[1:]}, scan=True)
        count_sql = "SELECT COUNT(*) FROM docs WHERE " + (
            "id IN (SELECT id FROM tags WHERE tag = ?)" if tags else "1"
        )
        count_sql += "".join(f" AND {c}" for c in count_conditions)
        with self._lock:
            total = self._db.execute(count_sql, [*tags[:1], *count_params]).fetchone()[0]
            rows = self._db.execute(
                f"SELECT created, id FROM docs WHERE 1{where}{keyset} ORDER BY created DESC, id DESC LIMIT ?",
                [*params, *keys, limit],
            ).fetchall()
        return [(r[0], r[1]) for r in rows], total

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM docs").fetchone()[0]

    def clear(self) -> None:
        with self._transaction() as db:
            for table in ("postings", "docs", "tags"):
                db.execute(f"DELETE FROM {table}")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _conditions(
    kind: str | None = None,
    scope: str | None = None,
    tags: Sequence[str] = (),
    since: float | None = None,
    before: float | None = None,
    superseded: bool | None = None,
    expired: bool | None = None,
    now: float = 0.0,
    scan: bool = False,
) -> tuple[list[str], list[Any]]:
    """SQL conditions on `docs` for a filter: every one given must hold, and every tag be present.
    superseded / expired: True only those, False none of those, None either; expired is judged at `now`.
    scan: keep SQLite off the creation-time index (a unary + on the column), for a query that reads most rows."""
    conditions: list[str] = []
    params: list[Any] = []
    created = "+created" if scan else "created"
    for column, op, value in (
        ("kind", "=", kind),
        ("scope", "=", scope),
        (created, ">=", since),
        (created, "<", before),
    ):
        if value is not None:
            conditions.append(f"{column} {op} ?")
            params.append(value)
    for tag in tags:
        conditions.append("EXISTS (SELECT 1 FROM tags t WHERE t.id = docs.id AND t.tag = ?)")
        params.append(tag)
    if superseded is not None:
        conditions.append(f"superseded_by IS {'NOT ' if superseded else ''}NULL")
    if expired is not None:
        conditions.append("expires <= ?" if expired else "(expires IS NULL OR expires > ?)")
        params.append(now)
    return conditions, params
