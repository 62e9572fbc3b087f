"""list_memories: what limner knows, by kind, tags, scope and creation time, newest first, a page at a time.

A page ends with a cursor naming the position of its last memory (its creation time and id) and the filter
it was read with. The next page starts after that position, so memories made meanwhile (newer than any page
read) are neither repeated nor skipped, and a cursor passed with another filter is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from dataclasses import dataclass

from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from memory_store import CLOCK, Filter, MemoryStore
from tools.memory.checks import check_kind, check_scope, check_tags, check_window
from tools.memory.results import MemoryOut, to_out

MAX_PAGE = 100
CURSOR_PREFIX = "cur_"


class ListResult(BaseModel):
    memories: list[MemoryOut] = Field(description="Newest first.")
    total: int = Field(description="Memories matching the filter, on every page.")
    next_cursor: str | None = Field(
        default=None,
        description="Pass it back as cursor, with the same filter, for the next page; none: this is the last.",
    )
    total_stored: int = Field(description="Memories in the store (all kinds and scopes).")
    note: str | None = None


@dataclass(frozen=True)
class ListRequest:
    kind: str | None
    tags: tuple[str, ...]
    scope: str | None
    since: float | None
    until: float | None
    include_superseded: bool
    include_expired: bool
    limit: int
    max_chars: int
    after: tuple[float, str] | None  # the position the page starts after (from the cursor)
    filter_digest: str  # names the filter as given, so a cursor is only taken back with it


def check_list(
    kind: str | None = None,
    tags: list[str] | None = None,
    scope: str | None = None,
    since: str | None = None,
    until: str | None = None,
    include_superseded: bool = False,
    include_expired: bool = False,
    limit: int = 20,
    cursor: str | None = None,
    max_chars: int = 300,
    now: float | None = None,
) -> ListRequest:
    if not 1 <= limit <= MAX_PAGE:
        raise ToolError(f"limit: {limit} is out of range; list 1 to {MAX_PAGE} memories a page.")
    checked_tags = check_tags(tags)
    checked_kind = check_kind(kind) if kind is not None else None
    checked_scope = check_scope(scope)
    start, end = check_window(since, until, now)
    # the filter as given: a duration ('7d') names the same window on every page, though it slides with now
    given = [
        checked_kind,
        sorted(checked_tags),
        checked_scope,
        since,
        until,
        include_superseded,
        include_expired,
    ]
    digest = hashlib.sha256(json.dumps(given, ensure_ascii=False).encode()).hexdigest()[:12]
    return ListRequest(
        kind=checked_kind,
        tags=checked_tags,
        scope=checked_scope,
        since=start,
        until=end,
        include_superseded=include_superseded,
        include_expired=include_expired,
        limit=limit,
        max_chars=max_chars,
        after=read_cursor(cursor, digest) if cursor is not None else None,
        filter_digest=digest,
    )


def make_cursor(position: tuple[float, str], digest: str) -> str:
    payload = json.dumps([position[0], position[1], digest]).encode()
    return CURSOR_PREFIX + base64.urlsafe_b64encode(payload).decode().rstrip("=")


def read_cursor(cursor: str, digest: str) -> tuple[float, str]:
    """The position a cursor names, if it is one list_memories made for this filter."""
    shown = cursor if len(cursor) <= 80 else f"{cursor[:80]}... ({len(cursor)} characters)"
    try:
        if not cursor.startswith(CURSOR_PREFIX):
            raise ValueError("no prefix")
        body = cursor[len(CURSOR_PREFIX) :]
        created, mem_id, made_for = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        if not (isinstance(created, float | int) and math.isfinite(created)) or not isinstance(mem_id, str):
            raise ValueError("not a position")
    except (ValueError, TypeError, binascii.Error):
        raise ToolError(
            f"cursor: {shown!r} is not a cursor list_memories returned; pass its next_cursor back unchanged, or "
            "leave cursor out to start from the newest memory."
        ) from None
    if made_for != digest:
        raise ToolError(
            "cursor: it was returned for another filter (kind, tags, scope, since, until, include_superseded, "
            "include_expired); pass the same filter as the call that returned it, or leave cursor out to start "
            "this filter from the newest memory."
        )
    return float(created), mem_id


def list_memories(store: MemoryStore, request: ListRequest) -> ListResult:
    filt = Filter(
        kind=request.kind,
        scope=request.scope,
        tags=request.tags,
        since=request.since,
        before=request.until,
        superseded=None if request.include_superseded else False,
        expired=None if request.include_expired else False,
        now=CLOCK.now(),
    )
    memories, total, next_after = store.page(filt, request.limit, request.after)
    stored = store.count()
    note = None
    if not memories and request.after is None:
        note = "no memories stored yet" if stored == 0 else "no memory matches these filters"
    elif not memories:
        note = "no more memories match these filters"
    return ListResult(
        memories=[to_out(m, request.max_chars) for m in memories],
        total=total,
        next_cursor=make_cursor(next_after, request.filter_digest) if next_after is not None else None,
        total_stored=stored,
        note=note,
    )
