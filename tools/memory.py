"""remember / recall / forget, and export / import: what the agent learned, kept across sessions in the
MemoryStore.

Plain functions: `check_*` validate arguments (before the store or the embedder is touched) and raise a
ToolError naming the field; `remember`, `recall`, `forget`, `export_memories` and `import_memories` take an
open MemoryStore and run blocking (call them from a worker thread, not the event loop). `open_store` turns
store errors into tool errors.

The life cycle: a memory can replace others (they stay, marked superseded, out of recall unless asked), can
expire (out of recall; forget(expired=true) removes it), and carries its creation time (recall filters on it).
Times come from memory_store's CLOCK, so a test can move them.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, get_args

import regex
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from memory_store import (
    CLOCK,
    Embedder,
    EmbedderError,
    Filter,
    Memory,
    MemoryStore,
    MemoryStoreError,
    StoreLocked,
    StoreReadOnly,
    memory_id,
)

Kind = Literal["fact", "preference", "reference", "generation", "critique", "plan"]
KINDS: tuple[str, ...] = get_args(Kind)
MAX_TEXT_CHARS = 8000
MAX_K = 50
MAX_TAGS = 16
MAX_IDS = 500
MAX_LISTED = 50  # forget lists at most this many of the memories it matched
MAX_REPLACES = 50
MAX_TTL_DAYS = 36500
# memories an import embeds and writes at a time; each batch is acknowledged (progress) once it is durable
IMPORT_BATCH = 500
MAX_IMPORT_ERRORS = 50  # lines reported by number; more are counted
_MEMORY_ID = re.compile(r"^mem_[0-9a-f]{16}$")
NEAR_DUPLICATE = 0.92  # cosine similarity above which a new memory is reported as a near-duplicate
DEFAULT_SCOPE = "default"
# tags and scopes: letters and digits of any script (with their combining marks, as Devanagari's vowel signs
# are) and a few joiners; never spaces, other punctuation or control characters
_TAG_JOINERS = "-_.:"
_SCOPE_JOINERS = "-_.:/"
_TAG = regex.compile(r"[\p{L}\p{N}][\p{L}\p{M}\p{N}_.:\-]*")  # 1-40 characters as given (folding can grow it)
_SCOPE = regex.compile(r"[\p{L}\p{N}][\p{L}\p{M}\p{N}_.:/\-]{0,63}")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# -- results ------------------------------------------------------------------------------------------
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


class ExportResult(BaseModel):
    path: str = Field(description="The JSON Lines file written (one memory a line, no embeddings).")
    exported: int = Field(description="Memories written, superseded and expired ones included.")
    note: str | None = None


class ImportError_(BaseModel):
    line: int = Field(description="Line number in the file (1 is the first).")
    error: str


class ImportResult(BaseModel):
    path: str
    lines: int = Field(description="Memory lines read (blank lines are skipped).")
    imported: int = Field(description="New memories stored.")
    existing: int = Field(description="Lines whose memory was already stored (nothing added).")
    failed: int = Field(description="Lines refused; the others were still imported.")
    errors: list[ImportError_] = Field(
        default_factory=list, description=f"The refused lines (the first {MAX_IMPORT_ERRORS}), by number."
    )
    note: str | None = None


# -- requests -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RememberRequest:
    text: str
    kind: str
    tags: tuple[str, ...]
    scope: str
    source: str | None
    replaces: tuple[str, ...] = ()
    expires: float | None = None


@dataclass(frozen=True)
class RecallRequest:
    query: str
    k: int
    kind: str | None
    tags: tuple[str, ...]
    scope: str | None
    since: float | None
    max_chars: int
    until: float | None = None
    include_superseded: bool = False


@dataclass(frozen=True)
class ForgetRequest:
    ids: tuple[str, ...]
    kind: str | None
    tags: tuple[str, ...]
    scope: str | None
    before: float | None
    dry_run: bool
    confirm: str | None = None
    before_given: str | None = None  # as passed: the note repeats the filter in the caller's words
    expired: bool = False

    def filter_arguments(self) -> str:
        """The filter as forget's arguments, for a note the agent can follow as written."""
        given = {
            "kind": self.kind,
            "tags": list(self.tags) or None,
            "scope": self.scope,
            "before": self.before_given,
            "expired": True if self.expired else None,
        }
        return ", ".join(f"{name}={value!r}" for name, value in given.items() if value is not None)


