"""The `outpaint` tool: wiring only; the logic is tools/outpaint/ (request, canvas, work, result)."""

from __future__ import annotations

import time
from typing import Annotated

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import Field

from server.context import app_context, run_work
from tools.core.checks import check_aspect
from tools.models.specs import spec_label
from tools.outpaint.request import MAX_N, check_request, read_growth
from tools.outpaint.result import OutpaintResult, finish
from tools.outpaint.work import OutpaintWork, work

Side = Annotated[int | None, Field(ge=0, le=16384, description="Pixels to add on this side.")]


def register(server: MCPServer) -> None:
    @server.tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        )
    )
    async def outpaint(
        ctx: Context,
        image: Annotated[
            str,
            Field(description="The image to extend: a store id, limner:// URI, data URI, file path or URL."),
        ],
        prompt: Annotated[
            str, Field(description="What the whole scene shows, so the new borders continue it.")
        ],
        left: Side = None,
        top: Side = None,
        right: Side = None,
        bottom: Side = None,
        aspect: Annotated[
            str | None,
            Field(
                description="Instead of sides: a target aspect 'W:H' (e.g. '16:9'); the shorter dimension grows, "
                "evenly on both of its sides."
            ),
        ] = None,
        n: Annotated[int, Field(ge=1, le=MAX_N, description="Candidates (consecutive seeds).")] = 1,
        seed: Annotated[
            int | None, Field(description="Seed of the first candidate; drawn when omitted.")
        ] = None,
        steps: Annotated[
            int | None, Field(description="Denoising steps; default: the inpainter's own.")
        ] = None,
        guidance: Annotated[
            float | None, Field(description="Guidance scale, >= 0; default: the inpainter's own.")
        ] = None,
        model: Annotated[
            str | None, Field(description="A named inpainter; default: the role's model.")
        ] = None,
    ) -> Annotated[CallToolResult, OutpaintResult]:
        """Extend an image onto a larger canvas (another aspect ratio, more room around the subject) and keep
        the original's pixels.

        Call it when a good image needs a wider or taller frame: give pixels per side (left, top, right,
        bottom) or a target aspect such as '16:9'. The new borders are filled by the inpainter at its native
        resolution, window by window; a side grows at most half the model's native size per pass (more runs
        in passes). Every original pixel outside a narrow band along the old edges is bit-identical: the
        result's `preserved` gives the band width and the check made on the stored pixels. If the work
        outlives max_wait_s the result has status='running' and a job_id: call jobs(action='wait', ...).
        """
        app = app_context(ctx)
        settings = app.settings
        request = check_request(
            prompt=prompt,
            left=left,
            top=top,
            right=right,
            bottom=bottom,
            aspect=aspect,
            n=n,
            seed=seed,
            steps=steps,
            guidance=guidance,
            model=model,
            models=app.models,
            max_steps=settings.max_steps,
            max_prompt_chars=settings.max_prompt_chars,
        )

        def prepare() -> OutpaintWork:  # file reads and fetches: off the event loop
            source = app.resolve(image, "image")
            check_aspect("image", source.image.width, source.image.height)
            growth = read_growth(source.image.width, source.image.height, request, settings.max_pixels)
            return OutpaintWork(request, source, growth)

        started = time.perf_counter()
        given = await anyio.to_thread.run_sync(prepare)
        timings = {"resolve": round(time.perf_counter() - started, 5)}
        spec = app.models.models[request.model]
        grown = given.growth
        return await run_work(
            ctx,
            "outpaint",
            f"outpaint {request.model}: +{grown.left}/{grown.top}/{grown.right}/{grown.bottom} px: "
            f"{request.prompt[:60]}",
            work,
            given,
            lambda output: finish(given, output, app.images, timings),
            lambda handle: OutpaintResult(
                status="running", model=spec_label(spec), tiny=spec.tiny_kind is not None, job=handle
            ),
            role="inpainter",
        )
