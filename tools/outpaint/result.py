"""outpaint, step 3: verify the pixel guarantee on what is stored, store the candidates with lineage, and
build the answer."""

from __future__ import annotations

import time
from dataclasses import asdict

from PIL import Image
from pydantic import BaseModel, Field

from tools.core.checks import TINY_NOTE
from tools.core.images import ImageRef, ImageStore, ensure_stored
from tools.core.jobs import JobHandle
from tools.outpaint.canvas import changed_outside_band
from tools.outpaint.request import Growth
from tools.outpaint.work import OutpaintOutput, OutpaintWork


class Preserved(BaseModel):
    band_px: int = Field(
        description="Width of the blend band inside each old edge the canvas grew past: only original pixels "
        "within it may change (blended into the new area)."
    )
    changed_outside_band: int = Field(
        description="Original pixels outside the band that differ in the output, counted on the stored "
        "pixels of every candidate (always 0)."
    )
    passed: bool = Field(description="True when changed_outside_band is 0.")


class OutpaintResult(BaseModel):
    status: str = Field(description="'done', or 'running' when the work outlived max_wait_s (see `job`).")
    images: list[ImageRef] = Field(default_factory=list, description="One grown canvas per candidate.")
    input_id: str | None = Field(
        default=None, description="The input's store id (stored first if it was not)."
    )
    size: list[int] = Field(default_factory=list, description="[width, height] of the new canvas.")
    growth: dict[str, int] = Field(
        default_factory=dict, description="Pixels added on each side: left, top, right, bottom."
    )
    original_box: list[int] = Field(
        default_factory=list, description="Where the original lies on the canvas [x1, y1, x2, y2]."
    )
    preserved: Preserved | None = None
    passes: int = Field(
        default=0, description="Passes run: each grows a side by at most max_growth_per_pass."
    )
    max_growth_per_pass: int = Field(
        default=0,
        description="Half the model's native size: a window then keeps at least half real picture as context.",
    )
    windows: int = Field(default=0, description="Native-size windows inpainted per candidate, all passes.")
    model_size: int = Field(default=0, description="The inpainter's native size (pixels a side).")
    model: str = ""
    tiny: bool = False
    seeds: list[int] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per phase.")
    job: JobHandle | None = None


def total(plan: list[Growth]) -> Growth:
    return Growth(*(sum(getattr(g, side) for g in plan) for side in ("left", "top", "right", "bottom")))


def finish(
    given: OutpaintWork, output: OutpaintOutput, store: ImageStore, timings: dict[str, float] | None = None
) -> tuple[OutpaintResult, list[Image.Image]]:
    timings = {**(timings or {}), **output.timings}
    request = given.request
    grown = total(output.passes)
    h, w = output.original.shape[:2]
    # 1. the guarantee, on the pixels that are stored (PNG is lossless: these are the stored pixels)
    started = time.perf_counter()
    changed = sum(changed_outside_band(output.original, c, grown, request.band) for c in output.canvases)
    timings["check"] = round(time.perf_counter() - started, 5)
    # 2. store every candidate with its parent
    started = time.perf_counter()
    input_id = ensure_stored(given.source, store)
    params = {k: v for k, v in asdict(request).items() if k not in ("n", "seed")}
    box = [grown.left, grown.top, grown.left + w, grown.top + h]
    images, seeds, shown = [], [], []
    for i, canvas in enumerate(output.canvases):
        image = Image.fromarray(canvas)
        seed = request.seed + i
        info = {
            "growth": grown.sides(),
            "original_box": box,
            "band_px": request.band,
            "changed_outside_band": changed,
            "passes": len(output.passes),
            "model": output.model,
            "tiny": output.tiny,
            "seed": seed,
        }
        images.append(
            store.put(image, tool="outpaint", params={**params, "seed": seed}, parents=[input_id], info=info)
        )
        seeds.append(seed)
        shown.append(image)
    timings["store"] = round(time.perf_counter() - started, 5)
    notes = []
    if given.source.image.mode != "RGB":
        notes.append(f"the input (mode {given.source.image.mode}) was converted to RGB; the output is RGB")
    if len(output.passes) > 1:
        notes.append(
            f"grown in {len(output.passes)} passes of at most {request.per_pass} px a side (half the "
            f"inpainter's native {request.focus_size} px), each continuing the last"
        )
    if output.tiny:
        notes.append(TINY_NOTE)
    result = OutpaintResult(
        status="done",
        images=images,
        input_id=input_id,
        size=[shown[0].width, shown[0].height],
        growth=grown.sides(),
        original_box=box,
        preserved=Preserved(band_px=request.band, changed_outside_band=changed, passed=changed == 0),
        passes=len(output.passes),
        max_growth_per_pass=request.per_pass,
        windows=output.windows,
        model_size=request.focus_size,
        model=output.model,
        tiny=output.tiny,
        seeds=seeds,
        notes=notes,
        timings=timings,
    )
    return result, shown
