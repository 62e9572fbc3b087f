"""remember / recall / forget: what the agent learned, kept across sessions in the MemoryStore.

Plain functions: `check_*` validate arguments (before the store or the embedder is touched) and raise a
ToolError naming the field; `remember`, `recall` and `forget` take an open MemoryStore and run blocking
(call them from a worker thread, not the event loop). `open_store` turns store errors into tool errors.
"""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, get_args

import regex
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from memory_store import (
    Embedder,
    EmbedderError,
    Filter,
    Memory,
    MemoryStore,
    MemoryStoreError,
    StoreLocked,
    StoreReadOnly,
)

Kind = Literal["fact", "preference", "reference", "generation", "critique", "plan"]
KINDS: tuple[str, ...] = get_args(Kind)
MAX_TEXT_CHARS = 8000
MAX_K = 50
MAX_TAGS = 16
MAX_IDS = 500
MAX_LISTED = 50  # forget lists at most this many of the memories it matched
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
    score: float | None = Field(default=None, description="Fused rank score (higher is better).")
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
    confirm: str | None = Field(
        default=None,
        description="On a dry run with a filter: pass it back with dry_run=false to remove exactly these.",
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


@dataclass(frozen=True)
class RecallRequest:
    query: str
    k: int
    kind: str | None
    tags: tuple[str, ...]
    scope: str | None
    since: float | None
    max_chars: int


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

    def filter_arguments(self) -> str:
        """The filter as forget's arguments, for a note the agent can follow as written."""
        given = {
            "kind": self.kind,
            "tags": list(self.tags) or None,
            "scope": self.scope,
            "before": self.before_given,
        }
        return ", ".join(f"{name}={value!r}" for name, value in given.items() if value is not None)


def check_remember(
    text: str, kind: str, tags: list[str] | None, scope: str | None, source: str | None
) -> RememberRequest:
    return RememberRequest(
        text=check_memory_text("text", text),
        kind=check_kind(kind),
        tags=check_tags(tags),
        scope=check_scope(scope) or DEFAULT_SCOPE,
        source=_check_source(source),
    )


def check_recall(
    query: str,
    k: int,
    kind: str | None,
    tags: list[str] | None,
    scope: str | None,
    since: str | None,
    max_chars: int,
    now: float | None = None,
) -> RecallRequest:
    if not 1 <= k <= MAX_K:
        raise ToolError(f"k: {k} is out of range; ask for 1 to {MAX_K} memories.")
    return RecallRequest(
        query=check_memory_text("query", query),
        k=k,
        kind=check_kind(kind) if kind is not None else None,
        tags=check_tags(tags),
        scope=check_scope(scope),
        since=parse_time(since, "since", now) if since is not None else None,
        max_chars=max_chars,
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
) -> ForgetRequest:
    has_filter = kind is not None or bool(tags) or scope is not None or before is not None
    if confirm is not None and (not has_filter or dry_run is not False):
        raise ToolError(
            "confirm: only with a filter and dry_run=false; pass the confirm token a dry run with the same "
            "filter returned."
        )
    if ids and has_filter:
        raise ToolError(
            "forget: pass either ids or a filter (kind, tags, scope, before), not both; "
            "recall or forget(dry_run=true) with the filter shows the ids it matches."
        )
    if not ids and not has_filter:
        raise ToolError(
            "forget: give ids=[...] (from remember or recall) or at least one filter: kind, tags, scope or "
            "before. To clear everything, forget(before='now') (a dry run first)."
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
    now = time.time() if now is None else now
    text = value.strip()
    if text.lower() == "now":
        return now
    match = _DURATION.match(text.lower())
    if match:
        return now - float(match.group(1)) * _SECONDS[match.group(2)]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ToolError(
            f"{field}: {value!r} is not a time; use ISO 8601 ('2026-11-23' or '2026-11-23T14:00:00Z'), "
            "a duration back from now ('30m', '12h', '7d', '2w') or 'now'."
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


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
    added = store.add(
        request.text,
        kind=request.kind,
        scope=request.scope,
        tags=request.tags,
        source=request.source,
        image_id=image_id,
        near_threshold=NEAR_DUPLICATE,
    )
    if not added.created:
        existing = store.get([added.id])[0]
        differ = [
            name
            for name, given, kept in (
                ("tags", sorted(request.tags), sorted(existing.tags)),
                ("source", request.source, existing.source),
                ("image", image_id, existing.image_id),
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
        near_duplicates=near,
    )


def recall(store: MemoryStore, request: RecallRequest) -> RecallResult:
    filt = Filter(kind=request.kind, scope=request.scope, tags=tuple(request.tags), since=request.since)
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
        filt = Filter(kind=request.kind, scope=request.scope, tags=tuple(request.tags), before=request.before)
        matched = store.find(filt)
    token = confirm_token(matched) if matched and not request.ids else None
    if request.confirm is not None and request.confirm != token:
        raise ToolError(
            f"confirm: the filter now matches {len(matched)} memories, not the set the dry run listed (memories "
            "were added or removed since, or a time filter moved); nothing removed. Run the dry run again and "
            "confirm with its new token."
        )
    if not request.dry_run and matched:
        store.delete([m.id for m in matched])
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
        created=datetime.fromtimestamp(memory.created, UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z"),
        source=memory.source,
        image_id=memory.image_id,
        score=round(memory.score, 5) if scored else None,
        similarity=round(memory.similarity, 4) if scored else None,
        matched_terms=memory.matched_terms,
    )
