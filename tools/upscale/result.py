"""upscale, step 3: measure how far the result moved from the plain resize (judge's preservation check),
store it with its parent, and build the answer."""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from tools.core.checks import TINY_NOTE
from tools.core.images import ImageRef, ImageStore, ensure_stored
from tools.core.jobs import JobHandle
from tools.metrics.preservation import preservation
from tools.upscale.work import UpscaleOutput, UpscaleWork


class AgainstPlain(BaseModel):
    """How far the result moved from the classical resize (Lanczos + mild unsharp mask) of the same input."""

    mean_abs_diff: float = Field(
        description="Mean absolute difference per channel, grey levels 0..255 (0 = same)."
    )
    psnr: float = Field(description="dB, 100 when identical.")
    ssim: float = Field(description="Structural similarity on the grey image, 1 = identical.")
    changed_pixels: int = Field(description="Pixels where any channel differs at all.")
    identical: bool = Field(description="True when the result is the plain resize, bit for bit.")


class UpscaleResult(BaseModel):
    status: str = Field(description="'done', or 'running' when the work outlived max_wait_s (see `job`).")
    image: ImageRef | None = Field(default=None, description="The upscaled image; its parent is the input.")
    input_id: str | None = Field(
        default=None, description="The input's store id (stored first if it was not)."
    )
    backend: str = ""
    scale: int = 0
    size: list[int] = Field(default_factory=list, description="[width, height] of the output.")
    creativity: float = 0.0
    tiles: int = Field(default=0, description="Tiles the model refined (0: no model ran).")
    tile_size: int = Field(
        default=0, description="Tile side: output pixels for tiled, input pixels for x4-upscaler."
    )
    overlap: int = Field(default=0, description="Pixels each tile overlaps its neighbour (cross-faded).")
    against_plain: AgainstPlain | None = None
    model: str = ""
    tiny: bool = False
    seed: int | None = None
    seconds: float = Field(default=0.0, description="Wall time of the work (queue excluded).")
    notes: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per phase.")
    job: JobHandle | None = None


def against_plain(pixels: np.ndarray, plain: np.ndarray) -> AgainstPlain:
    found = preservation(pixels, plain, None).outside
    mad = float(np.abs(pixels.astype(np.int16) - plain.astype(np.int16)).mean())
    return AgainstPlain(
        mean_abs_diff=round(mad, 4),
        psnr=found.psnr,
        ssim=found.ssim,
        changed_pixels=found.changed_pixels,
        identical=found.changed_pixels == 0,
    )


def finish(
    given: UpscaleWork, output: UpscaleOutput, store: ImageStore, timings: dict[str, float] | None = None
) -> tuple[UpscaleResult, list[Image.Image]]:
    timings = {**(timings or {}), **output.timings}
    request = given.request
    started = time.perf_counter()
    moved = against_plain(output.pixels, output.plain)
    timings["metrics"] = round(time.perf_counter() - started, 5)
    started = time.perf_counter()
    input_id = ensure_stored(given.source, store)
    image = Image.fromarray(output.pixels)
    ran = output.tiles > 0
    params = {k: v for k, v in asdict(request).items() if k != "notes"}
    info = {
        "backend": request.backend,
        "scale": request.scale,
        "tiles": output.tiles,
        "against_plain": moved.model_dump(),
        "model": output.model,
        "tiny": output.tiny,
        "seed": request.seed if ran else None,
    }
    ref = store.put(image, tool="upscale", params=params, parents=[input_id], info=info)
    timings["store"] = round(time.perf_counter() - started, 5)
    notes = list(request.notes)
    if given.source.image.mode != "RGB":
        notes.append(f"the input (mode {given.source.image.mode}) was converted to RGB; the output is RGB")
    if output.tiny:
        notes.append(TINY_NOTE)
    seconds = sum(v for k, v in output.timings.items() if k != "queue")
    result = UpscaleResult(
        status="done",
        image=ref,
        input_id=input_id,
        backend=request.backend,
        scale=request.scale,
        size=[image.width, image.height],
        creativity=request.creativity,
        tiles=output.tiles,
        tile_size=output.tile_size,
        overlap=output.overlap,
        against_plain=moved,
        model=output.model,
        tiny=output.tiny,
        seed=request.seed if ran else None,
        seconds=round(seconds, 4),
        notes=notes,
        timings=timings,
    )
    return result, [image]
