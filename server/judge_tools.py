"""The `judge` tool: wiring only; the logic is tools/judge/ (request, checks, work, verdict)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ToolAnnotations
from PIL import Image
from pydantic import Field

from server.context import app_context, run_work, to_call_result
from tools.core.images import Resolved
from tools.judge.checks import model_free
from tools.judge.request import check_refs, check_request
from tools.judge.types import (
    DEFAULT_MIN_ALIGNMENT,
    Check,
    Expectation,
    JudgeRequest,
    JudgeResult,
    ModelScores,
)
from tools.judge.verdict import finish
from tools.judge.work import plan, work

ImageArg = Annotated[str, Field(description="A store id, limner:// URI, data URI, file path or URL.")]


def register(server: MCPServer) -> None:
    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def judge(
        ctx: Context,
        image: Annotated[str | None, Field(description="The image to judge (or pass `images`).")] = None,
        images: Annotated[
            list[ImageArg] | None,
            Field(description="Several candidates to judge and rank (best-of-n); e.g. generate's ids."),
        ] = None,
        prompt: Annotated[
            str | None,
            Field(
                description="The prompt the images should show: scored by CLIPScore, split into questions."
            ),
        ] = None,
        questions: Annotated[
            list[str] | None,
            Field(
                description="Things the image must show, one each ('a red umbrella', 'the text OPEN'); each "
                "is asked as a yes/no question. Default: split from the prompt."
            ),
        ] = None,
        reference: Annotated[
            str | None,
            Field(description="A reference image (product photo): CLIP image similarity is reported."),
        ] = None,
        original: Annotated[
            str | None,
            Field(description="The image before an edit (same size): preservation metrics against it."),
        ] = None,
        mask: Annotated[
            str | None,
            Field(
                description="Edit mask, same size, white = every pixel the edit may change (refine_region's "
                "mask_id, not its region_mask_id)."
            ),
        ] = None,
        foreground_mask: Annotated[
            str | None,
            Field(
                description="Mask of a placed object, white = object: checks it stayed intact, not extended."
            ),
        ] = None,
        checks: Annotated[
            list[Check] | None,
            Field(description="Subset of checks to run; default: every check whose inputs are given."),
        ] = None,
        min_alignment: Annotated[
            float,
            Field(
                ge=0,
                le=100,
                description="CLIPScore at or above which alignment passes (CLIP ViT-L/14 scale).",
            ),
        ] = DEFAULT_MIN_ALIGNMENT,
        expect: Annotated[
            list[Expectation] | None,
            Field(
                description="Structured expectations checked with the detector (GenEval's rules): "
                "{object, count} exact count; {object, color}; {object, position: left of|right of|above|below, "
                "of}; {object, present: false}."
            ),
        ] = None,
    ) -> Annotated[CallToolResult, JudgeResult]:
        """Score, check and rank images so you know whether to stop, and what to fix if not.

        Call it after generate (pass all candidate ids as `images`, with the prompt) to pick the best, and
        after refine_region (pass `original` and `mask`) to confirm the fix and that nothing else changed.
        Per image you get a verdict (pass/fix) and items, failing first, each with a next step: refine_region
        (its image, bbox or mask, and prompt are that call's arguments as they stand; a null image is the
        judged one, which has no store id), judge again (with its image, original and mask: the call had
        another edit's original or the region mask where the edit's mask_id belongs), strengthen the prompt,
        or regenerate. `expect` checks counts, colours, positions and absent objects with the detector (each
        entry passes or fails with its boxes and a next step). Scales: checklist P(yes) 0..1 from the vlm,
        passes at >= 0.5 (VQAScore); alignment CLIPScore = 100*max(cos,0), matching captions ~25-35 on CLIP
        ViT-L/14; quality scores 0..1, higher is better (sharpness = Laplacian variance v/(v+100); under-
        and overexposure = half-Mertens well-exposedness times unclipped share; noise = exp(-sigma/10),
        sigma in grey levels; blockiness = exp(-(grid ratio-1)/0.5); colourfulness Hasler-Suesstrunk M/45,
        never failed); preservation MSE (grey levels^2), PSNR dB, SSIM 0..1 (and LPIPS, 0 = identical, when
        its weights are installed) inside and outside the mask and every pixel changed outside it;
        foreground fidelity (PSNR >= 30 dB inside foreground_mask against `original`, e.g. the candidate
        before a refine_region; null without an original) and over-extension (share of the +/-30 px band around the
        object's box that continues it, flagged above 0.03). `ranking` lists
        indexes best first and `best` is the one to keep. Scores are stored on stored input images. When you
        stop, remember the outcome (kind='generation', or 'critique' for a failure worth avoiding).
        """
        app = app_context(ctx)
        settings = app.settings
        refs = check_refs(image, images, settings.judge_max_images)
        if expect and (missing := app.models.unavailable("detector")) is not None:
            raise ToolError(f"expect: needs the detector role, which cannot be served: {missing}")

        def prepare() -> JudgeRequest:  # file reads and fetches, then decoding: off the event loop
            def optional(ref: str | None, name: str) -> Resolved | None:
                return app.resolve(ref, name) if ref is not None else None

            return check_request(
                images=[app.resolve(ref, field) for field, ref in refs],
                prompt=prompt,
                questions=questions,
                reference=optional(reference, "reference"),
                original=optional(original, "original"),
                mask=optional(mask, "mask"),
                foreground_mask=optional(foreground_mask, "foreground_mask"),
                checks=checks,
                min_alignment=min_alignment,
                max_questions=settings.judge_max_questions,
                max_prompt_chars=settings.max_prompt_chars,
                expect=expect,
            )

        def checked() -> tuple[JudgeRequest, list[dict[str, Any]], dict[str, float]]:
            """The request, then the model-free checks (they need no model: not queued behind model work),
            in one trip off the event loop."""
            started = time.perf_counter()
            request = prepare()
            resolved = time.perf_counter()
            found = model_free(request)
            timings = {
                "resolve": round(resolved - started, 4),
                "model_free": round(time.perf_counter() - resolved, 4),
            }
            return request, found, timings

        request, found, timings = await anyio.to_thread.run_sync(checked)
        given = plan(request, app.models.unavailable("lpips"))
        if given is None:
            result = await anyio.to_thread.run_sync(lambda: finish(request, found, None, app.images, timings))
            return to_call_result(result, [])

        def scored(scores: ModelScores) -> tuple[JudgeResult, list[Image.Image]]:
            return finish(request, found, scores, app.images, timings), []

        return await run_work(
            ctx,
            "judge",
            f"{len(request.images)} image(s), {len(request.questions)} question(s): {(request.prompt or '')[:60]}",
            work,
            given,
            scored,
            lambda handle: JudgeResult(status="running", job=handle),
            role="judge",
        )
