"""The `upscale` tool: wiring only; the logic is tools/upscale/ (request, tiles, work, result)."""

from __future__ import annotations

import time
from typing import Annotated, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import Field

from server.context import app_context, run_work, to_call_result
from tools.core.jobs import Job
from tools.models.specs import spec_label
from tools.upscale.request import check_output_size, check_request
from tools.upscale.result import UpscaleResult, finish
from tools.upscale.work import UpscaleWork, work


def register(server: MCPServer) -> None:
    @server.tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        )
    )
    async def upscale(
        ctx: Context,
        image: Annotated[
            str,
            Field(description="The image to enlarge: a store id, limner:// URI, data URI, file path or URL."),
        ],
        scale: Annotated[Literal[2, 4], Field(description="How many times larger each side gets.")] = 2,
        prompt: Annotated[
            str | None, Field(description="What the image shows; guides the detail the model adds.")
        ] = None,
        creativity: Annotated[
            float,
            Field(
                ge=0,
                le=1,
                description="How much detail the model may add: 0 = the plain resize, 0.2-0.4 = sharper "
                "detail, 1 = repaint each tile (tiled: image-to-image strength; x4-upscaler: noise level / 100).",
            ),
        ] = 0.3,
        backend: Annotated[
            Literal["auto", "tiled", "x4-upscaler", "classical"],
            Field(
                description="auto: classical at creativity 0, else tiled; tiled: the generator refines native-size "
                "tiles of the resize; x4-upscaler: the 4x latent upscaler (scale 4); classical: Lanczos and a "
                "mild unsharp mask, no model."
            ),
        ] = "auto",
        seed: Annotated[int | None, Field(description="Seed; drawn when omitted and returned.")] = None,
        steps: Annotated[int | None, Field(description="Denoising steps; default: the model's own.")] = None,
        guidance: Annotated[
            float | None, Field(description="Guidance scale, >= 0; default: the model's own.")
        ] = None,
        model: Annotated[
            str | None, Field(description="A named generator (tiled) or upscaler (x4-upscaler).")
        ] = None,
    ) -> Annotated[CallToolResult, UpscaleResult]:
        """Enlarge an image 2x or 4x, optionally adding detail with a model.

        Call it once, on the final image, after judge is satisfied (detail added here is not judged for
        the prompt). creativity=0 (or backend='classical') gives the plain Lanczos resize; higher values
        refine the resize tile by tile at the model's native resolution, tiles cross-faded so no seam
        shows. The result's against_plain says how far it moved from the plain resize. Long work returns
        status='running' and a job_id: call jobs(action='wait', ...), or cancel it between tiles.
        """
        app = app_context(ctx)
        settings = app.settings
        request = check_request(
            scale=scale,
            prompt=prompt,
            creativity=creativity,
            backend=backend,
            seed=seed,
            steps=steps,
            guidance=guidance,
            model=model,
            models=app.models,
            max_steps=settings.max_steps,
            max_prompt_chars=settings.max_prompt_chars,
        )

        def prepare() -> UpscaleWork:  # file reads and fetches: off the event loop
            source = app.resolve(image, "image")
            check_output_size(source.image.width, source.image.height, request, settings.max_pixels)
            return UpscaleWork(request, source)

        started = time.perf_counter()
        given = await anyio.to_thread.run_sync(prepare)
        timings = {"resolve": round(time.perf_counter() - started, 5)}

        if request.backend == "classical" or request.creativity == 0:  # no model: on a thread, not queued
            inline = Job(id="inline", tool="upscale", description="classical")
            result, previews = await anyio.to_thread.run_sync(
                lambda: finish(given, work(given, app.models, inline), app.images, timings)
            )
            return to_call_result(result, previews)

        assert request.model is not None  # a model backend: check_request named its spec
        spec = app.models.models[request.model]
        return await run_work(
            ctx,
            "upscale",
            f"upscale {request.backend} {request.scale}x {request.model}: creativity {request.creativity}",
            work,
            given,
            lambda output: finish(given, output, app.images, timings),
            lambda handle: UpscaleResult(
                status="running",
                backend=request.backend,
                scale=request.scale,
                model=spec_label(spec),
                tiny=spec.tiny_kind is not None,
                job=handle,
            ),
            # the generator's deployment serves both: tiled runs on its weights, and a Ray runner has no
            # upscaler deployment (its worker's model cache loads the upscaler on first use)
            role="generator",
        )
