"""outpaint, step 2: the model work. `work(given, models, progress)` takes plain data (the checked request,
the image, each side's growth) and returns plain data (the grown canvases, one per candidate), so it runs the
same on the local model thread or on a remote worker."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from tools.core.images import Resolved
from tools.core.jobs import Progress
from tools.models import diffusion
from tools.models.cache import ModelCache
from tools.outpaint.canvas import Inpaint, grow, passes, windows
from tools.outpaint.request import Growth, OutpaintRequest


@dataclass(frozen=True)
class OutpaintWork:
    request: OutpaintRequest
    source: Resolved
    growth: Growth


@dataclass(frozen=True)
class OutpaintOutput:
    canvases: list[np.ndarray]  # uint8 RGB, one per candidate
    original: np.ndarray  # the input as the candidates were grown from it (uint8 RGB)
    passes: list[Growth]
    windows: int  # per candidate
    model: str
    tiny: bool
    timings: dict[str, float]


def rgb_of(image: Image.Image) -> np.ndarray:
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def plan_windows(width: int, height: int, request: OutpaintRequest, plan: list[Growth]) -> int:
    """How many windows the passes take (for the progress total)."""
    count = 0
    for g in plan:
        width, height = width + g.left + g.right, height + g.top + g.bottom
        count += len(windows(width, height, g, request.focus_size, request.size_factor))
    return count


def work(given: OutpaintWork, models: ModelCache, progress: Progress) -> OutpaintOutput:
    request = given.request
    timings: dict[str, float] = {"queue": round(time.time() - progress.created, 4)}
    # 1. the inpainter
    started = time.perf_counter()
    loaded = models.get("inpainter", request.model)
    pipe = loaded.model
    timings["load"] = round(time.perf_counter() - started, 4)
    # 2. the passes and their windows, so progress knows its total
    original = rgb_of(given.source.image)
    height, width = original.shape[:2]
    plan = passes(given.growth, request.per_pass)
    per_candidate = plan_windows(width, height, request, plan)
    total = request.n * per_candidate * request.steps
    model_s = 0.0
    canvases = []
    started = time.perf_counter()
    for i in range(request.n):
        seed = request.seed + i
        done = i * per_candidate * request.steps

        def inpaint(rgb: np.ndarray, mask: np.ndarray, label: str, seed: int = seed) -> np.ndarray:
            nonlocal done, model_s
            h, w = mask.shape
            began = time.perf_counter()
            guidance: dict[str, Any] = {"guidance_scale": request.guidance}
            images = diffusion.call(
                pipe,
                progress,
                seeds=(seed,),
                total=total,
                label=label,
                done=done,
                prompt=request.prompt,
                image=Image.fromarray(rgb),
                mask_image=Image.fromarray(mask),
                strength=1.0,  # the new area is repainted fully; the blend keeps the old beyond the band
                height=h,
                width=w,
                num_inference_steps=request.steps,
                output_type="np",
                **guidance,
            )
            done += request.steps
            model_s += time.perf_counter() - began
            return np.asarray(images[0], dtype=np.float32)

        # 3. pass after pass, each continuing the canvas the last one made
        canvas = original
        for p, g in enumerate(plan, 1):
            name = f"outpaint candidate {i + 1}/{request.n} pass {p}/{len(plan)}"
            fill: Inpaint = inpaint
            canvas, _ = grow(canvas, g, request.band, request.focus_size, request.size_factor, fill, name)
        canvases.append(canvas)
    timings["model"] = round(model_s, 4)
    timings["canvas"] = round(time.perf_counter() - started - model_s, 5)  # pre-fill, crops, blends
    return OutpaintOutput(canvases, original, plan, per_candidate, loaded.label, loaded.tiny, timings)
