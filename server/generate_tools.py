"""The `generate` tool: wiring only; the logic is tools/generate.py."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult
from pydantic import Field

from server.app import app_context
from server.jobs_tools import run_on_worker
from tools import generate as gen
from tools.generate import GenerateResult


def register(server: MCPServer) -> None:
    @server.tool()
    async def generate(
        ctx: Context,
        prompt: Annotated[
            str, Field(description="What to draw. Put facts found with search/recall into it.")
        ],
        negative_prompt: Annotated[
            str | None, Field(description="What to avoid (models with CFG only).")
        ] = None,
        width: Annotated[
            int | None,
            Field(description="Pixels, a multiple of 8 (16 for FLUX); default: the model's native size."),
        ] = None,
        height: Annotated[
            int | None,
            Field(description="Pixels, a multiple of 8 (16 for FLUX); default: the model's native size."),
        ] = None,
        steps: Annotated[int | None, Field(description="Denoising steps; default: the model's own.")] = None,
        guidance: Annotated[
            float | None,
            Field(
                description="Classifier-free guidance scale, >= 0; default: "
                "the model's own (0 for turbo/schnell models)."
            ),
        ] = None,
        seed: Annotated[
            int | None,
            Field(
                description="Base seed; candidate i gets seed+i. Drawn when omitted "
                "and returned per candidate."
            ),
        ] = None,
        n: Annotated[
            int, Field(description="Candidates made in one batched call; judge them to pick the best.")
        ] = 1,
        model: Annotated[
            str | None,
            Field(description="A named model from the server settings; default: the generator role's model."),
        ] = None,
    ) -> Annotated[CallToolResult, GenerateResult]:
        """Generate n candidate images from a text prompt on the local diffusion model.

        Call it after you have the facts the model lacks (search, recall), with n=3..4 candidates, then
        call judge on the candidate ids to rank them and learn what to fix. Each candidate comes back with
        an id (pass it to judge / refine_region), its seed (pass it back to reproduce it exactly) and a
        preview. Progress is reported per denoising step. If the work outlives the server's max_wait_s the
        result has status='running' and a job_id: call jobs(action='wait', job_id=...) for the images.
        """
        app = app_context(ctx)
        request = gen.check_request(
            prompt=prompt,
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            steps=steps,
            guidance=guidance,
            seed=seed,
            n=n,
            model=model,
            models=app.models,
            max_pixels=app.settings.max_pixels,
            max_steps=app.settings.max_steps,
            max_batch=app.settings.max_batch,
            max_prompt_chars=app.settings.max_prompt_chars,
        )

        def work(job):
            images, loaded, timings = gen.run(request, app.models, job)
            return gen.finish(request, images, loaded, timings, app.images)

        return await run_on_worker(
            ctx,
            "generate",
            f"{len(request.seeds)} x {request.width}x{request.height} px, {request.steps} steps: "
            f"{request.prompt[:60]}",
            work,
            lambda handle: GenerateResult(status="running", prompt=request.prompt, job=handle),
        )
