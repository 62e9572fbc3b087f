"""export_memory and import_memory: every memory as JSON Lines (no embeddings) and back. Blocking: call them
from a worker thread. An import is idempotent (a stored memory is skipped by its content id), durable batch by
batch, and reports a bad line by its number while the rest are still imported."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from memory_store import CLOCK, Filter, Memory, MemoryStore, memory_id
from tools.memory.checks import (
    DEFAULT_SCOPE,
    check_ids,
    check_kind,
    check_memory_text,
    check_scope,
    check_source,
    check_tags,
    iso,
    parse_moment,
)

# memories an import embeds and writes at a time; each batch is acknowledged (progress) once it is durable
IMPORT_BATCH = 500
MAX_IMPORT_ERRORS = 50  # lines reported by number; more are counted


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
    item["source"] = check_source(source)
    item["image_id"] = image_id
    item["superseded_by"] = check_ids("superseded_by", [superseded_by], 1)[0] if superseded_by else None
    replaces = row.get("replaces") or []
    if not isinstance(replaces, list) or not all(isinstance(i, str) for i in replaces):
        raise ToolError(f"replaces: {replaces!r} is not a list of memory ids.")
    item["replaces"] = list(check_ids("replaces", replaces, 10_000))
    return item