def check_remember(
    text: str,
    kind: str,
    tags: list[str] | None,
    scope: str | None,
    source: str | None,
    replaces: list[str] | None = None,
    expires: str | None = None,
    ttl_days: float | None = None,
    now: float | None = None,
) -> RememberRequest:
    now = CLOCK.now() if now is None else now
    if expires is not None and ttl_days is not None:
        raise ToolError(
            f"expires / ttl_days: both given ({expires!r}, {ttl_days}); give one: a date it expires "
            "('2027-01-31') or a number of days from now."
        )
    until = None
    if expires is not None:
        until = parse_moment(expires, "expires")
        if until <= now:
            raise ToolError(
                f"expires: {expires!r} is not in the future (now is {iso(now)}); give a later date or time, "
                "or ttl_days, or leave both out for a memory that does not expire."
            )
    if ttl_days is not None:
        if not 0 < ttl_days <= MAX_TTL_DAYS:
            raise ToolError(
                f"ttl_days: {ttl_days} is out of range; give more than 0 and at most {MAX_TTL_DAYS} days, "
                "or leave it out for a memory that does not expire."
            )
        until = now + ttl_days * 86400
    return RememberRequest(
        text=check_memory_text("text", text),
        kind=check_kind(kind),
        tags=check_tags(tags),
        scope=check_scope(scope) or DEFAULT_SCOPE,
        source=_check_source(source),
        replaces=check_ids("replaces", replaces, MAX_REPLACES),
        expires=until,
    )


def check_ids(field: str, ids: list[str] | None, most: int) -> tuple[str, ...]:
    """Memory ids as given (stripped, without repeats): each must look like one."""
    if not ids:
        return ()
    if len(ids) > most:
        raise ToolError(f"{field}: {len(ids)} ids given; at most {most} per call.")
    out = tuple(dict.fromkeys(i.strip() for i in ids))
    for given in out:
        if not _MEMORY_ID.match(given):
            raise ToolError(
                f"{field}: {given!r} is not a memory id (mem_ and 16 hex digits); take the ids from remember "
                "or recall."
            )
    return out


def check_recall(
    query: str,
    k: int,
    kind: str | None,
    tags: list[str] | None,
    scope: str | None,
    since: str | None,
    max_chars: int,
    now: float | None = None,
    until: str | None = None,
    include_superseded: bool = False,
) -> RecallRequest:
    if not 1 <= k <= MAX_K:
        raise ToolError(f"k: {k} is out of range; ask for 1 to {MAX_K} memories.")
    start = parse_time(since, "since", now) if since is not None else None
    end = parse_time(until, "until", now) if until is not None else None
    if start is not None and end is not None and start >= end:
        raise ToolError(
            f"since / until: since {since!r} ({iso(start)}) is not before until {until!r} ({iso(end)}); "
            "memories made from since up to (not including) until are recalled: swap them or widen the range."
        )
    return RecallRequest(
        query=check_memory_text("query", query),
        k=k,
        kind=check_kind(kind) if kind is not None else None,
        tags=check_tags(tags),
        scope=check_scope(scope),
        since=start,
        max_chars=max_chars,
        until=end,
        include_superseded=include_superseded,
    )


