"""The `jobs` tool: work that outlived its call (server/context.py `run_work` detached it after max_wait_s).

It reports, waits on and cancels that work; a finished job returns the same result a direct call would have.
A session sees only its own jobs (server/context.py `owner`): another session's job_id is "no job". A client
without a session (HTTP with no Mcp-Session-Id) lists none: it reaches a job by the unguessable job_id it was
given, and only a job started without a session.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import BaseModel, Field

from server.context import app_context, is_admin, job_result, owner, session_job, session_jobs, to_call_result
from tools.core.jobs import wait_for

logger = logging.getLogger("limner.jobs")


class JobInfo(BaseModel):
    job_id: str
    tool: str
    description: str
    status: str = Field(description="queued, running, done, failed or cancelled.")
    step: int
    total: int
    message: str
    error: str | None
    elapsed_s: float


class JobsResult(BaseModel):
    jobs: list[JobInfo] = Field(
        description="The job asked about, or every recent job of this session for action='list'."
    )
    result: dict[str, Any] | None = Field(
        default=None, description="For a finished job: the same structured result a direct call returns."
    )


def register(server: MCPServer) -> None:
    @server.tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        )
    )
    async def jobs(
        ctx: Context,
        action: Annotated[
            Literal["status", "wait", "cancel", "list"],
            Field(
                description="status: one job now; wait: block up to timeout_s; cancel: stop it; list: all."
            ),
        ] = "status",
        job_id: Annotated[
            str | None, Field(description="The job_id a tool returned (not needed for list).")
        ] = None,
        timeout_s: Annotated[
            float, Field(ge=0, le=600, description="For wait: the most seconds to block before answering.")
        ] = 30.0,
    ) -> Annotated[CallToolResult, JobsResult]:
        """Check, wait for or cancel long model work.

        Call this when generate, refine_region or judge answered status='running' with a job_id (work that
        outlived the server's max_wait_s). action='wait' returns the finished result (the fields a direct call
        returns, with its previews, each time it is asked) or the progress so far when timeout_s runs out.
        A session sees only its own jobs. Over HTTP without a session (no Mcp-Session-Id) list shows none: keep
        the job_id the tool returned, it is the only way back to the job. A session may have a few jobs queued
        or running at once (max_jobs_per_session); a model call beyond that answers "busy". An operator's
        client sending the admin token (LIMNER_ADMIN_TOKEN) as its bearer token sees every session's jobs.
        """
        app = app_context(ctx)
        mine, admin = owner(ctx.headers), is_admin(app, ctx.headers)
        if action == "list":
            infos = [JobInfo(**j.summary()) for j in session_jobs(app, mine, admin)]
            return to_call_result(JobsResult(jobs=infos), [])
        if not job_id:
            raise ToolError(f"job_id: required for action={action!r}; call jobs(action='list') to see jobs.")
        job = session_job(app, job_id, mine, admin)
        if action == "wait":  # a waiter depends on it now: its first request ending must not cancel it
            job.detached = True
        if action == "cancel":
            running = job.status in ("queued", "running")
            job.cancel()
            await wait_for(job, 10.0)
            if running:
                logger.info("job %s (%s) cancelled at step %d/%d", job.id, job.tool, job.step, job.total)
        elif action == "wait":
            await wait_for(job, timeout_s, ctx.report_progress)
        info = JobInfo(**job.summary())
        if job.status == "done":
            direct = job_result(job)
            return CallToolResult(
                content=direct.content,
                structured_content=JobsResult(jobs=[info], result=direct.structured_content).model_dump(
                    mode="json"
                ),
            )
        return to_call_result(JobsResult(jobs=[info]), [])
