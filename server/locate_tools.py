"""The `locate` tool: wiring only; the logic is tools/locate/ (request, work, result)."""

from __future__ import annotations

from typing import Annotated, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import Field

from server.context import app_context, run_work
from tools.locate.request import (
    DEFAULT_PER_OBJECT,
    MAX_OBJECTS,
    MAX_PER_OBJECT,
    LocateWork,
    check_image,
    check_request,
)
from tools.locate.result import LocateResult, finish
from tools.locate.work import work
from tools.models.specs import spec_label


def register(server: MCPServer) -> None:
    @server.tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        )
    )
    async def locate(
        ctx: Context,
        image: Annotated[
            str,
            Field(description="The image to search: a store id, limner:// URI, data URI, file path or URL."),
        ],
        objects: Annotated[
            list[str],
            Field(
                description=f"What to find, one name each (1..{MAX_OBJECTS}): 'mug', 'mug handle', 'red car'. "
                "Every instance of each is found."
            ),
        ],
        threshold: Annotated[
            float | None,
            Field(
                ge=0,
                le=1,
                description="Keep boxes scoring above this, 0..1; default: the detector's own (0.3 Grounding "
                "DINO, 0.1 OWLv2).",
            ),
        ] = None,
        max_per_object: Annotated[
            int, Field(ge=1, le=MAX_PER_OBJECT, description="Most instances kept per name, best first.")
        ] = DEFAULT_PER_OBJECT,
        masks: Annotated[
            Literal["segmenter", "box"],
            Field(
                description="segmenter: each box masked exactly by the segmenter (SAM); box: the box itself."
            ),
        ] = "segmenter",
        detector: Annotated[
            str | None, Field(description="A named model of the detector role; default: the role's model.")
        ] = None,
        segmenter: Annotated[
            str | None, Field(description="A named model of the segmenter role; default: the role's model.")
        ] = None,
    ) -> Annotated[CallToolResult, LocateResult]:
        """Find objects by name in an image and mask each one exactly: boxes from an open-vocabulary
        detector, a mask per box from a segmenter.

        Call it when you know WHAT is wrong (judge failed "the mug handle", you see a warped logo) and need
        WHERE, instead of guessing a bbox from a preview. Each instance comes back with its score, box
        [x1, y1, x2, y2] in pixels, area, centre and a stored mask_id: pass mask_id to
        refine_region(mask=...) to fix that object only, to judge(mask=...), or to
        generate(foreground_mask=...). `objects` counts the instances of each name. Nothing above the
        threshold is an answer, not an error: `message` says how close the best candidate came.
        """
        app = app_context(ctx)
        request = check_request(
            objects=objects,
            threshold=threshold,
            max_per_object=max_per_object,
            detector=detector,
            segmenter=segmenter,
            masks=masks,
            models=app.models,
        )

        def prepare() -> LocateWork:  # file reads and fetches: off the event loop
            source = app.resolve(image, "image")
            check_image(source)
            return LocateWork(request, source)

        given = await anyio.to_thread.run_sync(prepare)
        spec = app.models.models[request.detector]
        return await run_work(
            ctx,
            "locate",
            f"{request.detector}: {', '.join(request.objects)[:80]}",
            work,
            given,
            lambda output: finish(given, output, app.images),
            lambda handle: LocateResult(
                status="running",
                threshold=request.threshold,
                detector=spec_label(spec),
                tiny=spec.tiny_kind is not None,
                job=handle,
            ),
            role="detector",
        )