def check_forget(
    ids: list[str] | None,
    kind: str | None,
    tags: list[str] | None,
    scope: str | None,
    before: str | None,
    dry_run: bool | None,
    now: float | None = None,
    confirm: str | None = None,
    expired: bool | None = None,
) -> ForgetRequest:
    has_filter = kind is not None or bool(tags) or scope is not None or before is not None or bool(expired)
    if confirm is not None and (not has_filter or dry_run is not False):
        raise ToolError(
            "confirm: only with a filter and dry_run=false; pass the confirm token a dry run with the same "
            "filter returned."
        )
    if ids and has_filter:
        raise ToolError(
            "forget: pass either ids or a filter (kind, tags, scope, before, expired), not both; "
            "recall or forget(dry_run=true) with the filter shows the ids it matches."
        )
    if not ids and not has_filter:
        raise ToolError(
            "forget: give ids=[...] (from remember or recall) or at least one filter: kind, tags, scope, "
            "before or expired=true. To clear everything, forget(before='now') (a dry run first)."
        )
    if ids and len(ids) > MAX_IDS:
        raise ToolError(f"ids: {len(ids)} ids given; at most {MAX_IDS} per call.")
    return ForgetRequest(
        ids=tuple(dict.fromkeys(i.strip() for i in ids or ())),
        kind=check_kind(kind) if kind is not None else None,
        tags=check_tags(tags),
        scope=check_scope(scope),
        before=parse_time(before, "before", now) if before is not None else None,
        # a filter can match far more than meant: it only shows what it would remove unless told otherwise
        dry_run=dry_run if dry_run is not None else not ids,
        confirm=confirm.strip() if confirm is not None else None,
        before_given=before.strip() if before is not None else None,
        expired=bool(expired),
    )


def check_memory_text(field: str, text: str) -> str:
    """A memory text or query: something visible, within MAX_TEXT_CHARS (tools.core.checks.check_text is
    for prompts, whose limit is a setting); returned stripped."""
    if not visible(text):
        raise ToolError(
            f"{field}: empty, or only whitespace and invisible characters; give the text to {_VERB[field]}."
        )
    if len(text) > MAX_TEXT_CHARS:
        raise ToolError(
            f"{field}: {len(text)} characters, above the limit of {MAX_TEXT_CHARS}; "
            "shorten it or split it into several memories."
        )
    return text.strip()


def visible(text: str) -> bool:
    """Whether `text` holds anything but whitespace and invisible format characters (zero-width space, BOM,
    word joiner: Unicode category Cf), which str.strip() keeps."""
    return any(not ch.isspace() and unicodedata.category(ch) != "Cf" for ch in text)


_VERB = {"text": "remember (one fact, preference, critique ...)", "query": "search memory for"}


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ToolError(f"kind: {kind!r} is not a memory kind; use one of {', '.join(KINDS)}.")
    return kind


def check_tags(tags: list[str] | None) -> tuple[str, ...]:
    """Tags as stored and matched: NFC, case-folded ("Größe" and "GRÖSSE" are one tag), without duplicates."""
    if not tags:
        return ()
    if len(tags) > MAX_TAGS:
        raise ToolError(f"tags: {len(tags)} tags given; at most {MAX_TAGS}.")
    out = []
    for tag in tags:
        given = unicodedata.normalize("NFC", tag.strip())
        folded = unicodedata.normalize("NFC", given.casefold())  # "ß" folds to "ss": count what was given
        if not (0 < len(given) <= 40 and _TAG.fullmatch(folded)):
            raise ToolError(
                f"tags: {tag!r} is not a tag{_why(given, 40, _TAG_JOINERS)}; tags are 1-40 letters or digits "
                "in any script, '-', '_', '.' or ':' (case-insensitive), starting with a letter or digit."
            )
        if folded not in out:
            out.append(folded)
    return tuple(out)


def check_scope(scope: str | None) -> str | None:
    """A scope as stored and matched: NFC (a composed and a decomposed "été" are one scope), case kept."""
    if scope is None:
        return None
    composed = unicodedata.normalize("NFC", scope)
    if not _SCOPE.fullmatch(composed):
        raise ToolError(
            f"scope: {scope!r} is not a scope name{_why(composed, 64, _SCOPE_JOINERS)}; use 1-64 letters or "
            "digits in any script, '-', '_', '.', ':' or '/', starting with a letter or digit (e.g. a project "
            f"name), or leave it out for {DEFAULT_SCOPE!r}."
        )
    return composed


