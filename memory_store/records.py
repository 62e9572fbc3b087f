"""What a memory is: its fields, its content id, the filter a recall or a listing applies, and its forms in
chromadb's metadata and in the term index. Times come from CLOCK, which a test can move."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from memory_store.terms import Entry
from memory_store.text import normalize, words


class Clock:
    """The time memories are stamped, filtered and expired by: the system clock (a test sets its own)."""

    def now(self) -> float:
        return time.time()


CLOCK = Clock()


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


def to_metadata(memory: Memory) -> dict[str, Any]:
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


def from_item(mem_id: str, item: dict[str, Any], now: float) -> Memory:
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


def to_entry(mem_id: str, text: str, memory: Memory) -> Entry:
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


def from_metadata(mem_id: str, meta: dict[str, Any]) -> Memory:
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
