"""The `remember`, `recall`, `list_memories`, `forget`, `export_memory` and `import_memory` tools: wiring only;
the logic is tools/memory/.

The MemoryStore is opened on the first memory call (loading the embedder takes seconds, so never at start-up)
and kept in `AppContext.memory`. Its blocking work runs on anyio worker threads, not on the model
worker, so memory keeps answering while a generation runs.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any

import anyio
import anyio.from_thread
import anyio.to_thread
import httpx
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from memory_store import MemoryStore
from server.context import AppContext, app_context
from tools import memory
from tools.memory import (
    MAX_K,
    MAX_PAGE,
    MAX_REPLACES,
    MAX_TEXT_CHARS,
    MAX_TTL_DAYS,
    ExportResult,
    ForgetResult,
    ImportResult,
    Kind,
    ListResult,
    RecallResult,
    RememberResult,
)

logger = logging.getLogger("limner.memory")

TagList = Annotated[
    list[str] | None,
    Field(
        description="Short labels (letters and digits in any script, - _ . :), case-insensitive, "
        "e.g. ['bike', 'client:acme', 'café']."
    ),
]


async def in_store(app: AppContext, work: Callable[..., Any], *args: Any) -> Any:
    """Run one memory operation on a worker thread. A storage failure (a full disk, another program
    holding the folder, a chroma server gone away) is logged and becomes a tool error saying so; a failed
    write changes nothing."""
    try:
        return await anyio.to_thread.run_sync(work, *args)
    except httpx.TransportError as exc:
        # chromadb's HttpClient lets httpx's errors through: the server stopped, restarted or is unreachable
        if not app.settings.chroma_url:
            raise
        logger.exception("memory %s failed", work.__name__)
        raise ToolError(
            f"the chroma server at {app.settings.chroma_url} cannot be reached ({type(exc).__name__}: {exc}); "
            f"check that it is running (`chroma run`) and reachable from here, then retry the {work.__name__}."
        ) from None
    except Exception as exc:
        if not isinstance(exc, sqlite3.Error | OSError) and not type(exc).__module__.startswith("chromadb"):
            raise
        logger.exception("memory %s failed", work.__name__)
        where = app.settings.chroma_url or app.settings.memory_dir
        raise ToolError(
            f"the memory store could not {work.__name__} ({type(exc).__name__}: {exc}); retry, and if it keeps "
            f"failing check the free disk space and that no other program is using {where}."
        ) from None


async def open_memory(app: AppContext) -> MemoryStore:
    """The store, opened once per server (a failed open is retried by the next call)."""
    async with app.memory_lock:
        store = app.memory
        if store is None:
            settings = app.settings
            store = await anyio.to_thread.run_sync(
                memory.open_store,
                settings.memory_dir,
                settings.chroma_url,
                settings.embedder,
                settings.models_dir / "embedders",
                settings.embedder_runtime,
            )
            app.memory = store
            app.closers.append(store.close)
        return store


def register(server: MCPServer) -> None:
    @server.tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        )
    )
    async def remember(
        ctx: Context,
        text: Annotated[
            str,
            Field(
                description=f"One self-contained thing worth keeping (at most {MAX_TEXT_CHARS} characters)."
            ),
        ],
        kind: Annotated[
            Kind,
            Field(
                description="fact (found by search), preference (the user's taste), reference (an image or page "
                "to follow), generation (what was made and how), critique (a judge verdict), plan."
            ),
        ],
        tags: TagList = None,
        image: Annotated[
            str | None,
            Field(description="An image to attach: store id, limner:// URI, data URI, allowed path or URL."),
        ] = None,
        source: Annotated[
            str | None, Field(description="Where it came from: a URL, an image id, 'user said'.")
        ] = None,
        scope: Annotated[
            str | None,
            Field(description="A namespace such as a project or user name; default 'default'."),
        ] = None,
        replaces: Annotated[
            list[str] | None,
            Field(
                description=f"Ids of memories this one supersedes (same scope, at most {MAX_REPLACES}): they are "
                "kept, marked superseded, and left out of recall."
            ),
        ] = None,
        expires: Annotated[
            str | None,
            Field(description="When it stops being true: ISO 8601 ('2027-01-31'); it then leaves recall."),
        ] = None,
        ttl_days: Annotated[
            float | None,
            Field(gt=0, le=MAX_TTL_DAYS, description="Or: days from now until it expires."),
        ] = None,
    ) -> RememberResult:
        """Keep something for later sessions: a searched fact, a user preference, a reference, an outcome.

        Call it whenever you learn something you will need again (before the context is lost). Remembering
        the same text, kind and scope twice returns the same id without a duplicate; a near-duplicate is
        stored and listed in `near_duplicates`. When it updates something remembered before (a preference that
        changed), pass the old ids in `replaces`: the old ones stay, marked superseded, and recall returns only
        the new one. Give `expires` or `ttl_days` for what is only true for a while (a sale, a deadline).
        recall finds it again before the next generate.
        """
        app = app_context(ctx)
        request = memory.check_remember(text, kind, tags, scope, source, replaces, expires, ttl_days)
        image_id = None
        if image is not None:
            resolved = await anyio.to_thread.run_sync(app.resolve, image, "image")
            image_id = resolved.id
            if image_id is None:
                put = partial(app.images.put, resolved.image, tool="remember", params={"source": source})
                image_id = (await anyio.to_thread.run_sync(put)).id
        store = await open_memory(app)
        return await in_store(app, memory.remember, store, request, image_id)

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def recall(
        ctx: Context,
        query: Annotated[str, Field(description="What you need: a question, a name, a topic.")],
        k: Annotated[int, Field(ge=1, le=MAX_K, description="How many memories to return.")] = 5,
        kind: Annotated[Kind | None, Field(description="Only memories of this kind.")] = None,
        tags: Annotated[
            list[str] | None, Field(description="Only memories carrying every one of these tags.")
        ] = None,
        scope: Annotated[str | None, Field(description="Only this scope; default: every scope.")] = None,
        since: Annotated[
            str | None,
            Field(
                description="Only memories made at or after: ISO 8601 ('2026-11-23T14:00:00Z') or a duration "
                "back from now ('7d')."
            ),
        ] = None,
        max_chars: Annotated[
            int,
            Field(ge=50, le=2000, description="Longer texts are cut to this many characters, with a marker."),
        ] = 600,
        until: Annotated[
            str | None,
            Field(description="Only memories made before: ISO 8601 or a duration back from now ('1d')."),
        ] = None,
        include_superseded: Annotated[
            bool,
            Field(
                description="Also return memories that newer ones replaced (their superseded_by says by which)."
            ),
        ] = False,
    ) -> RecallResult:
        """Find remembered facts, preferences, references and critiques relevant to a query, best first.

        Call it before writing a prompt (what does the user prefer? what did search find about this product?)
        and before judging (what went wrong last time?). Ranking fuses meaning with exact words, so names of
        brands, products and people are found even in a large memory. Put what it returns into the generate
        prompt; search only for what it does not know.
        """
        app = app_context(ctx)
        request = memory.check_recall(
            query, k, kind, tags, scope, since, max_chars, until=until, include_superseded=include_superseded
        )
        store = await open_memory(app)
        return await in_store(app, memory.recall, store, request)

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def list_memories(
        ctx: Context,
        kind: Annotated[Kind | None, Field(description="Only memories of this kind.")] = None,
        tags: Annotated[
            list[str] | None, Field(description="Only memories carrying every one of these tags.")
        ] = None,
        scope: Annotated[str | None, Field(description="Only this scope; default: every scope.")] = None,
        since: Annotated[
            str | None,
            Field(description="Only memories made at or after: ISO 8601 or a duration back from now ('7d')."),
        ] = None,
        until: Annotated[
            str | None,
            Field(description="Only memories made before: ISO 8601 or a duration back from now ('1d')."),
        ] = None,
        include_superseded: Annotated[
            bool, Field(description="Also list memories that newer ones replaced.")
        ] = False,
        include_expired: Annotated[
            bool, Field(description="Also list memories whose expiry has passed (still stored).")
        ] = False,
        limit: Annotated[int, Field(ge=1, le=MAX_PAGE, description="Memories per page.")] = 20,
        cursor: Annotated[
            str | None,
            Field(description="next_cursor from the previous page (with the same filter); none: the newest."),
        ] = None,
        max_chars: Annotated[
            int,
            Field(ge=50, le=2000, description="Longer texts are cut to this many characters, with a marker."),
        ] = 300,
    ) -> ListResult:
        """List what limner remembers, newest first, by kind, tags, scope and creation time, a page at a time.

        Call it to see what is known without a question to ask (what did I learn this week? what is stored for
        this client?), or before forgetting by a filter. `total` counts every match; pass `next_cursor` back as
        `cursor`, with the same filter, for the next page (none: the last page). To find memories by meaning
        and name, call recall instead.
        """
        app = app_context(ctx)
        request = memory.check_list(
            kind, tags, scope, since, until, include_superseded, include_expired, limit, cursor, max_chars
        )
        store = await open_memory(app)
        return await in_store(app, memory.list_memories, store, request)

    @server.tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
        )
    )
    async def forget(
        ctx: Context,
        ids: Annotated[
            list[str] | None, Field(description="Memory ids to remove (from remember/recall).")
        ] = None,
        kind: Annotated[Kind | None, Field(description="Filter: memories of this kind.")] = None,
        tags: Annotated[
            list[str] | None, Field(description="Filter: memories carrying every one of these tags.")
        ] = None,
        scope: Annotated[str | None, Field(description="Filter: memories in this scope.")] = None,
        before: Annotated[
            str | None,
            Field(
                description="Filter: memories made before: ISO 8601, a duration back from now ('30d') or 'now'."
            ),
        ] = None,
        dry_run: Annotated[
            bool | None,
            Field(description="Only list what would be removed. Default: true for a filter, false for ids."),
        ] = None,
        confirm: Annotated[
            str | None,
            Field(description="With a filter and dry_run=false: the token the dry run returned."),
        ] = None,
        expired: Annotated[
            bool | None, Field(description="Filter: memories whose expiry (expires / ttl_days) has passed.")
        ] = None,
    ) -> ForgetResult:
        """Remove outdated or wrong memories, by id or by a filter (kind, tags, scope, before, expired).

        Call it when a memory turned out wrong or superseded (e.g. a near-duplicate reported by remember).
        With a filter it is a dry run unless dry_run=false: check the listed matches first, then call again
        with dry_run=false and the dry run's `confirm` token, which removes exactly what was listed (refused
        if the matches changed meanwhile; without a token, whatever matches then is removed). Ids that do
        not exist are reported in missing_ids; the others are still removed. Forgetting a memory that replaced
        others makes them current again (listed in `restored`). A forgotten memory leaves
        recall at once, but chromadb's write-ahead log can keep its text on disk until later writes prune it.
        """
        app = app_context(ctx)
        request = memory.check_forget(
            ids, kind, tags, scope, before, dry_run, confirm=confirm, expired=expired
        )
        store = await open_memory(app)
        return await in_store(app, memory.forget, store, request)

    @server.tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        )
    )
    async def export_memory(
        ctx: Context,
        path: Annotated[
            str | None,
            Field(
                description="A new .jsonl file inside the limner home (a bare name goes under home/exports); "
                "default: home/exports/memory-<time>.jsonl."
            ),
        ] = None,
        scope: Annotated[str | None, Field(description="Only this scope; default: every scope.")] = None,
    ) -> ExportResult:
        """Write every memory to a JSON Lines file: text, kind, scope, tags, times, links; no embeddings.

        Call it when the user wants a backup of what limner knows, or to move it to another limner
        (import_memory there). Superseded and expired memories are included. From a shell:
        `limner call export_memory --arg path=backup.jsonl`.
        """
        app = app_context(ctx)
        target = memory.check_export_path(path, app.settings.home)
        checked_scope = memory.check_scope(scope)
        store = await open_memory(app)
        return await in_store(app, memory.export_memories, store, target, checked_scope)

    @server.tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        )
    )
    async def import_memory(
        ctx: Context,
        path: Annotated[
            str,
            Field(
                description="A .jsonl file export_memory wrote, inside the limner home or an allowed folder "
                "(a bare name is looked for under home/exports)."
            ),
        ],
    ) -> ImportResult:
        """Store the memories of an export file that are not stored yet; embeddings are computed here.

        Call it to restore a backup or to bring memories from another limner. Importing the same file twice
        adds nothing. A line that is not a valid memory is reported by its line number, and the other lines
        are still imported. From a shell: `limner call import_memory --arg path=backup.jsonl`.
        """
        app = app_context(ctx)
        source = memory.check_import_path(path, app.settings.readable_dirs(), app.settings.home)
        store = await open_memory(app)

        def stored(done: int, total: int) -> None:  # on the worker thread: each batch written is reported
            anyio.from_thread.run(ctx.report_progress, done, total, f"{done} of {total} lines imported")

        return await in_store(app, memory.import_memories, store, source, stored)