def _why(value: str, longest: int, joiners: str) -> str:
    """What is wrong with a refused tag or scope, as a parenthesis for the message."""
    if not value:
        return " (it is empty)"
    if len(value) > longest:
        return f" ({len(value)} characters)"
    for ch in value:
        if not (ch in joiners or regex.match(r"[\p{L}\p{M}\p{N}]", ch)):
            return f" ({ch!r}, U+{ord(ch):04X}, is not allowed)"
    return " (it starts with a joiner or a combining mark)"


def _check_source(source: str | None) -> str | None:
    if source is not None and len(source) > 2000:
        raise ToolError(
            f"source: {len(source)} characters, above the limit of 2000; give the URL or a short note."
        )
    return source.strip() or None if source is not None else None


def parse_time(value: str, field: str, now: float | None = None) -> float:
    """ISO 8601 (date or datetime; UTC when no offset) or a duration back from now ('30m', '12h', '7d')."""
    now = CLOCK.now() if now is None else now
    text = value.strip()
    if text.lower() == "now":
        return now
    match = _DURATION.match(text.lower())
    if match:
        return now - float(match.group(1)) * _SECONDS[match.group(2)]
    try:
        return _moment(text)
    except ValueError:
        raise ToolError(
            f"{field}: {value!r} is not a time; use ISO 8601 ('2026-11-23' or '2026-11-23T14:00:00Z'), "
            "a duration back from now ('30m', '12h', '7d', '2w') or 'now'."
        ) from None


def parse_moment(value: str, field: str) -> float:
    """An ISO 8601 date or datetime (UTC when no offset), and nothing relative."""
    try:
        return _moment(value.strip())
    except ValueError:
        raise ToolError(
            f"{field}: {value!r} is not a date or time; use ISO 8601, e.g. '2027-01-31' or "
            "'2027-01-31T18:00:00Z'."
        ) from None


def _moment(text: str) -> float:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso(moment: float, timespec: str = "seconds") -> str:
    """A time as ISO 8601 in UTC, with Z."""
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


# -- the store ------------------------------------------------------------------------------------------
def open_store(
    memory_dir: Path,
    chroma_url: str | None,
    embedder: str,
    cache_dir: Path | None = None,
    runtime: str = "onnx",
) -> MemoryStore:
    """Open the memory (blocking: loads the embedder, whose ONNX export is cached in `cache_dir`).
    Errors become tool errors that say what to do."""
    model = Embedder(embedder, cache_dir=cache_dir, runtime=runtime)
    try:
        if chroma_url:
            return MemoryStore.open_remote(chroma_url, model)
        return MemoryStore.open_local(memory_dir, model)
    except StoreLocked as exc:
        raise ToolError(f"{exc} (set LIMNER_CHROMA_URL to a `chroma run` server)") from None
    except (StoreReadOnly, MemoryStoreError, EmbedderError) as exc:
        raise ToolError(str(exc)) from None


# -- the tools' work ------------------------------------------------------------------------------------
def remember(store: MemoryStore, request: RememberRequest, image_id: str | None) -> RememberResult:
    if request.replaces:
        check_replaced(store, request)
    added = store.add(
        request.text,
        kind=request.kind,
        scope=request.scope,
        tags=request.tags,
        source=request.source,
        image_id=image_id,
        near_threshold=NEAR_DUPLICATE,
        expires=request.expires,
        replaces=request.replaces,
    )
    if not added.created:
        existing = store.get([added.id])[0]
        differ = [
            name
            for name, given, kept in (
                ("tags", sorted(request.tags), sorted(existing.tags)),
                ("source", request.source, existing.source),
                ("image", image_id, existing.image_id),
                ("expiry", request.expires, existing.expires),
            )
            if given and given != kept
        ]
        return RememberResult(
            id=added.id,
            status="exists",
            kind=existing.kind,
            scope=existing.scope,
            tags=existing.tags,
            image_id=existing.image_id,
            expires=iso(existing.expires) if existing.expires is not None else None,
            replaces=existing.replaces,
            note=f"already remembered: the {', '.join(differ)} given were not applied (the stored ones stay); "
            "to change them, forget this id and remember it again."
            if differ
            else None,
        )
    near = []
    for memory, similarity in added.near_duplicates:
        out = to_out(memory, 300)
        out.similarity = round(similarity, 4)
        near.append(out)
    return RememberResult(
        id=added.id,
        status="stored",
        kind=request.kind,
        scope=request.scope,
        tags=list(request.tags),
        image_id=image_id,
        expires=iso(request.expires) if request.expires is not None else None,
        replaces=list(request.replaces),
        near_duplicates=near,
    )


