"""The `generate` tool: wiring only; the logic is tools/generate/ (request, work, result, foreground)."""

from __future__ import annotations

from typing import Annotated, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import Field

from server.context import app_context, run_work
from tools.generate.foreground import Placement
from tools.generate.request import (
    DEFAULT_REFERENCE_STRENGTH,
    DEFAULT_STRENGTH,
    MAX_REFERENCES,
    ForegroundRequest,
    GenerateRequest,
    check_foreground,
    check_request,
    configured_segmenter,
)
from tools.generate.result import GenerateResult, finish, finish_foreground, running
from tools.generate.work import foreground_work, work


def register(server: MCPServer) -> None:
    @server.tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        )
    )
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
            int,
            Field(ge=1, description="Candidates made in one batched call; judge them to pick the best."),
        ] = 1,
        model: Annotated[
            str | None,
            Field(
                description="A named model from the server settings; default: the generator role's model. An "
                "editor (qwen-image-edit) makes new images from `references` as its input images."
            ),
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
                "default: the alpha channel when it has transparent pixels, else the segmenter's mask (SAM) when "
                "the segmenter role is configured, else an automatic GrabCut cut-out."
            ),
        ] = None,
        placement: Annotated[
            list[Placement] | Literal["auto"],
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
        init_image: Annotated[
            str | None,
            Field(
                description="Make variations of this image (image-to-image on the generator's own weights): "
                "an image reference, e.g. the best candidate's id. Output size: its own, or width/height "
                "(it is resized to them). The candidates' lineage records it as their parent."
            ),
        ] = None,
        strength: Annotated[
            float | None,
            Field(
                ge=0,
                le=1,
                description="With init_image: the share of the steps re-run, 0..1 (0.3 keeps the composition, "
                f"0.6 varies it, 1 repaints it); default {DEFAULT_STRENGTH}. Above 0, steps x strength must be "
                "at least 1; 0 runs no step and gives init_image encoded and decoded by the model's VAE (n=1).",
            ),
        ] = None,
        references: Annotated[
            list[str] | None,
            Field(
                max_length=MAX_REFERENCES,
                description=f"Up to {MAX_REFERENCES} reference images (ids from search, paths, URLs) whose "
                "subject or style the candidates take, through the generator's IP-Adapter (SD/SDXL "
                "generators), or, with an editor as model, as its input images. Recorded in the candidates' "
                "lineage.",
            ),
        ] = None,
        reference_strength: Annotated[
            float | None,
            Field(
                ge=0,
                le=1,
                description="How strongly references steer the image, 0..1 (0: not at all; 0.5-0.7: their "
                f"subject and style with the prompt still leading); default {DEFAULT_REFERENCE_STRENGTH}.",
            ),
        ] = None,
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

        With `init_image` it makes variations of that image (e.g. judge's best candidate with one flaw in
        its composition): `strength` says how far they may move. With `references` (images found with
        search: the real product, a logo, a style) the candidates take their subject or style; with an editor
        as `model` (qwen-image-edit), the references are its input images and the prompt says what to make of
        them (put the product in a new scene, combine two references).
        """
        app = app_context(ctx)
        settings = app.settings
        if foreground is None and (foreground_mask is not None or scenes is not None or placement != "auto"):
            raise ToolError(
                "foreground: foreground_mask, placement and scenes need a foreground image reference."
            )
        if foreground is not None and (init_image is not None or references is not None):
            raise ToolError(
                "init_image/references: not with foreground (its scenes are painted around the object by the "
                "inpainter); call generate without foreground for variations or references."
            )

        def checked() -> GenerateRequest:
            return check_request(
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
                max_pixels=settings.max_pixels,
                max_steps=settings.max_steps,
                max_batch=settings.max_batch,
                max_prompt_chars=settings.max_prompt_chars,
                init_image=init_image,
                strength=strength,
                references=references,
                reference_strength=reference_strength,
                resolve=app.resolve,
            )

        # reading init_image or references may read a file or fetch a URL: off the event loop
        reads = init_image is not None or references is not None
        base = await anyio.to_thread.run_sync(checked) if reads else checked()
        spec = app.models.models[base.model]
        if foreground is None:
            return await run_work(
                ctx,
                "generate",
                f"{len(base.seeds)} x {base.width}x{base.height} px, {base.steps} steps: {base.prompt[:60]}",
                work,
                base,
                lambda output: finish(base, output, app.images),
                lambda handle: running(spec, base, handle),
                role="editor" if base.editor else "generator",
            )

        def prepare() -> ForegroundRequest:  # resolving may read a file or fetch a URL: off the event loop
            source = app.resolve(foreground, "foreground")
            mask = app.resolve(foreground_mask, "foreground_mask").image if foreground_mask else None
            return check_foreground(
                base,
                source,
                mask,
                placement,
                scenes,
                repair,
                max_batch=settings.max_batch,
                max_prompt_chars=settings.max_prompt_chars,
                segmenter=configured_segmenter(app.models),
            )

        request = await anyio.to_thread.run_sync(prepare)
        return await run_work(
            ctx,
            "generate",
            f"foreground: {request.count} x {base.width}x{base.height} px: {base.prompt[:50]}",
            foreground_work,
            request,
            lambda output: finish_foreground(request, output, app.images),
            lambda handle: running(spec, base, handle),
            role="inpainter",
        )
