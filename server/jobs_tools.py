"""Running model work from a tool call, and the `jobs` tool for work that outlives the call.

`run_on_worker` submits work to the single model worker, forwards its per-step progress as MCP progress
notifications, cancels it when the request is cancelled, and, when the work outlives `max_wait_s`, detaches
it and returns the tool's "running" result with a job handle. The `jobs` tool reports, waits on and cancels
detached work; a finished job returns the same result a direct call would have.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent
from PIL import Image
from pydantic import BaseModel, Field

from server.app import app_context
from tools.core.images import preview
from tools.core.jobs import Job, JobCancelled, JobHandle, wait_for

# What model work returns: the tool's structured result and the images to preview.
Output = tuple[BaseModel, list[Image.Image]]


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


async def run_on_worker(
    ctx: Context,
    tool: str,
    description: str,
    work: Callable[[Job], Output],
    pending: Callable[[JobHandle], BaseModel],
) -> CallToolResult:
    """Run `work(job)` on the model worker; the finished result, or `pending(handle)` after max_wait_s."""
    app = app_context(ctx)
    job = app.worker.submit(tool, description, work)
    finished = await wait_for(job, app.settings.max_wait_s, ctx.report_progress)
    if not finished:
        job.detached = True
        return to_call_result(pending(handle(job)), [])
    return job_result(job)


def job_result(job: Job) -> CallToolResult:
    """The finished job's tool result, the same on every delivery. The first encodes the previews and lets
    the full-size images go (they are in the store), so finished jobs kept for `jobs` hold only the small
    previews; a later delivery (a second waiter, a retry after a lost answer) gets the same previews."""
    try:
        model, images = job.future.result()
    except JobCancelled:
        raise ToolError(
            f"{job.tool} was cancelled at step {job.step}/{job.total}; nothing was stored."
        ) from None
    except ToolError:
        raise
    except Exception as exc:  # the SDK would send only "Error executing tool ..." and drop the reason
        raise ToolError(failure(job.tool, exc)) from None
    if job.previews is None:
        job.previews = [preview(img) for img in images]
        job.release_images()
    return with_previews(model, job.previews)


def failure(tool: str, exc: BaseException) -> str:
    """What an agent can act on when model work raised something unexpected (the traceback is on stderr)."""
    text = f"{tool} failed: {type(exc).__name__}: {exc}"
    if "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError":
        return f"{text}. The model ran out of memory: lower n, width/height or focus_size, and call again."
    return f"{text}. The server's log (stderr) has the details; nothing was stored."


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
    jobs: list[JobInfo] = Field(description="The job asked about, or every recent job for action='list'.")
    result: dict[str, Any] | None = Field(
        default=None, description="For a finished job: the same structured result a direct call returns."
    )


def register(server: MCPServer) -> None:
    @server.tool()
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
        """
        app = app_context(ctx)
        if action == "list":
            infos = [JobInfo(**j.summary()) for j in app.worker.jobs.values()]
            return to_call_result(JobsResult(jobs=infos), [])
        if not job_id:
            raise ToolError(f"job_id: required for action={action!r}; call jobs(action='list') to see jobs.")
        job = app.worker.get(job_id)
        if action == "wait":  # a waiter depends on it now: its first request ending must not cancel it
            job.detached = True
        if action == "cancel":
            job.cancel()
            await wait_for(job, 10.0)
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