def check_replaced(store: MemoryStore, request: RememberRequest) -> None:
    """Each memory named in `replaces` exists, is in the new memory's scope, is not the new memory and is not
    superseded by another one already (replace that one instead): checked before anything is written."""
    new_id = memory_id(request.text, request.kind, request.scope)
    found = {m.id: m for m in store.get(list(request.replaces))}
    for given in request.replaces:
        memory = found.get(given)
        if given == new_id:
            raise ToolError(
                f"replaces: {given!r} is the memory being remembered; a memory cannot replace itself."
            )
        if memory is None:
            raise ToolError(
                f"replaces: no memory has the id {given!r}; nothing was stored. Recall it to get its id "
                "(include_superseded=true lists replaced ones too)."
            )
        if memory.scope != request.scope:
            raise ToolError(
                f"replaces: {given!r} is in the scope {memory.scope!r}, not {request.scope!r}; a memory "
                "replaces only memories of its own scope. Nothing was stored."
            )
        if memory.superseded_by not in (None, new_id):
            raise ToolError(
                f"replaces: {given!r} was already replaced by {memory.superseded_by!r}; replace that one "
                "instead (the chain keeps both). Nothing was stored."
            )


def recall(store: MemoryStore, request: RecallRequest) -> RecallResult:
    filt = Filter(
        kind=request.kind,
        scope=request.scope,
        tags=tuple(request.tags),
        since=request.since,
        before=request.until,
        superseded=None if request.include_superseded else False,
        expired=False,
        now=CLOCK.now(),
    )
    memories = store.query(request.query, request.k, filt)
    total = store.count()
    note = None
    if not memories:
        note = "no memories stored yet" if total == 0 else "no memory matches these filters"
    return RecallResult(
        memories=[to_out(m, request.max_chars) for m in memories], total_stored=total, note=note
    )


def forget(store: MemoryStore, request: ForgetRequest) -> ForgetResult:
    missing: list[str] = []
    if request.ids:
        matched = store.get(request.ids)
        found = {m.id for m in matched}
        missing = [i for i in request.ids if i not in found]
    else:
        filt = Filter(
            kind=request.kind,
            scope=request.scope,
            tags=tuple(request.tags),
            before=request.before,
            expired=True if request.expired else None,
            now=CLOCK.now(),
        )
        matched = store.find(filt)
    token = confirm_token(matched) if matched and not request.ids else None
    if request.confirm is not None and request.confirm != token:
        raise ToolError(
            f"confirm: the filter now matches {len(matched)} memories, not the set the dry run listed (memories "
            "were added or removed since, or a time filter moved); nothing removed. Run the dry run again and "
            "confirm with its new token."
        )
    restored: list[str] = []
    if not request.dry_run and matched:
        restored = store.delete([m.id for m in matched])
    note = None
    if request.dry_run and matched and request.ids:
        listed = [m.id for m in matched]
        note = f"dry run: nothing removed; to remove these, call forget(ids={listed!r}, dry_run=false)."
    elif request.dry_run and matched:
        note = (
            f"dry run: nothing removed; to remove exactly these, call forget({request.filter_arguments()}, "
            f"dry_run=false, confirm={token!r}) (refused if the matches have changed meanwhile)."
        )
    elif not matched:
        note = "nothing matched; nothing removed."
    return ForgetResult(
        dry_run=request.dry_run,
        matched=len(matched),
        removed=0 if request.dry_run else len(matched),
        memories=[to_out(m, 200) for m in matched[:MAX_LISTED]],
        missing_ids=missing,
        restored=restored,
        confirm=token if request.dry_run else None,
        note=note,
    )


