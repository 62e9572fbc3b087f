"""The model tools run as MCP tasks, on the runner's jobs: the same records the `jobs` tool shows
(server/jobs_tools.py), each belonging to the session that made it (server/context.py `owner`).

- 2025-11-25 (tasks in the core protocol): a host sends `tools/call` with `task` for a tool in TASK_TOOLS; the
  call answers with a task at once and the job runs on; `tasks/get`, `tasks/result` (blocks until the task
  ends, then the same result a direct call returns), `tasks/cancel` and `tasks/list`. The SDK has the types of
  these methods but no dispatch for them: server/protocol.py's middleware turns the call into a task, and
  `initialize` advertises `capabilities.tasks`.
- 2026-07-28 (the tasks extension `io.modelcontextprotocol/tasks`, through the SDK's extension interface,
  SEP-2133): the server decides. A tools/call of a client that declared the extension on the request, whose
  model work outlives max_wait_s, answers with a task (`resultType: "task"`) where another client gets a `jobs`
  handle; `tasks/get` carries the result once it is there; `tasks/cancel` acknowledges; `tasks/update` has
  nothing to do (no limner task asks for input). Advertised as `capabilities.extensions`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Extension, MethodBinding, require_client_extension
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    CallToolRequestParams,
    CallToolResult,
    CancelTaskRequestParams,
    GetTaskPayloadRequestParams,
    GetTaskRequestParams,
    PaginatedRequestParams,
    ProgressNotification,
    ProgressNotificationParams,
    RequestParams,
    TaskMetadata,
    TextContent,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from server.context import (
    TASK_CALL,
    AppContext,
    TaskCall,
    is_admin,
    job_result,
    owner,
    session_job,
    session_jobs,
)
from tools.core.jobs import Job, wait_for

logger = logging.getLogger("limner.protocol")

# the tools whose model work can run as a task
TASK_TOOLS = ("generate", "refine_region", "judge", "locate", "outpaint", "upscale", "cut_out")
TASK_VERSIONS = frozenset({"2025-11-25"})  # where tasks are core protocol
TASKS_CAPABILITY = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
TASKS_EXTENSION = "io.modelcontextprotocol/tasks"  # 2026-07-28 moved tasks here
RELATED_TASK = "io.modelcontextprotocol/related-task"
POLL_MS = 1000
TASK_STATUS = {
    "queued": "working",
    "running": "working",
    "done": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}
TERMINAL = ("done", "failed", "cancelled")


class UpdateTaskParams(RequestParams):
    """tasks/update (2026-07-28): answers to a task's input requests."""

    task_id: str
    input_responses: dict[str, Any] = {}


