"""What every tool reaches through its MCP context: the AppContext, and handing model work to the runner."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent
from PIL import Image
from pydantic import BaseModel

from memory_store import MemoryStore
from server.settings import Settings
from tools.core.fetch import SafeFetcher
from tools.core.images import ImageStore, Resolved, preview, resolve_image
from tools.core.jobs import Job, JobCancelled, JobHandle, wait_for
from tools.models.cache import ModelCache
from tools.models.runner import Runner, Work
from tools.search.service import SearchService, TTLCache
from tools.session.log import SessionLog

logger = logging.getLogger("limner")

# What a model tool's finish step returns: the structured result and the images to preview.
Output = tuple[BaseModel, list[Image.Image]]


@dataclass
class AppContext:
    """Everything a tool needs, built once per server process; the parts marked lazily are opened on first
    use (the memory store loads an embedder, seconds) and closed with the server."""

    settings: Settings
    images: ImageStore
    models: ModelCache
    runner: Runner
    # the safe outbound fetchers, alike but for their allow-lists: `fetcher` for pages, image references
    # (http(s) URLs) and downloads; `searxng_fetcher` for the SearXNG backend's own requests only, the one
    # place fetch_allow's private origins are reachable
    fetcher: SafeFetcher
    searxng_fetcher: SafeFetcher
    memory: MemoryStore | None = None  # lazily, server/memory_tools.py
    memory_lock: anyio.Lock = field(default_factory=anyio.Lock)
    search: SearchService | None = None  # lazily, server/search_tools.py
    pages: TTLCache | None = None  # fetch_page's cache, lazily
    session_log: SessionLog | None = None  # lazily, server/session_tools.py
    gallery_thumbs: dict[tuple[str, int], str] = field(default_factory=dict)  # (image id, side) -> data URI
    closers: list[Callable[[], None]] = field(default_factory=list)

    def resolve(self, ref: str, field: str) -> Resolved:
        """Resolve an image reference (see tools.core.images.resolve_image) with this server's folders."""
        return resolve_image(
            ref,
            field=field,
            store=self.images,
            readable_dirs=self.settings.readable_dirs(),
            fetch=self.fetcher.fetch_image,
        )

    def close(self) -> None:
        self.runner.shutdown()
        for closer in self.closers:
            closer()


def app_context(ctx: Context) -> AppContext:
    return cast(AppContext, ctx.request_context.lifespan_context)  # what the lifespan yields (app.py)


async def unload_idle_models(models: ModelCache) -> None:
    """The lifespan's background check (app.py): unload the models nobody used for idle_unload_s. A model
    `get` checks too, but nothing calls it while the server sits idle. Runs every quarter of the idle time
    (at most a minute), so a model goes within 1.25 x idle_unload_s; cancelled at shutdown."""
    assert models.idle_unload_s is not None
    every = min(max(models.idle_unload_s / 4, 0.25), 60.0)
    while True:
        await anyio.sleep(every)
        try:
            await anyio.to_thread.run_sync(models.unload_idle)  # collecting the memory takes a moment
        except Exception:  # the next round tries again; one failure must not end the checks
            logger.exception("the idle unload check failed")


# -- model work: hand it to the runner, answer with its result or a job handle ------------------------------
def to_call_result(model: BaseModel, images: list[Image.Image]) -> CallToolResult:
    return with_previews(model, [preview(img) for img in images])


def with_previews(model: BaseModel, previews: list[Any]) -> CallToolResult:
    """The tool result: the model as structured content and as text, then the encoded previews."""
    text = TextContent(type="text", text=model.model_dump_json(exclude_none=True))
    return CallToolResult(content=[text, *previews], structured_content=model.model_dump(mode="json"))


def handle(job: Job) -> JobHandle:
    return JobHandle(
        job_id=job.id,
        status=job.status,
        step=job.step,
        total=job.total,
        hint=f"running; call jobs(action='wait', job_id='{job.id}') for the result, or action='cancel'.",
    )


async def run_work(
    ctx: Context,
    tool: str,
    description: str,
    work: Work,
    request: Any,
    finish: Callable[[Any], Output],
    pending: Callable[[JobHandle], BaseModel],
    role: str,
) -> CallToolResult:
    """Run `work(request, models, progress)` on the runner, then `finish(output)` and the previews off the
    model worker; the finished result, or `pending(handle)` after max_wait_s."""
    app = app_context(ctx)

    def finished(output: Any) -> tuple[BaseModel, list[Any]]:
        model, images = finish(output)
        return model, [preview(img) for img in images]  # encoded once; the full images are in the store

    job = app.runner.submit(tool, description, work, request, finished, role)
    done = await wait_for(job, app.settings.max_wait_s, ctx.report_progress)
    if not done:
        job.detached = True
        return to_call_result(pending(handle(job)), [])
    return job_result(job)


def job_result(job: Job) -> CallToolResult:
    """The finished job's tool result, the same on every delivery (a second waiter, a retry after a lost
    answer): its structured result and the previews encoded when it finished."""
    try:
        model, previews = job.future.result()
    except JobCancelled:
        raise ToolError(
            f"{job.tool} was cancelled at step {job.step}/{job.total}; nothing was stored."
        ) from None
    except ToolError:
        raise
    except Exception as exc:  # the SDK would send only "Error executing tool ..." and drop the reason
        raise ToolError(failure(job.tool, exc)) from None
    return with_previews(model, previews)


def failure(tool: str, exc: BaseException) -> str:
    """What an agent can act on when model work raised something unexpected (the traceback is on stderr)."""
    text = f"{tool} failed: {type(exc).__name__}: {exc}"
    if "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError":
        return f"{text}. The model ran out of memory: lower n, width/height or focus_size, and call again."
    return f"{text}. The server's log (stderr) has the details; nothing was stored."
