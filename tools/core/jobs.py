"""Jobs: one piece of model work, its progress, its cancellation, and the handle of work that outlives a call.

Where the work runs is the runner's business (tools/models/runner.py). A job that outlives the caller's wait
becomes a handle the `jobs` tool can poll, wait on and cancel.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

logger = logging.getLogger("limner.jobs")

Status = Literal["queued", "running", "done", "failed", "cancelled"]
ProgressFn = Callable[[float, float, str], Awaitable[None]]

# Whose request a log record is logged for (a key the server maps to that client's log notifications); set
# around each request, and around model work on the worker thread by `routed`, which no context reaches.
LOG_ROUTE: contextvars.ContextVar[str | None] = contextvars.ContextVar("limner_log_route", default=None)


class JobHandle(BaseModel):
    """What a tool returns instead of its result when the work outlives max_wait_s."""

    job_id: str = Field(description="Pass to the `jobs` tool to check, wait for or cancel this work.")
    status: str
    step: int
    total: int
    hint: str


class JobCancelled(Exception):
    """Raised inside model work (at the next step) when its job was cancelled."""


class Progress(Protocol):
    """What model work sees of its job: report steps (and stop there when cancelled), say what it is doing.

    A local `Job` is one; a remote runner passes its own, which reports back to the job the caller holds."""

    created: float  # when the job was submitted (epoch seconds): work reports its queue time from it
    total: int

    def progress(self, step: int, total: int, message: str) -> None: ...

    def check_cancelled(self) -> None: ...

    def note(self, message: str) -> None: ...


@dataclass
class Job:
    id: str
    tool: str
    description: str
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    status: Status = "queued"
    step: int = 0
    total: int = 0
    message: str = ""
    error: str | None = None
    result: Any = None
    detached: bool = False  # handed to the `jobs` tool: the original request no longer owns it
    owner: str = ""  # the session that submitted it: only that session lists, waits on or cancels it
    cancel_event: threading.Event = field(default_factory=threading.Event)
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    _listeners: list[Callable[[int, int, str], None]] = field(default_factory=list)
    _state: threading.Lock = field(default_factory=threading.Lock)  # queued -> running or cancelled, once

    # -- called from the worker thread ------------------------------------------------------------
    def progress(self, step: int, total: int, message: str) -> None:
        """Record progress and raise JobCancelled if the job was cancelled (the model stops here)."""
        self.step, self.total, self.message = step, total, message
        for listener in list(self._listeners):
            listener(step, total, message)
        self.check_cancelled()

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise JobCancelled(self.id)

    def note(self, message: str) -> None:
        """Say what the work is doing between steps (no progress notification: no step was made)."""
        self.message = message

    # -- called from the event loop ----------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the job: a queued one is cancelled at once, a running one at its next step."""
        with self._state:
            self.cancel_event.set()
            if self.status == "queued":
                self.status, self.finished = "cancelled", time.time()
                self.future.set_exception(JobCancelled(self.id))

    def fail(self, status: Status, exc: BaseException) -> None:
        """End the job with `exc`, kept without its traceback: the frames of a model call hold its tensors
        (25 MB a cancelled tiny 512 px n=8 job; activations on the GPU after an out-of-memory error)."""
        seen, link = set(), exc
        while link is not None and id(link) not in seen:  # the exceptions it was raised from hold frames too
            seen.add(id(link))
            traceback.clear_frames(link.__traceback__)
            link = link.__cause__ or link.__context__
        self.status = status
        self.future.set_exception(exc.with_traceback(None))

    def summary(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "tool": self.tool,
            "description": self.description,
            "status": self.status,
            "step": self.step,
            "total": self.total,
            "message": self.message,
            "error": self.error,
            "elapsed_s": round((self.finished or time.time()) - (self.started or self.created), 3),
        }


def find(jobs: dict[str, Job], job_id: str, owner: str | None = None) -> Job:
    """The job `job_id` of `owner` (None: of anyone). Another session's job is answered exactly as an unknown
    id, so its existence does not leak."""
    job = jobs.get(job_id)
    if job is None or (owner is not None and job.owner != owner):
        mine = [j.id for j in jobs.values() if owner is None or j.owner == owner]
        raise ToolError(f"job_id: no job {job_id!r}; recent jobs: {', '.join(mine[-10:]) or 'none'}.")
    return job


def routed(
    route: str | None, work: Callable[[Any, Any, Any], Any], request: Any, models: Any, progress: Any
) -> Any:
    """Run `work` with its log records routed to the caller that submitted it (LOG_ROUTE). A module function,
    so a remote runner can pickle it; there the route leads nowhere and is harmless."""
    token = LOG_ROUTE.set(route)
    try:
        return work(request, models, progress)
    finally:
        LOG_ROUTE.reset(token)


async def wait_for(job: Job, timeout: float | None, on_progress: ProgressFn | None = None) -> bool:
    """Wait up to `timeout` seconds for `job`, forwarding its progress. True when it finished.

    If the caller is cancelled (the MCP request was cancelled) while the job is still owned by this
    request, the job is cancelled too and stops at its next step.
    """
    loop = asyncio.get_running_loop()
    send, receive = anyio.create_memory_object_stream[tuple[int, int, str]](max_buffer_size=1000)

    def listener(step: int, total: int, message: str) -> None:
        _call_soon(loop, _send_nowait, send, (step, total, message))

    async def forward() -> None:
        async with receive:
            async for step, total, message in receive:
                if on_progress is not None:
                    await on_progress(step, total, message)

    finished = anyio.Event()
    job.future.add_done_callback(lambda _: _call_soon(loop, finished.set))
    job._listeners.append(listener)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(forward)
            with anyio.move_on_after(timeout):
                await finished.wait()
            job._listeners.remove(listener)
            loop.call_soon(send.close)
    except BaseException:
        if not job.detached:
            job.cancel()
        raise
    finally:
        if listener in job._listeners:
            job._listeners.remove(listener)
    return job.future.done()


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """Hand `fn` to the event loop from the worker thread; a loop already closed (client gone) is ignored."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


def _send_nowait(send: Any, item: tuple[int, int, str]) -> None:
    with contextlib.suppress(anyio.ClosedResourceError, anyio.WouldBlock, anyio.BrokenResourceError):
        send.send_nowait(item)
