"""The `generate` tool: wiring only; the logic is tools/generate.py."""

from __future__ import annotations

from typing import Annotated, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult
from pydantic import Field

from server.app import app_context
from server.jobs_tools import run_on_worker
from tools.core.images import read_note
from tools.generate import foreground as fg
from tools.generate import work as gen
from tools.generate.work import GenerateResult


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
        foreground: Annotated[
            str | None,
            Field(
                description="An object whose pixels must stay exact (product photo, cut-out): an image reference. "
                "Switches to foreground-conditioned generation: the object is placed on the canvas and the "
                "inpainter paints a scene around it."
            ),
        ] = None,
        foreground_mask: Annotated[
            str | None,
            Field(
                description="Image reference of the object's mask (white = object), same size as foreground; "
                "default: the alpha channel when it has transparent pixels, else an automatic GrabCut cut-out."
            ),
        ] = None,
        placement: Annotated[
            list[fg.Placement] | Literal["auto"],
            Field(
                description="Where the object goes: 'auto' (centred on the lower third) or a list of {x, y, "
                "scale} (relative centre; scale = the object's longest side / the canvas's shorter side)."
            ),
        ] = "auto",
        scenes: Annotated[
            list[str] | None,
            Field(
                description="Several scene prompts in one call (each gets its own n candidates, tagged with "
                "its scene); each is appended to prompt."
            ),
        ] = None,
        repair: Annotated[
            bool,
            Field(
                description="Repaint a candidate's over-extension (object drawn beyond itself) up to 2 "
                "rounds and keep the best."
            ),
        ] = False,
    ) -> Annotated[CallToolResult, GenerateResult]:
        """Generate n candidate images from a text prompt on the local diffusion model.

        Call it after you have the facts the model lacks (search, recall), with n=3..4 candidates, then
        call judge on the candidate ids to rank them and learn what to fix. Each candidate comes back with
        an id (pass it to judge / refine_region), its seed (n=1 with it remakes the image up to rounding)
        and a preview. Progress is reported per denoising step. If the work outlives the server's
        max_wait_s the result has status='running' and a job_id: call jobs(action='wait', job_id=...) for
        the images.

        With `foreground` (a product photo or cut-out) it makes scenes AROUND that object instead: inside
        the object mask every output pixel equals the input (bit for bit when the object keeps its pixel
        size), and each candidate reports its over-extension; to check, judge the candidates of each placement
        in one call with foreground_mask=<their mask_id> (one judge call per distinct mask_id).
        """
        app = app_context(ctx)
        if foreground is None and (foreground_mask is not None or scenes is not None or placement != "auto"):
            raise ToolError(
                "foreground: foreground_mask, placement and scenes need a foreground image reference."
            )
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
            role="generator" if foreground is None else "inpainter",
            max_pixels=app.settings.max_pixels,
            max_steps=app.settings.max_steps,
            max_batch=app.settings.max_batch,
            max_prompt_chars=app.settings.max_prompt_chars,
        )

        if foreground is not None:
            return await _foreground(ctx, request, foreground, foreground_mask, placement, scenes, repair)

        def work(job):
            images, loaded, timings = gen.run(request, app.models, job)
            return gen.finish(request, images, loaded, timings, app.images)

        return await run_on_worker(
            ctx,
            "generate",
            f"{len(request.seeds)} x {request.width}x{request.height} px, {request.steps} steps: "
            f"{request.prompt[:60]}",
            work,
            lambda handle: gen.running(app.models.models[request.model], request, handle),
        )


async def _foreground(ctx, request, foreground, foreground_mask, placement, scenes, repair):
    """generate with a foreground: understand the object, template it, paint scenes around it. Only the
    arguments are checked here; finding the object (GrabCut: 1.6 s at 512 px, 18 s at 2048) is part of the
    job, so max_wait_s and cancellation cover it."""
    app = app_context(ctx)
    settings = app.settings
    # resolving may fetch a URL: off the event loop
    source = await anyio.to_thread.run_sync(app.resolve, foreground, "foreground")
    if min(source.image.size) < fg.MIN_SIDE:
        raise ToolError(
            f"foreground: {source.image.width}x{source.image.height} px is too small to hold an object; pass a "
            f"photo or cut-out at least {fg.MIN_SIDE} px a side."
        )
    mask_image = None
    if foreground_mask:
        mask_image = (await anyio.to_thread.run_sync(app.resolve, foreground_mask, "foreground_mask")).image
    if placement != "auto" and not placement:
        raise ToolError("placement: an empty list; pass 'auto' or at least one {x, y, scale}.")
    if scenes is not None and (not scenes or any(not s.strip() for s in scenes)):
        raise ToolError("scenes: pass a non-empty list of non-empty scene prompts, or leave it out.")
    scene_list = scenes if scenes is not None else [""]
    for i, scene in enumerate(scene_list):
        gen.check_text(f"scenes[{i}]", scene, settings.max_prompt_chars)
    n = len(request.seeds)
    places = 1 if placement == "auto" else len(placement)
    count = places * len(scene_list) * n
    if count > settings.max_batch:
        raise ToolError(
            f"n: placements x scenes x n = {places} x {len(scene_list)} x {n} = {count} candidates, above "
            f"the limit of {settings.max_batch} per call; lower n or split the scenes over several calls."
        )
    base = request.seeds[0]
    if base + count - 1 > gen.MAX_SEED:  # every candidate's seed must be one generate takes back
        raise ToolError(
            f"seed: {base} leaves no room for {count} candidates; use 0..{gen.MAX_SEED - count + 1}."
        )
    params = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "width": request.width,
        "height": request.height,
        "steps": request.steps,
        "guidance": request.guidance,
        "model": request.model,
    }

    def work(job):
        # 1. the object, and its placements on the canvas
        job.message = "foreground: finding the object"  # no progress step yet: the scenes' steps follow
        obj = fg.understand(source.image, mask_image)
        job.check_cancelled()
        chosen = [fg.auto_placement(obj, request.width, request.height)] if placement == "auto" else placement
        templates = [
            fg.place(obj, p, request.width, request.height, f"placement[{i}]") for i, p in enumerate(chosen)
        ]
        # 2. the object's source goes into the store too, so every candidate's lineage reaches it
        parent = source.id or app.images.put(source.image, tool="input", params={"field": "foreground"}).id
        scene_jobs = []
        for t_index, template in enumerate(templates):
            for scene in scene_list:
                k = len(scene_jobs) * n
                prompt = f"{request.prompt}, {scene.strip()}" if scene.strip() else request.prompt
                seeds = tuple(base + k + i for i in range(n))
                scene_jobs.append(
                    fg.SceneJob(template, t_index, scene.strip() or request.prompt, prompt, seeds)
                )
        # 3. the scenes around it
        made, loaded, timings = fg.run(
            scene_jobs,
            lambda: app.models.get("inpainter", request.model),
            job,
            steps=request.steps,
            guidance=request.guidance,
            negative_prompt=request.negative_prompt,
            repair=repair,
        )
        result, images = fg.store_results(
            made, templates, obj, parent, loaded, timings, app.images, {**params, "foreground": parent}
        )
        # what reading the object left out (16-bit colour read at 8 bits, an animation's other frames)
        read = [read_note(source.image, "foreground")]
        read += [read_note(mask_image, "foreground_mask")] if mask_image is not None else []
        result.warnings[:0] = [note for note in read if note]
        return result, images

    return await run_on_worker(
        ctx,
        "generate",
        f"foreground: {count} x {request.width}x{request.height} px: {request.prompt[:50]}",
        work,
        lambda handle: gen.running(app.models.models[request.model], request, handle),
    )
