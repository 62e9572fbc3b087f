"""The model worker and long-job handles.

All model work runs in order on one worker thread, so one GPU is never shared by two pipelines at once,
and the event loop stays free: other tools, progress and cancellation keep answering while a job runs.
A job that outlives the caller's wait becomes a handle the `jobs` tool can poll, wait on and cancel.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

logger = logging.getLogger("limner.jobs")

Status = Literal["queued", "running", "done", "failed", "cancelled"]
ProgressFn = Callable[[float, float, str], Awaitable[None]]


class JobHandle(BaseModel):
    """What a tool returns instead of its result when the work outlives max_wait_s."""

    job_id: str = Field(description="Pass to the `jobs` tool to check, wait for or cancel this work.")
    status: str
    step: int
    total: int
    hint: str


class JobCancelled(Exception):
    """Raised inside model work (at the next step) when its job was cancelled."""


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
    previews: list[Any] | None = None  # the result's encoded previews, made at its first delivery
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

    def release_images(self) -> None:
        """Once delivered, keep the structured result but not the images (model work returns (model, images))."""
        if self.status != "done" or not (
            isinstance(self.result, tuple) and len(self.result) == 2 and self.result[1]
        ):
            return
        kept = concurrent.futures.Future()
        kept.set_result((self.result[0], []))
        self.result, self.future = (self.result[0], []), kept

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


class Worker:
    """One thread, one queue: model work runs in submission order."""

    def __init__(self, keep_finished: int = 200) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="limner-model"
        )
        self._ids = itertools.count(1)
        self.jobs: dict[str, Job] = {}
        self._keep_finished = keep_finished

    def submit(self, tool: str, description: str, work: Callable[[Job], Any]) -> Job:
        """Queue `work(job)`; it should call `job.progress(...)` per step so it can be cancelled."""
        job = Job(id=f"job_{next(self._ids)}", tool=tool, description=description)
        self.jobs[job.id] = job
        self._prune()

        def run() -> None:
            with job._state:
                if job.status != "queued":  # cancelled while it waited
                    return
                job.status, job.started = "running", time.time()
            try:
                job.result = work(job)
            except JobCancelled as exc:
                job.fail("cancelled", exc)
            except BaseException as exc:  # reported to whoever waits on the job
                job.error = str(exc)
                if not isinstance(exc, ToolError):
                    logger.exception("job %s (%s) failed", job.id, tool)
                job.fail("failed", exc)
            else:
                job.status = "done"
                job.future.set_result(job.result)
            finally:
                job.finished = time.time()

        self._executor.submit(run)
        return job

    def get(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            known = ", ".join(list(self.jobs)[-10:]) or "none"
            raise ToolError(f"job_id: no job {job_id!r}; recent jobs: {known}.")
        return self.jobs[job_id]

    def shutdown(self) -> None:
        for job in self.jobs.values():
            job.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _prune(self) -> None:
        finished = [j for j in self.jobs.values() if j.finished is not None]
        for job in finished[: max(0, len(finished) - self._keep_finished)]:
            del self.jobs[job.id]


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
