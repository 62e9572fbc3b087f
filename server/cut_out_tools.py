"""The `cut_out` tool: wiring only; the logic is tools/cut_out/ (request, work, result)."""

from __future__ import annotations

from typing import Annotated

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import Field

from server.context import app_context, run_work
from tools.cut_out.request import MAX_FEATHER, MAX_INSTANCE, CutOutWork, check_image, check_request
from tools.cut_out.result import CutOutResult, finish
from tools.cut_out.work import work


def register(server: MCPServer) -> None:
    @server.tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        )
    )
    async def cut_out(
        ctx: Context,
        image: Annotated[
            str,
            Field(
                description="The image to cut from: a store id, limner:// URI, data URI, file path or URL."
            ),
        ],
        object: Annotated[
            str | None,
            Field(
                description="What to cut out, in a few words ('red mug'); leave it out for the most salient "
                "object."
            ),
        ] = None,
        threshold: Annotated[
            float | None,
            Field(
                ge=0,
                le=1,
                description="With object: keep matches scoring above this, 0..1; default: the detector's own "
                "(0.3 Grounding DINO, 0.1 OWLv2).",
            ),
        ] = None,
        instance: Annotated[
            int | None,
            Field(
                ge=0,
                le=MAX_INSTANCE,
                description="With object: which match to cut out, 0 = the best-scoring (default).",
            ),
        ] = None,
        crop: Annotated[
            bool,
            Field(description="Crop to the object's box plus a 2 px margin; false keeps the image's size."),
        ] = True,
        feather: Annotated[
            int,
            Field(
                ge=0,
                le=MAX_FEATHER,
                description="Soften the alpha's edge over this many px each side; 0 = the mask exactly.",
            ),
        ] = 0,
        detector: Annotated[
            str | None, Field(description="A named model of the detector role; default: the role's model.")
        ] = None,
        segmenter: Annotated[
            str | None, Field(description="A named model of the segmenter role; default: the role's model.")
        ] = None,
    ) -> Annotated[CallToolResult, CutOutResult]:
        """Cut an object out of an image as an RGBA PNG with a real transparent background (alpha = the
        object's mask), stored with its mask.

        Call it when you need the object alone: a product to place in new scenes (pass the cut-out to
        generate(foreground=...)), a sticker, an asset with transparency. Never ask generate for a
        "transparent background": it paints a checkerboard. Name the object (a detector finds it, a
        segmenter masks it; `instance` picks among several), or leave `object` out for the most salient
        one (the segmenter's best proposal by predicted IoU, centre and size). Without a segmenter (or,
        for a name, a detector) GrabCut cuts it model-free, and `method` says so. The result gives the
        cut-out's id, the mask_id (for refine_region(mask=...) or judge(mask=...)), the object's box in
        the source, its area, the method and its score.
        """
        app = app_context(ctx)
        request = check_request(
            object=object,
            threshold=threshold,
            instance=instance,
            crop=crop,
            feather=feather,
            detector=detector,
            segmenter=segmenter,
            models=app.models,
        )

        def prepare() -> CutOutWork:  # file reads and fetches: off the event loop
            source = app.resolve(image, "image")
            check_image(source)
            return CutOutWork(request, source)

        given = await anyio.to_thread.run_sync(prepare)
        return await run_work(
            ctx,
            "cut_out",
            f"{request.method}: {request.object or 'the most salient object'}"[:100],
            work,
            given,
            lambda output: finish(given, output, app.images),
            lambda handle: CutOutResult(
                status="running",
                object=request.object,
                method=request.method,
                threshold=request.threshold,
                feather=request.feather,
                job=handle,
            ),
            role="detector",
        )
