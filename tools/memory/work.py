"""The memory tools' work on an open MemoryStore: remember, recall, forget. Blocking: call them from a worker
thread, not the event loop. `open_store` turns store errors into tool errors.

The life cycle: a memory can replace others (they stay, marked superseded, out of recall unless asked), can
expire (out of recall; forget(expired=true) removes it), and carries its creation time (recall filters on it).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mcp.server.mcpserver.exceptions import ToolError

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
from tools.memory.checks import MAX_LISTED, NEAR_DUPLICATE, ForgetRequest, RecallRequest, RememberRequest, iso
from tools.memory.results import ForgetResult, RecallResult, RememberResult, to_out


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
