"""What the memory tools answer: pydantic models (so clients get structured content and an output schema),
and a stored Memory as one item of an answer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from memory_store import Memory
from tools.memory.checks import MAX_LISTED, NEAR_DUPLICATE, iso


class MemoryOut(BaseModel):
    id: str = Field(description="Memory id; pass it to forget(ids=[...]).")
    text: str = Field(description="The remembered text (long texts are cut, with a marker saying how much).")
    kind: str
    tags: list[str]
    scope: str
    created: str = Field(description="When it was remembered (ISO 8601, UTC).")
    source: str | None = None
    image_id: str | None = Field(default=None, description="Stored image attached to it; an image reference.")
    expires: str | None = Field(
        default=None, description="When it leaves recall (ISO 8601, UTC); none: never."
    )
    replaces: list[str] = Field(
        default_factory=list, description="Memories this one superseded (kept, left out of recall)."
    )
    superseded_by: str | None = Field(
        default=None, description="The memory that replaced this one (only listed with include_superseded)."
    )
    score: float | None = Field(
        default=None, description="Similarity plus the lift of rare exact terms (higher is better)."
    )
    similarity: float | None = Field(default=None, description="Cosine similarity of meaning to the query.")
    matched_terms: list[str] = Field(default_factory=list, description="Query words found verbatim in it.")


class RememberResult(BaseModel):
    id: str = Field(description="The memory id (the same id for the same text, kind and scope).")
    status: Literal["stored", "exists"] = Field(
        description="stored: new memory; exists: identical content was already remembered (nothing added)."
    )
    kind: str
    scope: str
    tags: list[str]
    image_id: str | None = None
    expires: str | None = Field(default=None, description="When it leaves recall (ISO 8601, UTC).")
    replaces: list[str] = Field(
        default_factory=list, description="The memories it superseded: left out of recall from now on."
    )
    near_duplicates: list[MemoryOut] = Field(
        default_factory=list,
        description=f"Stored memories with nearly the same meaning (similarity >= {NEAR_DUPLICATE}); "
        "consider forgetting the outdated one.",
    )
    note: str | None = None


class RecallResult(BaseModel):
    memories: list[MemoryOut] = Field(description="Best first.")
    total_stored: int = Field(description="Memories in the store (all kinds and scopes).")
    note: str | None = None


class ForgetResult(BaseModel):
    dry_run: bool = Field(description="True: nothing was removed; these are what would be.")
    matched: int = Field(description="How many memories the ids or the filter matched.")
    removed: int = Field(description="How many were removed (0 on a dry run).")
    memories: list[MemoryOut] = Field(description=f"The matched memories (the first {MAX_LISTED}).")
    missing_ids: list[str] = Field(default_factory=list, description="Ids given that no memory has.")
    restored: list[str] = Field(
        default_factory=list,
        description="Memories the removed ones had replaced: current again, back in recall.",
    )
    confirm: str | None = Field(
        default=None,
        description="On a dry run with a filter: pass it back with dry_run=false to remove exactly these.",
    )
    note: str | None = None


def to_out(memory: Memory, max_chars: int) -> MemoryOut:
    text = memory.text
    if len(text) > max_chars:
        text = f"{text[:max_chars]} …[cut: {len(text) - max_chars} more characters]"
    scored = memory.similarity != 0.0 or memory.score != 0.0
    return MemoryOut(
        id=memory.id,
        text=text,
        kind=memory.kind,
        tags=memory.tags,
        scope=memory.scope,
        created=iso(memory.created),
        source=memory.source,
        image_id=memory.image_id,
        expires=iso(memory.expires) if memory.expires is not None else None,
        replaces=memory.replaces,
        superseded_by=memory.superseded_by,
        score=round(memory.score, 5) if scored else None,
        similarity=round(memory.similarity, 4) if scored else None,
        matched_terms=memory.matched_terms,
    )
