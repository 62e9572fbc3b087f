"""The protocol beyond tools, resources and prompts: the server's version, MCP logging, completions, tasks
(server/tasks.py) and the end of an HTTP session. Wiring only: the jobs are the runner's, the same records the
`jobs` tool shows (server/jobs_tools.py), and each belongs to the session that made it (server/context.py
`owner`).

- Logging: `logging/setLevel` sets, per session, the lowest level of the log notifications the server sends
  (ClientLog in server/context.py); 2026-07-28 has no setLevel (each request opts in by its `_meta`, which the
  SDK honours). A middleware routes each request's records to its client.
- Completions: `completion/complete` for the image arguments of the resource templates and prompts: stored
  image ids by prefix, newest first. An unknown prompt, template or argument is -32602, as the spec says
  (the conformance suite's `completion-complete` asks about its own reference server's prompt and so fails
  here; tests/test_tasks.py runs it and checks that this is its only failure).
- Session end: when an HTTP session ends (a DELETE, or no request in flight for session_idle_s), its queued
  and running model jobs are cancelled.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CompleteRequestParams,
    CompleteResult,
    Completion,
    EmptyResult,
    PromptReference,
    SetLevelRequestParams,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from server import tasks
from server.context import LEVELS, SESSIONLESS, AppContext, owner
from server.tasks import TASK_VERSIONS, TASKS_CAPABILITY, as_task, headers_of
from tools.core.jobs import LOG_ROUTE

logger = logging.getLogger("limner.protocol")

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
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

    lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)
    lowlevel.add_request_handler("completion/complete", CompleteRequestParams, complete)
    tasks.register(server)
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
    if who.startswith("http:") and who != SESSIONLESS:
        watch_session_end(ctx, app, who)
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


def watch_session_end(ctx: ServerRequestContext[Any, Any], app: AppContext, who: str) -> None:
    """Once per HTTP session: when its connection closes (the SDK unwinds the connection's exit stack on a
    DELETE, an idle expiry or a crash), cancel its queued and running jobs; nobody can reach them any more.
    The connection is the session's own (the SDK keeps one per Mcp-Session-Id); `_connection` is the only way
    to it from a middleware in this SDK version."""
    connection = getattr(ctx.session, "_connection", None)
    if connection is None or connection.state.get("limner_watched"):
        return
    connection.state["limner_watched"] = True

    def cancel_its_jobs() -> None:
        ended = [job for job in list(app.runner.jobs.values()) if job.owner == who and job.finished is None]
        for job in ended:
            job.cancel()
        app.client_log.levels.pop(who, None)
        if ended:
            logger.info(
                "HTTP session ended: cancelled its %d job(s): %s", len(ended), ", ".join(j.id for j in ended)
            )

    connection.exit_stack.callback(cancel_its_jobs)


def image_ids(app: AppContext, headers: Mapping[str, str] | None, prefix: str) -> list[str]:
    """Image ids starting with `prefix`, newest first. Over HTTP only those the caller's own jobs made (the
    store is shared by every session, and its ids are how an image is read); over stdio or in-process, where
    one client owns the server, every stored id."""
    if headers is not None:
        who = owner(headers)
        if who == SESSIONLESS:  # no one's: the sessionless clients' jobs are not theirs to enumerate
            return []
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