def confirm_token(matched: list[Memory]) -> str:
    """Names the exact set a filter matched: equal sets, equal tokens."""
    digest = hashlib.sha256("\n".join(sorted(m.id for m in matched)).encode()).hexdigest()
    return "fgt_" + digest[:16]


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


# -- export and import ----------------------------------------------------------------------------------
# one memory a line: every field but the embedding, times in ISO 8601 (UTC, microseconds, so a round trip
# keeps them), links by id. The id is the memory's content id: an import checks it and skips what is stored.
EXPORT_FIELDS = (
    "id", "text", "kind", "scope", "tags", "created", "source", "image_id", "expires", "replaces",
    "superseded_by",
)  # fmt: skip


def check_export_path(path: str | None, home: Path, now: float | None = None) -> Path:
    """Where an export goes: inside LIMNER_HOME only (limner writes nowhere else). A relative path is under
    home/exports; by default a new file named by the time."""
    exports = home.resolve() / "exports"
    if path is None or not path.strip():
        stamp = datetime.fromtimestamp(CLOCK.now() if now is None else now, UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return exports / f"memory-{stamp}.jsonl"
    given = Path(path.strip()).expanduser()
    target = (given if given.is_absolute() else exports / given).resolve()
    if not target.is_relative_to(home.resolve()):
        raise ToolError(
            f"path: {path!r} is outside the limner home {home}; limner writes only there. Give a file name "
            "(written under home/exports) or a path inside the home, then copy the file where you need it."
        )
    if target.suffix != ".jsonl":
        raise ToolError(f"path: {path!r} must end in .jsonl (JSON Lines: one memory a line).")
    if target.exists():
        raise ToolError(f"path: {target} exists; give a new file name (an export never overwrites).")
    return target


def check_import_path(path: str, readable: Iterable[Path], home: Path) -> Path:
    """A file to import: inside LIMNER_HOME or an allowed folder (a relative path is under home/exports)."""
    given = Path(path.strip()).expanduser()
    target = (given if given.is_absolute() else home.resolve() / "exports" / given).resolve()
    roots = [r.resolve() for r in readable]
    if not any(target.is_relative_to(root) for root in roots):
        raise ToolError(
            f"path: {path!r} is outside the folders limner reads ({', '.join(map(str, roots))}); move the file "
            "there or add its folder to allowed_dirs."
        )
    if not target.is_file():
        raise ToolError(f"path: {target} is not a file; give the path of a .jsonl file an export wrote.")
    return target


def export_memories(store: MemoryStore, target: Path, scope: str | None = None) -> ExportResult:
    """Write every memory (of `scope`, or all), oldest first, to a new file; written beside it and renamed
    into place, so a file at `target` is always complete."""
    memories = store.find(Filter(scope=scope))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    with open(partial, "w", encoding="utf-8") as out:
        for memory in memories:
            out.write(json.dumps(export_row(memory), ensure_ascii=False) + "\n")
    partial.replace(target)
    return ExportResult(
        path=str(target),
        exported=len(memories),
        note=None if memories else "no memories to export; the file is empty.",
    )


def export_row(memory: Memory) -> dict[str, object]:
    return {
        "id": memory.id,
        "text": memory.text,
        "kind": memory.kind,
        "scope": memory.scope,
        "tags": memory.tags,
        "created": iso(memory.created, "microseconds"),
        "source": memory.source,
        "image_id": memory.image_id,
        "expires": iso(memory.expires, "microseconds") if memory.expires is not None else None,
        "replaces": memory.replaces,
        "superseded_by": memory.superseded_by,
    }


def import_memories(
    store: MemoryStore, source: Path, progress: Callable[[int, int], None] | None = None
) -> ImportResult:
    """Store every memory of a JSON Lines export that is not stored yet, IMPORT_BATCH at a time (each batch
    is durable once written, and then reported to `progress` as (lines done, lines in all): a process killed
    meanwhile loses only the batch under way, and importing the file again completes it). A line that fails
    is reported by number; the rest are still imported. Embeddings are computed by this store's embedder."""
    with open(source, encoding="utf-8", errors="replace") as rows:
        total = sum(1 for line in rows if line.strip())
    errors: list[ImportError_] = []
    failed = lines = imported = existing = 0
    batch: list[dict[str, object]] = []

    def flush() -> None:
        nonlocal imported, existing
        ids = [str(item["id"]) for item in batch]
        new = set(ids) - {m.id for m in store.get(ids)}
        store.add_many(batch)
        imported += len(new)
        existing += len(ids) - len(new)  # stored before, or repeated in the file
        batch.clear()
        if progress is not None:
            progress(lines, total)

    with open(source, encoding="utf-8", errors="replace") as rows:
        for number, line in enumerate(rows, start=1):
            if not line.strip():
                continue
            lines += 1
            try:
                batch.append(import_row(line))
            except ToolError as exc:
                failed += 1
                if len(errors) < MAX_IMPORT_ERRORS:
                    errors.append(ImportError_(line=number, error=str(exc)))
                continue
            if len(batch) >= IMPORT_BATCH:
                flush()
    if batch:
        flush()
    note = None
    if failed:
        note = (
            f"{failed} lines were refused (listed by number); the other {lines - failed} were imported or "
            "already stored. Fix those lines and import the file again: stored memories are skipped."
        )
    elif lines == 0:
        note = "the file holds no memories."
    return ImportResult(
        path=str(source),
        lines=lines,
        imported=imported,
        existing=existing,
        failed=failed,
        errors=errors,
        note=note,
    )


def import_row(line: str) -> dict[str, object]:
    """One export line as an add_many item, every field checked as remember checks it."""
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise ToolError(
            f"not JSON ({exc}); each line must be one JSON object, as export writes it."
        ) from None
    if not isinstance(row, dict):
        raise ToolError(f"a JSON {type(row).__name__}, not an object; each line must be one memory object.")
    unknown = sorted(set(row) - set(EXPORT_FIELDS))
    if unknown:
        raise ToolError(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; a memory line "
            f"has only {', '.join(EXPORT_FIELDS)}."
        )
    text, kind = row.get("text"), row.get("kind")
    if not isinstance(text, str) or not isinstance(kind, str):
        raise ToolError("text and kind: required strings; every memory line has them.")
    scope = row.get("scope") or DEFAULT_SCOPE
    if not isinstance(scope, str):
        raise ToolError(f"scope: {scope!r} is not a string.")
    tags = row.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ToolError(f"tags: {tags!r} is not a list of strings.")
    item: dict[str, object] = {
        "text": check_memory_text("text", text),
        "kind": check_kind(kind),
        "scope": check_scope(scope),
        "tags": list(check_tags(tags)),
    }
    item["id"] = memory_id(str(item["text"]), kind, str(item["scope"]))
    if row.get("id") is not None and row["id"] != item["id"]:
        raise ToolError(
            f"id: {row['id']!r} is not the id of this text, kind and scope ({item['id']!r}): the text was "
            "changed after the export. Remove the id field to import it as a new memory."
        )
    for name in ("created", "expires"):
        value = row.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise ToolError(f"{name}: {value!r} is not an ISO 8601 time.")
            item[name] = parse_moment(value, name)
    source, image_id, superseded_by = (row.get(name) for name in ("source", "image_id", "superseded_by"))
    for name, value in (("source", source), ("image_id", image_id), ("superseded_by", superseded_by)):
        if value is not None and not isinstance(value, str):
            raise ToolError(f"{name}: {value!r} is not a string.")
    item["source"] = _check_source(source)
    item["image_id"] = image_id
    item["superseded_by"] = check_ids("superseded_by", [superseded_by], 1)[0] if superseded_by else None
    replaces = row.get("replaces") or []
    if not isinstance(replaces, list) or not all(isinstance(i, str) for i in replaces):
        raise ToolError(f"replaces: {replaces!r} is not a list of memory ids.")
    item["replaces"] = list(check_ids("replaces", replaces, 10_000))
    return item