class TasksExtension(Extension):
    """The 2026-07-28 tasks extension; its methods also serve the 2025-11-25 tasks/get and tasks/cancel (one
    handler per method: the SDK keys handlers by method alone), each answering in its version's shape."""

    identifier = TASKS_EXTENSION

    def methods(self) -> Sequence[MethodBinding]:
        return (
            MethodBinding("tasks/get", GetTaskRequestParams, get_task),
            MethodBinding("tasks/cancel", CancelTaskRequestParams, cancel_task),
            MethodBinding(
                "tasks/update",
                UpdateTaskParams,
                update_task,
                protocol_versions=frozenset(MODERN_PROTOCOL_VERSIONS),
            ),
        )

    async def intercept_tool_call(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """A model tool of a 2026 client that declared the extension: work beyond max_wait_s answers as a
        task (the SDK's gate: the spec forbids a task to a client that did not declare it on the request)."""
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS or params.name not in TASK_TOOLS:
            return await call_next(ctx)
        try:
            require_client_extension(ctx, TASKS_EXTENSION)
        except MCPError:
            return await call_next(ctx)
        call = TaskCall(at_once=False)
        token = TASK_CALL.set(call)
        try:
            result = await call_next(ctx)
        finally:
            TASK_CALL.reset(token)
        if call.job is None:  # finished within max_wait_s, or refused: the result as it is
            return result
        return {**task_info(call.job, modern=True), "resultType": "task"}


def register(server: Any) -> None:
    """The 2025-11-25 methods the extension does not serve (2026-07-28 has neither)."""
    lowlevel = server._lowlevel_server
    lowlevel.add_request_handler("tasks/result", GetTaskPayloadRequestParams, task_result)
    lowlevel.add_request_handler("tasks/list", PaginatedRequestParams, list_tasks)


async def get_task(ctx: ServerRequestContext[Any, Any], params: GetTaskRequestParams) -> dict[str, Any]:
    job = task_job(ctx, params.task_id)
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        return task_info(job)
    info = task_info(job, modern=True)
    if job.status in TERMINAL and job.status != "cancelled":
        # a tool that failed is a completed task whose result is an error (the spec keeps `failed` for
        # JSON-RPC errors): the same result a direct call answers
        info["status"], info["result"] = "completed", tool_result(job)
    return info


async def task_result(
    ctx: ServerRequestContext[Any, Any], params: GetTaskPayloadRequestParams
) -> dict[str, Any]:
    """Blocks until the task ends (as the spec says), then the result a direct call returns: the tool's own
    result, an is_error one for a failed or cancelled task."""
    job = task_job(ctx, params.task_id)
    await wait_for(job, None)  # a task's job is detached: this request ending does not cancel it
    answer = tool_result(job)
    answer["_meta"] = {**answer.get("_meta", {}), RELATED_TASK: {"taskId": job.id}}
    return answer


async def cancel_task(ctx: ServerRequestContext[Any, Any], params: CancelTaskRequestParams) -> dict[str, Any]:
    """Stop the task at its next step. 2025: the task as it ended; cancelling an ended task is an error.
    2026: an empty acknowledgement, also for an ended task (cancellation is a wish there)."""
    job = task_job(ctx, params.task_id)
    modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
    if job.status in TERMINAL:
        if modern:
            return {}
        raise MCPError(
            INVALID_PARAMS,
            f"taskId: task {job.id!r} already ended ({TASK_STATUS[job.status]}); there is nothing to "
            "cancel. tasks/result gives its outcome.",
        )
    job.cancel()
    await wait_for(job, 10.0)  # a running job stops at its next step
    logger.info("task %s (%s) cancelled at step %d/%d", job.id, job.tool, job.step, job.total)
    return {} if modern else task_info(job)


async def update_task(ctx: ServerRequestContext[Any, Any], params: UpdateTaskParams) -> dict[str, Any]:
    task_job(ctx, params.task_id)  # an unknown task is an error; a known one has no input to take
    return {}


async def list_tasks(ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams) -> dict[str, Any]:
    tasks_version(ctx)
    if params.cursor is not None:
        raise MCPError(
            INVALID_PARAMS,
            f"cursor: {params.cursor!r} is not a cursor of this server; tasks/list is one page.",
        )
    app = cast(AppContext, ctx.lifespan_context)
    headers = headers_of(ctx)
    return {"tasks": [task_info(job) for job in session_jobs(app, owner(headers), is_admin(app, headers))]}


async def as_task(ctx: ServerRequestContext[Any, Any], call_next: CallNext, app: AppContext) -> HandlerResult:
    """A 2025 task-augmented tools/call: run the tool up to its job's submission (every argument checked
    first, as in a direct call), then answer with the task. A call answered without model work (a refused
    argument, judge's model-free checks, the classical refiner) answers with its result as it is: there was
    nothing to run as a task."""
    params = dict(ctx.params or {})
    name = params.get("name")
    if name not in TASK_TOOLS:
        raise MCPError(
            METHOD_NOT_FOUND,
            f"task: {name!r} does not run as a task (its taskSupport is forbidden); the tools that can: "
            f"{', '.join(TASK_TOOLS)}. Call {name!r} without `task`.",
        )
    try:
        TaskMetadata.model_validate(params.pop("task") or {}, by_name=False)
    except ValidationError as exc:
        raise MCPError(
            INVALID_PARAMS, f'task: {exc.errors()[0]["msg"]}; send {{}} or {{"ttl": <ms>}}.'
        ) from None
    call = TaskCall()
    token = TASK_CALL.set(call)
    try:
        result = await call_next(dataclasses.replace(ctx, params=params))
    finally:
        TASK_CALL.reset(token)
    job = call.job
    if job is None:
        return result
    progress = (params.get("_meta") or {}).get("progressToken")
    if progress is not None and app.background is not None:
        app.background.start_soon(forward_progress, job, ctx.session, progress)
    return {"task": task_info(job)}


async def forward_progress(job: Job, session: ServerSession, progress_token: str | int) -> None:
    """The task's steps as progress notifications on the connection (its request has been answered), each
    naming the task; best effort, as every notification."""

    async def send(step: float, total: float, message: str) -> None:
        notification = ProgressNotification(
            params=ProgressNotificationParams.model_validate(
                {
                    "progressToken": progress_token,
                    "progress": step,
                    "total": total,
                    "message": message,
                    "_meta": {RELATED_TASK: {"taskId": job.id}},
                }
            )
        )
        with contextlib.suppress(Exception):  # the client left: the task runs on, tasks/result still answers
            await session.send_notification(notification)

    await wait_for(job, None, send)


def task_job(ctx: ServerRequestContext[Any, Any], task_id: str) -> Job:
    """The caller's job `task_id`; another session's is unknown here, with the same message."""
    tasks_version(ctx)
    app = cast(AppContext, ctx.lifespan_context)
    try:
        headers = headers_of(ctx)
        return session_job(app, task_id, owner(headers), is_admin(app, headers))
    except ToolError:
        raise MCPError(
            INVALID_PARAMS,
            f"taskId: no task {task_id!r} for this client; it has only the task ids it was given.",
        ) from None


def tasks_version(ctx: ServerRequestContext[Any, Any]) -> None:
    """2025-11-25 has tasks; 2026-07-28 has them for a client that declared the extension (-32021 else)."""
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        require_client_extension(ctx, TASKS_EXTENSION)
    elif ctx.protocol_version not in TASK_VERSIONS:
        raise MCPError(METHOD_NOT_FOUND, "Method not found", data=ctx.method)


def task_info(job: Job, modern: bool = False) -> dict[str, Any]:
    """The job as a Task of 2025-11-25 (`ttl`, `pollInterval`) or of the 2026-07-28 extension (`ttlMs`,
    `pollIntervalMs`). Finished jobs are kept by count (the runner's newest 200), not by time: no ttl."""
    message = job.error or job.message or (f"step {job.step}/{job.total}" if job.total else job.status)
    return {
        "taskId": job.id,
        "status": TASK_STATUS[job.status],
        "statusMessage": message,
        "createdAt": iso(job.created),
        "lastUpdatedAt": iso(job.finished or job.started or job.created),
        "ttlMs" if modern else "ttl": None,
        "pollIntervalMs" if modern else "pollInterval": POLL_MS,
    }


def tool_result(job: Job) -> dict[str, Any]:
    """The ended job's tools/call result as JSON: its own, or an is_error one."""
    try:
        result = job_result(job)
    except ToolError as exc:
        result = CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)
    return result.model_dump(by_alias=True, mode="json", exclude_none=True)


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def headers_of(ctx: ServerRequestContext[Any, Any]) -> Mapping[str, str] | None:
    return getattr(ctx.request, "headers", None)  # the HTTP request's; None on stdio and in-process
