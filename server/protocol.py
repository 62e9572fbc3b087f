"""The protocol beyond tools, resources and prompts: the server's version, MCP logging, completions, and the
model tools run as MCP tasks (2025-11-25). Wiring only: the jobs are the runner's, the same records the `jobs`
tool shows (server/jobs_tools.py), and each belongs to the session that made it (server/context.py `owner`).

- Logging: `logging/setLevel` sets, per session, the lowest level of the log notifications the server sends
  (ClientLog in server/context.py); 2026-07-28 has no setLevel (each request opts in by its `_meta`, which the
  SDK honours). A middleware routes each request's records to its client.
- Completions: `completion/complete` for the image arguments of the resource templates and prompts: stored
  image ids by prefix, newest first.
- Tasks: a 2025-11-25 host may send `tools/call` with `task` for the tools in TASK_TOOLS: the call answers with
  a task at once and the job runs on; `tasks/get`, `tasks/result` (blocks until the task ends, then the same
  result a direct call returns), `tasks/cancel` and `tasks/list` work on the session's jobs. The SDK has the
  types of these methods but no dispatch for them, so they are registered here as custom methods, and the
  capability is added to the `initialize` answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import logging
import re
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    CallToolResult,
    CancelTaskRequestParams,
    CompleteRequestParams,
    CompleteResult,
    Completion,
    EmptyResult,
    GetTaskPayloadRequestParams,
    GetTaskRequestParams,
    PaginatedRequestParams,
    ProgressNotification,
    ProgressNotificationParams,
    PromptReference,
    SetLevelRequestParams,
    TaskMetadata,
    TextContent,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from server.context import LEVELS, TASK_CALL, AppContext, TaskCall, job_result, owner
from tools.core.jobs import LOG_ROUTE, Job, find, wait_for

logger = logging.getLogger("limner.protocol")

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
TASK_TOOLS = ("generate", "refine_region", "judge", "locate")  # the tools whose model work can run as a task
TASK_VERSIONS = frozenset(
    {"2025-11-25"}
)  # where tasks are core protocol (2026-07-28 moved them to an extension)
TASKS_CAPABILITY = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
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
MAX_COMPLETIONS = 100  # the spec's most values per completion
IMAGE_ID = re.compile(r"img_[0-9a-f]{16}")
IMAGE_ARGUMENTS = frozenset({"image_id", "product_image"})  # template and prompt arguments that take an image


def package_version() -> str:
    """limner's version: the installed distribution's, else the source tree's pyproject (a checkout run
    without `pip install`)."""
    try:
        return importlib.metadata.version("limner")
    except importlib.metadata.PackageNotFoundError:
        with PYPROJECT.open("rb") as file:
            return str(tomllib.load(file)["project"]["version"])


def register(server: MCPServer) -> None:
    """logging/setLevel, completion/complete and the tasks/* methods; the middleware that routes each request's
    log records and runs a task-augmented tools/call as a task. The SDK derives the logging and completions
    capabilities from the handlers (its `@completion()` decorator hides the request context, which the store
    and the session live on, so the handler is registered as that decorator does, one level down)."""
    lowlevel = server._lowlevel_server

    async def set_level(ctx: ServerRequestContext[Any, Any], params: SetLevelRequestParams) -> EmptyResult:
        app = cast(AppContext, ctx.lifespan_context)
        app.client_log.levels[owner(headers_of(ctx))] = params.level
        return EmptyResult()

    async def complete(ctx: ServerRequestContext[Any, Any], params: CompleteRequestParams) -> CompleteResult:
        app = cast(AppContext, ctx.lifespan_context)
        argument = params.argument
        if isinstance(params.ref, PromptReference):
            prompts = {p.name: p for p in await server.list_prompts()}
            prompt = prompts.get(params.ref.name)
            if prompt is None:
                raise MCPError(
                    INVALID_PARAMS,
                    f"ref.name: no prompt {params.ref.name!r}; prompts: {', '.join(prompts)}.",
                )
            names = [a.name for a in prompt.arguments or []]
            where = f"prompt {prompt.name!r}"
        else:
            templates = [t.uri_template for t in await server.list_resource_templates()]
            if params.ref.uri not in templates:
                raise MCPError(
                    INVALID_PARAMS,
                    f"ref.uri: no resource template {params.ref.uri!r}; templates: {', '.join(templates)}.",
                )
            names = re.findall(r"\{(\w+)\}", params.ref.uri)
            where = f"template {params.ref.uri!r}"
        if argument.name not in names:
            raise MCPError(
                INVALID_PARAMS,
                f"argument.name: {where} has no argument {argument.name!r}; it takes: {', '.join(names)}.",
            )
        found = image_ids(app, headers_of(ctx), argument.value) if argument.name in IMAGE_ARGUMENTS else []
        return CompleteResult(
            completion=Completion(
                values=found[:MAX_COMPLETIONS], total=len(found), has_more=len(found) > MAX_COMPLETIONS
            )
        )

    async def get_task(ctx: ServerRequestContext[Any, Any], params: GetTaskRequestParams) -> dict[str, Any]:
        return task_info(task_job(ctx, params.task_id))

    async def task_result(
        ctx: ServerRequestContext[Any, Any], params: GetTaskPayloadRequestParams
    ) -> dict[str, Any]:
        """Blocks until the task ends (as the spec says), then the result a direct call returns: the tool's
        own result, an is_error one for a failed or cancelled task."""
        job = task_job(ctx, params.task_id)
        await wait_for(job, None)  # a task's job is detached: this request ending does not cancel it
        try:
            result = job_result(job)
        except ToolError as exc:
            result = CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)
        answer = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        answer["_meta"] = {**answer.get("_meta", {}), RELATED_TASK: {"taskId": job.id}}
        return answer

    async def cancel_task(
        ctx: ServerRequestContext[Any, Any], params: CancelTaskRequestParams
    ) -> dict[str, Any]:
        job = task_job(ctx, params.task_id)
        if job.status in TERMINAL:
            raise MCPError(
                INVALID_PARAMS,
                f"taskId: task {job.id!r} already ended ({TASK_STATUS[job.status]}); there is nothing to "
                "cancel. tasks/result gives its outcome.",
            )
        job.cancel()
        await wait_for(job, 10.0)  # a running job stops at its next step
        logger.info("task %s (%s) cancelled at step %d/%d", job.id, job.tool, job.step, job.total)
        return task_info(job)

    async def list_tasks(
        ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams
    ) -> dict[str, Any]:
        tasks_version(ctx)
        if params.cursor is not None:
            raise MCPError(
                INVALID_PARAMS,
                f"cursor: {params.cursor!r} is not a cursor of this server; tasks/list is one page.",
            )
        app = cast(AppContext, ctx.lifespan_context)
        who = owner(headers_of(ctx))
        return {"tasks": [task_info(job) for job in list(app.runner.jobs.values()) if job.owner == who]}

    lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)
    lowlevel.add_request_handler("completion/complete", CompleteRequestParams, complete)
    lowlevel.add_request_handler("tasks/get", GetTaskRequestParams, get_task)
    lowlevel.add_request_handler("tasks/result", GetTaskPayloadRequestParams, task_result)
    lowlevel.add_request_handler("tasks/cancel", CancelTaskRequestParams, cancel_task)
    lowlevel.add_request_handler("tasks/list", PaginatedRequestParams, list_tasks)
    server.middleware.append(protocol_middleware)


async def protocol_middleware(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """Each request: its log records go to its client; `initialize` advertises tasks where the negotiated
    version has them; a task-augmented tools/call runs as a task."""
    if ctx.request_id is None:  # a notification: nothing to route, nothing to answer
        return await call_next(ctx)
    if ctx.method == "logging/setLevel" and ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        # before the SDK's check, whose answer names nothing (2026-07-28 has no such method: the SDK says so)
        level = (ctx.params or {}).get("level")
        if level not in LEVELS:
            raise MCPError(
                INVALID_PARAMS, f"level: {level!r} is not a log level; send one of {', '.join(LEVELS)}."
            )
    app = cast(AppContext, ctx.lifespan_context)
    who = owner(headers_of(ctx))
    key = app.client_log.open_route(ctx.session, ctx.request_id, ctx.protocol_version, ctx.meta, who)
    token = LOG_ROUTE.set(key)
    try:
        if ctx.method == "initialize":
            result = await call_next(ctx)
            if isinstance(result, dict) and result.get("protocolVersion") in TASK_VERSIONS:
                result["capabilities"] = {**result.get("capabilities", {}), "tasks": TASKS_CAPABILITY}
            return result
        if (
            ctx.method == "tools/call"
            and ctx.protocol_version in TASK_VERSIONS
            and "task" in (ctx.params or {})
        ):
            return await as_task(ctx, call_next, app)
        return await call_next(ctx)
    finally:
        LOG_ROUTE.reset(token)
        app.client_log.close_route(key)


async def as_task(ctx: ServerRequestContext[Any, Any], call_next: CallNext, app: AppContext) -> HandlerResult:
    """Run the tool up to its job's submission (every argument checked first, as in a direct call), then answer
    with the task. A call answered without model work (a refused argument, judge's model-free checks, the
    classical refiner) answers with its result as it is: there was nothing to run as a task."""
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
    """The session's job `task_id`; another session's is unknown here, with the same message."""
    tasks_version(ctx)
    app = cast(AppContext, ctx.lifespan_context)
    try:
        return find(app.runner.jobs, task_id, owner(headers_of(ctx)))
    except ToolError:
        raise MCPError(
            INVALID_PARAMS, f"taskId: no task {task_id!r} in this session; tasks/list shows its tasks."
        ) from None


def tasks_version(ctx: ServerRequestContext[Any, Any]) -> None:
    if ctx.protocol_version not in TASK_VERSIONS:  # 2026-07-28: tasks are an extension this server lacks
        raise MCPError(METHOD_NOT_FOUND, "Method not found", data=ctx.method)


def task_info(job: Job) -> dict[str, Any]:
    """The job as a 2025-11-25 Task. Finished jobs are kept by count (the runner's newest 200), not by time:
    ttl is null."""
    message = job.error or job.message or (f"step {job.step}/{job.total}" if job.total else job.status)
    return {
        "taskId": job.id,
        "status": TASK_STATUS[job.status],
        "statusMessage": message,
        "createdAt": iso(job.created),
        "lastUpdatedAt": iso(job.finished or job.started or job.created),
        "ttl": None,
        "pollInterval": POLL_MS,
    }


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def headers_of(ctx: ServerRequestContext[Any, Any]) -> Mapping[str, str] | None:
    return getattr(ctx.request, "headers", None)  # the HTTP request's; None on stdio and in-process


def image_ids(app: AppContext, headers: Mapping[str, str] | None, prefix: str) -> list[str]:
    """Image ids starting with `prefix`, newest first. Over HTTP only those the caller's own jobs made (the
    store is shared by every session, and its ids are how an image is read); over stdio or in-process, where
    one client owns the server, every stored id."""
    if headers is not None:
        who = owner(headers)
        mine = [job for job in list(app.runner.jobs.values()) if job.owner == who and job.status == "done"]
        ids: list[str] = []
        for job in sorted(mine, key=lambda j: j.finished or 0, reverse=True):
            model = job.result[0] if isinstance(job.result, tuple) and job.result else None
            text = model.model_dump_json() if model is not None else ""
            ids.extend(i for i in IMAGE_ID.findall(text) if i not in ids)
        return [i for i in ids if i.startswith(prefix)]
    if not re.fullmatch(r"[A-Za-z0-9_]*", prefix):  # an id is img_ and hex; this also keeps glob syntax out
        return []
    stored = [(path.stat().st_mtime, path.stem) for path in app.images.root.glob(f"{prefix}*.png")]
    return [i for _, i in sorted(stored, reverse=True) if app.images.exists(i)]
