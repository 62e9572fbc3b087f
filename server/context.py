"""What every tool reaches through its MCP context: the AppContext, and handing model work to the runner.

Model work belongs to the session that asked for it (`owner`), and what it logs goes to that session's client
as log notifications (`ClientLog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast, get_args

import anyio
import anyio.abc
from mcp.server.connection import allowed_log_levels
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.session import ServerSession
from mcp_types import (
    CallToolResult,
    LoggingLevel,
    LoggingMessageNotification,
    LoggingMessageNotificationParams,
    RequestId,
    RequestParamsMeta,
    TextContent,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from PIL import Image
from pydantic import BaseModel

from memory_store import MemoryStore
from server.settings import Settings
from tools.core.fetch import SafeFetcher
from tools.core.images import ImageStore, Resolved, preview, resolve_image
from tools.core.jobs import LOG_ROUTE, Job, JobCancelled, JobHandle, routed, wait_for
from tools.models.cache import ModelCache
from tools.models.runner import Runner, Work
from tools.search.service import SearchService, TTLCache
from tools.session.log import SessionLog

logger = logging.getLogger("limner")

# What a model tool's finish step returns: the structured result and the images to preview.
Output = tuple[BaseModel, list[Image.Image]]

LEVELS: tuple[LoggingLevel, ...] = get_args(LoggingLevel)  # the MCP levels, least severe first
DEFAULT_LOG_LEVEL: LoggingLevel = "info"  # until a 2025 client sets one: model loads, jobs cancelled, errors
SESSION_HEADER = "mcp-session-id"


SESSIONLESS = "http:"  # the owner of every HTTP request without a session: nobody's in particular


def owner(headers: Mapping[str, str] | None) -> str:
    """The session a request belongs to: its streamable HTTP session (2025 protocol: the handshake gave it an
    `Mcp-Session-Id`); "" for the one connection of stdio or of an in-process client; SESSIONLESS for HTTP
    requests without a session (2026-07-28 has none). The header is safe to trust here: the SDK's session
    manager routed this request to that session's transport by it and refuses it with a credential other than
    its creator's.

    Sessionless requests have nothing that tells one client from another (every client holding the token sends
    the same credential, and anything a client names itself is spoofable), so none of them can list jobs:
    their jobs and tasks are reached by id alone, an unguessable capability (128 random bits) that only the
    caller who started the work was given. A session's jobs stay out of their reach, and theirs out of a
    session's. They share one job limit and one turn in the fair queue."""
    if headers is None:
        return ""
    session = headers.get(SESSION_HEADER)
    return f"http:{session}" if session else SESSIONLESS


def is_admin(app: AppContext, headers: Mapping[str, str] | None) -> bool:
    """Whether an HTTP request carries the operator's admin token (settings.admin_token): it sees every session's
    jobs, tasks, session log and gallery. Compared in constant time; never true without one set."""
    return admin_token_in(app.settings, headers)


def admin_token_in(settings: Settings, headers: Mapping[str, str] | None) -> bool:
    """`is_admin` from the settings alone (a route served before any MCP call has no AppContext yet)."""
    expected = settings.admin_token
    if expected is None or headers is None:
        return False
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())


def session_jobs(app: AppContext, who: str, admin: bool = False) -> list[Job]:
    """The jobs `who` may list: its own; none for a sessionless caller (see `owner`); every job for the admin."""
    if admin:
        return list(app.runner.jobs.values())
    if who == SESSIONLESS:
        return []
    return [job for job in list(app.runner.jobs.values()) if job.owner == who]


def session_job(app: AppContext, job_id: str, who: str, admin: bool = False) -> Job:
    """The job `job_id` if it is `who`'s (any job for the admin); another's is answered exactly as an id never
    made, and a sessionless caller is not told anyone's ids."""
    job = app.runner.jobs.get(job_id)
    if job is not None and (admin or job.owner == who):
        return job
    if who == SESSIONLESS:
        raise ToolError(
            f"job_id: no job {job_id!r}; without an Mcp-Session-Id a job is reached only by the job_id the "
            "call that started it returned (jobs list shows none)."
        )
    return app.runner.get(job_id, who)  # raises: "no job", with the caller's own recent ids


@dataclass
class LogRoute:
    """Where one request's log notifications go, and from which level."""

    loop: asyncio.AbstractEventLoop
    session: ServerSession
    request_id: RequestId | None
    lowest: int  # index into LEVELS


