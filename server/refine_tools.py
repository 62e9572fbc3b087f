"""The `refine_region` tool: wiring only; the logic is tools/refine_region/ (request, work, result)."""

from __future__ import annotations

import time
from typing import Annotated, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import Field

from server.context import app_context, run_work, to_call_result
from tools.core.checks import check_aspect
from tools.core.jobs import Job
from tools.core.masks import BLEND_BLUR, BLEND_DILATE
from tools.models.specs import spec_label
from tools.refine_region.request import MAX_INSTANCE, check_region_query, check_request, read_region
from tools.refine_region.result import RefineResult, finish
from tools.refine_region.work import CLASSICAL_LABEL, RefineWork, work

Point = Annotated[list[int], Field(min_length=2, max_length=2, description="[x, y] in pixels.")]


def register(server: MCPServer) -> None:
    @server.tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        )
    )
    async def refine_region(
        ctx: Context,
        image: Annotated[
            str, Field(description="The image to fix: a store id, limner:// URI, data URI, file path or URL.")
        ],
        prompt: Annotated[
            str,
            Field(description="What the region should show, e.g. 'the word OPEN in crisp white letters'."),
        ],
        mask: Annotated[
            str | None,
            Field(
                description="Region as a mask image of exactly the image's size: white = refine, black = keep."
            ),
        ] = None,
        bbox: Annotated[
            list[int] | None,
            Field(
                min_length=4,
                max_length=4,
                description="Region as a box [x1, y1, x2, y2] in pixels (x2, y2 exclusive).",
            ),
        ] = None,
        points: Annotated[
            list[Point] | None,
            Field(description="Region as a scribble: points joined in order into one stroke of `radius`."),
        ] = None,
        radius: Annotated[
            int | None,
            Field(ge=1, le=2048, description="Scribble half-width in pixels (needed with points)."),
        ] = None,
        region: Annotated[
            str | None,
            Field(
                description="Region named in words ('the mug handle'), instead of mask, bbox or points: located "
                "with the detector and masked with the segmenter, as locate does, then refined as with a mask."
            ),
        ] = None,
        instance: Annotated[
            int | None,
            Field(
                ge=1,
                le=MAX_INSTANCE,
                description="With region: which match to refine, by score (1 = best, the default).",
            ),
        ] = None,
        threshold: Annotated[
            float | None,
            Field(
                ge=0,
                le=1,
                description="With region: keep matches scoring above this, 0..1; default: the detector's own "
                "(0.3 Grounding DINO, 0.1 OWLv2).",
            ),
        ] = None,
        reference: Annotated[
            str | None,
            Field(description="Optional reference image (a logo, a product photo); backend='editor' only."),
        ] = None,
        margin: Annotated[
            int,
            Field(
                ge=0,
                le=1024,
                description="Context around the region, in pixels of the image scaled to ~1024x1024 area.",
            ),
        ] = 64,
        focus: Annotated[
            bool, Field(description="true: crop and zoom the region (Focus-and-Refine); false: whole image.")
        ] = True,
        focus_size: Annotated[
            int | None,
            Field(
                description="Model resolution (pixels per side, as area); default: the model's native size."
            ),
        ] = None,
        steps: Annotated[int | None, Field(description="Denoising steps; default: the model's own.")] = None,
        strength: Annotated[
            float | None,
            Field(
                gt=0,
                le=1,
                description="How much of the region an inpainter repaints: 1 = fully, 0.5 = half; default 0.8. "
                "An editor repaints its crop fully.",
            ),
        ] = None,
        guidance: Annotated[
            float | None, Field(description="Guidance scale, >= 0; default: the model's own.")
        ] = None,
        seed: Annotated[int | None, Field(description="Seed; drawn when omitted and returned.")] = None,
        blend_dilate: Annotated[
            int, Field(ge=1, le=101, description="Odd dilation kernel (pixels) for the blend mask; 1 = none.")
        ] = BLEND_DILATE,
        blend_blur: Annotated[
            int,
            Field(
                ge=1, le=101, description="Odd Gaussian blur kernel (pixels) for the blend mask; 1 = hard."
            ),
        ] = BLEND_BLUR,
        paste_back: Annotated[
            Literal["mask", "bbox"],
            Field(
                description="mask: blend the region's shape; bbox: repaint and blend the region's whole box."
            ),
        ] = "mask",
        backend: Annotated[
            Literal["inpainter", "editor", "classical"],
            Field(
                description="inpainter: the inpainting model; editor: an editing model that takes a reference; "
                "classical: OpenCV inpainting (no model, removes small defects)."
            ),
        ] = "inpainter",
        model: Annotated[
            str | None, Field(description="A named model of the backend's role; default: the role's model.")
        ] = None,
    ) -> Annotated[CallToolResult, RefineResult]:
        """Fix one region of an image (broken text, a warped logo, a smeared face or hand) and keep every
        other pixel bit-identical.

        Call it after judge (or your own look) found a local defect in an otherwise good image, instead of
        generating again. Give the region as a bbox, a mask or scribble points, and a prompt describing
        what belongs there, or name it in words (region='the mug handle'): it is located with the detector
        and the segmenter, the best match refined (instance=k for another), and `located` says which box,
        score and mask were used and lists matches too close to call. The region is cropped with a margin,
        zoomed to the model's resolution, refined, and blended back: pixels outside the blend mask are copied from the input unchanged (the result's
        metrics prove it). mask_id is that blend mask (the region plus its feathered rim, every pixel that
        may change); region_mask_id is the region alone. Then judge the result again with
        original=input_id and mask=mask_id. backend='classical' needs no model and removes small
        blemishes. If the work outlives max_wait_s the result has status='running' and a job_id: call
        jobs(action='wait', job_id=...).
        """
        app = app_context(ctx)
        settings = app.settings
        request = check_request(
            prompt=prompt,
            backend=backend,
            model=model,
            reference=reference,
            margin=margin,
            focus=focus,
            focus_size=focus_size,
            steps=steps,
            strength=strength,
            guidance=guidance,
            seed=seed,
            blend_dilate=blend_dilate,
            blend_blur=blend_blur,
            paste_back=paste_back,
            models=app.models,
            max_steps=settings.max_steps,
            max_pixels=settings.max_pixels,
            max_prompt_chars=settings.max_prompt_chars,
        )
        query = check_region_query(
            region=region,
            instance=instance,
            threshold=threshold,
            mask=mask,
            bbox=bbox,
            points=points,
            models=app.models,
        )

        def prepare() -> RefineWork:  # file reads and fetches: off the event loop
            source = app.resolve(image, "image")
            if query is None:
                mask_image = app.resolve(mask, "mask").image if mask is not None else None
                read = read_region(source.image.width, source.image.height, mask_image, bbox, points, radius)
            else:  # located in the model step
                check_aspect("image", source.image.width, source.image.height)
                read = None
            ref = app.resolve(reference, "reference") if reference is not None else None
            if ref is not None:  # the editor's vision-language processor scales it as judge's do
                check_aspect("reference", ref.image.width, ref.image.height)
            return RefineWork(request, source, read, ref, query)

        started = time.perf_counter()
        given = await anyio.to_thread.run_sync(prepare)
        timings = {"resolve": round(time.perf_counter() - started, 5)}

        if request.backend == "classical" and query is None:  # no model: on a thread, not behind model work
            inline = Job(id="inline", tool="refine_region", description="classical")
            result, previews = await anyio.to_thread.run_sync(
                lambda: finish(given, work(given, app.models, inline), app.images, timings)
            )
            return to_call_result(result, previews)

        if request.model is not None:  # a model backend: check_request named its spec
            spec, label, role = app.models.models[request.model], "", request.backend
        else:  # classical refining of a region the detector locates: on the runner, as locate's work runs
            assert query is not None
            spec, label, role = app.models.models[query.detector], CLASSICAL_LABEL, "detector"
        what = (
            f"region {query.name!r}"
            if query is not None
            else f"region {given.region.how if given.region else ''}"
        )
        return await run_work(
            ctx,
            "refine_region",
            f"{request.backend} {request.model or 'no model'}: {what[:60]}: {request.prompt[:60]}",
            work,
            given,
            lambda output: finish(given, output, app.images, timings),
            lambda handle: RefineResult(
                status="running",
                backend=request.backend,
                model=label or spec_label(spec),
                tiny=spec.tiny_kind is not None,
                focus=request.focus,
                job=handle,
            ),
            role=role,
        )