class ClientLog(logging.Handler):
    """limner's log records as MCP log notifications (`notifications/message`), to the client whose request
    (or whose model work) logged them, at or above the level it asked for: `logging/setLevel` on 2025
    connections (per session, `levels`), the request's own `_meta` opt-in on 2026-07-28 ones (the SDK's gate).
    Records logged outside any request (start-up, the idle unload) stay on stderr only."""

    def __init__(self) -> None:
        super().__init__()
        self.levels: dict[str, LoggingLevel] = {}  # session (owner) -> the level logging/setLevel set
        self._routes: dict[str, LogRoute] = {}  # route key (LOG_ROUTE) -> its request
        self._sending: set[asyncio.Task[None]] = set()

    def open_route(
        self,
        session: ServerSession,
        request_id: RequestId | None,
        protocol_version: str,
        meta: RequestParamsMeta | None,
        who: str,
    ) -> str | None:
        """Route the records of this request to its client; the key to set as LOG_ROUTE, or None when the
        client takes no log notifications on it."""
        allowed = allowed_log_levels(protocol_version, meta)
        if not allowed:
            return None
        if protocol_version in MODERN_PROTOCOL_VERSIONS:  # the request opted in from this level
            lowest = min(LEVELS.index(level) for level in allowed)
        else:  # a 2025 connection: its session's logging/setLevel decides
            lowest = LEVELS.index(self.levels.get(who, DEFAULT_LOG_LEVEL))
        key = secrets.token_hex(8)
        self._routes[key] = LogRoute(asyncio.get_running_loop(), session, request_id, lowest)
        return key

    def close_route(self, key: str | None) -> None:
        if key is not None:
            self._routes.pop(key, None)

    def emit(self, record: logging.LogRecord) -> None:  # any thread
        key = LOG_ROUTE.get()
        route = self._routes.get(key) if key is not None else None
        if route is None:
            return
        level = mcp_level(record.levelno)
        if LEVELS.index(level) < route.lowest:
            return
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = f"{text}: {type(exc).__name__}: {exc}"  # the traceback stays on stderr
        with contextlib.suppress(RuntimeError):  # the loop is gone: the client left
            route.loop.call_soon_threadsafe(self._send, route, level, text, record.name)

    def _send(self, route: LogRoute, level: LoggingLevel, text: str, name: str) -> None:
        task = route.loop.create_task(self._deliver(route, level, text, name))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    @staticmethod
    async def _deliver(route: LogRoute, level: LoggingLevel, text: str, name: str) -> None:
        # the notification itself rather than the SDK's send_log_message, which warns that logging is deprecated
        # at 2026-07-28 on every call; its gate is applied in open_route (allowed_log_levels)
        params = LoggingMessageNotificationParams(level=level, data=text, logger=name)
        with contextlib.suppress(Exception):  # best effort, as every notification: the request may have ended
            await route.session.send_notification(
                LoggingMessageNotification(params=params), related_request_id=route.request_id
            )


def mcp_level(levelno: int) -> LoggingLevel:
    if levelno >= logging.CRITICAL:
        return "critical"
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


@dataclass
class TaskCall:
    """A tools/call that may become a task (server/tasks.py): run_work puts the job here when it answers
    without the result. At once for a 2025 host, which asked for a task; after max_wait_s for a 2026 client
    that declared the tasks extension, where the server decides (as for a `jobs` handle)."""

    at_once: bool = True
    job: Job | None = None


TASK_CALL: contextvars.ContextVar[TaskCall | None] = contextvars.ContextVar("limner_task_call", default=None)


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
    client_log: ClientLog = field(default_factory=ClientLog)  # on the "limner" logger while the server runs
    background: anyio.abc.TaskGroup | None = (
        None  # the lifespan's: work that outlives a request (task progress)
    )

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
        logging.getLogger("limner").removeHandler(self.client_log)
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
    model worker; the finished result, or `pending(handle)` after max_wait_s (at once for a task: the host
    asked for one and polls it with tasks/get, tasks/result). The job belongs to the caller's session, and
    what its work logs goes to the caller's client."""
    app = app_context(ctx)
    route = LOG_ROUTE.get()

    def finished(output: Any) -> tuple[BaseModel, list[Any]]:
        token = LOG_ROUTE.set(route)  # the finish thread: a store error is the caller's to hear about too
        try:
            model, images = finish(output)
            started = time.perf_counter()
            previews = [preview(img) for img in images]  # encoded once; the full images are in the store
            timings = getattr(model, "timings", None)
            # the answer's own pixel work, timed like storing: four of 1024 px took 59 ms on the VM
            if images and isinstance(timings, dict):
                timings["previews"] = round(time.perf_counter() - started, 4)
            return model, previews
        finally:
            LOG_ROUTE.reset(token)

    who = owner(ctx.headers)
    limit = app.settings.max_jobs_per_session
    waiting = [job for job in list(app.runner.jobs.values()) if job.owner == who and job.finished is None]
    if len(waiting) >= limit:
        raise ToolError(
            f"busy: {len(waiting)} of your jobs are queued or running (max_jobs_per_session is {limit}); wait "
            "for one with jobs(action='wait', job_id=...) or cancel one (jobs action='cancel'), then call again."
        )
    logged = work if route is None else functools.partial(routed, route, work)
    job = app.runner.submit(tool, description, logged, request, finished, role)
    job.owner = who  # the model thread's fair turns go by it (tools/models/runner.py); an idle one needs none
    task = TASK_CALL.get()
    if task is not None and task.at_once:
        job.detached, task.job = True, job
        return to_call_result(pending(handle(job)), [])
    done = await wait_for(job, app.settings.max_wait_s, ctx.report_progress)
    if not done:
        job.detached = True
        if task is not None:
            task.job = job
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
